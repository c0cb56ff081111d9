"""Does a supernet rank subnets? Kendall τ between inherited-weight and finetuned heterogeneous R@1.

A search is only as good as the supernet's ranking: if the subnet that looks best with inherited weights is
not the best after finetuning, evolution optimises noise. For each supernet given, the same ``--subnets``
random subnets spread over the MMACs range (one per quantile bin of the space's MACs distribution) are

1. extracted with inherited weights, BatchNorm-recalibrated and evaluated (heterogeneous R@1 against the
   gallery model on the validation split carved from the training data, the search's reward), then
2. finetuned for ``--finetune-epochs`` with the default compatibility loss and evaluated the same way.

Kendall τ (τ-b) between the two lists is reported per supernet; since R@1 grows with MMACs, τ is also
reported within MMACs-matched pairs (pairs whose MMACs differ by less than ``--pair-ratio``), which is the
ranking a search under a budget needs. Only validation data are used: a supernet training method is chosen
by this number, so the test split stays untouched.

    python -m benchmarks.bench_rank --gallery runs/gallery --supernet old=runs/sn-old --supernet new=runs/sn-new

Writes OUT/rank.json, OUT/rank.md and OUT/rank.png.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

from hetsearch.cmpnas.nas.latency import kendall_tau  # τ-b, shared with the latency models
from hetsearch.report import format_table, markdown_table, write_json


def pair_agreement(mmacs, x, y, ratio: float) -> tuple[float, int]:
    """Share of MMACs-matched pairs (max/min < ratio) that the two lists order the same way."""
    agree = total = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            lo, hi = sorted((mmacs[i], mmacs[j]))
            if hi / lo < ratio and x[i] != x[j] and y[i] != y[j]:
                total += 1
                agree += int(np.sign(x[i] - x[j]) == np.sign(y[i] - y[j]))
    return (agree / total if total else float("nan")), total


def spread_archs(cfg, n: int, seed: int, max_mmacs: float | None) -> list[dict]:
    """``n`` random subnets up to ``max_mmacs``, one from each MMACs quantile bin (so they span the budget range)."""
    from hetsearch.cmpnas.nas.space import arch_macs, random_arch

    rng = random.Random(seed)
    pool = [random_arch(cfg, rng) for _ in range(6000)]
    if max_mmacs:
        pool = [a for a in pool if arch_macs(cfg, a) <= max_mmacs * 1e6]
    macs = np.array([arch_macs(cfg, a) for a in pool])
    edges = np.quantile(macs, np.linspace(0, 1, n + 1))
    out = []
    for k in range(n):
        idx = [i for i in range(len(pool)) if edges[k] <= macs[i] <= edges[k + 1]]
        out.append(pool[rng.choice(idx)])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", required=True)
    ap.add_argument("--supernet", action="append", required=True, help="NAME=DIR (repeat)")
    ap.add_argument("--subnets", type=int, default=12)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--finetune-lr", type=float, default=0.03)
    ap.add_argument("--max-mmacs", type=float, default=1.4, help="subnets up to this cost (the budget range)")
    ap.add_argument("--pair-ratio", type=float, default=1.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench-rank")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--max-train-samples", type=int, default=None)
    args = ap.parse_args(argv)

    import torch

    from hetsearch.cmpnas.checkpoint import load_checkpoint
    from hetsearch.cmpnas.data import load_data
    from hetsearch.cmpnas.embed import embed
    from hetsearch.cmpnas.metrics import recall_at_1
    from hetsearch.cmpnas.nas.search import SubnetEvaluator, finetune_subnet, prepare_search_data
    from hetsearch.cmpnas.nas.space import arch_key, arch_macs
    from hetsearch.cmpnas.nas.supernet import load_supernet
    from hetsearch.cmpnas.train import TrainConfig

    torch.set_num_threads(1)
    t0 = time.time()
    gck = load_checkpoint(args.gallery, expect_kind="gallery")
    data = load_data("fashion-mnist", "train")
    work = Path(args.work)
    results = {}
    archs = None
    for item in args.supernet:
        name, _, d = item.partition("=")
        net, meta = load_supernet(d)
        if archs is None:
            cfg = net.config
            archs = spread_archs(cfg, args.subnets, args.seed, args.max_mmacs)
        calib, val, g_val = prepare_search_data(meta, data, gck, None, None, None, 500)
        ev = SubnetEvaluator(net, calib, val, g_val)
        rows = []
        for i, a in enumerate(archs):
            inh = ev(a)["het_r1"]
            ft_dir = work / name / f"subnet-{i:02d}"
            done = (ft_dir / "checkpoint.pt").exists() and load_checkpoint(ft_dir).meta.get("nas", {}).get("arch") == a
            if done:
                ck = load_checkpoint(ft_dir)
            else:
                tc = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, warmup_epochs=0.2, threads=1,
                                 seed=args.seed, max_train_samples=args.max_train_samples)
                ck = finetune_subnet(data, d, {"arch": a}, gck, ft_dir, tc, progress=False)
            ft = recall_at_1(embed(ck.model, val), g_val, val.labels)
            rows.append({"subnet": i, "mmacs": arch_macs(net.config, a) / 1e6, "inherited_het_r1": inh,
                         "finetuned_het_r1": ft, "arch": arch_key(a)})
            print(f"[{name}] subnet {i}: {rows[-1]['mmacs']:.3f} MMACs inherited {inh:.2f} finetuned {ft:.2f}", flush=True)
        x = [r["inherited_het_r1"] for r in rows]
        y = [r["finetuned_het_r1"] for r in rows]
        m = [r["mmacs"] for r in rows]
        agree, npairs = pair_agreement(m, x, y, args.pair_ratio)
        results[name] = {"supernet": Path(d).name, "schedule": meta.get("schedule", "sandwich"),
                         "epochs": meta.get("epochs_done"),
                         "train_config": {k: (meta.get("train_config") or {}).get(k) for k in
                                          ("epochs", "max_train_samples", "num_random", "schedule", "lr")},
                         "rows": rows, "kendall_tau": kendall_tau(x, y),
                         "kendall_tau_vs_mmacs_finetuned": kendall_tau(m, y),
                         "matched_pair_agreement": agree, "matched_pairs": npairs,
                         "mean_inherited": float(np.mean(x)), "mean_finetuned": float(np.mean(y))}
    res = {"benchmark": "rank", "gallery": gck.name, "subnets": len(archs), "finetune_epochs": args.finetune_epochs,
           "validation_images": len(val), "results": results, "seconds": round(time.time() - t0, 1)}
    out = Path(args.out)
    write_json(out / "rank.json", res)
    summary = [{"supernet": k, "schedule": v["schedule"], "epochs": v["epochs"], "Kendall tau": v["kendall_tau"],
                "matched-pair agreement": v["matched_pair_agreement"], "pairs": v["matched_pairs"],
                "mean inherited R@1": v["mean_inherited"], "mean finetuned R@1": v["mean_finetuned"]}
               for k, v in results.items()]
    md = ["# Does the supernet rank subnets?", "",
          f"{len(archs)} random subnets spread over the MMACs range, the same for every supernet; heterogeneous R@1 "
          f"on the validation split ({len(val)} images, carved from the training data) with inherited weights "
          f"(BatchNorm recalibrated) and after {args.finetune_epochs} finetune epochs.", "",
          markdown_table(summary, digits=3), ""]
    for k, v in results.items():
        md += [f"## {k}", "", markdown_table([{kk: vv for kk, vv in r.items() if kk != "arch"} for r in v["rows"]], digits=2), ""]
    md.append(f"Wall time {res['seconds'] / 60:.1f} min.")
    (out / "rank.md").write_text("\n".join(md) + "\n")
    _plot(out / "rank.png", results)
    print(format_table(summary, digits=3))
    return 0


def _plot(path, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    for (name, v), c in zip(results.items(), ["tab:gray", "tab:red", "tab:blue", "tab:green"]):
        ax.scatter([r["inherited_het_r1"] for r in v["rows"]], [r["finetuned_het_r1"] for r in v["rows"]], color=c,
                   label=f"{name}: τ = {v['kendall_tau']:.2f}")
    ax.set_xlabel("inherited-weight heterogeneous R@1 (val, %)")
    ax.set_ylabel("after finetuning (val, %)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Supernet ranking: inherited vs finetuned", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
