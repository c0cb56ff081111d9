"""``hetsearch train gallery|query|import-gallery`` and ``hetsearch eval``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hetsearch.report import format_table, write_json

RAW = argparse.RawDescriptionHelpFormatter


def add_data_args(p: argparse.ArgumentParser, default_split: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="fashion-mnist",
                   help="'fashion-mnist', an ImageFolder directory (a subfolder per class) or an .npz with "
                        "'images' (uint8 N×H×W[×C]) and 'labels'")
    g.add_argument("--data-dir", default=None,
                   help="where Fashion-MNIST's idx .gz files are (default: /usr/share/datasets/fashion-mnist)")
    g.add_argument("--split", default=default_split, choices=("train", "test"),
                   help="Fashion-MNIST split; folders and .npz are used whole")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, shuffling and initialisation")
    g.add_argument("--open-set-classes", default=None,
                   help="open-set protocol: these classes (indices or names, e.g. 7,8,9) are removed from all "
                        "training and validation data, and evaluation uses them alone")


def load_split(args, role: str):
    """--data/--split/--data-dir, with the open-set protocol applied for ``role`` ('train' or 'eval')."""
    from .data import load_data, open_set, parse_class_list

    data = load_data(args.data, args.split, args.data_dir)
    held = parse_class_list(getattr(args, "open_set_classes", None), data)
    if held:
        print(f"open-set protocol: classes {', '.join(data.classes[c] for c in held)} "
              f"{'held out of training and validation' if role == 'train' else 'form the evaluation set'}",
              flush=True)
    args.held_out_classes = [data.classes[c] for c in held]
    return open_set(data, held, role)


def add_train_args(p: argparse.ArgumentParser, *, epochs: int = 10, lr: float = 0.1) -> None:
    """The training flags every training command shares (train gallery/query, nas supernet/finetune)."""
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    g.add_argument("--batch-size", type=int, default=128, help="images per step")
    g.add_argument("--lr", type=float, default=lr, help="peak SGD learning rate (warm-up then cosine)")
    g.add_argument("--warmup-epochs", type=float, default=0.5, help="linear warm-up length in epochs")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    g.add_argument("--max-train-samples", type=int, default=None, help="train on a class-balanced subset (quick runs)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="validation split carved from the training data")
    g.add_argument("--max-val-samples", type=int, default=None,
                   help="cap on validation images (default: the whole validation split)")
    g.add_argument("--val-mode", choices=("auto", "stratified", "classes"), default="auto",
                   help="validation split: a share of every class (stratified), whole held-out classes (classes: "
                        "for many classes with few images each), or auto (classes when a stratified split would "
                        "leave most classes under two validation images)")
    g.add_argument("--no-augment", action="store_true", help="disable random shifts and flips")
    g.add_argument("--gallery-targets", choices=("cached", "live"), default="cached",
                   help="gallery embeddings of training views: computed once and cached on disk, or recomputed "
                        "every step")
    g.add_argument("--target-views", type=int, default=6,
                   help="cached views per training image: identity, flip and random shifts/flips")
    g.add_argument("--targets-cache", default=None,
                   help="folder for cached gallery targets (default: $HETSEARCH_TARGETS_CACHE, else "
                        "GALLERY/targets)")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores or $HETSEARCH_THREADS)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars")


def add_compat_args(p: argparse.ArgumentParser) -> None:
    from .names import DEFAULT_COMPAT, LOSS_PRESETS

    g = p.add_argument_group("compatibility loss")
    g.add_argument("--compat", default=DEFAULT_COMPAT,
                   help=f"compatibility loss: {', '.join(LOSS_PRESETS)} or terms joined by '+'")
    g.add_argument("--loss-weights", default=None,
                   help="term weights, e.g. bct=1,l2=30 (defaults own=1 bct=1 l2=30 contrastive=1)")
    g.add_argument("--bct-lambda", type=float, default=None, help="BCT influence weight λ (default 1)")
    g.add_argument("--temperature", type=float, default=0.05, help="contrastive temperature")


def add_qat_args(p: argparse.ArgumentParser) -> None:
    """--qat: quantization-aware compatibility training (train query, nas finetune)."""
    from .qat import QAT_SCHEMES

    g = p.add_argument_group("quantization-aware training")
    g.add_argument("--qat", choices=QAT_SCHEMES, default=None,
                   help="finetune with int8 fake quantization (batch norms folded first) and the same compatibility "
                        "loss, so the int8 files `hetsearch export` takes from it are what was trained; typically "
                        "from a float checkpoint (--init) for a few epochs at a low --lr, e.g. 0.005")
    g.add_argument("--qat-consistency", type=float, default=0.0, metavar="W",
                   help="with --qat: weight of 1 - cos(int8 embedding, float embedding of the same weights), which "
                        "keeps the float model and its int8 files close (the export's parity check)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--embed-dim", type=int, default=None, help="embedding dimension (default: the preset's)")
    g.add_argument("--input-size", type=int, default=None, help="model input size (square); images are resized")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None, help="model input channels")
    g.add_argument("--margin", type=float, default=0.0, help="classifier margin (with --margin-type)")
    g.add_argument("--margin-type", choices=("none", "arcface", "cosface"), default="none", help="classifier margin")
    g.add_argument("--head-scale", type=float, default=16.0, help="cosine classifier scale s")


def train_config(args, **extra):
    """The one TrainConfig builder for every training command."""
    from . import losses
    from .train import TrainConfig

    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay, seed=args.seed, val_fraction=args.val_fraction,
        max_train_samples=args.max_train_samples, max_val_samples=args.max_val_samples, augment=not args.no_augment,
        threads=args.threads, margin=getattr(args, "margin", 0.0), margin_type=getattr(args, "margin_type", "none"),
        head_scale=getattr(args, "head_scale", 16.0), compat=getattr(args, "compat", "independent"),
        loss_weights=losses.parse_weights(getattr(args, "loss_weights", None)),
        bct_lambda=getattr(args, "bct_lambda", None), temperature=getattr(args, "temperature", 0.05),
        gallery_targets=args.gallery_targets, target_views=args.target_views, targets_cache=args.targets_cache,
        val_mode=args.val_mode, qat=getattr(args, "qat", None),
        qat_consistency=getattr(args, "qat_consistency", 0.0), **extra)
    cfg.validate()
    return cfg


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
    from .train import train_gallery

    data = load_split(args, "train")
    ck = train_gallery(data, args.arch, args.out, train_config(args), resume=args.resume, progress=not args.quiet,
                       extra_meta={"open_set_classes": args.held_out_classes}, **_overrides(args))
    print(_summary(ck))
    return 0


def cmd_train_query(args) -> int:
    from hetsearch.errors import HetsearchError

    from .names import DEFAULT_QUERY
    from .train import train_query

    if args.init and (args.arch or any(v is not None for v in _overrides(args).values())):
        raise HetsearchError("--init CKPT finetunes that checkpoint's model: --arch, --embed-dim, --input-size and "
                             "--channels do not apply")

    data = load_split(args, "train")
    ck = train_query(data, args.gallery, args.arch or DEFAULT_QUERY, args.out, train_config(args), resume=args.resume,
                     progress=not args.quiet, extra_meta={"open_set_classes": args.held_out_classes},
                     init=args.init, **_overrides(args))
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
    from hetsearch.errors import HetsearchError

    def usage_error(msg: str) -> HetsearchError:
        # as argparse's parser.error: the usage line on stderr, then main() prints
        # "hetsearch eval: error: MSG" and returns 2
        usage = getattr(args, "eval_usage", None)
        if usage is not None:
            sys.stderr.write(usage())
        return HetsearchError(msg)

    if args.matrix:
        for flag, value in (("--query", args.query), ("--gallery", args.gallery)):
            if value:
                models = [*args.matrix, *([] if value in args.matrix else [value])]
                raise usage_error(
                    f"{flag} cannot be combined with --matrix: --matrix takes all the models as its arguments "
                    f"(each one embeds both the queries and the gallery), e.g. --matrix {' '.join(models)}")
    elif not args.query:
        raise usage_error("--query CKPT is required (or --matrix CKPT [CKPT ...] for a compatibility matrix)")
    if args.max_samples is not None and args.max_samples < 1:
        raise usage_error(f"--max-samples must be a positive number of images, got {args.max_samples}")

    import numpy as np

    from .checkpoint import load_checkpoint
    from .evaluate import (check_output_path, compatibility_matrix, evaluate_pair, plot_formats, plot_matrix,
                           plot_pair)

    # refuse unwritable outputs before the (long) evaluation, not after it
    stem = "matrix" if args.matrix else "eval"
    if args.json:
        check_output_path("--json", args.json, f"{stem}.json")
    if args.plot:
        check_output_path("--plot", args.plot, f"{stem}.png")
        ext = Path(args.plot).suffix[1:].lower()
        if ext and ext not in plot_formats():
            raise HetsearchError(f"--plot {args.plot}: cannot write .{ext} images; give a file name ending in "
                                 f"one of {', '.join('.' + f for f in plot_formats())}")

    def write(flag: str, path: str, writer) -> None:
        try:
            writer()
        except OSError as exc:
            raise HetsearchError(f"{flag} {path}: cannot write the file: {exc.strerror or exc}") from exc

    data = load_split(args, "eval")
    if args.max_samples:
        from .data import stratified_sample

        data = data.subset(stratified_sample(data.labels, args.max_samples, args.seed), f"{args.max_samples}")
    more = " (use a larger --max-samples)" if args.max_samples else ""
    _, class_sizes = np.unique(data.labels, return_counts=True)
    no_matches = len(data) >= 2 and not (class_sizes > 1).any()
    no_match_note = ("note: R@k and mAP@R are 0 by construction: no image in the split has another image of "
                     f"its class to find{more}")
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
        if no_matches:
            print(no_match_note)
        if args.json:
            write("--json", args.json, lambda: write_json(args.json, mat))
        if args.plot:
            write("--plot", args.plot, lambda: plot_matrix(mat, args.plot))
            print(f"plot: {args.plot}")
        return 0
    gallery = args.gallery or args.query
    q = load_checkpoint(args.query)
    g = q if gallery == args.query else load_checkpoint(gallery, expect_kind=None)
    if q.space_id != g.space_id and not args.quiet:
        print(f"note: query model space {q.space_id} differs from gallery space {g.space_id}: "
              "the query model was not trained to be compatible with this gallery model", file=sys.stderr)
    res = evaluate_pair(q, g, data, progress=not args.quiet, baselines=bool(args.plot))
    v = res.pop("verification", {})
    print(format_table([{
        "query": res["query_model"], "gallery": res["gallery_model"], "R@1": res["recall_at_1"],
        "R@5": res["recall_at_5"], "mAP@R": res["map_at_r"], "TAR@FAR1e-2": v.get("tar_at_far_0.01"),
        "TAR@FAR1e-3": v.get("tar_at_far_0.001"), "query MMACs": res["query_mmacs"],
        "gallery MMACs": res["gallery_mmacs"], "cost reduction": res["cost_reduction"], "queries": res["n_queries"],
    }]))
    if no_matches:
        print(no_match_note)
    if v.get("not_computed"):
        print(f"note: TAR@FAR not computed: {v['not_computed']}{more}")
    res["verification"] = v
    if args.json:
        write("--json", args.json, lambda: write_json(args.json, res))
    if args.plot:
        write("--plot", args.plot, lambda: plot_pair(res, args.plot))
        print(f"plot: {args.plot}")
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
  # quantization-aware: finetune a float query model with int8 fake quantization, then export int8 from it
  hetsearch train query --gallery runs/gallery --init runs/q-small --qat int8 --epochs 3 --lr 0.005 --out runs/q-qat
  hetsearch export runs/q-qat --formats onnx,tflite --precision fp32,int8 --gallery runs/gallery --out bundles/q-qat
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
  hetsearch eval --query runs/q-small --gallery runs/gallery --plot q-small.png   # bars vs homogeneous
  hetsearch eval --query runs/gallery                       # homogeneous: the paragon
  hetsearch eval --matrix runs/gallery runs/q-small runs/q-tiny --json matrix.json --plot matrix.png

Leave-one-out over the evaluation split (Fashion-MNIST: test): every image is a query embedded by the
query model, searched by cosine similarity against all other images embedded by the gallery model.
It needs at least 2 images. TAR@FAR (verification over cross-model image pairs) needs same-class and
different-class pairs; on a split without them (e.g. one image per class) it is left out ("-", null in
--json, with "not_computed" saying why) and the retrieval metrics are still reported.

--matrix takes every model as its arguments (each one embeds both the queries and the gallery), so it
is not combined with --query or --gallery. --plot writes a PNG (or .pdf, .svg by the file name): with
--matrix a heatmap of R@1; otherwise a bar chart of R@1, R@5 and mAP@R for the pair next to its
homogeneous baselines (the query model on both sides, and the gallery model on both sides: the paragon),
which --json then also includes under "baselines".
"""


