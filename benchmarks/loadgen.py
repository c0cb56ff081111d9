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
             "first_error": first_error})


def run_load(kind: str, target: dict, queries: np.ndarray, clients: int, seconds: float = 5.0,
             cpus=None, setup_seconds: float | None = None, write_share: float = 0.0,
             window: float | None = None, during=None) -> dict:
    """Aggregate QPS, p50/p99 (ms) and errors of ``clients`` client processes over a ``seconds`` window.
    ``window``: also QPS and p99 per window of that many seconds (``series``). ``during(start_at)``: called in
    this process while the clients run (e.g. to sample the server's memory)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + (setup_seconds if setup_seconds is not None else 4.0 + 0.25 * clients)
    parts = np.array_split(np.asarray(queries, np.float32), clients)
    procs = [ctx.Process(target=_client, args=(kind, target, parts[c], start_at, seconds, cpus, out, write_share, c),
                         daemon=True) for c in range(clients)]
    for p in procs:
        p.start()
    extra = during(start_at) if during else None
    results = [out.get(timeout=600 + seconds) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    late = time.time() - (start_at + seconds)
    lat = np.concatenate([r["lat"] for r in results]) * 1000 if results else np.zeros(0)
    return {"kind": kind, "clients": clients, "seconds": seconds, "queries": int(lat.size),
            "qps": float(lat.size / seconds), "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "errors": int(sum(r["errors"] for r in results)),
            "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
            "finished_late_s": round(max(0.0, late), 2), "series": _series(results, seconds, window),
            "during": extra}


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
