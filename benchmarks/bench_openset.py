"""Which compatibility loss carries compatibility to products no model saw? Closed-set vs open-set.

Two protocols on Fashion-MNIST, the same query architecture (``--arch``, default mbv3-small) trained with every
compatibility loss against the gallery model of its protocol:

* **closed-set** — the gallery model trained on all ten classes (``--gallery``); evaluation on the whole test
  split.
* **open-set** — classes ``--open-set-classes`` (default 7,8,9: sneaker, bag, ankle boot) are removed from all
  training and validation data of the gallery model and of every query model (a gallery model is trained here
  without them), and the evaluation set holds only those classes' test images.

Per loss: heterogeneous R@1 (query model vs gallery embeddings), the query model's homogeneous R@1, and the
compatibility criterion — heterogeneous > its own homogeneous > the same architecture trained alone
(``independent``, homogeneous) — plus the points behind the paragon of the protocol.

    python -m benchmarks.bench_openset --gallery runs/gallery        # ~30 min on one core

Writes OUT/openset.json and OUT/openset.md; models in --work, reused by a rerun.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from hetsearch.report import format_table, markdown_table, write_json

LOSSES = ("independent", "bct", "l2", "contrastive", "bct-l2", "bct-contrastive")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", required=True, help="the closed-set gallery model (trained on every class)")
    ap.add_argument("--open-set-classes", default="7,8,9")
    ap.add_argument("--gallery-epochs", type=int, default=8, help="epochs of the open-set gallery model")
    ap.add_argument("--arch", default="mbv3-small")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--losses", default=",".join(LOSSES),
                    help="comma list of losses; PRESET@TERM=W;TERM=W sets other term weights (e.g. bct-l2@l2=100)")
    ap.add_argument("--protocols", default="closed,open")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench-openset")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from hetsearch.cmpnas.checkpoint import load_checkpoint
    from hetsearch.cmpnas.data import load_data, open_set, parse_class_list, stratified_sample
    from hetsearch.cmpnas.embed import embed
    from hetsearch.cmpnas.losses import parse_weights
    from hetsearch.cmpnas.metrics import recall_at_1
    from hetsearch.cmpnas.train import TrainConfig, train_gallery, train_query

    torch.set_num_threads(1)
    t0 = time.time()
    work = Path(args.work)
    train_all = load_data("fashion-mnist", "train")
    test_all = load_data("fashion-mnist", "test")
    held = parse_class_list(args.open_set_classes, train_all)
    limit = 3000 if args.quick else None
    epochs = 1 if args.quick else args.epochs

    def sub(d, n):
        return d.subset(stratified_sample(d.labels, n, 0), str(n)) if n and len(d) > n else d

    protocols = {}
    if "closed" in args.protocols:
        protocols["closed"] = (load_checkpoint(args.gallery, expect_kind="gallery"), sub(train_all, limit), test_all)
    if "open" in args.protocols:
        tr = sub(open_set(train_all, held, "train"), limit)
        gdir = work / "open-gallery"  # one open-set gallery model (seed 0) serves every --seed
        if (gdir / ".done").exists():
            g = load_checkpoint(gdir)
        else:
            ref = load_checkpoint(args.gallery)
            g = train_gallery(tr, ref.spec, gdir, TrainConfig(epochs=1 if args.quick else args.gallery_epochs,
                                                              threads=1, seed=0), progress=False)
            (gdir / ".done").write_text("")
        protocols["open"] = (g, tr, open_set(test_all, held, "eval"))
    res, rows = {}, []
    for name, (g, tr, te) in protocols.items():
        g_te = embed(g.model, te)
        paragon = recall_at_1(g_te, g_te, te.labels)
        out = {"paragon_r1": paragon, "test_images": len(te), "train_images": len(tr), "classes_seen": tr.classes,
               "losses": {}}
        for loss in args.losses.split(","):
            compat, _, weights = loss.partition("@")  # e.g. bct-l2@l2=100: a preset with other term weights
            d = work / (f"{name}-{args.arch}-{loss.replace('@', '-').replace('=', '').replace(';', '-')}"
                        + (f"-s{args.seed}" if args.seed else ""))
            if (d / ".done").exists():
                ck = load_checkpoint(d)
            else:
                ck = train_query(tr, g, args.arch, d, TrainConfig(epochs=epochs, compat=compat, threads=1, seed=args.seed,
                                                                  loss_weights=parse_weights(weights.replace(";", ","))), progress=False)
                (d / ".done").write_text("")
            q = embed(ck.model, te)
            het, hom = recall_at_1(q, g_te, te.labels), recall_at_1(q, q, te.labels)
            out["losses"][loss] = {"het_r1": het, "hom_r1": hom}
            print(f"[{name}] {loss}: het {het:.2f} hom {hom:.2f} (paragon {paragon:.2f})", flush=True)
        alone = out["losses"].get("independent", {}).get("hom_r1")
        for loss, v in out["losses"].items():
            crit = (v["het_r1"] > v["hom_r1"] and (alone is None or v["hom_r1"] > alone)) if loss != "independent" else None
            v["criterion"] = crit
            rows.append({"protocol": name, "loss": loss, "het R@1": v["het_r1"], "own hom R@1": v["hom_r1"],
                         "alone hom R@1": alone, "het - own hom": v["het_r1"] - v["hom_r1"],
                         "points behind paragon": paragon - v["het_r1"],
                         "criterion": "-" if crit is None else ("met" if crit else "missed")})
        res[name] = out
    se = {k: 100 * math.sqrt(0.85 * 0.15 / v["test_images"]) for k, v in res.items()}
    result = {"benchmark": "openset", "arch": args.arch, "epochs": epochs, "seed": args.seed,
              "open_set_classes": [train_all.classes[c] for c in held], "protocols": res, "binomial_se": se,
              "quick": args.quick, "seconds": round(time.time() - t0, 1)}
    out_dir = Path(args.out)
    write_json(out_dir / "openset.json", result)
    md = ["# Compatibility on products no model saw: closed-set vs open-set", "",
          f"Query model `{args.arch}`, {epochs} epochs per loss, seed {args.seed}. Open-set: "
          f"{', '.join(result['open_set_classes'])} never in training or validation (gallery model retrained without "
          "them); evaluated on their test images alone. Closed-set: all classes, whole test split. Criterion: "
          "heterogeneous > the query model's own homogeneous > the same architecture trained alone (independent).", "",
          markdown_table(rows, digits=2), "",
          "Paragon R@1: " + "; ".join(f"{k} {v['paragon_r1']:.2f} ({v['test_images']} test images)" for k, v in res.items()),
          "",
          "One seed per cell: the noise of one R@1 is about its binomial standard error, "
          + "; ".join(f"{k} {v:.2f} points" for k, v in se.items()) + ".", "",
          f"Wall time {result['seconds'] / 60:.1f} min. Reproduce: `python -m benchmarks.bench_openset --gallery GALLERY`."]
    (out_dir / "openset.md").write_text("\n".join(md) + "\n")
    print(format_table(rows, digits=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
