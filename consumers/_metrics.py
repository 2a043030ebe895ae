"""Prometheus metrics of the consumer runtime."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["RuntimeMetrics", "default_metrics"]

_default: RuntimeMetrics | None = None


class RuntimeMetrics:
    """Counters, a latency histogram and lag, labelled by group (and event type or partition).

    Example: ``RuntimeMetrics(CollectorRegistry())`` for an isolated set in tests.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.consumed = Counter("eventbus_consumed", "Records fetched", ["group"], registry=registry)
        self.handled = Counter(
            "eventbus_handled", "Records handled successfully", ["group", "event_type"], registry=registry
        )
        self.failed = Counter(
            "eventbus_failed", "Handler attempts that failed", ["group", "event_type"], registry=registry
        )
        self.retried = Counter(
            "eventbus_retried", "Handler attempts retried", ["group", "event_type"], registry=registry
        )
        self.dead_lettered = Counter(
            "eventbus_dead_lettered", "Records sent to the dead-letter topic", ["group", "reason"], registry=registry
        )
        self.latency = Histogram(
            "eventbus_handler_seconds",
            "Handler duration",
            ["group", "event_type"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.lag = Gauge(
            "eventbus_lag", "High watermark minus committed offset", ["group", "topic", "partition"], registry=registry
        )


def default_metrics() -> RuntimeMetrics:
    """The process-wide metrics on prometheus-client's default registry."""
    global _default  # noqa: PLW0603 - one set per process, made on first use
    if _default is None:
        _default = RuntimeMetrics()
    return _default
