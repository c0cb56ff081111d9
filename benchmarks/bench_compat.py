"""Parameter-level compatibility on Fashion-MNIST: the Foundation's numbers.

For a trained gallery (paragon) model: the paragon's R@1; every query preset trained with the default
compatibility loss (homogeneous and heterogeneous R@1, the compatibility criterion het > hom); and one
preset trained under every compatibility loss. Evaluated leave-one-out on the full test split.

    python -m benchmarks.bench_compat --gallery runs/gallery               # about 40 min on 2 cores
    python -m benchmarks.bench_compat --gallery runs/gallery --quick       # a few minutes, subsets

Writes benchmarks/results/compat.json, compat.md and compat.png. Trained query models go to
--work (default runs/bench-compat) and are reused when present (--fresh retrains).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hetsearch.report import markdown_table, format_table, write_json

COLS = ["model", "compat", "MMACs", "cost reduction", "hom R@1", "het R@1", "het - hom", "het - indep hom",
        "gap to paragon", "het mAP@R", "TAR@1e-3", "criterion"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", required=True, help="trained gallery checkpoint")
    ap.add_argument("--work", default="runs/bench-compat")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--max-train-samples", type=int, default=None)
    ap.add_argument("--test-samples", type=int, default=None, help="evaluate on a subset (default: all 10,000)")
    ap.add_argument("--presets", default="mbv3-large,mbv3-small,mbv3-tiny")
    ap.add_argument("--loss-preset", default="mbv3-small", help="the preset trained under every loss")
    ap.add_argument("--losses", default="independent,bct,l2,contrastive,bct-l2")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.max_train_samples, args.test_samples = 1, args.max_train_samples or 3000, args.test_samples or 1000

    from hetsearch.cmpnas.checkpoint import load_checkpoint
    from hetsearch.cmpnas.data import load_data, stratified_sample
    from hetsearch.cmpnas.embed import embed
    from hetsearch.cmpnas.evaluate import evaluate_pair
    from hetsearch.cmpnas.losses import DEFAULT_COMPAT
    from hetsearch.cmpnas.train import TrainConfig, set_threads, train_query

    set_threads(args.threads)
    t0 = time.time()
    train = load_data("fashion-mnist", "train")
    test = load_data("fashion-mnist", "test")
    if args.test_samples:
        test = test.subset(stratified_sample(test.labels, args.test_samples, 0), str(args.test_samples))
    g = load_checkpoint(args.gallery, expect_kind="gallery")
    g_emb = embed(g.model, test, progress="embed gallery")
    par = evaluate_pair(g, g, test, query_emb=g_emb, gallery_emb=g_emb)
    rows = [{"model": "paragon (gallery)", "compat": "-", "MMACs": g.macs / 1e6, "cost reduction": 1.0,
             "hom R@1": par["recall_at_1"], "het R@1": par["recall_at_1"], "het - hom": 0.0, "gap to paragon": 0.0,
             "het mAP@R": par["map_at_r"], "TAR@1e-3": par["verification"]["tar_at_far_0.001"], "criterion": "-"}]
    # every preset with the default loss and on its own (independent: the homogeneous alternative)
    runs = [(p, c) for p in args.presets.split(",") for c in ("independent", DEFAULT_COMPAT)]
    runs += [(args.loss_preset, c) for c in args.losses.split(",") if (args.loss_preset, c) not in runs]
    indep_hom: dict[str, float] = {}
    work = Path(args.work)
    for arch, compat in runs:
        out = work / f"{arch}-{compat}"
        if args.fresh or not (out / "checkpoint.pt").exists():
            cfg = TrainConfig(epochs=args.epochs, max_train_samples=args.max_train_samples, compat=compat,
                              threads=args.threads)
            q = train_query(train, g, arch, out, cfg)
        else:
            q = load_checkpoint(out)
        q_emb = embed(q.model, test)
        hom = evaluate_pair(q, q, test, query_emb=q_emb, gallery_emb=q_emb, verification=False)
        het = evaluate_pair(q, g, test, query_emb=q_emb, gallery_emb=g_emb)
        if compat == "independent":
            indep_hom[arch] = hom["recall_at_1"]
        ih = indep_hom.get(arch)
        rows.append({"model": arch, "compat": compat, "MMACs": q.macs / 1e6, "cost reduction": g.macs / q.macs,
                     "hom R@1": hom["recall_at_1"], "het R@1": het["recall_at_1"],
                     "het - hom": het["recall_at_1"] - hom["recall_at_1"],
                     "het - indep hom": None if ih is None else het["recall_at_1"] - ih,
                     "gap to paragon": het["recall_at_1"] - par["recall_at_1"], "het mAP@R": het["map_at_r"],
                     "TAR@1e-3": het["verification"]["tar_at_far_0.001"],
                     "criterion": _criterion(het["recall_at_1"], hom["recall_at_1"], ih)})
        print(format_table(rows[-1:], COLS, digits=2), flush=True)
    print(format_table(rows, COLS, digits=2))
    out_dir = Path(args.out)
    result = {"gallery": str(args.gallery), "gallery_space_id": g.space_id, "epochs": args.epochs,
              "max_train_samples": args.max_train_samples, "n_queries": len(test), "rows": rows,
              "seconds": round(time.time() - t0, 1), "quick": args.quick}
    name = "compat-quick" if args.quick else "compat"
    write_json(out_dir / f"{name}.json", result)
    md = [f"# Parameter-level compatibility (Fashion-MNIST test split, {len(test)} queries, leave-one-out)", "",
          f"Gallery model: {g.macs / 1e6:.2f} MMACs. Query models trained {args.epochs} epochs"
          f"{f' on {args.max_train_samples} images' if args.max_train_samples else ''}. "
          "Criterion: heterogeneous R@1 (query model vs gallery embeddings) above homogeneous R@1 — of the same "
          "query model, and of the same architecture trained on its own (`independent`), the homogeneous "
          "system one would deploy instead.", "", markdown_table(rows, COLS, digits=2), f"![R@1 vs MMACs]({name}.png)", ""]
    (out_dir / f"{name}.md").write_text("\n".join(md))
    _plot(rows, out_dir / f"{name}.png")
    print(f"wrote {out_dir / name}.json/.md/.png in {time.time() - t0:.0f} s")
    return 0


def _criterion(het: float, hom: float, indep_hom: float | None) -> str:
    """M(q, g) > M(q, q): against the same model's homogeneous R@1 and against the independently trained
    model of the same architecture (the homogeneous system one would deploy instead)."""
    a = "met" if het > hom else "NOT met"
    if indep_hom is None:
        return f"{a} (vs own hom)"
    b = "met" if het > indep_hom else "NOT met"
    return f"{a} vs own hom, {b} vs independent hom"


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["compat"] == "-":
            ax.axhline(r["het R@1"], color="black", ls="--", lw=1, label=f"paragon {r['het R@1']:.1f}")
            continue
        ax.scatter([r["MMACs"]], [r["hom R@1"]], marker="o", color="tab:orange", s=30)
        ax.scatter([r["MMACs"]], [r["het R@1"]], marker="*", color="tab:blue", s=80)
        ax.annotate(f"{r['model']} {r['compat']}", (r["MMACs"], r["het R@1"]), fontsize=7, xytext=(4, -10),
                    textcoords="offset points")
    ax.scatter([], [], marker="o", color="tab:orange", label="homogeneous (query model both sides)")
    ax.scatter([], [], marker="*", color="tab:blue", label="heterogeneous (query vs gallery)")
    ax.set_xscale("log")
    ax.set_xlabel("query model MMACs (log)")
    ax.set_ylabel("R@1 (%)")
    ax.set_title("Compatibility on Fashion-MNIST (test split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
