"""``make bench``: every benchmark, into benchmarks/results/ (JSON + Markdown + PNG).

    python -m benchmarks.run_all            # the full runs (a few hours on 2 cores)
    python -m benchmarks.run_all --quick    # smoke versions (minutes)

Trains the paragon gallery model first (runs/gallery, reused when present), then runs
bench_train (cached vs live gallery targets), bench_compat (parameter-level compatibility), bench_openset
(closed- vs open-set compatibility per loss), bench_layout (the search space's stage layout, random subnets trained
from scratch), bench_nas (the paper-style table; it first trains the 14x14-layout supernet it searches the larger
budgets in), bench_latency_model (latency models
of bench_nas's two supernets measured on this machine, held-out error), bench_export (formats,
parity, compatibility, latency), bench_server (in-process faiss vs gRPC), bench_sdk (SDK overhead) and bench_scale
(indexing on Ray vs in-process; search on the faiss vs the Milvus backend at 100k vectors).
A benchmark that fails is reported and the rest continue.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def run(argv: list[str]) -> tuple[int, float]:
    print(f"\n$ {' '.join(argv)}", flush=True)
    t0 = time.time()
    rc = subprocess.call(argv)
    return rc, time.time() - t0


H1 = "benchmarks/results/nas-work/supernet-h1"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gallery", default=None, help="a trained gallery checkpoint (default: train runs/gallery)")
    ap.add_argument("--only", default=None,
                    help="comma list of: train,compat,openset,layout,nas,latency,latency-h1,export,server,sdk,scale")
    args = ap.parse_args(argv)
    py = sys.executable
    q = ["--quick"] if args.quick else []
    gallery = args.gallery or ("runs/gallery-quick" if args.quick else "runs/gallery")
    results = []
    if not (Path(gallery) / "checkpoint.pt").exists():
        epochs, extra = ("1", ["--arch", "resnet-tiny", "--max-train-samples", "3000"]) if args.quick else ("10", [])
        rc, secs = run([py, "-m", "hetsearch", "train", "gallery", "--epochs", epochs, *extra, "--out", gallery])
        results.append(("train gallery", rc, secs))
        if rc:
            print("gallery training failed; stopping", file=sys.stderr)
            return rc
    plan = {
        "train": [py, "-m", "benchmarks.bench_train", "--gallery", gallery, *q],
        "compat": [py, "-m", "benchmarks.bench_compat", "--gallery", gallery, *q],
        "openset": [py, "-m", "benchmarks.bench_openset", "--gallery", gallery, *q],
        "layout": [py, "-m", "benchmarks.bench_layout", "--gallery", gallery, "--layouts", "hires0,hires1,hires1-end4",
                   *(["--n", "2", "--epochs", "1", "--work", "runs/bench-layout-quick", "--out",
                      "runs/bench-layout-quick/layout"] if args.quick else ["--seed-spread", "1,2"])],
        # the published table: the 14x14-layout supernet searches the budgets it reaches, the default one 0.126
        "nas": [py, "-m", "benchmarks.bench_nas", "--gallery", gallery, "--rerank", "2" if args.quick else "4",
                *([] if args.quick else ["--seeds", "0,1,2,3,4"]),
                "--budget-supernet", f"1.299,0.401,1.124={H1}", *q],
        "latency": [py, "-m", "benchmarks.bench_latency_model", "--supernet", "benchmarks/results/nas-work/supernet", *q],
        # the 14x14-layout supernet gets its own latency model (a model prices one space; nas trains it first)
        "latency-h1": [py, "-m", "benchmarks.bench_latency_model", "--supernet", H1, "--out",
                       "benchmarks/results/latency-h1", *q],
        "export": [py, "-m", "benchmarks.bench_export", "--gallery", gallery,
                   "--query", "runs/bench-compat/mbv3-small-bct-l2", *q],
        "server": [py, "-m", "benchmarks.bench_server", *q],
        "sdk": [py, "-m", "benchmarks.bench_sdk", *q],
        "scale": [py, "-m", "benchmarks.bench_scale", "--gallery", gallery, *q],
    }
    only = set((args.only or ",".join(plan)).split(","))
    for name, cmd in plan.items():
        if name == "nas" and name in only and not (Path(H1) / "supernet.pt").exists():
            sn = ["--epochs", "1", "--max-train-samples", "1500"] if args.quick else ["--epochs", "10"]
            rc, secs = run([py, "-m", "hetsearch", "nas", "supernet", "--gallery", gallery, "--hires", "1", *sn,
                            "--num-random", "1", "--seed", "0", "--out", H1])
            results.append(("nas supernet-h1", rc, secs))
            if rc:
                continue
        if name in only:
            rc, secs = run(cmd)
            results.append((name, rc, secs))
    print("\nbenchmark        exit  minutes")
    for name, rc, secs in results:
        print(f"{name:16} {rc:4}  {secs / 60:7.1f}")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
