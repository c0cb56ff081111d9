"""``serve --processes N``: N server processes answer on one port over a read-only copy of the galleries.

Why: one Python process runs every request's gRPC machinery under one GIL, so on several cores a single
process saturates while cores idle (``benchmarks/results/server.md``: measured per query and per process).

How: the supervisor (the ``serve`` process) opens and loads the data directory, keeping its lock so that no
writer opens it meanwhile, reserves the port with ``SO_REUSEPORT`` (bound, not listening), and forks the
workers *before any gRPC object exists* (gRPC's core is not fork-safe once started; this is the pattern of gRPC's
own multiprocessing example). Each worker builds its own gRPC server on that port with ``grpc.so_reuseport``, and
the kernel spreads new connections over the workers. The faiss indexes are shared copy-on-write: N workers do
not hold N copies.

Writes: every worker refuses them with ``FAILED_PRECONDITION`` (:class:`.errors.ReadOnly`): a client's
connection lands on any worker, and the workers do not share writes. Write with a single-process server (or
``hetsearch index``), then restart this one to serve the new data.

The port file is written once every worker serves. A worker that dies later is replaced (forked again from the
loaded supervisor), at most ``MAX_RESPAWNS`` times a minute; one that fails before serving stops the server.
SIGTERM / SIGINT to the supervisor: every worker goes NOT_SERVING and drains (``--grace``). A worker whose
supervisor is gone stops by itself.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import replace

from hetsearch.errors import DataError

from .logfmt import event
from .server import GalleryServer, ServerConfig, hostport, make_store, set_faiss_threads

log = logging.getLogger("hetsearch.gallery_server.processes")

STARTUP_TIMEOUT_S = 300.0
MAX_RESPAWNS = 5  # per minute; beyond that something is wrong with every worker, not one of them

READ_ONLY = ("this server runs {n} processes over a read-only copy of its galleries (serve --processes {n}), "
             "so writes are refused; write through a single-process server (serve without --processes) or "
             "hetsearch index, then restart this one")


def check_config(c: ServerConfig) -> None:
    """DataError for settings that several processes cannot honour."""
    if c.processes < 1:
        raise DataError(f"--processes must be at least 1, got {c.processes}")
    if c.backend != "faiss":
        raise DataError("--processes is for the faiss backend (galleries in --data-dir); a Milvus-backed server "
                        "holds no index of its own to share")
    for path in (c.tls_cert, c.tls_key):  # read by every worker after the fork: fail here, once, instead
        if path and not os.access(path, os.R_OK):
            raise DataError(f"cannot read TLS file {path}")
    if c.metrics_port is not None:
        raise DataError("--metrics-port cannot be combined with --processes above 1: each process counts only its "
                        "own requests, so one endpoint would report a share of them")


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Refuse a port something already listens on, then hold it (SO_REUSEPORT, bound, not listening) so that
    port 0 resolves once and the workers' listeners join it. (socket, port)."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise DataError(f"cannot listen on {hostport(host, port)}: {exc.strerror}") from None
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine, a listener is not
        probe.bind(addr)
        port = probe.getsockname()[1]
    except OSError as exc:
        raise DataError(f"cannot listen on {hostport(host, port)}: {exc.strerror}") from None
    finally:
        probe.close()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((addr[0], port, *addr[2:]))
    return sock, port


def _worker(config: ServerConfig, store, read_only: str, slot: int, ready_fd: int, supervisor: int) -> int:
    """One forked worker: its own gRPC server on the shared port; returns its exit code."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = GalleryServer(config, store=store, read_only=read_only)
    server.start(load=False)
    server.load()
    log.info(event("worker_serving", worker=slot, pid=os.getpid()))
    os.write(ready_fd, b"r")
    os.close(ready_fd)
    while not stop.wait(1.0):
        if os.getppid() != supervisor:
            log.error(event("supervisor_gone", worker=slot, pid=os.getpid()))
            break
    server.stop()
    return 0


