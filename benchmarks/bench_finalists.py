"""Does the re-ranking pick the right finalist, and does the pool hold a subnet that beats the hand-designed one?

``bench_nas --rerank K`` finetunes each budget's K finalists (evolution's and random search's alike) for one
epoch and finetunes the best of them in full. This benchmark finetunes *every* finalist in full (the same epochs,
learning rate and seed as ``bench_nas``'s searched rows) and compares, on the VALIDATION split only (the test split
is never touched here):

- the one-epoch score that chose the winner vs the full finetune's validation R@1 (Kendall τ per budget and seed);
- evolution's finalists vs random search's (mean of their full-finetune R@1);
- the best finalist ("oracle pick"), the re-ranking's pick and the hand-designed model with the compatibility loss
  (trained by ``bench_nas`` on the same seed's split) — whether a better ranking could close the gap to it.

    python -m benchmarks.bench_finalists --work runs/bench-nas/nas-work --supernet runs/sn-new --gallery runs/gallery \\
        --seeds 0,1 --budgets 1.299,0.401

Every full finetune lands in WORK/seed-S/full-[random-]B/<finalist dir>/ and is reused by a rerun when its
checkpoint was trained with the same settings on the same architecture. Writes OUT.json, OUT.md and OUT.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from hetsearch.errors import HetsearchError


def parse_args(argv=None):
    from hetsearch.cmpnas.nas.search import FINETUNE_LR

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_finalists", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="bench_nas's work folder (OUT/nas-work) after a --rerank run")
    p.add_argument("--supernet", required=True)
    p.add_argument("--gallery", required=True)
    p.add_argument("--seeds", default="0")
    p.add_argument("--budgets", default="1.299,0.401", help="budgets whose rerank-*/ folders to study")
    p.add_argument("--epochs", type=int, default=8, help="full finetune epochs (bench_nas's --epochs)")
    p.add_argument("--finetune-lr", type=float, default=FINETUNE_LR)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/nas-finalists")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(max_train_samples=None, max_val_samples=None)  # bench_nas's full settings (for its _ft_cfg)
    return p.parse_args(argv)


COMPARED = ("epochs", "lr", "warmup_epochs", "seed", "max_train_samples", "max_val_samples", "compat")


def _same_training(meta: dict, arch: dict, cfg) -> bool:
    from hetsearch.cmpnas.nas.space import arch_key

    trained_cfg = meta.get("train_config", {})
    trained = meta.get("nas", {}).get("arch")
    finished = len(meta.get("metrics", {}).get("history", [])) == cfg.epochs  # not a run stopped half-way
    return (finished and trained is not None and arch_key(trained) == arch_key(arch)
            and all(trained_cfg.get(k) == getattr(cfg, k) for k in COMPARED))


def _full_finetunes(args, ctx, seed: int, budget: float) -> list[dict]:
    """Every finalist of one seed and budget (both methods), finetuned in full; reused when already done."""
    from hetsearch.cmpnas.nas.rerank import finalist_dir
    from hetsearch.cmpnas.nas.search import finetune_subnet
    from hetsearch.cmpnas.nas.space import arch_key

    from .bench_nas import _ft_cfg

    cfg = _ft_cfg(args, seed, ctx)  # bench_nas's own finetune settings for its searched rows
    rows = []
    seed_dir = Path(args.work) / f"seed-{seed}"
    for method, tag in (("evolution", ""), ("random", "random-")):
        rr = seed_dir / f"rerank-{tag}{budget:g}" / "rerank.json"
        if not rr.exists():
            raise HetsearchError(f"{rr} is missing: run bench_nas with --rerank for seed {seed} first")
        rerank = json.loads(rr.read_text())
        chosen = arch_key(rerank["winner"]["arch"])
        for f in rerank["finalists"]:
            name = finalist_dir(f["arch"])  # records of older re-rank runs carry no "dir"
            d = seed_dir / f"full-{tag}{budget:g}" / name
            t = time.time()
            meta = json.loads((d / "meta.json").read_text()) if (d / "checkpoint.pt").exists() else None
            if meta is not None and _same_training(meta, f["arch"], cfg):
                print(f"reusing {d}", flush=True)
            else:
                meta = finetune_subnet(ctx["train"], args.supernet, {"arch": f["arch"]}, ctx["gallery"], d, cfg,
                                       progress=not args.no_progress).meta
                print(f"seed {seed} {budget:g} {method} {name}: {time.time() - t:.0f} s", flush=True)
            rows.append({"seed": seed, "budget": budget, "method": method, "dir": name, "mmacs": f["mmacs"],
                         "inherited_r1": f["reward"], "short_r1": f["short_r1"],
                         "full_r1": float(meta["metrics"]["val_heterogeneous_r1"]),
                         "chosen": arch_key(f["arch"]) == chosen})
    return rows


def _hand_r1(work: Path, seed: int, budget: float, compat: str) -> float | None:
    from .bench_nas import preset_budgets

    name = next((n for n, b in preset_budgets()[1].items() if b == budget), None)
    p = work / f"seed-{seed}" / f"{name}-{compat}" / "meta.json"
    if not name or not p.exists():
        return None
    return float(json.loads(p.read_text())["metrics"]["val_heterogeneous_r1"])


def summarise(rows: list[dict], work: Path, compat: str) -> list[dict]:
    from hetsearch.cmpnas.nas.latency import kendall_tau

    out = []
    for (seed, budget) in sorted({(r["seed"], r["budget"]) for r in rows}, key=lambda k: (-k[1], k[0])):
        grp = [r for r in rows if r["seed"] == seed and r["budget"] == budget]
        full = [r["full_r1"] for r in grp]
        evo = [r["full_r1"] for r in grp if r["method"] == "evolution"]
        rnd = [r["full_r1"] for r in grp if r["method"] == "random"]
        picks = {m: next(r["full_r1"] for r in grp if r["method"] == m and r["chosen"]) for m in ("evolution", "random")}
        by_inherited = {m: max((r for r in grp if r["method"] == m), key=lambda r: r["inherited_r1"])["full_r1"]
                        for m in ("evolution", "random")}
        hand = _hand_r1(work, seed, budget, compat)
        out.append({
            "seed": seed, "budget": budget, "finalists": len(grp),
            "tau_short_full": kendall_tau([r["short_r1"] for r in grp], full),
            "tau_inherited_full": kendall_tau([r["inherited_r1"] for r in grp], full),
            "tau_mmacs_full": kendall_tau([r["mmacs"] for r in grp], full),
            "full_min": min(full), "full_max": max(full),
            "evolution_mean": statistics.fmean(evo), "random_mean": statistics.fmean(rnd),
            "evolution_pick": picks["evolution"], "random_pick": picks["random"],
            "evolution_by_inherited": by_inherited["evolution"], "random_by_inherited": by_inherited["random"],
            "oracle": max(full),
            "hand": hand, "oracle_minus_hand": None if hand is None else max(full) - hand,
        })
    return out


def plot(path: Path, rows: list[dict], summary: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({s["budget"] for s in summary}, reverse=True)
    seeds = sorted({s["seed"] for s in summary})
    fig, axes = plt.subplots(len(budgets), len(seeds), figsize=(4.2 * len(seeds), 3.6 * len(budgets)), squeeze=False)
    for s in summary:  # one row per budget, one column per seed
        seed, budget = s["seed"], s["budget"]
        ax = axes[budgets.index(budget)][seeds.index(seed)]
        for method, colour in (("evolution", "tab:blue"), ("random", "tab:orange")):
            pts = [r for r in rows if r["seed"] == seed and r["budget"] == budget and r["method"] == method]
            ax.scatter([r["short_r1"] for r in pts], [r["full_r1"] for r in pts], c=colour, label=method)
            for r in pts:
                if r["chosen"]:
                    ax.scatter([r["short_r1"]], [r["full_r1"]], facecolors="none", edgecolors="k", s=160)
        if s["hand"] is not None:
            ax.axhline(s["hand"], color="tab:green", ls="--", label="hand-designed + compat")
        ax.set_title(f"<= {budget:g} MMACs, seed {seed} (tau {s['tau_short_full']:+.2f})")
        ax.set_xlabel("val R@1 after the 1-epoch re-rank")
        ax.set_ylabel("val R@1 after the full finetune")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Finalists: re-rank score vs full finetune (circled: the re-ranking's pick)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, settings: dict, rows: list[dict], summary: list[dict], t0: float) -> list[str]:
    from hetsearch.report import markdown_table, write_json

    write_json(out.with_suffix(".json"), {"benchmark": "nas-finalists", "settings": settings, "summary": summary,
                                          "rows": rows, "seconds": round(time.time() - t0, 1)})
    lines = [
        "# Re-ranking finalists: which one would a full finetune have picked?", "",
        f"Every finalist of `bench_nas --rerank` (evolution's and random search's) finetuned in full "
        f"({settings['epochs']} epochs, lr {settings['finetune_lr']}, the same settings and seed as bench_nas's "
        f"searched rows) from supernet `{settings['supernet']}`. **Validation split only** (6,000 images carved from "
        "the training data by the seed; one R@1 there has a binomial standard error of about 0.4 points). `hand`: "
        "the hand-designed preset with the compatibility loss, trained by bench_nas on the same split. τ: Kendall's "
        "τ-b over all finalists of a budget and seed. `*_pick`: the finalist the one-epoch re-rank chose; "
        "`*_by_inherited`: the finalist with the best inherited-weight reward; `oracle`: the best finalist of both "
        "methods after the full finetune.", "",
        markdown_table(summary), "",
        "## Finalists", "",
        markdown_table(rows, digits=3), "",
        f"Wall time of this run {(time.time() - t0) / 60:.1f} min (finetunes reused when already done).",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(out.with_suffix(".png"), rows, summary)
    return lines


def main(argv=None) -> int:
    import torch

    from hetsearch.cmpnas.checkpoint import load_checkpoint
    from hetsearch.cmpnas.data import load_data
    from hetsearch.cmpnas.losses import DEFAULT_COMPAT
    from hetsearch.cmpnas.train import set_threads

    args = parse_args(argv)
    set_threads(args.threads)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    work = Path(args.work)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from .bench_nas import _ft_cfg

    settings = {"epochs": args.epochs, "finetune_lr": args.finetune_lr,
                "warmup_epochs": _ft_cfg(args, 0, {"compat": DEFAULT_COMPAT}).warmup_epochs,
                "supernet": Path(args.supernet).name, "work": work.as_posix(), "split": "validation"}
    rows: list[dict] = []
    try:
        ctx = {"gallery": load_checkpoint(args.gallery, expect_kind="gallery"),
               "train": load_data(args.data, "train", args.data_dir), "compat": DEFAULT_COMPAT}
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            for budget in [float(b) for b in args.budgets.split(",") if b.strip()]:
                rows += _full_finetunes(args, ctx, seed, budget)
                lines = write_report(out, settings, rows, summarise(rows, work, ctx["compat"]), t0)  # as groups finish
    except HetsearchError as exc:
        print(f"bench_finalists: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
