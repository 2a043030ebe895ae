"""eventbus consumers: at-least-once consumer groups on a shared runtime.

Example::

    from consumers import ConsumerGroup, HandlerContext
    credits = ConsumerGroup("credits")

    @credits.handler(SessionCompleted)
    async def deduct(event: SessionCompleted, ctx: HandlerContext) -> None: ...
"""

from ._app import group_id, run_groups
from ._backoff import backoff_delay, is_retriable
from ._cache import Cache, MemoryCache, RedisCache, open_cache
from ._config import ConsumerConfig, RuntimeConfig
from ._context import FOLLOW_UP_NAMESPACE, HandlerContext, HandlerScope, follow_up_id
from ._database import Database, Migration, async_url, migrated_database
from ._dead_letter import REPLAY_HEADER, build_dead_letter
from ._group import BackgroundTask, ConsumerGroup, GroupRegistry, Handler
from ._kafka import KafkaConsumerTransport
from ._log_throttle import LogThrottle, throttle_logs
from ._metrics import RuntimeMetrics, default_metrics
from ._outbox_relay import (
    OUTBOX_CHANNEL,
    OUTBOX_MIGRATION,
    OUTBOX_PROGRESS_TOPIC,
    OutboxRelay,
    OutboxStatus,
    RelayConfig,
    RelayStats,
    outbox_status,
)
from ._patience import BackgroundTaskError, Patience, RetryBoundExceededError, RetryPolicy
from ._resources import GroupSettings, Resources
from ._runner import GroupRunner
from ._store import PROCESSED_EVENTS_MIGRATION, Effects, ProcessedEventStore
from ._transport import ConsumedRecord, ConsumerTransport, PartitionsCallback, PlainRecord, TopicPartition

__all__ = [
    "FOLLOW_UP_NAMESPACE",
    "OUTBOX_CHANNEL",
    "OUTBOX_MIGRATION",
    "OUTBOX_PROGRESS_TOPIC",
    "PROCESSED_EVENTS_MIGRATION",
    "REPLAY_HEADER",
    "BackgroundTask",
    "BackgroundTaskError",
    "Cache",
    "ConsumedRecord",
    "ConsumerConfig",
    "ConsumerGroup",
    "ConsumerTransport",
    "Database",
    "Effects",
    "GroupRegistry",
    "GroupRunner",
    "GroupSettings",
    "Handler",
    "HandlerContext",
    "HandlerScope",
    "KafkaConsumerTransport",
    "LogThrottle",
    "MemoryCache",
    "Migration",
    "OutboxRelay",
    "OutboxStatus",
    "PartitionsCallback",
    "Patience",
    "PlainRecord",
    "ProcessedEventStore",
    "RedisCache",
    "RelayConfig",
    "RelayStats",
    "Resources",
    "RetryBoundExceededError",
    "RetryPolicy",
    "RuntimeConfig",
    "RuntimeMetrics",
    "TopicPartition",
    "async_url",
    "backoff_delay",
    "build_dead_letter",
    "default_metrics",
    "follow_up_id",
    "group_id",
    "is_retriable",
    "migrated_database",
    "open_cache",
    "outbox_status",
    "run_groups",
    "throttle_logs",
]
