"""Which layout should a budget's search space have? Random subnets of each layout, trained from scratch.

A supernet's inherited weights say little about how good its subnets become once trained (``nas-finalists.md``),
so a layout is judged here on the subnets themselves: for each budget B and layout, ``--n`` random subnets costing
within [0.9 B, B] are drawn from the default space with that layout and trained from scratch exactly like the
hand-designed presets in ``bench_nas`` (8 epochs, lr 0.1, warm-up 0.5, the compatibility loss, one seed), and so
is the preset of matched MACs. Everything is measured on the VALIDATION split (6,000 images; the test split is
never touched): a layout is a design choice, made before any test number.

Layouts (the default space's stage layout is ``hires0``):

- ``hires0``: stem /2, the fixed first block /2, so every elastic stage runs at 7x7 or below (14/7/4/2);
- ``hires1``: the fixed first block keeps 14x14 and stage 0 downsamples (its first expansion runs at 14x14, as in
  ``mbv3-large`` and ``mbv3-small``), the 14/14/7/4/2 layout of ``nas supernet --hires 1``.
- ``hires1-end4``: ``hires1`` whose last stage keeps 4x4 (stride 1), 14/14/7/4/4, so the network ends at 4x4 as
  ``mbv3-large`` does instead of 2x2 (``nas supernet --hires 1 --space`` with stage strides 1, 2, 1).

(Input resolutions are not offered: ``train_query`` builds a model at the data's input size, so a subnet drawn
at another resolution would be trained, and costed, as something it is not.)

    python -m benchmarks.bench_layout --gallery runs/gallery --budgets 1.299,0.401 --layouts hires0,hires1,hires1-end4 \
        --n 6 --seed-spread 1,2

Every trained subnet lands in WORK/<budget>-<layout>-<i>/ (a --seed-spread retraining in ...-s<seed>/) and is reused
when it was trained with the same spec and settings. Writes OUT.json, OUT.md and OUT.png (validation R@1 vs MMACs per
layout).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from hetsearch.errors import HetsearchError

from . import cli_main

# layout name -> (hires, resolution, the elastic stages' strides; None: the default space's)
LAYOUTS = {"hires0": (0, 28, None), "hires1": (1, 28, None), "hires1-end4": (1, 28, (1, 2, 1))}
COMPARED = ("epochs", "lr", "warmup_epochs", "seed", "compat", "max_train_samples", "max_val_samples")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_layout", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", required=True)
    p.add_argument("--budgets", default="1.299,0.401", help="MMACs budgets")
    p.add_argument("--layouts", default="hires0,hires1", help=f"comma list of {', '.join(LAYOUTS)}")
    p.add_argument("--n", type=int, default=6, help="random subnets per layout and budget")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="the training seed (the draws are fixed)")
    p.add_argument("--compat", default=None, help="compatibility loss (default: the foundation's)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed-spread", default="",
                   help="extra training seeds, e.g. 1,2: the preset and the first subnet of --spread-layout at each "
                        "budget are trained again with each, to show how far ONE architecture moves between "
                        "training seeds next to how far the layout's architectures differ")
    p.add_argument("--spread-layout", default="hires1", help="the layout whose first subnet --seed-spread retrains")
    p.add_argument("--work", default="runs/bench-layout", help="where the trained subnets go (reused)")
    p.add_argument("--out", default="benchmarks/results/layout")
    args = p.parse_args(argv)
    bad = [x for x in args.layouts.split(",") if x not in LAYOUTS]
    if bad:
        p.error(f"unknown layout(s) {bad}; known: {', '.join(LAYOUTS)}")
    if args.spread_layout not in LAYOUTS:
        p.error(f"unknown --spread-layout {args.spread_layout!r}; known: {', '.join(LAYOUTS)}")
    try:
        args.spread_seeds = [int(x) for x in args.seed_spread.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seed-spread takes a comma list of integer seeds, got {args.seed_spread!r}")
    if args.seed in args.spread_seeds:
        p.error(f"--seed-spread repeats the training seed {args.seed}: give other seeds")
    if args.spread_seeds and args.spread_layout not in args.layouts.split(","):
        p.error(f"--spread-layout {args.spread_layout} is not among --layouts {args.layouts}: its spread between "
                "architectures would not be measured")
    return args


def space(hires_choices=(0, 1), strides=None):
    """The default supernet space with the given hires choices (and the resolutions the first study drew from,
    so that its draws, and the models trained on them, stay the same) and, when given, other stage strides."""
    from dataclasses import replace

    from hetsearch.cmpnas.nas.space import SupernetConfig

    cfg = SupernetConfig(resolutions=[28, 32, 36], hires=list(hires_choices))
    if strides is None:
        return cfg
    return replace(cfg, stages=[{**st, "stride": int(s)} for st, s in zip(cfg.stages, strides, strict=True)])


def layout_space(layout: str):
    """The space a layout's subnets are drawn from and built in."""
    hires, _, strides = LAYOUTS[layout]
    return space((0, 1) if hires else (0,), strides)  # the draws of the first study of this question are reused


