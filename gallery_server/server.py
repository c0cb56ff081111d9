"""Assembling and running the gallery server: gRPC + health + reflection + auth + TLS + metrics.

    server = GalleryServer(ServerConfig(data_dir="gallery-data", port=0))
    port = server.start()        # listens at once (health NOT_SERVING), loads galleries, then SERVING
    ...
    server.stop()                # NOT_SERVING, drain in-flight calls, flush and close the logs

Threads: faiss runs with ``ServerConfig.omp_threads`` OpenMP threads
(process-wide). The default, 1, was measured (``benchmarks/bench_server.py``
and ``benchmarks/results/server.md``): concurrency comes from the gRPC worker
pool, one request per worker, and faiss releases the GIL, so one OpenMP
thread per search keeps every core busy without oversubscription; more
OpenMP threads only help large batches on an otherwise idle server.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hetsearch.errors import DataError
from hetsearch.v1 import gallery_pb2, gallery_pb2_grpc

from .auth import AuthInterceptor, Tokens
from .logfmt import event
from .metrics import Metrics
from .backend import StoreBase
from .errors import StoreError
from .service import GalleryServicer
from .store import GalleryStore

log = logging.getLogger("hetsearch.gallery_server")

SERVICE_NAME = gallery_pb2.DESCRIPTOR.services_by_name["GalleryService"].full_name
DEFAULT_OMP_THREADS = 1
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def set_faiss_threads(n: int | None) -> int:
    """Set faiss's OpenMP thread count for every thread that uses it; returns the count in effect."""
    import faiss

    from .index import set_omp_threads

    set_omp_threads(n or 0)
    return faiss.omp_get_max_threads()


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


BACKENDS = ("faiss", "milvus")


@dataclass
class ServerConfig:
    data_dir: str | os.PathLike | None  # the faiss backend's data directory
    host: str = "127.0.0.1"
    port: int = 50051
    tokens: Tokens = Tokens()
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_port: int | None = None  # None: no endpoint; 0: any free port
    metrics_host: str | None = None  # default: same as host
    omp_threads: int | None = DEFAULT_OMP_THREADS
    workers: int = 16
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_batch_queries: int = 4096
    max_upsert_vectors: int = 100_000
    max_batch_results: int = 1_000_000  # queries x k of one BatchSearch (~12 MB of ids and scores)
    fsync: bool = True
    auto_snapshot_bytes: int = 1 << 30  # snapshot a gallery in the background once its log passes this
    grace_s: float = 10.0
    drain_delay_s: float = 0.0  # keep answering while NOT_SERVING propagates to load balancers
    backend: str = "faiss"  # "faiss" (galleries in data_dir) or "milvus" (collections in milvus_uri)
    milvus_uri: str = ""
    milvus_token: str | None = field(default=None, repr=False)
    milvus_db: str = ""  # Milvus database ("": its default)
    milvus_timeout_s: float = 10.0  # per Milvus call, within the request's own deadline
    backend_probe_s: float = 5.0  # a remote backend (Milvus) is probed this often; health follows it
    processes: int = 1  # >1: that many server processes share the port over a read-only copy (processes.py)
    reuse_port: bool = False  # SO_REUSEPORT: set by the multi-process supervisor for its workers only


def make_store(c: ServerConfig) -> StoreBase:
    """The store the config asks for; DataError when the options do not fit the backend."""
    if c.backend == "faiss":
        if not c.data_dir:
            raise DataError("the faiss backend needs --data-dir (or use --backend milvus --milvus-uri URI)")
        if c.milvus_uri or c.milvus_token or c.milvus_db:
            raise DataError("--milvus-uri, --milvus-db and --milvus-token-file are for --backend milvus")
        return GalleryStore(c.data_dir, fsync=c.fsync, auto_snapshot_bytes=c.auto_snapshot_bytes)
    if c.backend == "milvus":
        from .milvus_store import MilvusStore

        if c.data_dir:
            raise DataError("--backend milvus keeps galleries in Milvus: give --milvus-uri, not --data-dir")
        return MilvusStore(c.milvus_uri, token=c.milvus_token, timeout_s=c.milvus_timeout_s, db_name=c.milvus_db)
    raise DataError(f"unknown backend {c.backend!r}; choose one of {', '.join(BACKENDS)}")


