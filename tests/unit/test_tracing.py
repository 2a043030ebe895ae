"""OpenTelemetry on the fake broker: producer spans and trace headers, process spans parented by them,
follow-ups as children, retries and dead letters as span events; nothing at all when tracing is off."""

from __future__ import annotations

import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from consumers import ConsumerGroup, HandlerContext, RuntimeConfig
from consumers.testing import InMemoryBroker
from infra._telemetry import configure_telemetry
from producers import EventPublisher, tracer_or_none
from schemas import Event, NotificationSent, SessionCreated
from tests.events_factory import example_event
from tests.harness import FAST, new_broker, run_until_drained
from tests.tracing_support import by_name, session_provider, traced


def _header(headers: list[tuple[str, bytes]], name: str) -> str | None:
    values = [value.decode() for key, value in headers if key == name]
    return values[0] if values else None


def _traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def _trace_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id


async def test_publish_makes_a_producer_span_inside_the_callers_span_and_puts_its_context_in_the_headers() -> None:
    broker = new_broker()
    event = example_event("session:created", session_id="s-traced")
    with traced() as spans:
        async with EventPublisher(transport=broker.producer()) as publisher:
            with trace.get_tracer("test").start_as_current_span("caller") as caller:
                result = await publisher.publish(event)
        finished = spans.get_finished_spans()

    [span] = by_name(finished, "publish session")
    [parent] = by_name(finished, "caller")
    assert span.kind is SpanKind.PRODUCER
    assert _parent_id(span) == caller.get_span_context().span_id == _span_id(parent)
    assert dict(span.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "publish",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "session",
        "messaging.destination.partition.id": str(result.partition),
        "messaging.kafka.offset": result.offset,
        "messaging.kafka.message.key": "s-traced",
        "messaging.message.id": str(event.event_id),
        "messaging.message.body.size": len(broker.records("session")[0].value),
        "messaging.message.conversation_id": str(event.event_id),
        "eventbus.event_type": "session:created",
    }
    [stored] = broker.records("session")
    assert _header(stored.headers, "traceparent") == _traceparent_of(span)


async def test_send_and_publish_many_are_traced_too() -> None:
    broker = new_broker()
    with traced() as spans:
        async with EventPublisher(transport=broker.producer()) as publisher:
            await publisher.send(example_event("session:created", session_id="s-sent"))
            await publisher.flush()
            await publisher.publish_many([example_event("session:created", session_id=f"s-many-{i}") for i in range(3)])
        finished = spans.get_finished_spans()

    sent, many = by_name(finished, "publish session")
    assert sent.attributes is not None
    assert sent.attributes["messaging.kafka.message.key"] == "s-sent"
    assert many.attributes is not None
    assert many.attributes["messaging.batch.message_count"] == 3
    parents = [_header(record.headers, "traceparent") for record in broker.records("session")]
    assert sorted(map(str, parents)) == sorted([_traceparent_of(sent)] + [_traceparent_of(many)] * 3)


async def test_a_failed_publish_fails_its_span() -> None:
    broker = new_broker()
    with traced() as spans:
        async with EventPublisher(transport=broker.producer()) as publisher:
            broker.available = False
            with pytest.raises(Exception, match="unavailable"):
                await publisher.publish(example_event("session:created"))
            broker.available = True
        finished = spans.get_finished_spans()
    [span] = by_name(finished, "publish session")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "BrokerUnavailableError"


async def _handled_by(group: ConsumerGroup, broker: InMemoryBroker, *events: Event, **config: object) -> None:
    async with EventPublisher(transport=broker.producer()) as publisher:
        for event in events:
            await publisher.publish(event)
        await run_until_drained(group, broker, publisher, config=RuntimeConfig(**{**FAST, **config}))


async def test_the_process_span_is_a_child_of_the_producer_span_and_follow_ups_are_its_children() -> None:
    broker = new_broker()
    group = ConsumerGroup("traced-follow-ups")
    created = example_event("session:created", session_id="s-flow")

    @group.handler(SessionCreated)
    async def confirm(event: SessionCreated, ctx: HandlerContext) -> None:
        await ctx.publish(example_event("notification:sent", user_id=event.user_id))

    with traced() as spans:
        await _handled_by(group, broker, created)
        finished = spans.get_finished_spans()

    [published, follow_up] = by_name(finished, "publish session") + by_name(finished, "publish notification")
    [process] = by_name(finished, "process session")
    assert process.kind is SpanKind.CONSUMER
    assert _trace_id(process) == _trace_id(published) == _trace_id(follow_up)
    assert _parent_id(process) == _span_id(published)
    assert _parent_id(follow_up) == _span_id(process)
    stored = broker.records("session")[0]
    assert dict(process.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.consumer.group.name": "traced-follow-ups",
        "eventbus.group": "traced-follow-ups",
        "messaging.destination.name": "session",
        "messaging.destination.partition.id": str(published.attributes["messaging.destination.partition.id"])
        if published.attributes
        else "",
        "messaging.kafka.offset": stored.offset,
        "messaging.message.body.size": len(stored.value),
        "messaging.kafka.message.key": "s-flow",
        "messaging.message.id": str(created.event_id),
        "messaging.message.conversation_id": str(created.event_id),
        "eventbus.event_type": "session:created",
    }
    [notification] = broker.records("notification")
    assert _header(notification.headers, "traceparent") == _traceparent_of(follow_up)


