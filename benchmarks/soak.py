"""Soak: many client processes mixing searches and upserts against one server for minutes.

    python -m benchmarks.soak                       # 32 clients, 90% search / 10% upsert, 10 minutes
    python -m benchmarks.soak --minutes 1 --clients 8   # a short run

The server (``hetsearch serve`` as a subprocess, background snapshots once its log passes
``--snapshot-every-mb``) starts from a 100k-vector HNSW32 gallery; clients are separate processes
(:mod:`benchmarks.loadgen`). Reports QPS and p99 per window, errors, the server's resident memory at start and
end (growth per vector written, beside the vectors' own bytes), and the log and snapshot sizes at the end. Writes
``benchmarks/results/soak.json``, ``soak.md`` and ``soak.png``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hetsearch.report import markdown_table, write_json

from .bench_server import EF_SEARCH, REPO, make_data
from .loadgen import run_load


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _dir_mb(d: Path, pattern: str) -> float:
    return sum(p.stat().st_size for p in d.rglob(pattern)) / 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--write-share", type=float, default=0.1)
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--window", type=float, default=30.0, help="seconds per reported window")
    p.add_argument("--snapshot-every-mb", type=float, default=16.0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)

    import faiss

    from hetsearch.gallery_server.store import open_offline
    from hetsearch.space import space_id_from_digest

    space = space_id_from_digest("d" * 64, 128)
    root = Path(tempfile.mkdtemp(prefix="hetsearch-soak-"))
    data = root / "data"
    x, q = make_data(args.size, 4096, seed=3)
    faiss.omp_set_num_threads(2)
    with open_offline(data) as store:
        store.create_gallery("bench", space, index_factory="HNSW32", ef_search=EF_SEARCH)
        for s in range(0, args.size, 50_000):
            store.upsert("bench", np.arange(s, min(args.size, s + 50_000)), x[s:s + 50_000], space_id=space)
        store.snapshot("bench")
    port_file = root / "port"
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hetsearch.gallery_server", "serve", "--data-dir", str(data),
                             "--port", "0", "--port-file", str(port_file), "--snapshot-every-mb",
                             str(args.snapshot_every_mb)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None:
                raise RuntimeError(f"server did not start; see {root / 'server.log'}")
            time.sleep(0.1)
        port = int(port_file.read_text())
        seconds = args.minutes * 60
        samples = []

        def sample_memory(start_at):
            while time.time() < start_at:
                time.sleep(0.05)
            samples.append((0.0, _rss_mb(proc.pid)))
            return None

        target = {"address": f"127.0.0.1:{port}", "gallery": "bench", "space": space}
        r = run_load("grpc", target, q, args.clients, seconds, write_share=args.write_share, window=args.window,
                     during=sample_memory)
        rss_end = _rss_mb(proc.pid)
        from hetsearch.sdk.client import GalleryClient

        with GalleryClient(target["address"], gallery="bench", space_id=space) as c:
            info = c.describe()
        vectors_added = info.vector_count - args.size
        wal_mb, snap_mb = _dir_mb(data, "wal-*.log"), _dir_mb(data, "snap-*.snap")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    result = {"benchmark": "soak", "settings": vars(args), "qps": r["qps"], "p50_ms": r["p50_ms"],
              "p99_ms": r["p99_ms"], "errors": r["errors"], "first_error": r["first_error"], "calls": r["queries"],
              "series": r["series"], "rss_mb_start": samples[0][1] if samples else None, "rss_mb_end": rss_end,
              "vectors_added": vectors_added, "vector_bytes_mb": round(vectors_added * 128 * 4 / 1e6, 1),
              "rss_growth_kb_per_vector": round((rss_end - samples[0][1]) * 1024 / max(1, vectors_added), 2)
              if samples else None,
              "wal_mb_end": round(wal_mb, 1), "snapshot_mb_end": round(snap_mb, 1), "wal_records_end": info.wal_records,
              "snapshot_seq_end": info.snapshot_seq, "last_seq_end": info.last_seq}
    out = Path(args.out)
    write_json(out / "soak.json", result)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    t = [w["t_s"] / 60 for w in r["series"]]
    ax.plot(t, [w["qps"] for w in r["series"]], "o-", label="QPS")
    ax.set_xlabel("minutes")
    ax.set_ylabel("calls / s")
    ax2 = ax.twinx()
    ax2.plot(t, [w["p99_ms"] for w in r["series"]], "s--", color="tab:red", label="p99 (ms)")
    ax2.set_ylabel("p99 latency (ms)")
    ax.set_title(f"soak: {args.clients} client processes, {int(args.write_share * 100)}% upserts, HNSW32 "
                 f"{args.size // 1000}k", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=110)
    plt.close(fig)
    rows = [{"clients": args.clients, "minutes": args.minutes, "calls": r["queries"], "QPS": round(r["qps"], 1),
             "p50 (ms)": round(r["p50_ms"], 2), "p99 (ms)": round(r["p99_ms"], 2), "errors": r["errors"],
             "RSS start (MB)": round(result["rss_mb_start"], 1), "RSS end (MB)": round(rss_end, 1),
             "vectors added": vectors_added, "log MB (end)": result["wal_mb_end"],
             "snapshot MB (end)": result["snapshot_mb_end"]}]
    (out / "soak.md").write_text("\n".join([
        "# Soak", "", f"`python -m benchmarks.soak --clients {args.clients} --minutes {args.minutes:g}`: separate "
        f"client processes, {int((1 - args.write_share) * 100)}% searches / {int(args.write_share * 100)}% one-vector "
        f"upserts, against `hetsearch serve --snapshot-every-mb {args.snapshot_every_mb:g}` on a {args.size:,}-vector "
        "HNSW32 gallery (dim 128), server and clients on the same 2 cores.", "", markdown_table(rows), "",
        f"Memory: {result['rss_mb_start']:.0f} MB at the start, {rss_end:.0f} MB at the end for {vectors_added:,} "
        f"vectors written: {result['rss_growth_kb_per_vector']} KB per vector, whose own float32 data is 0.5 KB "
        f"({result['vector_bytes_mb']} MB in all; the rest is its HNSW links and id maps). The log ends at "
        f"{result['wal_mb_end']} MB ({info.wal_records} records since the last snapshot, which covers seq "
        f"{info.snapshot_seq} of {info.last_seq}): "
        + ("background snapshots kept it bounded." if info.snapshot_seq > 1 else
           f"no background snapshot was due yet (every {args.snapshot_every_mb:g} MB of log)."),
        "", "Per window:", "",
        markdown_table([{"t (s)": w["t_s"], "QPS": round(w["qps"], 1),
                         "p99 (ms)": None if w["p99_ms"] is None else round(w["p99_ms"], 2)} for w in r["series"]]),
        "", "![soak](soak.png)", ""]))
    print((out / "soak.md").read_text())
    shutil.rmtree(root, ignore_errors=True)
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
