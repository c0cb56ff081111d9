"""Prometheus metrics of one server (its own registry, so several servers can share a process)."""

from __future__ import annotations

import logging
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .errors import StoreError
from .logfmt import event

log = logging.getLogger("hetsearch.gallery_server.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - scrapes are not worth a log line each
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _GalleryCollector:
    """Per-gallery gauges read live from the store at scrape time (dropped galleries vanish)."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        vectors = GaugeMetricFamily("hetsearch_gallery_vectors", "Live vectors per gallery", labels=["gallery"])
        deleted = GaugeMetricFamily("hetsearch_gallery_deleted_vectors",
                                    "Deleted vectors awaiting compaction", labels=["gallery"])
        ready = GaugeMetricFamily("hetsearch_gallery_ready", "1 if the gallery is serving", labels=["gallery"])
        wal_bytes = GaugeMetricFamily("hetsearch_wal_bytes", "Write-ahead log bytes since the last snapshot",
                                      labels=["gallery"])
        wal_lag = GaugeMetricFamily("hetsearch_wal_lag_records",
                                    "Log records not yet covered by a snapshot (replayed on restart)",
                                    labels=["gallery"])
        trunc = CounterMetricFamily("hetsearch_wal_truncations",
                                    "Torn or corrupt log tails cut off at load", labels=["gallery"])
        try:
            infos = self.store.list()
        except StoreError as exc:  # e.g. Milvus is down: the request metrics still scrape, the gauges say so
            log.warning(event("metrics_gallery_list_failed", error=exc))
            infos = []
            backend_up = 0.0
        else:
            backend_up = 1.0
        up = GaugeMetricFamily("hetsearch_backend_up", "1 if the store answered the gallery listing at this scrape")
        up.add_metric([], backend_up)
        for info in infos:
            name = info.spec.name
            vectors.add_metric([name], info.vector_count)
            deleted.add_metric([name], info.deleted_count)
            ready.add_metric([name], 1.0 if info.state == "READY" else 0.0)
            wal_bytes.add_metric([name], info.wal_bytes)
            wal_lag.add_metric([name], info.wal_records)
            trunc.add_metric([name], info.truncations)
        yield from (up, vectors, deleted, ready, wal_bytes, wal_lag, trunc)


class Metrics:
    def __init__(self, store=None):
        self.registry = CollectorRegistry()
        self.requests = Counter("hetsearch_requests", "gRPC requests by method and status code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("hetsearch_request_seconds", "gRPC request latency by method and status code",
                                 ["method", "code"], buckets=LATENCY_BUCKETS, registry=self.registry)
        if store is not None:
            self.registry.register(_GalleryCollector(store))
        self._http = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method, code).observe(seconds)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics HTTP endpoint; returns the bound port (``port`` 0 picks one)."""
        cls = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
        httpd = make_server(host.strip("[]"), port, make_wsgi_app(self.registry), cls, handler_class=_QuietHandler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name="metrics-http").start()
        self._http = httpd
        return httpd.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
