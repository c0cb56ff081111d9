"""``hetsearch train gallery|query|import-gallery`` and ``hetsearch eval``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hetsearch.report import format_table, write_json

RAW = argparse.RawDescriptionHelpFormatter


def add_data_args(p: argparse.ArgumentParser, default_split: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="fashion-mnist",
                   help="'fashion-mnist', an ImageFolder directory (a subfolder per class) or an .npz with "
                        "'images' (uint8 N×H×W[×C]) and 'labels' (default: fashion-mnist)")
    g.add_argument("--data-dir", default=None,
                   help="where Fashion-MNIST's idx .gz files are (default: /usr/share/datasets/fashion-mnist)")
    g.add_argument("--split", default=default_split, choices=("train", "test"),
                   help=f"Fashion-MNIST split (default: {default_split}); folders and .npz are used whole")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, shuffling and initialisation")


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate (warm-up then cosine)")
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--max-train-samples", type=int, default=None, help="train on a class-balanced subset (quick runs)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="validation split carved from the training data")
    g.add_argument("--max-val-samples", type=int, default=2000, help="cap on validation images per epoch")
    g.add_argument("--no-augment", action="store_true", help="disable random shifts and flips")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--embed-dim", type=int, default=None)
    g.add_argument("--input-size", type=int, default=None, help="model input size (square); images are resized")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None, help="model input channels")
    g.add_argument("--margin", type=float, default=0.0, help="classifier margin (with --margin-type)")
    g.add_argument("--margin-type", choices=("none", "arcface", "cosface"), default="none")
    g.add_argument("--head-scale", type=float, default=16.0, help="cosine classifier scale s")
    g.add_argument("--out", required=True, help="output checkpoint directory")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(args):
    from .train import TrainConfig
    from . import losses

    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
        val_fraction=args.val_fraction, max_train_samples=args.max_train_samples,
        max_val_samples=args.max_val_samples, augment=not args.no_augment, threads=args.threads,
        margin=args.margin, margin_type=args.margin_type, head_scale=args.head_scale,
        compat=getattr(args, "compat", "independent"),
        loss_weights=losses.parse_weights(getattr(args, "loss_weights", None)),
        bct_lambda=getattr(args, "bct_lambda", None),
        temperature=getattr(args, "temperature", 0.05),
    )


def _overrides(args) -> dict:
    return {"embed_dim": args.embed_dim, "input_size": args.input_size, "in_channels": args.channels}


def _summary(ck) -> str:
    m = ck.meta
    rows = [{"model": ck.name, "kind": ck.kind, "MMACs": m["mmacs"], "params": m["params"],
             "best epoch": m["metrics"].get("best_epoch"),
             "val R@1 hom": m["metrics"].get("val_homogeneous_r1"),
             "val R@1 het": m["metrics"].get("val_heterogeneous_r1"), "space": ck.space_id}]
    return format_table(rows, digits=2)


def cmd_train_gallery(args) -> int:
    from .data import load_data
    from .train import train_gallery

    data = load_data(args.data, args.split, args.data_dir)
    ck = train_gallery(data, args.arch, args.out, _config(args), resume=args.resume, progress=not args.quiet,
                       **_overrides(args))
    print(_summary(ck))
    return 0


def cmd_train_query(args) -> int:
    from .data import load_data
    from .train import train_query

    data = load_data(args.data, args.split, args.data_dir)
    ck = train_query(data, args.gallery, args.arch, args.out, _config(args), resume=args.resume,
                     progress=not args.quiet, **_overrides(args))
    print(_summary(ck))
    return 0


def cmd_import_gallery(args) -> int:
    from .checkpoint import import_gallery

    ck = import_gallery(args.model, args.out, input_size=args.input_size, in_channels=args.channels,
                        mean=args.mean, std=args.std, classifier=args.classifier)
    print(f"imported {args.model} as gallery model {ck.name}: dim {ck.model.embed_dim}, "
          f"{ck.meta['mmacs']:.2f} MMACs, space {ck.space_id}, classifier: {'yes' if ck.head is not None else 'no (bct unavailable)'}")
    return 0


def cmd_eval(args) -> int:
    from .checkpoint import load_checkpoint
    from .data import load_data
    from .evaluate import compatibility_matrix, evaluate_pair, plot_matrix

    data = load_data(args.data, args.split, args.data_dir)
    if args.max_samples:
        from .data import stratified_sample

        data = data.subset(stratified_sample(data.labels, args.max_samples, args.seed), f"{args.max_samples}")
    if args.matrix:
        models = list(args.matrix)
        mat = compatibility_matrix(models, data, progress=not args.quiet)
        rows = []
        for i, name in enumerate(mat["models"]):
            row = {"query \\ gallery": name, "MMACs": mat["mmacs"][i]}
            row.update({g: mat["recall_at_1"][i][j] for j, g in enumerate(mat["models"])})
            rows.append(row)
        print(f"R@1 (%) on {data.source}, {len(data)} queries, leave-one-out; rows embed queries, columns the gallery")
        print(format_table(rows, digits=1))
        if args.json:
            write_json(args.json, mat)
        if args.plot:
            plot_matrix(mat, args.plot)
            print(f"plot: {args.plot}")
        return 0
    if not args.query:
        raise SystemExit("hetsearch eval: error: --query is required (or use --matrix)")
    gallery = args.gallery or args.query
    q = load_checkpoint(args.query)
    g = q if gallery == args.query else load_checkpoint(gallery, expect_kind=None)
    if q.space_id != g.space_id and not args.quiet:
        print(f"note: query model space {q.space_id} differs from gallery space {g.space_id}: "
              "the query model was not trained to be compatible with this gallery model", file=sys.stderr)
    res = evaluate_pair(q, g, data, progress=not args.quiet)
    v = res.pop("verification", {})
    print(format_table([{
        "query": res["query_model"], "gallery": res["gallery_model"], "R@1": res["recall_at_1"],
        "R@5": res["recall_at_5"], "mAP@R": res["map_at_r"], "TAR@FAR1e-2": v.get("tar_at_far_0.01"),
        "TAR@FAR1e-3": v.get("tar_at_far_0.001"), "query MMACs": res["query_mmacs"],
        "gallery MMACs": res["gallery_mmacs"], "cost reduction": res["cost_reduction"], "queries": res["n_queries"],
    }]))
    res["verification"] = v
    if args.json:
        write_json(args.json, res)
    return 0


TRAIN_GALLERY_EPILOG = """\
examples:
  hetsearch train gallery --data fashion-mnist --arch resnet-gallery --epochs 15 --out runs/gallery
  hetsearch train gallery --data my_images/ --arch resnet-gallery --input-size 64 --channels 3 --out runs/g64
  hetsearch train gallery --data fashion-mnist --arch resnet-tiny --epochs 1 --max-train-samples 2000 --out /tmp/g