async def test_retries_and_the_dead_letter_are_events_of_the_process_span() -> None:
    broker = new_broker()
    group = ConsumerGroup("traced-failures")

    @group.handler(SessionCreated)
    async def flaky(event: SessionCreated, ctx: HandlerContext) -> None:
        raise TimeoutError("the coach service timed out")

    with traced() as spans:
        await _handled_by(group, broker, example_event("session:created"), max_attempts=2)
        finished = spans.get_finished_spans()

    [process] = by_name(finished, "process session")
    assert [event.name for event in process.events] == ["eventbus.retry", "eventbus.dead_letter"]
    retry, dead = process.events
    assert dict(retry.attributes or {}) | {"eventbus.delay_s": 0} == {
        "exception.type": "TimeoutError",
        "exception.message": "the coach service timed out",
        "eventbus.attempt": 1,
        "eventbus.delay_s": 0,
    }
    assert dict(dead.attributes or {}) == {
        "exception.type": "TimeoutError",
        "exception.message": "the coach service timed out",
        "eventbus.attempts": 2,
        "eventbus.reason": "failed",
    }
    assert process.status.status_code is StatusCode.ERROR
    [letter] = by_name(finished, "publish system")  # the dead letter's own producer span, a child
    assert _parent_id(letter) == _span_id(process)


async def test_a_move_to_a_retry_tier_is_an_event_and_the_retried_record_keeps_the_trace() -> None:
    broker = new_broker()
    group = ConsumerGroup("traced-tiers")
    attempts: list[int] = []

    @group.handler(SessionCreated)
    async def once_flaky(event: SessionCreated, ctx: HandlerContext) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            raise TimeoutError("later, please")

    with traced() as spans:
        await _handled_by(group, broker, example_event("session:created"), max_attempts=1, retry_tiers_s=(0.01,))
        finished = spans.get_finished_spans()

    [published] = by_name(finished, "publish session")
    first, second = by_name(finished, "process session") + by_name(finished, "process retry.traced-tiers.1")
    assert [event.name for event in first.events] == ["eventbus.retry_tier"]
    assert first.events[0].attributes is not None
    assert first.events[0].attributes["eventbus.retry_topic"] == "retry.traced-tiers.1"
    assert _parent_id(first) == _parent_id(second) == _span_id(published)
    assert second.status.status_code is StatusCode.UNSET


async def test_an_undecodable_record_is_dead_lettered_in_a_failed_process_span() -> None:
    broker = new_broker()
    group = ConsumerGroup("traced-undecodable")
    group.add(SessionCreated, lambda event, ctx: _nothing())
    from producers import OutgoingRecord  # noqa: PLC0415

    with traced() as spans:
        broker.append(OutgoingRecord("session", b"k", b"not avro", [("event-type", b"session:created")]))
        await _handled_by(group, broker)
        finished = spans.get_finished_spans()
    [process] = by_name(finished, "process session")
    assert [event.name for event in process.events] == ["eventbus.dead_letter"]
    assert process.events[0].attributes is not None
    assert process.events[0].attributes["eventbus.reason"] == "undecodable"
    assert process.parent is None  # no trace context in its headers: a trace of its own


async def _nothing() -> None:
    return None


async def test_without_tracing_configured_no_header_is_added_and_nothing_is_recorded() -> None:
    session_provider()  # the session's provider exists, switched off, as in every other test
    broker = new_broker()
    group = ConsumerGroup("untraced")
    handled: list[NotificationSent] = []

    @group.handler(SessionCreated)
    async def confirm(event: SessionCreated, ctx: HandlerContext) -> None:
        await ctx.publish(example_event("notification:sent", user_id=event.user_id))

    @group.handler(NotificationSent)
    async def seen(event: NotificationSent, ctx: HandlerContext) -> None:
        handled.append(event)

    await _handled_by(group, broker, example_event("session:created"))
    headers = [key for topic in ("session", "notification") for r in broker.records(topic) for key, _ in r.headers]
    assert len(handled) == 1
    assert "traceparent" not in headers
    assert "tracestate" not in headers


def test_tracing_is_off_without_a_provider_without_the_api_and_with_the_sdk_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session_provider()
    assert tracer_or_none("eventbus.test") is None  # set, but switched off (no-op tracers)

    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    assert tracer_or_none("eventbus.test") is None  # nothing configured: the API's proxy

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    disabled = TracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: disabled)
    assert tracer_or_none("eventbus.test") is None

    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # not installed
    assert tracer_or_none("eventbus.test") is None
    publisher = EventPublisher(transport=new_broker().producer())
    assert [key for key, _ in publisher.prepare(example_event("session:created")).headers] == [
        "event-type",
        "event-id",
    ]


def test_configure_telemetry_does_nothing_unless_an_exporter_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert configure_telemetry() is False
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert configure_telemetry() is False
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert configure_telemetry() is False


def test_configure_telemetry_sets_an_sdk_provider_with_the_otlp_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    session_provider()  # switched off: to configure_telemetry, nothing is configured yet
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    installed: list[TracerProvider] = []
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)

    assert configure_telemetry("eventbus-test") is True

    [provider] = installed
    try:
        assert provider.resource.attributes["service.name"] == "eventbus-test"
        exporters = [type(p.span_exporter).__name__ for p in provider._active_span_processor._span_processors]  # type: ignore[attr-defined]
        assert exporters == ["OTLPSpanExporter"]
    finally:
        provider.shutdown()


def test_configure_telemetry_keeps_a_provider_the_program_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: pytest.fail("replaced the provider"))
    with traced():
        assert configure_telemetry() is True
