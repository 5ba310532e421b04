"""Prometheus metrics of the model server, exposed on KServe's own ``/metrics`` (the default registry).

Requests are counted by route template (never the raw path, so label values stay few) and status.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("medssr_serving_requests", "HTTP requests answered, by route and status code.", ["route", "status"])
LATENCY = Histogram(
    "medssr_serving_request_seconds",
    "Time from request to response, by route.",
    ["route"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
)
STEP_ROWS = Histogram(
    "medssr_serving_step_rows",
    "Rows (one per sample of a prompt) decoded by each forward pass of the running batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ADMITTED = Histogram(
    "medssr_serving_admitted_prompts", "Prompts joining the running batch at one step.", buckets=(1, 2, 4, 8, 16, 32, 64)
)
QUEUE_WAIT = Histogram(
    "medssr_serving_queue_wait_seconds",
    "Time a prompt waited before it joined the running batch.",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 4, 8, 16, 32),
)
DECODING_ROWS = Gauge("medssr_serving_decoding_rows", "Rows decoding after the latest step.")
CANCELLED_ROWS = Counter("medssr_serving_cancelled_rows", "Decoding rows stopped because their client went away.")
QUEUE_DEPTH = Gauge("medssr_serving_queue_depth", "Prompts waiting to join the running batch.")
GENERATED_TOKENS = Counter("medssr_serving_generated_tokens", "Completion tokens generated.")
PROMPT_TOKENS = Counter("medssr_serving_prompt_tokens", "Prompt tokens processed.")
ABANDONED = Counter("medssr_serving_abandoned", "Queued prompts dropped because their client went away.")
REJECTED = Counter("medssr_serving_rejected", "Requests refused before generation, by reason.", ["reason"])


class RequestMetricsMiddleware:
    """ASGI middleware recording count and latency of every HTTP request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = _route_template(scope)
            REQUESTS.labels(route=route, status=str(status["code"])).inc()
            LATENCY.labels(route=route).observe(time.perf_counter() - started)


def _route_template(scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if path else "unmatched"
