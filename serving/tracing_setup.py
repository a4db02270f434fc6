"""Turn on OpenTelemetry export for `scoregate serve --otel-exporter console|otlp`.

OpenTelemetry is an optional dependency: without `--otel-exporter` nothing is imported
and the router's tracing hook stays off. `otlp` also needs
opentelemetry-exporter-otlp and reads the usual OTEL_EXPORTER_OTLP_* variables.
"""

from __future__ import annotations

import logging

log = logging.getLogger("scoregate.tracing")


class TracingUnavailable(Exception):
    pass


def setup_tracing(exporter: str | None) -> bool:
    if not exporter:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise TracingUnavailable("--otel-exporter needs the opentelemetry-sdk package") from None
    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingUnavailable("--otel-exporter otlp needs the opentelemetry-exporter-otlp package") from None
        span_exporter = OTLPSpanExporter()
    else:
        span_exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "scoregate"}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    log.info("OpenTelemetry spans exported to %s", exporter)
    return True
