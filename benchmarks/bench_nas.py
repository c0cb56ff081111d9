"""CMP-NAS benchmark: the paper-style table on Fashion-MNIST, evaluated on the TEST split.

Rows: the paragon (gallery model on both sides); hand-designed compact models on both sides (homogeneous,
trained alone); the same models trained for compatibility with the default loss (BCT-style) and paired
with the gallery; CMP-NAS (supernet + evolutionary search + finetune) at the same MMACs budgets, with
inherited weights and finetuned; and random search with the same number of evaluations, finetuned alike.
Columns: MMACs, cost reduction vs the paragon, R@1, gap to the paragon in points.

    python -m benchmarks.bench_nas --gallery runs/gallery --out benchmarks/results           # ~35 min, 2 cores
    python -m benchmarks.bench_nas --quick --gallery runs/gallery --out benchmarks/results   # a few minutes

Writes OUT/nas.json, OUT/nas.md and OUT/nas.png; intermediate models go to OUT/nas-work/ and are reused
by a rerun with --reuse.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from hetsearch.errors import HetsearchError

FULL = {"max_train_samples": 15000, "query_epochs": 3, "supernet_epochs": 3, "finetune_epochs": 2,
        "population": 16, "generations": 5, "num_random": 1, "test_samples": None, "max_val_samples": 1000}
QUICK = {"max_train_samples": 1500, "query_epochs": 1, "supernet_epochs": 1, "finetune_epochs": 1,
         "population": 6, "generations": 1, "num_random": 1, "test_samples": 2000, "max_val_samples": 400}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_nas", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m benchmarks.bench_nas --gallery runs/gallery --out benchmarks/results\n"
               "  python -m benchmarks.bench_nas --quick --gallery runs/gallery --out runs/bench-quick\n"
               "  python -m benchmarks.bench_nas --gallery runs/gallery --supernet-epochs 6 --finetune-epochs 3 "
               "--max-train-samples 30000 --reuse\n")
    p.add_argument("--gallery", required=True, help="trained gallery checkpoint (the paragon)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--quick", action="store_true", help="tiny settings: a few minutes, numbers not meaningful")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--budgets", default=None, help="MMACs budgets (default: the MMACs of the compact presets)")
    for key, val in FULL.items():
        flag = "--" + key.replace("_", "-")
        p.add_argument(flag, type=int, default=None, help=f"default {val} ({QUICK[key]} with --quick)")
    p.add_argument("--compat", default=None, help="compatibility loss (default: the foundation's)")
    p.add_argument("--reward", default="heterogeneous")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reuse", action="store_true", help="reuse models already in OUT/nas-work")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key, val in base.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    return args


def _evaluate(ck, gallery_ck, test, g_test):
    """Test R@1: heterogeneous (query model vs gallery embeddings) and homogeneous (query model both sides)."""
    from hetsearch.cmpnas.embed import embed
    from hetsearch.cmpnas.metrics import retrieval_metrics

    q = embed(ck.model, test)
    try:
        from hetsearch.cmpnas.evaluate import evaluate_pair

        het = evaluate_pair(ck, gallery_ck, test, ks=(1,), verification=False, query_emb=q, gallery_emb=g_test)["recall_at_1"]
    except ImportError:  # pragma: no cover - older checkouts
        het = retrieval_metrics(q, g_test, test.labels, ks=(1,))["recall_at_1"]
    homo = retrieval_metrics(q, q, test.labels, ks=(1,))["recall_at_1"]
    return het, homo


def run(args) -> dict:
    import torch

    from hetsearch.cmpnas.checkpoint import load_checkpoint
    from hetsearch.cmpnas.data import load_data, stratified_sample
    from hetsearch.cmpnas.embed import embed
    from hetsearch.cmpnas.flops import count_macs
    from hetsearch.cmpnas.losses import DEFAULT_COMPAT
    from hetsearch.cmpnas.metrics import retrieval_metrics
    from hetsearch.cmpnas.models import QUERY_PRESETS, build_model
    from hetsearch.cmpnas.nas_train import SupernetTrainConfig, train_supernet
    from hetsearch.cmpnas.search import SearchConfig, budget_dirname, finetune_subnet, run_search
    from hetsearch.cmpnas.train import TrainConfig, set_threads, train_query
    from hetsearch.report import format_table, markdown_table, write_json

    t_start = time.time()
    set_threads(args.threads)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = out / "nas-work"
    work.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    compat = args.compat or DEFAULT_COMPAT
    gck = load_checkpoint(args.gallery, expect_kind="gallery")
    train_data = load_data(args.data, "train", args.data_dir)
    test = load_data(args.data, "test", args.data_dir)
    if args.test_samples:
        test = test.subset(stratified_sample(test.labels, args.test_samples, args.seed), "bench")
    g_test = embed(gck.model, test, progress="embed test (gallery)" if progress else False)
    paragon_r1 = retrieval_metrics(g_test, g_test, test.labels, ks=(1,))["recall_at_1"]
    paragon_mmacs = gck.macs / 1e6
    rows, timings = [], {}

    def row(method, model, mmacs, r1, homo=None, **extra):
        rows.append({"method": method, "model": model, "mmacs": mmacs, "cost_reduction": paragon_mmacs / mmacs,
                     "r1": r1, "gap": paragon_r1 - r1, "homo_r1": homo, **extra})

    row("paragon (gallery both sides)", gck.name, paragon_mmacs, paragon_r1, paragon_r1)

    def cfg(epochs, compat_name, lr=0.1, warmup=0.5):
        return TrainConfig(epochs=epochs, max_train_samples=args.max_train_samples, max_val_samples=1000,
                           seed=args.seed, threads=args.threads, compat=compat_name, lr=lr, warmup_epochs=warmup)

    def trained(d: Path, fn):
        if args.reuse and (d / "checkpoint.pt").exists():
            return load_checkpoint(d)
        t = time.time()
        ck = fn()
        timings[d.name] = round(time.time() - t, 1)
        return ck

    # hand-designed compact models: alone (homogeneous) and with the compatibility loss (BCT-style)
    preset_mmacs = {}
    for name in QUERY_PRESETS:
        preset_mmacs[name] = count_macs(build_model(name)) / 1e6
        ck = trained(work / f"{name}-independent", lambda: train_query(
            train_data, gck, name, work / f"{name}-independent", cfg(args.query_epochs, "independent"), progress=progress))
        het, homo = _evaluate(ck, gck, test, g_test)
        row("homogeneous compact (alone, both sides)", name, preset_mmacs[name], homo, homo, het_r1=het)
    for name in QUERY_PRESETS:
        ck = trained(work / f"{name}-{compat}", lambda: train_query(
            train_data, gck, name, work / f"{name}-{compat}", cfg(args.query_epochs, compat), progress=progress))
        het, homo = _evaluate(ck, gck, test, g_test)
        row(f"hand-designed + {compat} (vs gallery)", name, preset_mmacs[name], het, homo)

    # CMP-NAS: supernet, one search for every budget, finetune the winners (and the random baseline's)
    # default budgets: each preset's MMACs, rounded up to 3 decimals (a subnet within it is "matched")
    budgets = ([float(b) for b in args.budgets.split(",")] if args.budgets
               else sorted(math.ceil(m * 1000) / 1000 for m in preset_mmacs.values()))
    sn = work / "supernet"
    if not (args.reuse and (sn / "supernet.pt").exists()):
        t = time.time()
        train_supernet(train_data, gck, sn, cfg(args.supernet_epochs, compat),
                       ncfg=SupernetTrainConfig(num_random=args.num_random), progress=progress, data_name=args.data,
                       gallery_ref=str(args.gallery))
        timings["supernet"] = round(time.time() - t, 1)
    se = work / "search"
    if args.reuse and (se / "search.json").exists():
        search = json.loads((se / "search.json").read_text())
    else:
        t = time.time()
        search = run_search(sn, train_data, gck, se, budgets, reward=args.reward,
                            scfg=SearchConfig(population=args.population, generations=args.generations, seed=args.seed),
                            max_val_samples=args.max_val_samples, progress=progress)
        timings["search"] = round(time.time() - t, 1)
    for tag, label in (("", "CMP-NAS"), ("random/", "random search")):
        for b in search["budgets"]:
            sub_dir = se / tag / budget_dirname(b)
            if tag == "":
                ck = load_checkpoint(sub_dir)
                het, homo = _evaluate(ck, gck, test, g_test)
                row("CMP-NAS, inherited weights (no finetune)", ck.name, ck.macs / 1e6, het, homo, budget=b)
            ft_dir = work / f"finetune-{'random-' if tag else ''}{b:g}"
            ck = trained(ft_dir, lambda: finetune_subnet(train_data, sn, sub_dir, gck, ft_dir,
                                                           cfg(args.finetune_epochs, compat, lr=0.03, warmup=0.2),
                                                           progress=progress))
            het, homo = _evaluate(ck, gck, test, g_test)
            row(f"{label} + finetune (vs gallery)", ft_dir.name, ck.macs / 1e6, het, homo, budget=b,
                evaluations=search["evaluations"] if not tag else search["random"]["evaluations"])

    result = {
        "benchmark": "cmpnas", "data": f"{args.data} (test split, {len(test)} images)", "quick": bool(args.quick),
        "paragon": {"model": gck.name, "mmacs": paragon_mmacs, "r1": paragon_r1},
        "settings": {k: getattr(args, k) for k in ("max_train_samples", "query_epochs", "supernet_epochs",
                                                    "finetune_epochs", "population", "generations", "num_random",
                                                    "test_samples", "max_val_samples", "reward", "seed", "threads")},
        "compat": compat, "budgets": budgets, "rows": rows, "timings_s": timings,
        "search": {"evaluations": search["evaluations"], "pareto": search["pareto"],
                   "random_evaluations": (search.get("random") or {}).get("evaluations")},
        "targets": targets(rows, paragon_r1), "seconds": round(time.time() - t_start, 1),
    }
    write_json(out / "nas.json", result)
    cols = ["method", "model", "mmacs", "cost_reduction", "r1", "gap", "homo_r1"]
    hdr = {"mmacs": "MMACs", "cost_reduction": "cost reduction (x)", "r1": "R@1", "gap": "gap (pts)",
           "homo_r1": "homogeneous R@1"}
    md = [f"# CMP-NAS on {result['data']}\n",
          f"Paragon: {gck.name}, {paragon_mmacs:.2f} MMACs, R@1 {paragon_r1:.2f}. Compatibility loss: {compat}. "
          f"Search: {search['evaluations']} evaluations (random baseline: the same number).\n",
          markdown_table(rows, cols, headers=hdr), "\n## Targets\n",
          *[f"- {t['target']}: **{'met' if t['met'] else 'not met'}** — {t['detail']}\n" for t in result["targets"]],
          f"\nSettings: {json.dumps(result['settings'])}; wall time {result['seconds']:.0f} s.\n"]
    (out / "nas.md").write_text("".join(md))
    plot(out / "nas.png", rows, paragon_r1, result["data"])
    print(format_table(rows, cols, headers=hdr))
    for t in result["targets"]:
        print(f"{t['target']}: {'met' if t['met'] else 'not met'} ({t['detail']})")
    print(f"written {out / 'nas.json'}, {out / 'nas.md'}, {out / 'nas.png'} in {result['seconds']:.0f} s")
    return result


def targets(rows, paragon_r1) -> list[dict]:
    nas = [r for r in rows if r["method"].startswith("CMP-NAS + finetune")]
    ok20 = [r for r in nas if r["cost_reduction"] >= 20 and r["gap"] <= 1.0]
    best = max(ok20, key=lambda r: r["cost_reduction"], default=None)
    out = [{"target": ">= 20x cost reduction within 1.0 point R@1 of the paragon", "met": bool(ok20),
            "detail": (f"{best['cost_reduction']:.0f}x at gap {best['gap']:.2f}" if best else
                       "; ".join(f"{r['cost_reduction']:.0f}x gap {r['gap']:.2f}" for r in nas))}]
    hand = [r for r in rows if r["method"].startswith("hand-designed")]
    cmp = []
    for h in hand:
        match = [r for r in nas if r.get("budget") is not None and 0 <= r["budget"] - h["mmacs"] < 1e-3]
        if match:
            cmp.append((h, match[0]))
    out.append({"target": "CMP-NAS >= hand-designed + compat loss at matched MMACs",
                "met": bool(cmp) and all(n["r1"] >= h["r1"] for h, n in cmp),
                "detail": "; ".join(f"{h['model']} {h['r1']:.2f} vs CMP-NAS {n['r1']:.2f} ({n['mmacs']:.3f} MMACs)"
                                    for h, n in cmp)})
    rnd = {r.get("budget"): r for r in rows if r["method"].startswith("random search")}
    pairs = [(n, rnd[n["budget"]]) for n in nas if n.get("budget") in rnd]
    out.append({"target": "CMP-NAS >= random search at equal evaluations",
                "met": bool(pairs) and all(n["r1"] >= r["r1"] for n, r in pairs),
                "detail": "; ".join(f"<= {n['budget']:g}: {n['r1']:.2f} vs {r['r1']:.2f}" for n, r in pairs)})
    return out


def plot(path, rows, paragon_r1, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    styles = [("homogeneous", "s", "tab:gray"), ("hand-designed", "o", "tab:orange"),
              ("CMP-NAS, inherited", "^", "tab:cyan"), ("CMP-NAS +", "*", "tab:red"), ("random search", "x", "tab:green")]
    for prefix, marker, color in styles:
        sel = sorted([r for r in rows if r["method"].startswith(prefix)], key=lambda r: r["mmacs"])
        if sel:
            ax.plot([r["mmacs"] for r in sel], [r["r1"] for r in sel], marker=marker, color=color, ms=8 if marker == "*" else 6,
                    label=sel[0]["method"], linestyle="-" if prefix.startswith("CMP-NAS +") else ":")
    ax.axhline(paragon_r1, color="k", lw=1, ls="--", label=f"paragon {paragon_r1:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("query model MMACs (log)")
    ax.set_ylabel("R@1 on the test split (%)")
    ax.set_title(f"CMP-NAS vs baselines — {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except HetsearchError as exc:
        print(f"bench_nas: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