def register(sub) -> None:
    from hetsearch.cli import DefaultsHelpFormatter as FMT

    from .names import DEFAULT_GALLERY, DEFAULT_QUERY, PRESETS

    train = sub.add_parser("train", help="train a gallery model or a compatible query model",
                           description="Train the gallery (paragon) model or a compact query model compatible with it.")
    tsub = train.add_subparsers(dest="what", metavar="WHAT")
    presets = ", ".join(PRESETS)

    g = tsub.add_parser("gallery", help="train the gallery (paragon) model", formatter_class=FMT,
                        epilog=TRAIN_GALLERY_EPILOG,
                        description="Train the gallery (paragon) model with a cosine classifier head.")
    g.add_argument("--arch", default=DEFAULT_GALLERY, help=f"preset ({presets}), JSON spec or .json file")
    g.add_argument("--out", required=True, help="output checkpoint folder")
    add_data_args(g, "train")
    add_model_args(g)
    add_train_args(g)
    g.set_defaults(func=cmd_train_gallery)

    q = tsub.add_parser("query", help="train a compact query model compatible with a gallery model",
                        formatter_class=FMT, epilog=TRAIN_QUERY_EPILOG,
                        description="Train a compact query model against a frozen gallery model.")
    q.add_argument("--gallery", required=True, help="gallery checkpoint directory")
    q.add_argument("--arch", default=None,
                   help=f"preset ({presets}), JSON spec or .json file (default {DEFAULT_QUERY})")
    q.add_argument("--init", default=None, metavar="CKPT",
                   help="finetune this query checkpoint (its model and classifier) instead of a new --arch model")
    q.add_argument("--out", required=True, help="output checkpoint folder")
    add_compat_args(q)
    add_qat_args(q)
    add_data_args(q, "train")
    add_model_args(q)
    add_train_args(q)
    q.set_defaults(func=cmd_train_query)

    im = tsub.add_parser("import-gallery", help="bring your own gallery model (TorchScript, torch.export, factory)",
                         formatter_class=FMT, epilog=IMPORT_EPILOG,
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
                       formatter_class=FMT, epilog=EVAL_EPILOG,
                       description="Leave-one-out retrieval: queries by the query model, gallery by the gallery model.")
    e.add_argument("--query", metavar="CKPT", help="query model checkpoint directory (required unless --matrix)")
    e.add_argument("--gallery", metavar="CKPT",
                   help="gallery model checkpoint directory (default: the query model: homogeneous); not with --matrix")
    e.add_argument("--matrix", nargs="+", metavar="CKPT",
                   help="compatibility matrix (R@1) over these models, each one as query and as gallery model; "
                        "instead of --query/--gallery")
    e.add_argument("--json", metavar="FILE", help="write the results as JSON")
    e.add_argument("--plot", metavar="FILE",
                   help="write a PNG (.pdf, .svg by the name): with --matrix an R@1 heatmap; otherwise a bar chart "
                        "of R@1, R@5 and mAP@R for the pair next to its homogeneous baselines (query model alone, "
                        "paragon)")
    e.add_argument("--max-samples", type=int, default=None, help="evaluate on a class-balanced subset")
    e.add_argument("--quiet", action="store_true")
    add_data_args(e, "test")
    e.set_defaults(func=cmd_eval, eval_usage=e.format_usage)