class Supervisor:
    def __init__(self, config: ServerConfig, stop: threading.Event):
        check_config(config)
        self.config, self.stop = config, stop
        self.workers: dict[int, int] = {}  # pid -> slot
        self.respawns: deque[float] = deque()

    def _fork(self, slot: int) -> int:
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                os.close(self.ready_r)
                code = _worker(self.worker_config, self.store, self.read_only, slot, self.ready_w, self.pid)
            except BaseException as exc:  # noqa: BLE001 - logged, then the exit code tells the supervisor
                log.exception(event("worker_failed", worker=slot, error=repr(exc)))
            finally:
                os._exit(code)
        self.workers[pid] = slot
        return pid

    def _reap(self) -> list[tuple[int, int, int]]:
        """(pid, slot, exit code) of every worker that has exited."""
        out = []
        while self.workers:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in self.workers:
                out.append((pid, self.workers.pop(pid), os.waitstatus_to_exitcode(status)))
        return out

    def _wait_ready(self) -> bool:
        """True once every worker serves; False if asked to stop first; DataError if one exits first."""
        deadline, ready = time.monotonic() + STARTUP_TIMEOUT_S, 0
        while ready < self.config.processes:
            if self.stop.is_set():
                return False
            if select.select([self.ready_r], [], [], 0.2)[0]:
                ready += len(os.read(self.ready_r, 64))
            for _, slot, code in self._reap():
                raise DataError(f"server process {slot} exited with code {code} before serving (see its log above)")
            if time.monotonic() > deadline:
                raise DataError(f"{self.config.processes - ready} server process(es) not serving after "
                                f"{STARTUP_TIMEOUT_S:.0f} s")
        return True

    def _replace_dead(self) -> None:
        for pid, slot, code in self._reap():
            now = time.monotonic()
            while self.respawns and now - self.respawns[0] > 60:
                self.respawns.popleft()
            if len(self.respawns) >= MAX_RESPAWNS:
                raise DataError(f"server process {slot} exited with code {code}, the {MAX_RESPAWNS + 1}th within a "
                                "minute; stopping (see the log above)")
            self.respawns.append(now)
            new = self._fork(slot)
            log.error(event("worker_replaced", worker=slot, pid=pid, code=code, new_pid=new))

    def _terminate(self) -> None:
        for pid in self.workers:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace_s + 5.0
        while self.workers and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid, slot in list(self.workers.items()):
            log.error(event("worker_killed", worker=slot, pid=pid, reason="still draining after the grace period"))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self.workers.clear()

    def run(self, on_serving) -> int:
        """Load, fork the workers, call ``on_serving(port)`` once all serve, replace dead ones until ``stop``."""
        c = self.config
        set_faiss_threads(c.omp_threads)  # before loading: the workers inherit a faiss that never went parallel
        self.store = make_store(c)
        self.store.open()
        sock = None
        self.ready_r, self.ready_w = os.pipe()
        try:
            self.store.load_all()
            sock, port = reserve_port(c.host, c.port)
            self.worker_config = replace(c, port=port, reuse_port=True)
            self.read_only = READ_ONLY.format(n=c.processes)
            self.pid = os.getpid()
            for slot in range(c.processes):
                self._fork(slot)
            if not self._wait_ready():
                return 0
            log.info(event("serving_processes", address=hostport(c.host, port), processes=c.processes,
                           pids=",".join(map(str, self.workers)), read_only=True))
            on_serving(port)
            while not self.stop.wait(0.5):
                while select.select([self.ready_r], [], [], 0)[0]:  # replaced workers' readiness
                    os.read(self.ready_r, 64)
                self._replace_dead()
            return 0
        finally:
            self._terminate()
            for fd in (self.ready_r, self.ready_w):
                os.close(fd)
            if sock is not None:
                sock.close()
            self.store.close()
            log.info(event("stopped", processes=c.processes))
