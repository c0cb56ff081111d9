"""Scale benchmark: indexing throughput on Ray Data vs in-process, and search on the faiss vs the Milvus backend.

    python -m benchmarks.bench_scale                        # both parts: 10,000 images; 100,000 vectors
    python -m benchmarks.bench_scale --only search          # the search part only (keeps the recorded indexing)
    python -m benchmarks.bench_scale --only indexing --gallery runs/gallery --threads 1
    python -m benchmarks.bench_scale --quick                # smoke run: 2,000 images once; 20,000 vectors

Indexing. The same images, embedded by the same gallery model, are written through one gallery server (a separate
process on loopback, ``python -m hetsearch.gallery_server serve``) by each engine in turn: the in-process engine
(``index_gallery``, torch with ``--threads`` threads, and with as many threads as the largest Ray pool) and the
Ray engine (``index_gallery_ray``) with 1 and 2 actors of ``--threads`` threads each. The configurations alternate
run by run (reversed every other round) so that they see the same background load. Every number is the wall time
of one whole indexing call (build the dataset, embed, upsert, snapshot) over the image count; for Ray, a local
session started once beforehand (its start time is reported apart) and the time until the first batch is written
(actors started, model loaded) are reported too. Without ``--gallery`` a throwaway ``resnet-gallery`` is trained
for one short epoch: throughput does not depend on accuracy.

Search (``search_comparison``). ``--vectors`` dim-128 clustered unit vectors (``bench_server.make_data``) go into
an ``HNSW32`` gallery on two gallery servers running at once, each a ``serve`` subprocess on loopback: one on the
faiss backend, one on the Milvus backend talking to a ``milvus-lite server --host 127.0.0.1`` subprocess. Both
are loaded through the gRPC API (Upsert batches, then Snapshot; on Milvus also the wait until Milvus reports every
row indexed), which is timed. Then the same queries go to both, alternating backend round by round: sequential
single-query latency (p50/p99) and BatchSearch throughput and recall@10 against exact search (faiss Flat inner
product) at the default efSearch and at ``--high-ef``; then closed-loop load from 1 and more client processes
(``benchmarks/loadgen.py``: QPS, p50/p99, errors). The index each side actually built is recorded (Milvus Lite
drops the HNSW build parameters; the server says so).

Writes ``benchmarks/results/scale.json`` and ``scale.md``; a part not run is carried over from the existing
``scale.json`` and marked as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hetsearch.report import format_table, markdown_table, write_json

REPO = Path(__file__).resolve().parent.parent


def gallery_checkpoint(args, work: Path):
    from hetsearch.cmpnas.checkpoint import load_checkpoint

    if args.gallery:
        return load_checkpoint(args.gallery, expect_kind="gallery")
    from hetsearch.cmpnas.data import load_data
    from hetsearch.cmpnas.train import TrainConfig, train_gallery

    print(f"training a throwaway {args.arch} (1 epoch on 2,000 images) for its cost, not its accuracy", flush=True)
    cfg = TrainConfig(epochs=1, max_train_samples=2000, max_val_samples=200, threads=args.threads)
    return train_gallery(load_data("fashion-mnist", "train"), args.arch, work / "gallery", cfg, progress=False)


def configurations(workers: list[int], threads: int) -> list[dict]:
    confs = [{"engine": "in-process", "workers": None, "threads": threads}]
    if max(workers) * threads != threads:
        confs.append({"engine": "in-process", "workers": None, "threads": max(workers) * threads})
    confs += [{"engine": "ray", "workers": w, "threads": threads} for w in workers]
    return confs


def label(c: dict) -> str:
    if c["engine"] == "ray":
        return f"ray, {c['workers']} worker{'s' if c['workers'] > 1 else ''} x {c['threads']} thread"
    return f"in-process, {c['threads']} thread{'s' if c['threads'] > 1 else ''}"


def run_once(c: dict, ck, data, address: str, batch: int) -> dict:
    """One whole indexing call into a fresh gallery; wall seconds and the engine's own summary."""
    import torch

    from hetsearch.gallery_server.indexer import index_gallery
    from hetsearch.gallery_server.ray_index import index_gallery_ray

    name = "bench-" + ("ray%d" % c["workers"] if c["engine"] == "ray" else "inproc%d" % c["threads"])
    t0 = time.perf_counter()
    if c["engine"] == "ray":
        res = index_gallery_ray(ck, data, server=address, name=name, batch_size=batch, workers=c["workers"],
                                threads=c["threads"], progress=False, replace=True)
    else:
        torch.set_num_threads(c["threads"])
        res = index_gallery(ck, data, server=address, name=name, batch_size=batch, progress=False, replace=True)
    secs = time.perf_counter() - t0
    if res["vectors"] != len(data):
        raise RuntimeError(f"{label(c)} wrote {res['vectors']} of {len(data)} vectors")
    first = res.get("first_write_seconds")
    rest = len(data) - min(batch, len(data))  # images written after the first batch
    steady = rest / (res["seconds"] - first) if first is not None and rest and res["seconds"] > first else None
    return {"seconds": secs, "first_write_s": first, "after_first_write_per_s": steady}



