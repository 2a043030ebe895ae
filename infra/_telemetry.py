"""OpenTelemetry for the ``eventbus`` processes, configured by the standard ``OTEL_*`` variables (the ``otel`` extra).

The libraries (``producers``, ``consumers``) only use the API; this module is where a process sets up the
SDK, and only when asked: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``; comma-separated) or an
OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, which implies
``otlp``) is set, ``OTEL_SDK_DISABLED`` is not ``true``, and the SDK is installed (``pip install
eventbus[otel]``). Otherwise nothing is configured and nothing is traced. The SDK reads the rest itself:
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER(_ARG)``, ``OTEL_PROPAGATORS``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``. The OTLP exporter speaks HTTP/protobuf (port 4318).

Example::

    OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 OTEL_SERVICE_NAME=credits eventbus run credits
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from producers import tracer_or_none

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["configure_telemetry", "instrument_gateway"]

log = logging.getLogger("eventbus.telemetry")

_TRUE = {"1", "true", "yes", "on"}


def _requested_exporters() -> list[str]:
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not names and endpoint:
        names = ["otlp"]
    return [name for name in names if name != "none"]


def configure_telemetry(service_name: str = "eventbus") -> bool:
    """Set the SDK's global ``TracerProvider`` with the exporters the ``OTEL_*`` variables ask for; True if tracing.

    ``service_name`` is the default ``service.name`` (``OTEL_SERVICE_NAME`` wins). Does nothing (False) when
    no exporter is asked for, when ``OTEL_SDK_DISABLED=true``, or when the SDK is not installed (logged);
    a provider the program set itself is kept (True). Example: ``configure_telemetry("eventbus-gateway")``
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    names = _requested_exporters()
    if not names:
        return False
    if tracer_or_none("eventbus") is not None:
        return True  # configured already (by the program, or by `opentelemetry-instrument`)
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional: the otel extra
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        log.warning("OTEL_* variables ask for traces, but the OpenTelemetry SDK is missing: pip install eventbus[otel]")
        return False
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol != "http/protobuf":
                log.warning("OTLP protocol %r is not supported here; exporting with http/protobuf", protocol)
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                    OTLPSpanExporter,
                )
            except ImportError:
                log.warning("the OTLP exporter is missing: pip install eventbus[otel]")
                continue
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored (otlp, console or none)", name)
    if not exporters:
        return False
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("OpenTelemetry tracing on", extra={"exporters": names})
    return True


def instrument_gateway(app: FastAPI) -> None:
    """HTTP server spans for the gateway (``opentelemetry-instrumentation-fastapi``) when tracing is configured.

    Nothing when tracing is off or the instrumentation is not installed. The per-message ``send``/``receive``
    spans are left out (an SSE stream would make one per event). Example: ``instrument_gateway(app)``
    """
    if tracer_or_none("eventbus.gateway") is None:
        return
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: PLC0415 - optional
    except ImportError:
        log.info("gateway HTTP spans need opentelemetry-instrumentation-fastapi (pip install eventbus[otel])")
        return
    FastAPIInstrumentor.instrument_app(app, exclude_spans=["receive", "send"])