def draws(budget: float, layout: str, n: int) -> list[tuple[dict, float]]:
    """``n`` random archs of one layout costing within [0.9 B, B], with their MMACs (fixed draws)."""
    from hetsearch.cmpnas.nas.space import arch_macs, canonical_arch, random_arch

    hires, res, _ = LAYOUTS[layout]
    cfg = layout_space(layout)
    rng = random.Random(4321 + res)
    out = []
    for _ in range(200000):
        arch = random_arch(cfg, rng)
        arch = canonical_arch(cfg, {**arch, "resolution": res, "hires": hires})
        mm = arch_macs(cfg, arch) / 1e6
        if 0.9 * budget <= mm <= budget:
            out.append((arch, mm))
            if len(out) == n:
                return out
    raise HetsearchError(f"layout {layout}: fewer than {n} random subnets within [{0.9 * budget:.3f}, {budget}] "
                         "MMACs in 200,000 draws")


def _reusable(d: Path, spec: dict, cfg) -> dict | None:
    meta_file = d / "meta.json"
    if not (d / "checkpoint.pt").exists() or not meta_file.exists():
        return None
    meta = json.loads(meta_file.read_text())
    tc = meta.get("train_config", {})
    finished = len(meta.get("metrics", {}).get("history", [])) == cfg.epochs
    same = finished and meta.get("spec", {}).get("stages") == spec["stages"] and \
        meta.get("spec", {}).get("input_size") == list(spec["input_size"]) and \
        all(tc.get(k) == getattr(cfg, k) for k in COMPARED)
    return meta if same else None


def train(d: Path, spec, cfg, ctx) -> dict:
    """Validation R@1 (best epoch, as training keeps it) of one model trained from scratch; reused when done."""
    from hetsearch.cmpnas.train import train_query

    meta = _reusable(d, spec if isinstance(spec, dict) else ctx["preset_specs"][spec], cfg)
    t = time.time()
    if meta is None:
        meta = train_query(ctx["train"], ctx["gallery"], spec, d, cfg, progress=False).meta
    hist = meta["metrics"]["history"]
    return {"val_het_r1": max(h["val_heterogeneous_r1"] for h in hist), "seconds": round(time.time() - t, 1),
            "dir": d.name}