SEARCH_INDEX = "HNSW32"
BACKENDS = ("faiss", "milvus-lite")


class GrpcSearch:
    """One backend's gallery server seen through the SDK, at one efSearch (0: the gallery's default), in the
    shape ``bench_server.compare`` measures."""

    def __init__(self, name: str, client, ef: int, k: int):
        self.name, self.client, self.ef, self.k = name, client, ef, k

    def single(self, q, worker: int = 0):
        self.client.search(q, self.k, ef_search=self.ef)

    def batch(self, qs):
        hits = self.client.search(qs, self.k, ef_search=self.ef)
        return np.array([[h.id for h in r] + [-1] * (self.k - len(r)) for r in hits])


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (Linux /proc), MB; None where that is not readable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stop_process(proc, what: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: it did not drain in time
        print(f"{what} (pid {proc.pid}) did not stop within 60 s of SIGTERM; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def milvus_index_report(uri: str, collection: str, rows: int, wait_s: float) -> tuple[dict, float]:
    """Wait until Milvus reports ``rows`` rows indexed (at most ``wait_s``); (its describe_index, seconds waited)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, dedicated=True)
    try:
        name = client.list_indexes(collection)[0]
        t0 = time.perf_counter()
        while True:
            d = client.describe_index(collection, name)
            if int(d.get("indexed_rows", 0)) >= rows or time.perf_counter() - t0 > wait_s:
                return d, time.perf_counter() - t0
            time.sleep(0.5)
    finally:
        client.close()


def search_comparison(args, work: Path) -> dict:
    """SEARCH SIDE (issue 12): the faiss backend vs the Milvus backend (Milvus Lite), side by side in this run.

    Both servers serve at once; every measurement alternates between them. Returns the rows for scale.json."""
    import faiss

    from hetsearch.gallery_server.lite_process import LiteServer, free_port
    from hetsearch.sdk.client import GalleryClient
    from hetsearch.space import space_id_from_digest

    from .bench_server import DIM, EF_SEARCH, K, compare, make_data, start_server
    from .loadgen import run_load

    loads = {"start": os.getloadavg()}
    x, q = make_data(args.vectors, args.queries, seed=args.vectors)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(x)
    _, exact_ids = exact.search(q, K)
    del exact
    space = space_id_from_digest("0" * 64, DIM)
    probe = faiss.index_factory(DIM, SEARCH_INDEX, faiss.METRIC_INNER_PRODUCT)  # what the faiss server builds
    faiss_built = {"index_type": type(probe).__name__, "M": int(probe.hnsw.nb_neighbors(1)),
                   "efConstruction": int(probe.hnsw.efConstruction), "default_ef_search": EF_SEARCH}
    del probe
    ef_levels = [0, args.high_ef]
    client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    lite, procs, clients = None, {}, {}
    try:
        lite = LiteServer(work / "milvus" / "milvus-data", free_port()).start(timeout=180)
        (work / "faiss").mkdir()
        (work / "milvus-server").mkdir()
        starts = {}
        procs["faiss"], port_f, starts["faiss"] = start_server(work / "faiss" / "data", threads=None)
        procs["milvus-lite"], port_m, starts["milvus-lite"] = start_server(
            work / "milvus-server" / "none", threads=None,
            store_args=["--backend", "milvus", "--milvus-uri", lite.uri, "--milvus-timeout", str(args.milvus_timeout)])
        ports = {"faiss": port_f, "milvus-lite": port_m}
        for b in BACKENDS:  # no retries: an error must show, not be papered over
            clients[b] = GalleryClient(f"127.0.0.1:{ports[b]}", gallery="bench", space_id=space, timeout=600,
                                       retries=0, batch_size=args.batch)

        ingest, built = [], {}
        for b in BACKENDS:
            c = clients[b]
            c.create_gallery("bench", space, index_factory=SEARCH_INDEX)
            t0 = time.perf_counter()
            for s in range(0, len(x), args.upsert_batch):
                c.upsert(np.arange(s, min(len(x), s + args.upsert_batch)), x[s: s + args.upsert_batch])
            upsert_s = time.perf_counter() - t0
            snap = c.snapshot("bench")[0]
            snapshot_s = time.perf_counter() - t0 - upsert_s
            wait_s, described = 0.0, None
            if b == "milvus-lite":
                described, wait_s = milvus_index_report(lite.uri, "hs_bench", len(x), args.index_wait)
            info = c.describe("bench")
            if info.vector_count != len(x):
                raise RuntimeError(f"{b}: the gallery holds {info.vector_count} vectors after loading {len(x)}")
            total = upsert_s + snapshot_s + wait_s
            ingest.append({"backend": b, "vectors": len(x), "upsert_batch": args.upsert_batch,
                           "upsert_s": upsert_s, "upsert_vectors_per_s": len(x) / upsert_s,
                           "snapshot_s": snapshot_s, "index_wait_s": wait_s if b == "milvus-lite" else None,
                           "total_s": total, "vectors_per_s": len(x) / total, "server_start_s": starts[b],
                           "snapshot_vector_count": snap["vector_count"]})
            built[b] = {"asked": SEARCH_INDEX, "describe_index_factory": info.index_factory,
                        "status_message": info.status_message, "default_ef_search": info.ef_search or EF_SEARCH}
            if b == "faiss":
                built[b]["built"] = faiss_built
            else:
                built[b]["built"] = {k: v for k, v in described.items()}
                if int(described.get("indexed_rows", 0)) < len(x):
                    print(f"WARNING: Milvus reports {described.get('indexed_rows')} of {len(x)} rows indexed after "
                          f"{wait_s:.0f} s; the rest is searched without the index", file=sys.stderr)
            loads[f"after {b} ingest"] = os.getloadavg()
            print(format_table(ingest[-1:], ["backend", "vectors", "upsert_s", "upsert_vectors_per_s", "snapshot_s",
                                             "index_wait_s", "vectors_per_s"], digits=2), flush=True)
        memory = {"faiss server": rss_mb(procs["faiss"].pid), "milvus-backend server": rss_mb(procs["milvus-lite"].pid),
                  "milvus-lite server": rss_mb(lite.proc.pid)}

        warmup = {}  # one BatchSearch pass over the queries at each efSearch, unmeasured: Milvus settles after its
        for b in BACKENDS:  # flush (the first searches after loading were ~3x slower in a trial run), faiss pages in
            t0 = time.perf_counter()
            for ef in ef_levels:
                GrpcSearch(b, clients[b], ef, K).batch(q)
            warmup[b] = time.perf_counter() - t0
        rows = []
        for ef in ef_levels:
            modes = [GrpcSearch(b, clients[b], ef, K) for b in BACKENDS]
            res = compare(modes, q, exact_ids, args.single, args.batch, rounds=args.rounds)
            for b in BACKENDS:
                rows.append({"backend": b, "ef_search": ef or EF_SEARCH, "default_knobs": ef == 0, **res[b]})
            loads[f"after sequential ef {ef or EF_SEARCH}"] = os.getloadavg()
            print(format_table(rows[-2:], ["backend", "ef_search", "p50_ms", "p99_ms", "batch_qps", "recall@10"],
                               digits=3), flush=True)

        conc = []
        for ef in ([0] if args.conc_default_only else ef_levels):
            for i, n in enumerate(client_counts):
                for b in (BACKENDS if i % 2 == 0 else BACKENDS[::-1]):
                    r = run_load("grpc", {"address": f"127.0.0.1:{ports[b]}", "gallery": "bench", "space": space,
                                          "ef_search": ef}, q, n, args.seconds)
                    conc.append({"backend": b, "ef_search": ef or EF_SEARCH, "clients": n, "qps": r["qps"],
                                 "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "queries": r["queries"],
                                 "errors": r["errors"], "first_error": r["first_error"],
                                 "finished_late_s": r["finished_late_s"]})
                    print(format_table(conc[-1:], ["backend", "ef_search", "clients", "qps", "p50_ms", "p99_ms",
                                                   "errors"], digits=3), flush=True)
            loads[f"after concurrency ef {ef or EF_SEARCH}"] = os.getloadavg()
        for b in BACKENDS:
            clients[b].drop("bench")
    finally:
        for c in clients.values():
            c.close()
        for b, proc in procs.items():
            stop_process(proc, f"the {b} gallery server")
        if lite is not None:
            lite.stop()
    import grpc
    import pymilvus

    env = {"cpus": os.cpu_count(), "python": platform.python_version(), "faiss": faiss.__version__,
           "pymilvus": pymilvus.__version__, "milvus_lite": _version("milvus-lite"), "grpc": grpc.__version__,
           "platform": platform.platform(terse=True), "dim": DIM, "k": K, "vectors": args.vectors,
           "queries": args.queries, "single_queries": args.single, "rounds": args.rounds, "batch": args.batch,
           "upsert_batch": args.upsert_batch, "client_processes": client_counts, "seconds_per_level": args.seconds,
           "milvus_timeout_s": args.milvus_timeout, "load_average": {k: list(v) for k, v in loads.items()},
           "rss_mb_after_ingest": memory, "warmup_s": warmup}
    return {"command": search_command(args), "env": env, "ingest": ingest, "indexes": built, "rows": rows,
            "concurrency": conc}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def search_command(args) -> str:
    return (f"python -m benchmarks.bench_scale --only search --vectors {args.vectors} --queries {args.queries} "
            f"--single {args.single} --high-ef {args.high_ef} --clients {args.clients} --seconds {args.seconds:g}")


def indexing_benchmark(args) -> dict:
    """The Ray vs in-process indexing runs; env, rows, runs and the command line for scale.json."""
    workers = [int(w) for w in args.workers.split(",")]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a loopback-only Ray of this process: no token file

    import ray
    import torch

    from hetsearch.cmpnas.data import load_data

    from .bench_server import start_server

    work = Path(tempfile.mkdtemp(prefix="hs-scale-"))
    proc = None
    try:
        ck = gallery_checkpoint(args, work)
        data = load_data("fashion-mnist", "test")
        data = data.subset(np.arange(min(args.images, len(data))), f"first {args.images}")
        (work / "data").mkdir()
        proc, port, _ = start_server(work / "data" / "galleries", threads=1)
        address = f"127.0.0.1:{port}"
        t0 = time.perf_counter()
        ray.init(num_cpus=max(workers), include_dashboard=False, logging_level="warning",
                 _temp_dir=str(work / "ray"))
        ray_start = time.perf_counter() - t0
        confs = configurations(workers, args.threads)
        runs = {label(c): [] for c in confs}
        load = [os.getloadavg()[0]]
        for r in range(args.runs):
            for c in (confs if r % 2 == 0 else confs[::-1]):
                res = run_once(c, ck, data, address, args.batch_size)
                runs[label(c)].append(res)
                print(f"run {r + 1}/{args.runs}  {label(c):34s} {len(data) / res['seconds']:8.1f} images/s "
                      f"({res['seconds']:.1f} s)", flush=True)
            load.append(os.getloadavg()[0])
        ray.shutdown()
        rows = []
        base = statistics.median(len(data) / x["seconds"] for x in runs[label(confs[0])])
        for c in confs:
            rs = runs[label(c)]
            ips = [len(data) / x["seconds"] for x in rs]
            first = [x["first_write_s"] for x in rs if x["first_write_s"] is not None]
            steady = [x["after_first_write_per_s"] for x in rs if x["after_first_write_per_s"] is not None]
            rows.append({"engine": label(c), "images": len(data), "runs": len(rs),
                         "images_per_s": statistics.median(ips), "min": min(ips), "max": max(ips),
                         "vs_in_process_1": statistics.median(ips) / base,
                         "first_write_s": statistics.median(first) if first else None,
                         "after_first_write_per_s": statistics.median(steady) if steady else None,
                         "seconds": statistics.median(x["seconds"] for x in rs)})
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_process(proc, "the gallery server")
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(rows, digits=2))
    env = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
           "ray": ray.__version__, "platform": platform.platform(terse=True), "gallery_model": ck.spec.get("name"),
           "gallery_macs": ck.macs, "input": list(ck.model.input_size), "batch_size": args.batch_size,
           "threads_per_worker": args.threads, "ray_start_s": ray_start, "load_average_1min": load}
    cmd = f"python -m benchmarks.bench_scale --images {args.images} --runs {args.runs} --threads {args.threads}"
    return {"env": env, "indexing": rows, "runs": runs, "indexing_command": cmd}


def carried_over(previous: dict, part: str) -> dict:
    """The recorded results of a part this run did not measure (from the existing scale.json), marked so."""
    if part == "indexing":
        if not previous.get("indexing"):
            return {"indexing": None}
        rows, env = previous["indexing"], previous.get("env", {})
        cmd = previous.get("indexing_command") or (
            f"python -m benchmarks.bench_scale --images {rows[0]['images']} --runs {rows[0]['runs']} "
            f"--threads {env.get('threads_per_worker', 1)}")
        return {"env": env, "indexing": rows, "runs": previous.get("runs"), "indexing_command": cmd,
                "indexing_carried_over": True}
    if not previous.get("search"):
        return {"search": None}
    return {"search": previous["search"], "search_carried_over": True}


def _load_text(loads: dict) -> str:
    return "; ".join(f"{k} {', '.join(f'{x:.1f}' for x in v)}" for k, v in loads.items())


def reading(s: dict) -> str:
    """The comparison in words, computed from the rows (default efSearch)."""
    def pick(rows, b, **kw):
        return [r for r in rows if r["backend"] == b and r["ef_search"] == s["rows"][0]["ef_search"]
                and all(r[k] == v for k, v in kw.items())]

    ing = {r["backend"]: r for r in s["ingest"]}
    seq = {b: pick(s["rows"], b)[0] for b in BACKENDS}
    counts = sorted({r["clients"] for r in s["concurrency"]})
    conc = {b: [pick(s["concurrency"], b, clients=n)[0] for n in counts] for b in BACKENDS}
    f, m = conc["faiss"], conc["milvus-lite"]
    recall = {b: [r["recall@10"] for r in s["rows"] if r["backend"] == b] for b in BACKENDS}
    return (f"**Reading.** At the default efSearch with one client, the faiss backend answered {f[0]['qps']:,.0f} "
            f"queries/s (p50 {f[0]['p50_ms']:.2f} ms) and the Milvus backend on Milvus Lite {m[0]['qps']:,.0f} "
            f"(p50 {m[0]['p50_ms']:.1f} ms), {f[0]['qps'] / m[0]['qps']:.0f}x fewer; from {counts[0]} to "
            f"{counts[-1]} clients faiss went to {f[-1]['qps']:,.0f} queries/s and Milvus Lite to "
            f"{m[-1]['qps']:,.0f}, its latency growing with the clients instead (p50 {m[-1]['p50_ms']:.0f} ms). "
            f"BatchSearch narrows the gap ({seq['faiss']['batch_qps']:,.0f} vs {seq['milvus-lite']['batch_qps']:,.0f} "
            f"queries/s). recall@10: faiss {' / '.join(f'{x:.3f}' for x in recall['faiss'])}, Milvus Lite "
            f"{' / '.join(f'{x:.3f}' for x in recall['milvus-lite'])} (default / higher efSearch). Loading: "
            f"{ing['faiss']['vectors_per_s']:,.0f} vs {ing['milvus-lite']['vectors_per_s']:,.0f} vectors/s. Milvus "
            "Lite is an embedded single-process engine meant for development: these numbers say what the tests' "
            "Milvus does on this machine, not what a Milvus cluster does.")


def render_md(res: dict) -> str:
    md = ["# Scale benchmark", ""]
    md += ["## Indexing throughput", ""]
    rows, env = res.get("indexing"), res.get("env") or {}
    if not rows:
        md += ["_Not measured yet._ `python -m benchmarks.bench_scale --only indexing`.", ""]
    else:
        if res.get("indexing_carried_over"):
            md += ["_Recorded by an earlier run and carried over unchanged: this run measured only the search "
                   "part._", ""]
        md += [
            f"`{res['indexing_command']}`: {env['cpus']} CPUs, torch {env['torch']}, Ray {env['ray']}, gallery model "
            f"`{env['gallery_model']}` ({env['gallery_macs'] / 1e6:.1f} MMACs at {env['input'][0]}x{env['input'][1]}), "
            f"batches of {env['batch_size']}, one gallery server process on loopback.", "",
            f"Each row: the median of {rows[0]['runs']} whole indexing calls of the same {rows[0]['images']:,} "
            "Fashion-MNIST test images (dataset, embedding, upserts through the server, snapshot), min and max beside "
            "it; configurations alternate run by run. `vs_in_process_1`: median throughput over the 1-thread "
            "in-process run's. `first_write_s`: Ray only, seconds until the first batch was written (actors started, "
            "model loaded once per actor, first batch embedded); `after_first_write_per_s`: the images after the "
            "first batch over the engine's own time after it (the rate once the actors are up). The local Ray session "
            f"was started once before the runs ({env['ray_start_s']:.1f} s, not counted). 1-minute load average over "
            f"the runs: {', '.join(f'{x:.1f}' for x in env['load_average_1min'])} (other jobs shared this machine).",
            "",
            markdown_table(rows, ["engine", "images", "runs", "images_per_s", "min", "max", "vs_in_process_1",
                                  "first_write_s", "after_first_write_per_s", "seconds"], digits=2),
            ""]
    md += ["## Search: faiss backend vs Milvus backend", ""]
    s = res.get("search")
    if not s:
        md += ["_Not measured yet._ `python -m benchmarks.bench_scale --only search`.", ""]
        return "\n".join(md)
    e = s["env"]
    if res.get("search_carried_over"):
        md += ["_Recorded by an earlier run and carried over unchanged: this run measured only the indexing "
               "part._", ""]
    mem = e["rss_mb_after_ingest"]
    md += [
        f"`{s['command']}`: {e['cpus']} CPUs, faiss {e['faiss']}, pymilvus {e['pymilvus']}, Milvus Lite "
        f"{e['milvus_lite']}, {e['vectors']:,} dim-{e['dim']} clustered unit vectors (1,000 centres), cosine, "
        f"k={e['k']}. Two gallery servers (`python -m hetsearch.gallery_server serve`, faiss backend and Milvus "
        "backend) and a `milvus-lite server` on 127.0.0.1, all subprocesses running at once; every measurement goes "
        "through the gRPC API.", "",
        f"**The machine was shared**: {e['cpus']} cores, other jobs running; 1/5/15-minute load averages — "
        f"{_load_text(e['load_average'])}. Absolute numbers are those of a busy 2-core machine; the two backends "
        "saw the same load (alternating rounds), so compare them with each other.", "",
        "### Indexes actually built", "",
    ]
    for b, d in s["indexes"].items():
        built = ", ".join(f"{k}={v}" for k, v in d["built"].items())
        md.append(f"- **{b}**: asked `{d['asked']}` (Describe says `{d['describe_index_factory']}`, default efSearch "
                  f"{d['default_ef_search']}); built: {built}."
                  + (f" Server's status_message: \"{d['status_message']}\"" if d["status_message"] else ""))
    md += ["", "### Loading through gRPC", "",
           f"Upsert calls of {e['upsert_batch']:,} vectors, then one Snapshot (a faiss snapshot file; a Milvus flush), "
           "then, on Milvus, the wait until `describe_index` reports every row indexed. `vectors_per_s`: vectors over "
           "the whole (upserts + snapshot + index wait). Server memory after loading (RSS, MB): "
           + ", ".join(f"{k} {v:.0f}" for k, v in mem.items() if v is not None) + ".", "",
           markdown_table(s["ingest"], ["backend", "vectors", "upsert_s", "upsert_vectors_per_s", "snapshot_s",
                                        "index_wait_s", "total_s", "vectors_per_s"], digits=2),
           "", "### One client: latency, batched throughput, recall@10", "",
           f"Sequential single-query Search calls through the SDK ({e['single_queries']} per backend and efSearch, in "
           f"{e['rounds']} rounds alternating the backends): p50/p99 in ms. BatchSearch over all {e['queries']:,} "
           f"queries in batches of {e['batch']}: `batch_qps`, and `recall@10` of those results against exact search "
           "(faiss Flat inner product over the same vectors). Before any of it, one unmeasured BatchSearch pass over "
           "the queries at each efSearch per backend. `default_knobs`: the gallery's default efSearch (64, "
           "both backends; the request sends 0). No call failed (an error would have stopped the run).", "",
           markdown_table(s["rows"], ["backend", "ef_search", "default_knobs", "p50_ms", "p99_ms", "batch_qps",
                                      "recall@10"], digits=3),
           "", "### Concurrent client processes", "",
           f"`benchmarks/loadgen.py`: each client its own process, a closed loop of single-query Search calls (raw "
           f"stub, prebuilt requests) for {e['seconds_per_level']:g} s after a common start; QPS over the window, "
           "p50/p99 over every call, errors counted (the load goes on).", "",
           markdown_table(s["concurrency"], ["backend", "ef_search", "clients", "qps", "p50_ms", "p99_ms", "errors"],
                          digits=3),
           ""]
    md += [reading(s), ""]
    errs = [r for r in s["concurrency"] if r["errors"]]
    if errs:
        md += ["First errors: " + "; ".join(f"{r['backend']} {r['clients']} clients: {r['first_error']}"
                                            for r in errs), ""]
    return "\n".join(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["indexing", "search"], default=None,
                    help="run one part; the other is carried over from the existing scale.json")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2,000 images once; 20,000 vectors, 300 queries, 1 and 2 clients for 2 s")
    g = ap.add_argument_group("indexing")
    g.add_argument("--gallery", default=None, help="gallery checkpoint (default: train a throwaway one)")
    g.add_argument("--arch", default="resnet-gallery", help="architecture of the throwaway gallery model")
    g.add_argument("--images", type=int, default=10_000, help="Fashion-MNIST test images to index")
    g.add_argument("--workers", default="1,2", help="Ray actor pool sizes (comma-separated)")
    g.add_argument("--threads", type=int, default=1, help="torch threads per Ray actor and of the in-process run")
    g.add_argument("--batch-size", type=int, default=500, help="images per embedding batch and per upsert")
    g.add_argument("--runs", type=int, default=2, help="runs of each configuration")
    g = ap.add_argument_group("search")
    g.add_argument("--vectors", type=int, default=100_000, help="gallery size (default 100,000)")
    g.add_argument("--queries", type=int, default=1000, help="query set (batched QPS, recall, load)")
    g.add_argument("--single", type=int, default=500, help="sequential single queries per backend and efSearch")
    g.add_argument("--rounds", type=int, default=5, help="rounds alternating the backends")
    g.add_argument("--batch", type=int, default=256, help="queries per BatchSearch call")
    g.add_argument("--upsert-batch", type=int, default=2048, help="vectors per Upsert call")
    g.add_argument("--high-ef", type=int, default=256, help="the higher efSearch measured beside the default")
    g.add_argument("--clients", default="1,4,8", help="concurrent client processes (comma-separated)")
    g.add_argument("--seconds", type=float, default=5.0, help="measured window per concurrency level")
    g.add_argument("--conc-default-only", action="store_true",
                   help="concurrent clients at the default efSearch only (not also at --high-ef)")
    g.add_argument("--milvus-timeout", type=float, default=60.0, help="serve --milvus-timeout of the Milvus server")
    g.add_argument("--index-wait", type=float, default=600.0,
                   help="at most this many seconds to wait for Milvus to index every row")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.runs = 2000, 1
        args.vectors, args.queries, args.single, args.clients, args.seconds = 20_000, 300, 200, "1,2", 2.0
    out = Path(args.out)
    previous = {}
    if args.only and (out / "scale.json").exists():
        previous = json.loads((out / "scale.json").read_text())
    res = indexing_benchmark(args) if args.only in (None, "indexing") else carried_over(previous, "indexing")
    if args.only in (None, "search"):
        work = Path(tempfile.mkdtemp(prefix="hs-scale-search-"))
        try:
            res["search"] = search_comparison(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    else:
        res.update(carried_over(previous, "search"))
    write_json(out / "scale.json", res)
    (out / "scale.md").write_text(render_md(res))
    print(f"wrote {out / 'scale.json'} and {out / 'scale.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
