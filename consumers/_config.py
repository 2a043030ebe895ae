"""Typed, keyword-only configuration of consumer groups and their runtime."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ConsumerConfig", "RuntimeConfig"]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConsumerConfig(_Config):
    """Group membership and fetching. The embedded profile uses short timeouts because
    that broker reassigns a departed member's partitions only after the session timeout.

    Example: ``ConsumerConfig(session_timeout_ms=6000, heartbeat_interval_ms=300)``
    """

    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group without committed offsets starts: earliest, so nothing published before is skipped."""
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    rebalance_timeout_ms: int | None = None
    max_partition_fetch_bytes: int = Field(default=1_048_576, gt=0)
    fetch_max_bytes: int = Field(default=16_777_216, gt=0)
    """Bytes one fetch may bring (aiokafka's default is 50 MB, which a consumer must then hold)."""
    fetch_max_wait_ms: int = Field(default=10, ge=0)
    """How long the broker may hold a fetch for more data: the floor of publish→handler latency when idle."""
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    """read_committed: records of aborted transactions are never handled, open ones wait for their outcome."""

    @model_validator(mode="after")
    def _check_heartbeat(self) -> ConsumerConfig:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            msg = "heartbeat_interval_ms should be at most a third of session_timeout_ms"
            raise ValueError(msg)
        return self


class RuntimeConfig(_Config):
    """How the runtime dispatches, retries, bounds memory and shuts down.

    Example: ``RuntimeConfig(concurrency=8, max_attempts=5)``
    """

    concurrency: int = Field(default=4, ge=1)
    """Partitions whose handlers run at the same time (records of one partition always run in order)."""
    max_attempts: int = Field(default=3, ge=1)
    """Tries of a handler for a retriable failure before the record is dead-lettered."""
    backoff_initial_s: float = Field(default=0.2, ge=0)
    backoff_max_s: float = Field(default=10.0, ge=0)
    backoff_multiplier: float = Field(default=2.0, ge=1)
    backoff_jitter: float = Field(default=0.2, ge=0, le=1)
    """Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]."""
    fetch_max_records: int = Field(default=2_000, gt=0)
    fetch_timeout_s: float = Field(default=0.2, gt=0)
    max_buffered_per_partition: int = Field(default=2_000, gt=0)
    """Fetched, not yet done records per partition; above it the partition is paused."""
    max_buffered_total: int = Field(default=20_000, gt=0)
    """Fetched, not yet done records in all; above it fetching waits."""
    commit_interval_s: float = Field(default=1.0, gt=0)
    """Commits run in the background, one at a time: fetching and handlers never wait for a commit's round trip."""
    commit_when_idle: bool = True
    """Also commit as soon as every fetched record is done (as Spring Kafka's BATCH ack mode does), one commit
    in flight at a time: a drained backlog is committed within a round trip, not up to ``commit_interval_s``
    later. False: commits only every ``commit_interval_s`` (fewer commit requests at a trickle of records)."""
    commit_timeout_s: float = Field(default=10.0, gt=0)
    revoke_timeout_s: float = Field(default=10.0, gt=0)
    """How long a revocation waits for the partition's handler in flight."""
    shutdown_timeout_s: float = Field(default=15.0, gt=0)
    """How long shutdown waits for handlers in flight."""
    dead_letter_retry_s: float = Field(default=2.0, gt=0)
    """Pause between attempts to publish a dead letter that the broker did not acknowledge."""
    retry_tiers_s: tuple[float, ...] = ()
    """Delays of the non-blocking retry tiers (e.g. 5, 60, 600): after the in-place attempts, a retriable
    failure moves the record to ``retry.<group>.<n>`` and the partition goes on; empty: no tiers."""
    retry_keep_key_order: bool = False
    """Park later records of a key behind its record in the retry tiers (order per key kept, in this process)."""
    retry_topic_partitions: int = Field(default=3, ge=1)
    retry_topic_replication: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check_tiers(self) -> RuntimeConfig:
        if any(delay <= 0 for delay in self.retry_tiers_s):
            msg = "retry tier delays must be positive"
            raise ValueError(msg)
        return self