def seed_spread(b: float, args, cfg, ctx, rows: list[dict]) -> list[dict]:
    """The first ``--spread-layout`` subnet of budget ``b`` and its preset (their ``--seed`` runs are in ``rows``)
    trained again with every ``--seed-spread`` seed: their validation R@1 per seed and its std."""
    from dataclasses import replace

    from hetsearch.cmpnas.nas.space import arch_to_spec

    lay = args.spread_layout
    first = next(r for r in rows if r["budget"] == b and r["layout"] == lay)  # the layout's subnet #0
    models = [(f"`{lay}` #0", arch_to_spec(layout_space(lay), first["arch"]), f"{b:g}-{lay}-0", first)]
    hand = next((r for r in rows if r["budget"] == b and r["layout"].startswith("preset ")), None)
    if hand:
        models.append((f"preset `{hand['arch']}`", hand["arch"], f"{b:g}-{hand['arch']}", hand))
    out = []
    for name, spec, base, done in models:
        r1 = [done["val_het_r1"]]
        for seed in args.spread_seeds:
            r1.append(train(ctx["work"] / f"{base}-s{seed}", spec, replace(cfg, seed=seed), ctx)["val_het_r1"])
            print(f"{b:g} MMACs {name}, seed {seed}: validation R@1 {r1[-1]:.2f}", flush=True)
        out.append({"budget": b, "model": name, "seeds": [args.seed, *args.spread_seeds], "r1": r1,
                    "std": statistics.stdev(r1)})
    return out


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Difference of means a - b and its standard error."""
    from .bench_nas import diff_se

    return statistics.mean(a) - statistics.mean(b), diff_se(statistics.stdev(a), len(a), statistics.stdev(b), len(b))


def run(args) -> dict:
    import torch

    from hetsearch.cmpnas.checkpoint import load_checkpoint
    from hetsearch.cmpnas.data import load_data
    from hetsearch.cmpnas.losses import DEFAULT_COMPAT
    from hetsearch.cmpnas.models import QUERY_PRESETS, resolve_spec
    from hetsearch.cmpnas.nas.space import arch_to_spec
    from hetsearch.cmpnas.train import TrainConfig, set_threads
    from hetsearch.report import markdown_table, write_json

    from .bench_nas import preset_budgets

    set_threads(args.threads)
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    compat = args.compat or DEFAULT_COMPAT
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, threads=args.threads, compat=compat, lr=0.1,
                      warmup_epochs=0.5)
    ctx = {"gallery": load_checkpoint(args.gallery, expect_kind="gallery"),
           "train": load_data(args.data, "train", args.data_dir),
           "preset_specs": {n: resolve_spec(n) for n in QUERY_PRESETS}, "work": work}
    presets, budget_of = preset_budgets()
    layouts = args.layouts.split(",")
    budgets = [float(b) for b in args.budgets.split(",")]
    rows, summary, spread = [], [], []
    for b in budgets:
        by_layout = {}
        for lay in layouts:
            for i, (arch, mm) in enumerate(draws(b, lay, args.n)):
                r = train(work / f"{b:g}-{lay}-{i}", arch_to_spec(layout_space(lay), arch), cfg, ctx)
                rows.append({"budget": b, "layout": lay, "mmacs": mm, "arch": arch, **r})
                by_layout.setdefault(lay, []).append(r["val_het_r1"])
                print(f"{b:g} MMACs {lay} #{i}: {mm:.3f} MMACs, validation R@1 {r['val_het_r1']:.2f}", flush=True)
        hand = [n for n, v in budget_of.items() if abs(v - b) < 1e-9]
        hand_r1 = None
        if hand:
            r = train(work / f"{b:g}-{hand[0]}", hand[0], cfg, ctx)
            hand_r1 = r["val_het_r1"]
            rows.append({"budget": b, "layout": f"preset {hand[0]}", "mmacs": presets[hand[0]], "arch": hand[0], **r})
        if args.spread_seeds:
            spread += seed_spread(b, args, cfg, ctx, rows)
        for lay, v in by_layout.items():
            s = {"budget": b, "layout": lay, "n": len(v), "mean": statistics.mean(v),
                 "std": statistics.stdev(v) if len(v) > 1 else float("nan"), "best": max(v), "hand": hand[0] if hand else None,
                 "hand_r1": hand_r1}
            if lay != layouts[0] and len(v) > 1 and len(by_layout[layouts[0]]) > 1:
                s["vs_first"], s["vs_first_se"] = welch(v, by_layout[layouts[0]])
            summary.append(s)
    result = {"benchmark": "layout", "split": "validation (6,000 images)", "seed": args.seed, "epochs": args.epochs,
              "compat": compat, "layouts": layouts, "budgets": budgets, "n": args.n, "summary": summary, "rows": rows,
              "seed_spread": spread, "spread_layout": args.spread_layout if spread else None}
    write_json(out.with_suffix(".json"), result)
    md_rows = [{"budget": s["budget"], "layout": s["layout"], "n": s["n"],
                "mean": f"{s['mean']:.2f} ± {s['std']:.2f}", "best": f"{s['best']:.2f}",
                "diff": f"{s['vs_first']:+.2f} ± {s['vs_first_se']:.2f}" if "vs_first" in s else "-",
                "hand": f"{s['hand']} {s['hand_r1']:.2f}" if s["hand"] else "-"} for s in summary]
    hdr = {"budget": "budget (MMACs)", "mean": "validation R@1, mean ± std", "best": "best",
           "diff": f"minus {layouts[0]} (± s.e.)", "hand": "preset, same training"}
    md = [f"# Search-space layouts: random subnets trained from scratch ({args.data}, validation split)\n\n",
          f"For each budget B and layout, {args.n} random subnets costing within [0.9 B, B] from the default space "
          f"with that layout, each trained from scratch like the hand-designed presets ({args.epochs} epochs, lr 0.1, "
          f"{compat}, seed {args.seed}); validation heterogeneous R@1 on 6,000 images (one figure: about ±0.4). "
          f"The test split is not used.\n\n",
          markdown_table(md_rows, list(md_rows[0]), headers=hdr), "\n\n",
          markdown_table([{"budget": r["budget"], "layout": r["layout"], "mmacs": r["mmacs"],
                           "r1": f"{r['val_het_r1']:.2f}", "arch": json.dumps(r["arch"]) if isinstance(r["arch"], dict)
                           else r["arch"]} for r in rows], ["budget", "layout", "mmacs", "r1", "arch"],
                         headers={"mmacs": "MMACs", "r1": "validation R@1"}, digits=3), "\n"]
    if spread:
        pool = {(x["budget"], x["layout"]): x["std"] for x in summary}
        md += ["\n## One architecture, several training seeds\n\n",
               f"The same architecture trained again with seeds {', '.join(map(str, args.spread_seeds))} (everything "
               f"else unchanged): how far training noise alone moves one model's validation R@1, next to the spread "
               f"of the {args.n} different `{args.spread_layout}` architectures above (one seed each).\n\n",
               markdown_table([{"budget": x["budget"], "model": x["model"],
                                "r1": " / ".join(f"{v:.2f}" for v in x["r1"]),
                                "mean": f"{statistics.mean(x['r1']):.2f} ± {x['std']:.2f}",
                                "pool": f"{pool[(x['budget'], args.spread_layout)]:.2f}"}
                               for x in spread], ["budget", "model", "r1", "mean", "pool"],
                              headers={"r1": f"validation R@1, seeds {', '.join(map(str, spread[0]['seeds']))}",
                                       "mean": "mean ± std over seeds",
                                       "pool": f"std over {args.n} `{args.spread_layout}` architectures"}), "\n"]
    out.with_suffix(".md").write_text("".join(md))
    plot(out.with_suffix(".png"), rows, budgets)
    print("".join(md[:3]))
    print(f"written {out.with_suffix('.json')}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    return result


def plot(path, rows, budgets):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(budgets), figsize=(5.0 * len(budgets), 4.2), squeeze=False)
    for ax, b in zip(axes[0], budgets):
        for lay in dict.fromkeys(r["layout"] for r in rows if r["budget"] == b):
            sel = [r for r in rows if r["budget"] == b and r["layout"] == lay]
            ax.scatter([r["mmacs"] for r in sel], [r["val_het_r1"] for r in sel], label=lay,
                       marker="*" if lay.startswith("preset") else "o", s=120 if lay.startswith("preset") else 30)
        ax.set_title(f"budget {b:g} MMACs", fontsize=9)
        ax.set_xlabel("MMACs")
        ax.set_ylabel("validation heterogeneous R@1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    return cli_main("bench_layout", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