class GalleryServer:
    """``store``: an already opened and loaded store (a worker of ``serve --processes``); ``read_only``: when
    given, every write is refused with FAILED_PRECONDITION and this message."""

    def __init__(self, config: ServerConfig, store: StoreBase | None = None, read_only: str = ""):
        self.config = config
        self._own_store = store is None
        self.store = make_store(config) if store is None else store
        self.metrics = Metrics(self.store)
        self.health = health.HealthServicer()
        self.servicer = GalleryServicer(self.store, self.metrics, max_batch_queries=config.max_batch_queries,
                                        max_upsert_vectors=config.max_upsert_vectors,
                                        max_batch_results=config.max_batch_results)
        self.servicer.read_only = read_only
        self.grpc_server = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()
        self._prober: threading.Thread | None = None

    def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def _credentials(self):
        c = self.config
        if not (c.tls_cert or c.tls_key):
            return None
        if not (c.tls_cert and c.tls_key):
            raise DataError("TLS needs both --tls-cert and --tls-key")
        try:
            cert, key = Path(c.tls_cert).read_bytes(), Path(c.tls_key).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
        return grpc.ssl_server_credentials([(key, cert)])

    def start(self, load: bool = True) -> int:
        """Bind, start answering (health NOT_SERVING), load the galleries, then SERVING. Returns the port."""
        c = self.config
        if c.backend == "faiss":
            set_faiss_threads(c.omp_threads)
        creds = self._credentials()
        if self._own_store:
            self.store.open()
        options = [
            ("grpc.max_receive_message_length", int(c.max_message_bytes)),
            ("grpc.max_send_message_length", int(c.max_message_bytes)),
            # off unless several processes of one server share the port: a second server on a port in use
            # must fail to start, not silently take half of the connections
            ("grpc.so_reuseport", 1 if c.reuse_port else 0),
        ]
        interceptors = [AuthInterceptor(c.tokens, self.metrics)] if c.tokens.enabled else []
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=c.workers, thread_name_prefix="rpc"),
                             interceptors=interceptors, options=options)
        gallery_pb2_grpc.add_GalleryServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        address = hostport(c.host, c.port)
        try:
            port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        except RuntimeError as exc:
            if self._own_store:
                self.store.close()
            raise DataError(f"cannot listen on {address}: {exc}") from None
        self._set_health(False)
        server.start()
        self.grpc_server, self.port = server, port
        if c.metrics_port is not None:
            self.metrics_port = self.metrics.serve(c.metrics_port, c.metrics_host or c.host)
        log.info(event("listening", address=hostport(c.host, port), backend=self.store.backend, tls=bool(creds),
                       auth=c.tokens.enabled, metrics_port=self.metrics_port if self.metrics_port is not None else "-"))
        if load:
            self.load()
        return port

    def load(self) -> None:
        t0 = time.perf_counter()
        if self._own_store:  # a given store comes loaded
            self.store.load_all()
        self.servicer.serving = True
        self._set_health(True)
        try:
            infos, listed = self.store.list(), True
        except StoreError as exc:  # a Milvus that is down: serving anyway, its calls answer UNAVAILABLE
            log.error(event("store_unavailable", backend=self.store.backend, error=exc))
            infos, listed = [], False
        log.info(event("serving", galleries=len(infos), unavailable=sum(i.state != "READY" for i in infos),
                       vectors=sum(i.vector_count for i in infos), read_only=bool(self.servicer.read_only),
                       pid=os.getpid(), seconds=round(time.perf_counter() - t0, 3)))
        if self.store.backend != "faiss" and self.config.backend_probe_s > 0:
            self._backend_up = listed  # the listing above was the first probe
            self._set_health(self._backend_up)
            self._prober = threading.Thread(target=self._probe_loop, name="backend-probe", daemon=True)
            self._prober.start()

    def _probe(self) -> bool:
        try:
            self.store.list()
            return True
        except StoreError:
            return False

    def _probe_loop(self) -> None:
        """Health follows a remote backend: NOT_SERVING while it cannot be reached (load balancers route away;
        calls still answer UNAVAILABLE naming it), SERVING again once it answers."""
        while not self._stopped.wait(self.config.backend_probe_s):
            up = self._probe()
            if self._stopped.is_set():
                return
            if up != self._backend_up:
                self._backend_up = up
                log.warning(event("backend_health", backend=self.store.backend, up=up,
                                  health="SERVING" if up else "NOT_SERVING"))
                self._set_health(up)

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, wait out in-flight calls (up to ``grace`` s), close the logs (final fsync)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_s if grace is None else grace
        log.info(event("draining", grace_s=grace))
        self._set_health(False)
        if self.config.drain_delay_s:
            time.sleep(self.config.drain_delay_s)
        if self.grpc_server is not None:
            self.grpc_server.stop(grace).wait()
        self.servicer.serving = False
        if self._own_store:  # a given store belongs to whoever loaded it
            self.store.close()
        self.metrics.stop()
        log.info(event("stopped"))

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop(grace=1.0)
