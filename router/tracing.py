"""W3C trace context through the gateway, and optional OpenTelemetry spans.

Every request forwarded to a model carries a `traceparent`: the caller's trace id with
a new span id for the gateway hop, or a new trace when the caller sent none (or an
invalid one); `tracestate` passes unchanged. The answer carries the gateway's
`traceparent` so a caller can find the request in its traces.

OpenTelemetry is optional: with `opentelemetry-sdk` installed and a tracer provider set
up (serving.tracing_setup does it when an exporter is configured), the pipeline opens a
span per request; without it, the cost is one `is None` check.
"""

from __future__ import annotations

import re
from random import getrandbits  # ids need to be unique, not secret; reseeded in a forked child

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def child_traceparent(incoming: bytes | str | None) -> tuple[str, str]:
    """(traceparent to send upstream, trace id); a fresh trace when `incoming` (the
    caller's header, raw bytes on the data path) is unusable."""
    # A span id, and a trace id if needed: one draw, no formatting (what randbytes(24)
    # does, without its Python frame).
    ids = getrandbits(192).to_bytes(24, "little").hex()
    trace_id, flags = None, "01"
    if incoming:
        if isinstance(incoming, bytes):
            incoming = incoming.decode("latin-1")  # a valid traceparent is ASCII
        match = _TRACEPARENT.match(incoming.strip().lower())
        if match and match.group(1) != _ZERO_TRACE and match.group(2) != _ZERO_SPAN:
            trace_id, flags = match.group(1), match.group(3)
    if trace_id is None:
        trace_id = ids[:32]
        if trace_id == _ZERO_TRACE:  # all-zero ids are invalid (a 2**-128 chance)
            trace_id = _ZERO_TRACE[:-1] + "1"
    span_id = ids[32:]
    if span_id == _ZERO_SPAN:
        span_id = _ZERO_SPAN[:-1] + "1"
    return f"00-{trace_id}-{span_id}-{flags}", trace_id


def otel_tracer(provider=None):
    """The OpenTelemetry tracer when the SDK is installed and configured (or `provider`
    is given), else None."""
    if provider is not None:
        return provider.get_tracer("scoregate.router")
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return None
    return trace.get_tracer("scoregate.router")


def start_server_span(tracer, method: str, headers: dict[str, str]):
    """A SERVER span continuing the caller's trace; (span, traceparent for the model)."""
    from opentelemetry import propagate, trace

    parent = propagate.extract(headers)
    span = tracer.start_span("scoregate.score", context=parent, kind=trace.SpanKind.SERVER,
                             attributes={"http.request.method": method})
    context = span.get_span_context()
    return span, f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def end_server_span(tracer, span, ctx) -> None:
    """Close the request span, with child spans for the queue wait and the model call."""
    import time

    from opentelemetry import trace

    span.set_attribute("scoregate.request_id", ctx.request_id)
    span.set_attribute("http.response.status_code", ctx.status)
    for key, value in (("scoregate.endpoint", ctx.endpoint), ("scoregate.deployment", ctx.deployment),
                       ("scoregate.replica", ctx.replica), ("error.type", ctx.error_code)):
        if value:
            span.set_attribute(key, value)
    to_epoch = time.time_ns() - time.perf_counter_ns()  # perf_counter → wall clock
    parent = trace.set_span_in_context(span)
    if ctx.upstream_started_ns:
        queue_end = ctx.upstream_started_ns
        if ctx.queued_ns:
            tracer.start_span("scoregate.queue", context=parent, start_time=to_epoch + queue_end - ctx.queued_ns
                              ).end(end_time=to_epoch + queue_end)
        upstream_end = ctx.upstream_ended_ns or time.perf_counter_ns()
        tracer.start_span("scoregate.upstream", context=parent, kind=trace.SpanKind.CLIENT,
                          start_time=to_epoch + ctx.upstream_started_ns).end(end_time=to_epoch + upstream_end)
    if ctx.status >= 500:
        span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end()