"""
TRAIN_QUERY_EPILOG = """\
compatibility losses (--compat):
  independent      the query model's own classifier only (not compatible: baseline)
  bct              own classifier + the frozen gallery classifier on the query embedding (BCT, λ=--bct-lambda)
  l2               regression to the frozen gallery embedding
  contrastive      InfoNCE of query embeddings against the batch's gallery embeddings
  bct-l2           own + bct + l2 (default)
  any of own, bct, l2, contrastive joined by '+', weights with --loss-weights bct=1,l2=30

examples:
  hetsearch train query --data fashion-mnist --gallery runs/gallery --arch mbv3-small --out runs/q-small
  hetsearch train query --gallery runs/gallery --arch mbv3-tiny --compat bct --epochs 8 --out runs/q-bct
  hetsearch train query --gallery runs/gallery --arch spec.json --compat own+l2 --loss-weights l2=20 --out runs/q
"""
IMPORT_EPILOG = """\
examples:
  hetsearch train import-gallery --model my_gallery.torchscript.pt --input-size 28 --channels 1 --out runs/mine
  hetsearch train import-gallery --model my_gallery.pt2 --classifier classifier.npy --out runs/mine
  hetsearch train import-gallery --model mypackage.models:make_gallery --out runs/mine

The model receives (pixels / 255 - mean) / std as float32 N×C×H×W; its output (or the first output) is
the embedding, L2-normalised by hetsearch. --classifier is a [num_classes, dim] weight matrix (.npy or
torch file) for a cosine classifier; without it the bct loss is unavailable.
"""
EVAL_EPILOG = """\
examples:
  hetsearch eval --data fashion-mnist --query runs/q-small --gallery runs/gallery --json q-small.json
  hetsearch eval --query runs/gallery                       # homogeneous: the paragon
  hetsearch eval --matrix runs/gallery runs/q-small runs/q-tiny --json matrix.json --plot matrix.png

