"""Prometheus metrics of one service instance (own registry, so several apps can live in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Every metric the service exports, registered in `self.registry`."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("pcclip_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=r)
        self.request_latency = Histogram(
            "pcclip_request_seconds", "HTTP request latency by route", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "pcclip_queue_wait_seconds", "time an item waits in a tower's batch queue", ["tower"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("pcclip_batch_size", "items per tower call", ["tower"], buckets=_BATCH_BUCKETS, registry=r)
        self.inference = Histogram(
            "pcclip_inference_seconds", "tower inference time per batch", ["tower"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.preprocess = Histogram(
            "pcclip_preprocess_seconds",
            "image decoding + preprocessing (image) and tokenization (text) per request",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("pcclip_queue_items", "items waiting per tower", ["tower"], registry=r)
        self.rejected = Counter("pcclip_queue_rejected", "items refused because a queue was full", ["tower"], registry=r)
        self.text_cache = Counter("pcclip_text_cache", "text-embedding cache lookups", ["result"], registry=r)
        self.store_lookups = Counter("pcclip_store_lookups", "class store lookups", ["result"], registry=r)
        self.store_writes = Counter("pcclip_store_writes", "class store writes", ["op", "result"], registry=r)
        self.collection_lookups = Counter("pcclip_collection_lookups", "collection reads by how the replica's copy was found", ["result"], registry=r)
        self.collection_writes = Counter("pcclip_collection_writes", "collection writes (items for add/remove)", ["op", "result"], registry=r)
        self.collection_search = Histogram(
            "pcclip_collection_search_seconds", "one scoring pass over a collection (int8 ring scan: from joining it to the hits)", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.collection_queries_per_pass = Histogram(
            "pcclip_collection_queries_per_pass", "queries scored together in one pass (int8 ring scan: in one segment step)", buckets=_BATCH_BUCKETS, registry=r
        )
        self.cancelled = Counter("pcclip_requests_cancelled", "requests cancelled because the client went away", registry=r)
        self.redis_up = Gauge("pcclip_redis_up", "1 when Redis answers, 0 when it does not", registry=r)
        self.model_info = Info("pcclip_model", "the model being served", registry=r)
        self.model_loaded = Gauge("pcclip_model_loaded", "1 once the model is loaded", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
