"""Scale benchmark: indexing throughput of ``hetsearch index`` in-process vs on Ray Data (1 and 2 workers).

    python -m benchmarks.bench_scale                        # 10,000 Fashion-MNIST test images, 2 runs each
    python -m benchmarks.bench_scale --images 2000 --runs 1 --quick-model
    python -m benchmarks.bench_scale --gallery runs/gallery --threads 1

The same images, embedded by the same gallery model, are written through one gallery server (a separate process
on loopback, ``python -m hetsearch.gallery_server serve``) by each engine in turn: the in-process engine
(``index_gallery``, torch with ``--threads`` threads, and with as many threads as the largest Ray pool) and the
Ray engine (``index_gallery_ray``) with 1 and 2 actors of ``--threads`` threads each. The configurations alternate
run by run (reversed every other round) so that they see the same background load. Every number is the wall time
of one whole indexing call (build the dataset, embed, upsert, snapshot) over the image count; for Ray, a local
session started once beforehand (its start time is reported apart) and the time until the first batch is written
(actors started, model loaded) are reported too. Without ``--gallery`` a throwaway ``resnet-gallery`` is trained
for one short epoch: throughput does not depend on accuracy.

The search side of the scale question (the faiss backend vs the Milvus backend: p50/p99, QPS and recall@10 at
100k vectors) has its place marked below (``search_comparison``) and is not measured by this file yet.

Writes ``benchmarks/results/scale.json`` and ``scale.md``.
"""

from __future__ import annotations

import argparse
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


def search_comparison(args) -> dict | None:
    """SEARCH SIDE — faiss backend vs Milvus backend (issue 12), NOT MEASURED HERE YET.

    Its place: p50/p99 single-query latency, batched QPS and recall@10 against exact search of the gallery server
    at 100k vectors on ``serve --backend faiss`` and ``serve --backend milvus`` (Milvus Lite), side by side in this
    same run. Returns None until that is written; the report says so."""
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", default=None, help="gallery checkpoint (default: train a throwaway one)")
    ap.add_argument("--arch", default="resnet-gallery", help="architecture of the throwaway gallery model")
    ap.add_argument("--images", type=int, default=10_000, help="Fashion-MNIST test images to index")
    ap.add_argument("--workers", default="1,2", help="Ray actor pool sizes (comma-separated)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per Ray actor and of the in-process run")
    ap.add_argument("--batch-size", type=int, default=500, help="images per embedding batch and per upsert")
    ap.add_argument("--runs", type=int, default=2, help="runs of each configuration")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder")
    args = ap.parse_args(argv)
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
        search = search_comparison(args)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(rows, digits=2))
    env = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
           "ray": ray.__version__, "platform": platform.platform(terse=True), "gallery_model": ck.spec.get("name"),
           "gallery_macs": ck.macs, "input": list(ck.model.input_size), "batch_size": args.batch_size,
           "threads_per_worker": args.threads, "ray_start_s": ray_start, "load_average_1min": load}
    out = Path(args.out)
    write_json(out / "scale.json", {"env": env, "indexing": rows, "runs": runs, "search": search})
    cmd = f"python -m benchmarks.bench_scale --images {args.images} --runs {args.runs} --threads {args.threads}"
    md = [
        "# Scale benchmark", "",
        f"`{cmd}`: {env['cpus']} CPUs, torch {env['torch']}, Ray {env['ray']}, gallery model "
        f"`{env['gallery_model']}` ({ck.macs / 1e6:.1f} MMACs at {ck.model.input_size[0]}x{ck.model.input_size[1]}), "
        f"batches of {args.batch_size}, one gallery server process on loopback.", "",
        "## Indexing throughput", "",
        f"Each row: the median of {args.runs} whole indexing calls of the same {len(data):,} Fashion-MNIST test images "
        "(dataset, embedding, upserts through the server, snapshot), min and max beside it; configurations alternate "
        "run by run. `vs_in_process_1`: median throughput over the 1-thread in-process run's. `first_write_s`: Ray "
        "only, seconds until the first batch was written (actors started, model loaded once per actor, first batch "
        "embedded); `after_first_write_per_s`: the images after the first batch over the engine's own time after it "
        f"(the rate once the actors are up). The local Ray session was started once before the runs ({ray_start:.1f} s, not counted). 1-minute "
        f"load average over the runs: {', '.join(f'{x:.1f}' for x in load)} (other jobs shared this machine).", "",
        markdown_table(rows, ["engine", "images", "runs", "images_per_s", "min", "max", "vs_in_process_1",
                              "first_write_s", "after_first_write_per_s", "seconds"], digits=2),
        "",
        "## Search: faiss backend vs Milvus backend", "",
        ("_Not measured yet._ This section's place is marked in `search_comparison()` of `benchmarks/bench_scale.py`: "
         "p50/p99 latency, batched QPS and recall@10 against exact search of the gallery server at 100k vectors on "
         "`--backend faiss` and `--backend milvus` (Milvus Lite), side by side in the same run."
         if search is None else markdown_table(search["rows"], digits=3)),
        "",
    ]
    (out / "scale.md").write_text("\n".join(md))
    print(f"wrote {out / 'scale.json'} and {out / 'scale.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
