"""GET /metrics: the server's counters in Prometheus' text format, through the prometheus-client library.

One registry per server (not the library's global one), so that several servers in one process (tests, benchmarks)
keep their own counts. The engine thread and the event loop both write to it; the library's metrics are thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# seconds; the first token includes waiting for a row and the prompt's prefill, so its buckets reach further
FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROUTES = ("/v1/completions", "/v1/models", "/health", "/metrics", "/", "/docs", "/openapi.json")


class Metrics:
    """What /metrics shows; the engine and the HTTP side record into it."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "gpt2_http_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=registry
        )
        self.prompt_tokens = Counter("gpt2_prompt_tokens", "prompt tokens admitted for decoding", registry=registry)
        self.generation_tokens = Counter("gpt2_generation_tokens", "tokens generated", registry=registry)
        self.finished = Counter("gpt2_rows_finished", "completions (rows) ended, by finish reason", ["reason"],
                                registry=registry)  # fmt: skip
        self.first_token = Histogram("gpt2_time_to_first_token_seconds", "from a request's arrival to its first token",
                                     buckets=FIRST_TOKEN_BUCKETS, registry=registry)  # fmt: skip
        self.per_token = Histogram("gpt2_time_per_output_token_seconds", "between a row's successive tokens",
                                   buckets=TOKEN_BUCKETS, registry=registry)  # fmt: skip
        self.prefix_queried = Counter("gpt2_prefix_cache_queried_tokens", "prompt tokens looked up in the prefix cache",
                                      registry=registry)  # fmt: skip
        self.prefix_hits = Counter("gpt2_prefix_cache_hit_tokens", "prompt tokens whose keys and values were reused",
                                   registry=registry)  # fmt: skip
        self.active = Gauge("gpt2_rows_active", "rows decoding", registry=registry)
        self.queued = Gauge("gpt2_rows_queued", "rows waiting for a place or being prefilled", registry=registry)

    def watch(self, active: Callable[[], float], queued: Callable[[], float]) -> None:
        """Read the two gauges from the engine whenever /metrics is scraped."""
        self.active.set_function(active)
        self.queued.set_function(queued)

    def request(self, path: str, status: int) -> None:
        """Count a response; paths outside the routes are one label, so that a scan cannot grow the series."""
        route = "/v1/models/{id}" if path.startswith("/v1/models/") else path if path in ROUTES else "other"
        self.requests.labels(route, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
