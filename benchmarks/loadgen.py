"""Closed-loop load from separate client processes (no shared GIL), for the gallery server and for in-process faiss.

Each client is its own process (``multiprocessing`` spawn). It connects (a gRPC channel to the server, or its
own copy of the faiss index read from a file), waits for a common start time, then sends one query after the
other for ``seconds``, recording every call's latency and every error. ``run_load`` returns the aggregate
queries/s over the window, p50/p99 over all calls, and the error count. Every process (server, clients) is
pinned to the same CPUs (``cpus``), so the comparison is made on the same cores.

    python -m benchmarks.loadgen --address 127.0.0.1:50051 --gallery bench --space sp1-... --clients 1,4,16,32
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import time

import numpy as np

K = 10


def _pin(cpus):
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))


def _client(kind: str, target: dict, queries: np.ndarray, start_at: float, seconds: float, cpus, out,
            write_share: float = 0.0, client_id: int = 0) -> None:
    """One client process: a closed loop of single-query searches in [start_at, start_at + seconds); with
    ``write_share`` (gRPC only) that share of the calls are one-vector upserts of new ids instead."""
    _pin(cpus)
    os.environ["OMP_NUM_THREADS"] = "1"
    lat, at, errors, first_error = [], [], 0, None
    if kind == "grpc":
        import grpc

        from hetsearch.v1 import gallery_pb2 as pb
        from hetsearch.v1 import gallery_pb2_grpc as pb_grpc

        channel = grpc.insecure_channel(target["address"])
        stub = pb_grpc.GalleryServiceStub(channel)
        params = pb.SearchParams(hnsw_ef_search=target.get("ef_search", 0))
        requests = [pb.SearchRequest(gallery=target["gallery"], space_id=target["space"], k=K,
                                     embedding=q.tolist(), params=params) for q in queries]
        grpc.channel_ready_future(channel).result(timeout=60)
        stub.Search(requests[0], timeout=30)  # connected and warm

        wrng = np.random.default_rng(client_id)

        def call(i):
            if write_share and wrng.random() < write_share:
                vec = queries[i % len(queries)]
                stub.Upsert(pb.UpsertRequest(gallery=target["gallery"], space_id=target["space"],
                                             ids=[10**12 + client_id * 10**9 + i], vectors=vec.tolist()), timeout=30)
            else:
                stub.Search(requests[i % len(requests)], timeout=30)
    else:
        import faiss

        faiss.omp_set_num_threads(1)
        index = faiss.read_index(target["index_path"])
        sp = None
        if target.get("ef_search") and isinstance(index, faiss.IndexHNSW):
            sp = faiss.SearchParametersHNSW()
            sp.efSearch = int(target["ef_search"])
        rows = [q[None].copy() for q in queries]
        index.search(rows[0], K, params=sp)

        def call(i):
            index.search(rows[i % len(rows)], K, params=sp)
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    i = 0
    cpu0 = time.process_time()  # every thread of this process (gRPC's own included)
    while True:
        t0 = time.perf_counter()
        if time.time() >= end:
            break
        try:
            call(i)
        except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {str(exc)[:200]}"
        lat.append(time.perf_counter() - t0)
        at.append(time.time() - start_at)
        i += 1
    out.put({"lat": np.asarray(lat, np.float32), "at": np.asarray(at, np.float32), "errors": errors,
             "first_error": first_error, "cpu_s": time.process_time() - cpu0})


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) used so far by process ``pid`` and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return total


def _sample_cpu(pid: int, start_at: float, seconds: float, out: dict) -> None:
    """``out["cpu_s"]``: CPU seconds ``pid`` (and its children) used during [start_at, start_at + seconds]."""
    time.sleep(max(0.0, start_at - time.time()))
    c0 = proc_cpu_s(pid)
    time.sleep(max(0.0, start_at + seconds - time.time()))
    out["cpu_s"] = proc_cpu_s(pid) - c0


def run_load(kind: str, target: dict, queries: np.ndarray, clients: int, seconds: float = 5.0,
             cpus=None, setup_seconds: float | None = None, write_share: float = 0.0,
             window: float | None = None, during=None, server_pid: int | None = None) -> dict:
    """Aggregate QPS, p50/p99 (ms) and errors of ``clients`` client processes over a ``seconds`` window.
    ``window``: also QPS and p99 per window of that many seconds (``series``). ``during(start_at)``: called in
    this process while the clients run (e.g. to sample the server's memory). CPU accounting: the clients' CPU
    seconds within the window (``client_cpu_us_per_query``) and, given ``server_pid``, the server's
    (``server_cpu_us_per_query``, its worker processes included), with the load average at the end."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + (setup_seconds if setup_seconds is not None else 4.0 + 0.25 * clients)
    parts = np.array_split(np.asarray(queries, np.float32), clients)
    procs = [ctx.Process(target=_client, args=(kind, target, parts[c], start_at, seconds, cpus, out, write_share, c),
                         daemon=True) for c in range(clients)]
    for p in procs:
        p.start()
    server_cpu: dict = {}
    sampler = None
    if server_pid:
        sampler = threading.Thread(target=_sample_cpu, args=(server_pid, start_at, seconds, server_cpu), daemon=True)
        sampler.start()
    extra = during(start_at) if during else None
    results = [out.get(timeout=600 + seconds) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    if sampler is not None:
        sampler.join(timeout=60)
    late = time.time() - (start_at + seconds)
    lat = np.concatenate([r["lat"] for r in results]) * 1000 if results else np.zeros(0)
    return {"kind": kind, "clients": clients, "seconds": seconds, "queries": int(lat.size),
            "qps": float(lat.size / seconds), "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "errors": int(sum(r["errors"] for r in results)),
            "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
            "finished_late_s": round(max(0.0, late), 2), "series": _series(results, seconds, window),
            "during": extra, **_cpu(results, server_cpu.get("cpu_s"), lat.size)}


def _cpu(results, server_cpu_s: float | None, queries: int) -> dict:
    client = float(sum(r["cpu_s"] for r in results))
    per = (lambda s: 1e6 * s / queries if queries and s is not None else None)
    return {"client_cpu_s": client, "client_cpu_us_per_query": per(client), "server_cpu_s": server_cpu_s,
            "server_cpu_us_per_query": per(server_cpu_s), "loadavg_1m": os.getloadavg()[0]}


def run_h2load(address: str, request: bytes, response_bytes: int, clients: int, seconds: float = 5.0, cpus=None,
               server_pid: int | None = None, method: str = "/hetsearch.v1.GalleryService/Search") -> dict | None:
    """The same closed loop from nghttp2's ``h2load`` (one C process, ``clients`` HTTP/2 connections, one call in
    flight on each) instead of Python client processes: what the server does when its clients cost little CPU.
    Every call sends the one serialized ``request`` (h2load sends a single body), so the server searches the same
    query each time. h2load cannot read gRPC's status trailer: a call counts as an error when its HTTP status is
    not 200 or when the responses' total size is short of ``response_bytes`` each (an error answer has no body).
    None when h2load is not installed (Debian: ``apt-get install nghttp2-client``)."""
    exe = shutil.which("h2load")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body, log_path = os.path.join(tmp, "body"), os.path.join(tmp, "log")
        with open(body, "wb") as f:
            f.write(b"\0" + len(request).to_bytes(4, "big") + request)  # one uncompressed gRPC message
        cmd = [exe, "-D", f"{round(seconds * 1000)}ms", "--warm-up-time", "1", "-c", str(clients), "-m", "1",
               "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", log_path,
               f"http://{address}{method}"]
        server_cpu: dict = {}
        sampler = None
        window = max(0.1, seconds - 0.5)  # inside the measured part, after the 1 s warm-up
        if server_pid:
            sampler = threading.Thread(target=_sample_cpu, args=(server_pid, time.time() + 1.25, window, server_cpu),
                                       daemon=True)
            sampler.start()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120,
                              preexec_fn=(lambda: _pin(cpus)) if cpus else None)
        out = done.stdout
        if done.returncode or not os.path.exists(log_path):
            raise RuntimeError(f"h2load failed ({done.returncode}): {(done.stderr or out)[-500:]}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if sampler is not None:
            sampler.join(timeout=60)
        rows = np.loadtxt(log_path, usecols=(1, 2), ndmin=2) if os.path.getsize(log_path) else np.zeros((0, 2))
    lat = rows[:, 1] / 1000.0  # ms
    data = re.search(r"\((\d+)\) data", out)
    failed = int(re.search(r"(\d+) failed", out).group(1)) + int(re.search(r"(\d+) errored", out).group(1))
    short = max(0, len(rows) * response_bytes - int(data.group(1))) // max(1, response_bytes) if data else 0
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    n = len(rows)
    sc = server_cpu.get("cpu_s")
    return {"kind": "h2load", "clients": clients, "seconds": seconds, "queries": n, "qps": n / seconds,
            "p50_ms": float(np.percentile(lat, 50)) if n else None,
            "p99_ms": float(np.percentile(lat, 99)) if n else None,
            "errors": int((rows[:, 0] != 200).sum()) + failed + short, "first_error": None,
            "client_cpu_s": client_cpu, "client_cpu_us_per_query": 1e6 * client_cpu / n if n else None,
            "server_cpu_s": sc, "server_cpu_us_per_query": 1e6 * sc / (n * window / seconds)
            if n and sc is not None else None, "loadavg_1m": os.getloadavg()[0]}


def _series(results, seconds: float, window: float | None) -> list[dict] | None:
    if not window or not results:
        return None
    lat = np.concatenate([r["lat"] for r in results]) * 1000
    at = np.concatenate([r["at"] for r in results])
    rows = []
    for w0 in np.arange(0.0, seconds, window):
        sel = (at >= w0) & (at < w0 + window)
        rows.append({"t_s": float(w0 + window), "qps": float(sel.sum() / window),
                     "p99_ms": float(np.percentile(lat[sel], 99)) if sel.any() else None})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", required=True)
    p.add_argument("--gallery", required=True)
    p.add_argument("--space", required=True)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clients", default="1,4,16,32")
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((4096, args.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for c in (int(x) for x in args.clients.split(",")):
        r = run_load("grpc", {"address": args.address, "gallery": args.gallery, "space": args.space}, q, c,
                     args.seconds)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
