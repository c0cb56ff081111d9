"""Crash loop: SIGKILL the gallery server at a random moment while clients upsert, delete and search, restart
it, and check that every acknowledged write is there, every acknowledged delete is gone and no unacknowledged
upsert is half-applied. Repeats for ``--cycles`` cycles on one data directory.

    python -m benchmarks.crash_loop                 # 100 cycles (several minutes on 2 cores)
    python -m benchmarks.crash_loop --cycles 5      # a smoke run

Each cycle: start ``hetsearch serve`` (a subprocess) on the data directory and time how long it takes to
answer; 3 writer threads upsert batches of 16 new ids, 1 deleter deletes acknowledged ids in batches of 8,
2 searchers search (the deleter removes about a sixth of what is written); after 0.2-1.0 s (random)
the server gets SIGKILL. After the restart, every id touched in
the cycle and a random sample of 500 older ones are checked (an id is present when its own vector finds it as
nearest neighbour in an exact Flat gallery); at the end, all of them. A batch in flight at the kill (not
acknowledged) must be applied whole or not at all.

Writes ``benchmarks/results/crash_loop.json`` and ``crash_loop.md``.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from hetsearch.report import markdown_table, write_json

from .bench_server import REPO, start_server

DIM = 16


def _unit(rng, n):
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ids_present(client, ids, vectors) -> set:
    """The ids among ``ids`` whose own vector (``vectors[id]``) finds them as nearest neighbour (exact Flat)."""
    found = set()
    ids = sorted(ids)
    for s in range(0, len(ids), 1000):
        chunk = ids[s:s + 1000]
        hits = client.search(np.stack([vectors[i] for i in chunk]), k=1)
        found.update(i for i, h in zip(chunk, hits) if h and h[0].id == i)
    return found


def kill_under_load(proc, stop, threads, timeout: float = 30.0) -> None:
    """SIGKILL the server while ``threads`` run, then stop and join them (their calls fail: not acknowledged)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=timeout)
    stop.set()
    for t in threads:
        t.join(timeout=timeout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.crash_loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-pause", type=float, default=0.02,
                   help="seconds each writer waits between batches (bounds the gallery's growth over many cycles)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)

    from hetsearch.sdk.client import GalleryClient, GalleryClientError
    from hetsearch.space import space_id_from_digest

    space = space_id_from_digest("c" * 64, DIM)
    data = Path(tempfile.mkdtemp(prefix="hetsearch-crash-")) / "data"
    rng = random.Random(args.seed)
    vectors: dict[int, np.ndarray] = {}  # every id ever sent, with its vector
    live: set[int] = set()  # acknowledged upserts not acknowledged-deleted since
    gone: set[int] = set()  # acknowledged deletes
    lock = threading.Lock()
    next_id = [0]
    stats = {"cycles": 0, "acked_upserts": 0, "acked_deletes": 0, "searches": 0, "in_flight_batches": 0,
             "half_applied": 0, "lost_writes": 0, "resurrected_deletes": 0, "start_seconds": []}
    t_all = time.time()
    prev_touched: set[int] = set()  # ids the previous cycle wrote or deleted (acknowledged or in flight)
    prev_in_flight: list[list[int]] = []  # its batches that were never acknowledged
    for cycle in range(args.cycles):
        proc, port, start_s = start_server(data, threads=None)
        stats["start_seconds"].append(start_s)
        touched: set[int] = set()
        in_flight: list[list[int]] = []
        try:
            with GalleryClient(f"127.0.0.1:{port}", gallery="g", space_id=space, retries=0, timeout=5) as c:
                if cycle == 0:
                    c.create_gallery("g", space)
                # check what the previous crash left: the ids of that cycle plus a sample of older ones
                check = set(prev_touched)
                with lock:
                    older = sorted((live | gone) - check)
                check |= set(rng.sample(older, min(500, len(older))))
                found = ids_present(c, check, vectors)
                stats["lost_writes"] += len((check & live) - found)
                stats["resurrected_deletes"] += len((check & gone) & found)
                for batch in prev_in_flight:
                    hit = len(set(batch) & found) if set(batch) <= check else None
                    if hit not in (None, 0, len(batch)):
                        stats["half_applied"] += 1
                    if hit == len(batch):  # applied whole although not acknowledged: it exists now
                        with lock:
                            live.update(batch)
                stop = threading.Event()

                def writer(seed):
                    wrng = np.random.default_rng(seed)
                    while not stop.is_set():
                        with lock:
                            ids = list(range(next_id[0], next_id[0] + 16))
                            next_id[0] += 16
                            vec = _unit(wrng, 16)
                            vectors.update(zip(ids, vec))
                            touched.update(ids)
                            in_flight.append(ids)
                        try:
                            c.upsert(ids, vec)
                        except GalleryClientError:
                            return  # the server died under us: not acknowledged
                        with lock:
                            in_flight.remove(ids)
                            live.update(ids)
                            stats["acked_upserts"] += len(ids)
                        stop.wait(args.write_pause)

                def deleter():
                    while not stop.is_set():
                        with lock:
                            pick = rng.sample(sorted(live), min(8, len(live))) if live else []
                            live.difference_update(pick)  # in flight: neither live nor gone until acknowledged
                            touched.update(pick)
                        if not pick:
                            time.sleep(0.01)
                            continue
                        try:
                            c.delete(pick)
                        except GalleryClientError:
                            with lock:  # unknown outcome: do not check these ids
                                touched.difference_update(pick)
                            return
                        with lock:
                            gone.update(pick)
                            stats["acked_deletes"] += len(pick)
                        stop.wait(args.write_pause * 4)  # deletes ~1/6 of what is written: the gallery grows

                def searcher(seed):
                    srng = np.random.default_rng(seed)
                    while not stop.is_set():
                        try:
                            c.search(_unit(srng, 1)[0], k=10)
                        except GalleryClientError:
                            return
                        with lock:
                            stats["searches"] += 1

                threads = ([threading.Thread(target=writer, args=(cycle * 10 + w,)) for w in range(3)]
                           + [threading.Thread(target=deleter)]
                           + [threading.Thread(target=searcher, args=(cycle * 10 + 5 + s,)) for s in range(2)])
                for t in threads:
                    t.start()
                time.sleep(0.2 + 0.8 * rng.random())
                kill_under_load(proc, stop, threads)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with lock:
            prev_touched = {i for i in touched if i in live or i in gone} | {i for b in in_flight for i in b}
            prev_in_flight = [b for b in in_flight]
            stats["in_flight_batches"] += len(in_flight)
        stats["cycles"] += 1
        print(f"cycle {cycle + 1}/{args.cycles}: live {len(live)}, deleted {len(gone)}, lost "
              f"{stats['lost_writes']}, resurrected {stats['resurrected_deletes']}, half-applied "
              f"{stats['half_applied']}, start {start_s:.2f} s", flush=True)
    # the final restart: check everything
    proc, port, start_s = start_server(data, threads=None)
    try:
        with GalleryClient(f"127.0.0.1:{port}", gallery="g", space_id=space, retries=0, timeout=30) as c:
            found = ids_present(c, live | gone, vectors)
            final = {"live_checked": len(live), "live_missing": len(live - found), "deleted_checked": len(gone),
                     "deleted_found": len(gone & found), "vector_count": c.describe().vector_count}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    starts = np.asarray(stats.pop("start_seconds"))
    result = {"benchmark": "crash_loop", "settings": {"cycles": args.cycles, "seed": args.seed, "dim": DIM,
                                                      "writers": 3, "deleters": 1, "searchers": 2,
                                                      "kill_after_s": [0.2, 1.0],
                                                      "write_pause_s": args.write_pause},
              **stats, "final": final, "start_seconds": {"p50": float(np.median(starts)), "max": float(starts.max())},
              "wall_seconds": round(time.time() - t_all, 1)}
    out = Path(args.out)
    write_json(out / "crash_loop.json", result)
    rows = [{"cycles": stats["cycles"], "acked upserts": stats["acked_upserts"],
             "acked deletes": stats["acked_deletes"], "searches": stats["searches"],
             "unacked batches at kill": stats["in_flight_batches"], "lost writes": stats["lost_writes"]
             + final["live_missing"], "deletes undone": stats["resurrected_deletes"] + final["deleted_found"],
             "half-applied": stats["half_applied"], "start p50 (s)": round(result["start_seconds"]["p50"], 2),
             "start max (s)": round(result["start_seconds"]["max"], 2)}]
    (out / "crash_loop.md").write_text("\n".join([
        "# Crash loop", "", f"`python -m benchmarks.crash_loop --cycles {args.cycles}`: SIGKILL at a random moment "
        "(0.2-1.0 s into each cycle) while 3 writers upsert, 1 deleter deletes and 2 searchers search; after each "
        "restart the ids of the last cycle and 500 older ones are checked, and every id at the end. Target: 0 "
        "lost, 0 undone, 0 half-applied.", "", markdown_table(rows), "",
        f"Final check: {final['live_checked']} live ids ({final['live_missing']} missing), {final['deleted_checked']} "
        f"deleted ids ({final['deleted_found']} found again); wall time {result['wall_seconds']} s.", ""]))
    print(markdown_table(rows))
    bad = rows[0]["lost writes"] + rows[0]["deletes undone"] + rows[0]["half-applied"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
