"""Prometheus metrics of the consumer runtime.

The runtime counts on its event loop, where prometheus-client's own metric
objects (a lock per increment) would cost more than the rest of a record's
bookkeeping; these are plain numbers that a collector turns into Prometheus
families when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

__all__ = ["RuntimeMetrics", "default_metrics"]

_default: RuntimeMetrics | None = None

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _Value:
    """A counter's or a gauge's number for one set of labels."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        """Add ``amount``."""
        self.value += amount

    def set(self, value: float) -> None:
        """Replace the value (gauges)."""
        self.value = value


class _Buckets:
    """A histogram's counts for one set of labels (per bucket, not yet cumulative)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


_Child = TypeVar("_Child", _Value, _Buckets)


class _Family(Generic[_Child]):
    """A metric name with its label names, and a child per set of label values."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], kind: str) -> None:
        self.name = name
        self.doc = doc
        self.label_names = labels
        self.kind = kind
        self.children: dict[tuple[str, ...], _Child] = {}

    def labels(self, *values: str) -> _Child:
        """The child for these label values (made on first use)."""
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._new()
        return child

    def _new(self) -> _Child:
        raise NotImplementedError

    def family(self) -> Metric:
        """The Prometheus family, as a scrape shows it."""
        raise NotImplementedError


class _ValueFamily(_Family[_Value]):
    def _new(self) -> _Value:
        return _Value()

    def family(self) -> Metric:
        kind = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        metric = kind(self.name, self.doc, labels=list(self.label_names))
        for values, child in self.children.items():
            metric.add_metric(list(values), child.value)
        return metric


class _HistogramFamily(_Family[_Buckets]):
    def __init__(self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        super().__init__(name, doc, labels, "histogram")
        self.bounds = bounds

    def _new(self) -> _Buckets:
        return _Buckets(self.bounds)

    def family(self) -> Metric:
        histogram = HistogramMetricFamily(self.name, self.doc, labels=list(self.label_names))
        for values, child in self.children.items():
            cumulative, running = [], 0
            for bound, count in zip((*self.bounds, float("inf")), child.counts, strict=True):
                running += count
                cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
            histogram.add_metric(list(values), cumulative, child.total)
        return histogram


class RuntimeMetrics:
    """Counters, a latency histogram and lag, labelled by group (and event type or partition).

    Example: ``RuntimeMetrics(CollectorRegistry())`` for an isolated set in tests.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.consumed = _ValueFamily("eventbus_consumed", "Records fetched", ("group",), "counter")
        self.failed = _ValueFamily(
            "eventbus_failed", "Handler attempts that failed", ("group", "event_type"), "counter"
        )
        self.retried = _ValueFamily("eventbus_retried", "Handler attempts retried", ("group", "event_type"), "counter")
        self.dead_lettered = _ValueFamily(
            "eventbus_dead_lettered", "Records sent to the dead-letter topic", ("group", "reason"), "counter"
        )
        self.latency = _HistogramFamily(
            "eventbus_handler_seconds", "Handler duration", ("group", "event_type"), _LATENCY_BUCKETS
        )
        self.lag = _ValueFamily(
            "eventbus_lag", "High watermark minus the next record to handle", ("group", "topic", "partition"), "gauge"
        )
        self._families: tuple[_Family[_Value] | _Family[_Buckets], ...] = (
            self.consumed,
            self.failed,
            self.retried,
            self.dead_lettered,
            self.latency,
            self.lag,
        )
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """Every family with its current values (called by prometheus-client on a scrape)."""
        yield self._handled()
        for family in self._families:
            yield family.family()

    def _handled(self) -> Metric:
        """Records handled successfully: the latency histogram's counts (every success is observed once).

        Derived rather than counted, so the runtime's per-record path updates one number less.
        """
        metric = CounterMetricFamily(
            "eventbus_handled", "Records handled successfully", labels=list(self.latency.label_names)
        )
        for values, child in self.latency.children.items():
            metric.add_metric(list(values), float(sum(child.counts)))
        return metric


def default_metrics() -> RuntimeMetrics:
    """The process-wide metrics on prometheus-client's default registry."""
    global _default  # noqa: PLW0603 - one set per process, made on first use
    if _default is None:
        _default = RuntimeMetrics()
    return _default