Leave-one-out over the evaluation split (Fashion-MNIST: test): every image is a query embedded by the
query model, searched by cosine similarity against all other images embedded by the gallery model.
"""


def register(sub) -> None:
    from .names import DEFAULT_COMPAT, DEFAULT_GALLERY, DEFAULT_QUERY, LOSS_PRESETS, PRESETS

    train = sub.add_parser("train", help="train a gallery model or a compatible query model",
                           description="Train the gallery (paragon) model or a compact query model compatible with it.")
    tsub = train.add_subparsers(dest="what", metavar="WHAT")
    presets = ", ".join(PRESETS)

    g = tsub.add_parser("gallery", help="train the gallery (paragon) model", formatter_class=RAW,
                        epilog=TRAIN_GALLERY_EPILOG,
                        description="Train the gallery (paragon) model with a cosine classifier head.")
    g.add_argument("--arch", default=DEFAULT_GALLERY, help=f"preset ({presets}), JSON spec or .json file")
    add_data_args(g, "train")
    add_train_args(g)
    g.set_defaults(func=cmd_train_gallery)

    q = tsub.add_parser("query", help="train a compact query model compatible with a gallery model",
                        formatter_class=RAW, epilog=TRAIN_QUERY_EPILOG,
                        description="Train a compact query model against a frozen gallery model.")
    q.add_argument("--gallery", required=True, help="gallery checkpoint directory")
    q.add_argument("--arch", default=DEFAULT_QUERY, help=f"preset ({presets}), JSON spec or .json file")
    q.add_argument("--compat", default=DEFAULT_COMPAT,
                   help=f"compatibility loss: {', '.join(LOSS_PRESETS)} or terms joined by '+' (default {DEFAULT_COMPAT})")
    q.add_argument("--loss-weights", default=None, help="term weights, e.g. bct=1,l2=30 (defaults own=1 bct=1 l2=30 contrastive=1)")
    q.add_argument("--bct-lambda", type=float, default=None, help="BCT influence weight λ (default 1)")
    q.add_argument("--temperature", type=float, default=0.05, help="contrastive temperature")
    add_data_args(q, "train")
    add_train_args(q)
    q.set_defaults(func=cmd_train_query)

    im = tsub.add_parser("import-gallery", help="bring your own gallery model (TorchScript, torch.export, factory)",
                         formatter_class=RAW, epilog=IMPORT_EPILOG,
                         description="Wrap your own gallery model into a hetsearch gallery checkpoint.")
    im.add_argument("--model", required=True, help="a TorchScript (.pt) or torch.export (.pt2) file, or module:factory")
    im.add_argument("--classifier", default=None, help="[num_classes, dim] classifier weights (.npy or torch file)")
    im.add_argument("--input-size", type=int, default=28)
    im.add_argument("--channels", type=int, choices=(1, 3), default=1)
    im.add_argument("--mean", type=float, default=0.0, help="input mean after scaling pixels to [0, 1]")
    im.add_argument("--std", type=float, default=1.0, help="input std after scaling pixels to [0, 1]")
    im.add_argument("--out", required=True)
    im.set_defaults(func=cmd_import_gallery)
    train.set_defaults(func=lambda a: (train.print_help(), 2)[1])

    e = sub.add_parser("eval", help="heterogeneous retrieval accuracy (R@k, mAP@R, TAR@FAR) and compatibility matrices",
                       formatter_class=RAW, epilog=EVAL_EPILOG,
                       description="Leave-one-out retrieval: queries by the query model, gallery by the gallery model.")
    e.add_argument("--query", help="query model checkpoint directory")
    e.add_argument("--gallery", help="gallery model checkpoint directory (default: the query model: homogeneous)")
    e.add_argument("--matrix", nargs="+", metavar="CKPT", help="compatibility matrix over these models")
    e.add_argument("--json", help="write the results as JSON")
    e.add_argument("--plot", help="with --matrix: write a heatmap PNG")
    e.add_argument("--max-samples", type=int, default=None, help="evaluate on a class-balanced subset")
    e.add_argument("--quiet", action="store_true")
    add_data_args(e, "test")
    e.set_defaults(func=cmd_eval)
