"""Training speed with cached vs live gallery targets, and whether the two train equally good models.

1. **Speed**, side by side in one run: training steps per second of the one trainer with
   ``--gallery-targets live`` (the frozen gallery model's forward pass every step) and ``cached`` (its
   embeddings of fixed views, computed once), for the three query presets and the supernet (sandwich
   rule). Each measurement trains one epoch of ``--speed-steps`` steps; live and cached alternate, ``--repeats``
   times, and the median is reported. The one-time cost of building the cache is reported separately.
2. **Accuracy at equal epochs**: ``mbv3-small`` + the default loss trained with each mode for ``--epochs``
   epochs on all training data, ``--seeds`` seeds each; heterogeneous R@1 on the whole test split. The noise
   is the spread over seeds (and the binomial standard error of one R@1 on the test split).

    python -m benchmarks.bench_train --gallery runs/gallery             # ~25 min on 2 cores
    python -m benchmarks.bench_train --gallery runs/gallery --quick     # a few minutes

Writes OUT/train.json and OUT/train.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from hetsearch.report import format_table, markdown_table, write_json


def _speed(data, gallery, arch: str, mode: str, steps: int, batch: int, cache_dir: str, seed: int) -> dict:
    """Steps/s of one epoch of ``steps`` steps (training only: no validation, no cache building)."""
    from hetsearch.cmpnas.train import TrainConfig, train_query
    from hetsearch.cmpnas.nas.train import train_supernet

    cfg = TrainConfig(epochs=1, batch_size=batch, max_train_samples=steps * batch, max_val_samples=20, threads=1,
                      gallery_targets=mode, targets_cache=cache_dir, seed=seed, schedule="sandwich", num_random=2)
    with tempfile.TemporaryDirectory() as tmp:
        if arch == "supernet":
            out = train_supernet(data, gallery, Path(tmp) / "sn", cfg, progress=False)
            import json

            hist = json.loads((Path(out) / "meta.json").read_text())["history"]
        else:
            ck = train_query(data, gallery, arch, Path(tmp) / "q", cfg, progress=False)
            hist = ck.meta["metrics"]["history"]
    e = hist[-1]
    return {"steps": e["steps"], "seconds": e["train_seconds"], "steps_per_s": e["steps"] / e["train_seconds"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", required=True, help="trained gallery checkpoint")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default="runs/bench-train")
    ap.add_argument("--speed-steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="mbv3-large,mbv3-small,mbv3-tiny,supernet")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.speed_steps, args.repeats, args.epochs, args.seeds = 10, 1, 1, 1

    import torch

    from hetsearch.cmpnas.checkpoint import load_checkpoint
    from hetsearch.cmpnas.data import load_data, stratified_sample
    from hetsearch.cmpnas.embed import embed
    from hetsearch.cmpnas.metrics import recall_at_1
    from hetsearch.cmpnas.train import TrainConfig, train_query

    torch.set_num_threads(1)
    t0 = time.time()
    data = load_data("fashion-mnist", "train")
    test = load_data("fashion-mnist", "test")
    if args.quick:
        data = data.subset(stratified_sample(data.labels, 3000, 0), "3000")
        test = test.subset(stratified_sample(test.labels, 1000, 0), "1000")
    gck = load_checkpoint(args.gallery, expect_kind="gallery")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = None  # the default: next to the gallery checkpoint, shared with every other run

    # the one-time cache build for the speed runs' data (then every cached run reuses it)
    from hetsearch.cmpnas.targets import ViewSpec, load_or_build
    from hetsearch.cmpnas.data import train_val_split

    speed_rows, speed = [], {}
    for arch in args.models.split(","):
        runs = {"live": [], "cached": []}
        _speed(data, gck, arch, "cached", args.speed_steps, args.batch_size, cache, 0)  # warm: builds this subset's cache
        for r in range(args.repeats):
            for mode in (("live", "cached") if r % 2 == 0 else ("cached", "live")):
                runs[mode].append(_speed(data, gck, arch, mode, args.speed_steps, args.batch_size, cache, 0))
        med = {m: statistics.median(x["steps_per_s"] for x in v) for m, v in runs.items()}
        speed[arch] = {"runs": runs, "median_steps_per_s": med, "speedup": med["cached"] / med["live"]}
        speed_rows.append({"model": arch, "live steps/s": med["live"], "cached steps/s": med["cached"],
                           "speed-up (x)": med["cached"] / med["live"],
                           "live steps/s (all)": " ".join(f"{x['steps_per_s']:.2f}" for x in runs["live"]),
                           "cached steps/s (all)": " ".join(f"{x['steps_per_s']:.2f}" for x in runs["cached"])})
        print(format_table(speed_rows[-1:]), flush=True)

    # the full training data's cache: its one-time build cost
    cfg0 = TrainConfig()
    tr, va = train_val_split(data, cfg0.val_fraction, 0, None, None)
    gm = gck.model
    tb = time.time()
    tg = load_or_build(gm, gck.space_id, tr.as_model_input(*gm.input_size, gm.in_channels),
                       va.as_model_input(*gm.input_size, gm.in_channels), ViewSpec(6, 2, 0), cache_dir=cache,
                       gallery_path=gck.path,
                       progress=True)
    build = {"train_images": len(tr), "views": 6, "val_images": len(va), "seconds": round(time.time() - tb, 1),
             "reused": not tg.built, "megabytes": round(tg.train.numel() * 4 / 1e6 + tg.val.nbytes / 1e6, 1)}

    acc_rows, acc = [], {}
    if not args.skip_accuracy:
        g_test = embed(gck.model, test)
        n = len(test)
        for mode in ("cached", "live"):
            vals = []
            for seed in range(args.seeds):
                out = work / f"mbv3-small-{mode}-s{seed}"
                cfg = TrainConfig(epochs=args.epochs, seed=seed, threads=1, gallery_targets=mode, targets_cache=cache)
                if (out / "checkpoint.pt").exists() and load_checkpoint(out).meta["train_config"].get("epochs") == args.epochs:
                    ck = load_checkpoint(out)
                else:
                    ck = train_query(data, gck, "mbv3-small", out, cfg, progress=False)
                q = embed(ck.model, test)
                vals.append(recall_at_1(q, g_test, test.labels))
                print(f"{mode} seed {seed}: het R@1 {vals[-1]:.2f}", flush=True)
            mean = statistics.mean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            acc[mode] = {"r1": vals, "mean": mean, "std": sd}
            acc_rows.append({"mode": mode, "seeds": len(vals), "het R@1 mean": mean, "std over seeds": sd,
                             "per seed": " ".join(f"{v:.2f}" for v in vals)})
        p = acc["cached"]["mean"] / 100
        se = 100 * math.sqrt(p * (1 - p) / n)
        acc["binomial_se_one_run"] = se
        acc["difference"] = acc["cached"]["mean"] - acc["live"]["mean"]

    res = {"benchmark": "train", "gallery": gck.name, "threads": 1, "batch_size": args.batch_size,
           "speed_steps": args.speed_steps, "repeats": args.repeats, "speed": speed, "cache_build": build,
           "accuracy": {"epochs": args.epochs, "seeds": args.seeds, "test_images": len(test), **acc},
           "quick": args.quick, "seconds": round(time.time() - t0, 1)}
    out = Path(args.out)
    write_json(out / "train.json", res)
    md = ["# Training with cached vs live gallery targets", "",
          f"One torch thread, batch {args.batch_size}, {args.speed_steps} steps per measurement, live and cached "
          f"alternating, median of {args.repeats}. Gallery model `{gck.name}` ({gck.macs / 1e6:.2f} MMACs).", "",
          markdown_table(speed_rows, digits=2), "",
          f"Building the cache once: {build['train_images']} training images x {build['views']} views + "
          f"{build['val_images']} validation images in {build['seconds']} s"
          f"{' (reused: built earlier)' if build['reused'] else ''}, {build['megabytes']} MB.", ""]
    if acc_rows:
        md += [f"## Heterogeneous R@1 at equal epochs (mbv3-small, default loss, {args.epochs} epochs, "
               f"test split {len(test)} images)", "", markdown_table(acc_rows, digits=2), "",
               f"Difference cached - live: {acc['difference']:+.2f} points. Noise: the std over seeds above; one R@1 on "
               f"{len(test)} test images has a binomial standard error of {acc['binomial_se_one_run']:.2f} points.", ""]
    md.append(f"Wall time {res['seconds'] / 60:.1f} min. Reproduce: `python -m benchmarks.bench_train --gallery GALLERY`.")
    (out / "train.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
