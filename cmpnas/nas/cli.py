"""``hetsearch nas``: train a compatibility-aware supernet, search it under cost budgets, finetune the winners."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hetsearch.errors import DataError, ModelError

NAS_EPILOG = """\
CMP-NAS in three steps, against a frozen gallery model:
  hetsearch nas supernet --gallery runs/gallery --data fashion-mnist --epochs 10 --out runs/supernet
  hetsearch nas search --supernet runs/supernet --max-mmacs 1.3 --budgets 0.13,0.4 --out runs/search
  (or in milliseconds on a device: `hetsearch nas latency-model`, then `nas search --latency-model FILE --max-ms X`)
  hetsearch nas finetune --subnet runs/search/subnet-0.4 --supernet runs/supernet --epochs 8 --out runs/nas-0.4
Then `hetsearch eval` / `hetsearch export` take runs/nas-0.4 like any query model.
"""

SUPERNET_EPILOG = """\
examples:
  hetsearch nas supernet --gallery runs/gallery --data fashion-mnist --epochs 10 --out runs/supernet
  # the 14x14 layout: better subnets for budgets from about 0.15 MMACs up (none below)
  hetsearch nas supernet --gallery runs/gallery --data fashion-mnist --epochs 10 --hires 1 --out runs/supernet-h1
  # a quick one on a subset, plain l2 compatibility, one random subnet per step
  hetsearch nas supernet --gallery runs/gallery --epochs 1 --max-train-samples 5000 \\
      --compat l2 --num-random 1 --out runs/supernet-quick
  # a custom space: deeper stages, no width choices, two input resolutions
  hetsearch nas supernet --gallery runs/gallery --depths 2,3,4 --widths 1.0 --resolutions 24,28 --out runs/sn
  hetsearch nas supernet --gallery runs/gallery --space my-space.json --out runs/sn

The space (depths, kernels, expands, widths, resolutions and the stage layout) is saved in DIR/config.json;
--space takes such a file (or JSON) as the starting point and the choice flags override it.
"""

SEARCH_EPILOG = """\
examples:
  hetsearch nas search --supernet runs/supernet --max-mmacs 1.3 --out runs/search
  # one search, several device budgets (MMACs), a mixed reward, a bigger population
  hetsearch nas search --supernet runs/supernet --budgets 0.13,0.4,1.3 --reward mix:0.7 \\
      --population 32 --generations 10 --out runs/search
  # latency budgets (ms) from a latency model measured on the device; the winners are measured there too
  hetsearch nas latency-model --supernet runs/supernet --target local --format tflite --out lat.json
  hetsearch nas search --supernet runs/supernet --latency-model lat.json --max-ms 0.03,0.06 --out runs/search-ms
  # a hand-written latency profile (predicted only)
  hetsearch nas search --supernet runs/supernet --latency-profile pixel7.json --max-ms 2.5 --out runs/search-px7

Writes DIR/search.json (best per budget, Pareto front, history, every evaluation, the random baseline),
DIR/pareto.png and per budget DIR/subnet-<budget>/ (arch.json, spec.json and the subnet with inherited,
BN-recalibrated weights as a query checkpoint); the random baseline's winners go to DIR/random/.
The reward is measured on a validation split carved from the training data, never on the test split.
"""

LATENCY_EPILOG = """\
examples:
  hetsearch nas latency-model --supernet runs/supernet --target local --format tflite --out lat-tflite.json
  hetsearch nas latency-model --supernet runs/supernet --target ssh://pi@board --identity ~/.ssh/id_ed25519 \\
      --format onnx --threads 2 --samples 60 --out lat-pi.json
  # interrupted? the measurements so far are in the file:
  hetsearch nas latency-model ... --out lat-pi.json --resume

Each subnet is extracted, exported with the exporter (one file), checked for parity against PyTorch on a few
images, and profiled on the target with the profiler (p50). The file records the device, runtimes and tool
versions, every measurement (with the load average at the time), the candidates' cross-validated error, the
chosen predictor and its error on the held-out subnets (MAPE, Kendall tau).
"""

FINETUNE_EPILOG = """\
examples:
  hetsearch nas finetune --subnet runs/search/subnet-0.4 --supernet runs/supernet --epochs 8 --out runs/nas-0.4
  hetsearch nas finetune --subnet '{"width": 0.5, "depths": [1,2,1], "kernels": [[3],[5,5],[3]],
      "expands": [[3],[4,4],[6]]}' --supernet runs/supernet --gallery runs/gallery --out runs/nas-custom

The result is an ordinary query checkpoint (checkpoint.pt + meta.json, with a "nas" entry naming the
supernet, the arch and the budget) that `hetsearch eval` and `hetsearch export` accept.
"""


def _floats(text: str | None, flag: str) -> list[float]:
    out = []
    for item in (text or "").split(","):
        if item.strip():
            try:
                out.append(float(item))
            except ValueError:
                raise ModelError(f"{flag}: {item!r} is not a number (expected a comma-separated list)") from None
    return out


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    vals = _floats(text, flag)
    if not vals or any(int(v) != v for v in vals):
        raise ModelError(f"{flag}: expected a comma-separated list of integers, got {text!r}")
    return [int(v) for v in vals]


def _add_training_flags(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    """The training flags of ``train query`` (one set for every training command), plus where the data is."""
    from ..cli import add_compat_args, add_train_args

    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, help="fashion-mnist, an ImageFolder directory or an .npz (default for "
                   "search/finetune: what the supernet was trained on; for supernet: fashion-mnist)")
    g.add_argument("--data-dir", default=None, help="folder holding the Fashion-MNIST idx files")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, shuffling and initialisation")
    g.add_argument("--open-set-classes", default=None,
                   help="open-set protocol: classes (indices or names) removed from all training and validation "
                        "data (default for search/finetune: what the supernet recorded)")
    add_compat_args(p)
    add_train_args(p, epochs=epochs, lr=lr)


def _gallery_from(args, meta: dict, supernet: str):
    from ..checkpoint import resolve_ref

    if args.gallery:
        return args.gallery
    g = meta.get("gallery")
    p = resolve_ref(g, supernet) if meta.get("paths_relative_to") else (Path(g) if g else None)
    if p is not None and p.exists():
        return str(p)
    raise ModelError(f"the supernet {supernet} records gallery {g!r}"
                     + (f" (= {p}, relative to the supernet folder)" if p is not None and str(p) != g else "")
                     + ", which is not there; pass --gallery DIR")


def _training_data(args, meta: dict | None = None, supernet: str | None = None):
    """The training data of a NAS step, with the open-set classes removed (the supernet's, unless given)."""
    from ..data import load_data, open_set, parse_class_list

    name = _data_name(args, meta, supernet)
    data = load_data(name, "train", args.data_dir)
    spec = getattr(args, "open_set_classes", None)
    recorded = (meta or {}).get("open_set_classes") or []
    if spec is None and recorded:
        held = [data.classes.index(c) for c in recorded if c in data.classes]
        if len(held) != len(recorded):
            raise DataError(f"the supernet {supernet} holds out classes {recorded}, which the data does not all have")
    else:
        held = parse_class_list(spec, data)
        if meta is not None and [data.classes[c] for c in held] != recorded:
            raise DataError(f"--open-set-classes {spec or '(none)'} differs from the supernet's held-out classes "
                            f"{recorded or '(none)'}: search and finetune with the supernet's data")
    return name, open_set(data, held, "train"), [data.classes[c] for c in held]


def _data_name(args, meta: dict | None = None, supernet: str | None = None) -> str:
    """--data, else the data the supernet recorded; a recorded file or folder that is gone is an error."""
    from ..checkpoint import resolve_ref

    if args.data:
        return args.data
    if meta is None:
        return "fashion-mnist"
    d = meta.get("data")
    if not d:
        raise DataError(f"the supernet {supernet} does not record its training data; pass --data")
    if d in ("fashion-mnist", "fashion_mnist", "fmnist") or d.startswith("fashion-mnist:"):
        return "fashion-mnist"
    p = resolve_ref(d, supernet) if meta.get("paths_relative_to") else Path(d)
    if p.exists():
        return str(p)
    raise DataError(f"the supernet {supernet} was trained on {d!r}"
                    + (f" (= {p}, relative to the supernet folder)" if str(p) != d else "")
                    + ", which is not there; pass --data with the same data")


# ----------------------------------------------------------------------------- commands


def cmd_supernet(args) -> int:
    from ..checkpoint import load_checkpoint
    from .space import SupernetConfig
    from .train import default_supernet_config, train_supernet

    from ..cli import train_config

    cfg = train_config(args, num_random=args.num_random, distill_weight=args.distill,
                       calib_images=args.calib_images, schedule=args.schedule)
    gck = load_checkpoint(args.gallery, expect_kind="gallery")
    data_name, data, held = _training_data(args)
    imgs = data.images
    in_ch = int(imgs.shape[3] if hasattr(imgs, "shape") else imgs[0].shape[2])
    overrides = {"depths": _ints(args.depths, "--depths"), "kernels": _ints(args.kernels, "--kernels"),
                 "expands": _floats(args.expands, "--expands") or None, "widths": _floats(args.widths, "--widths") or None,
                 "resolutions": _ints(args.resolutions, "--resolutions"), "hires": _ints(args.hires, "--hires")}
    if args.space:
        base = SupernetConfig.load(args.space).to_dict()
        base.update({k: v for k, v in overrides.items() if v is not None})
        space = SupernetConfig.from_dict(base)
    else:
        space = default_supernet_config(gck.model, in_ch, **overrides)
    out = train_supernet(data, gck, args.out, cfg, space, resume=args.resume, progress=not args.quiet,
                         data_name=data_name, extra_meta={"open_set_classes": held})
    from .space import arch_macs, largest_arch, smallest_arch

    print(f"supernet written to {out}  (subnets from {arch_macs(space, smallest_arch(space)) / 1e6:.3f} to "
          f"{arch_macs(space, largest_arch(space)) / 1e6:.3f} MMACs; space in {Path(out) / 'config.json'})")
    return 0


def _rerank_cfg(args, meta: dict):
    """The short finetune of ``--rerank`` (rerank.rerank_config) for --rerank-epochs, with the supernet's
    compatibility loss."""
    from ..train import TrainConfig
    from .rerank import rerank_config

    if args.rerank < 0 or args.rerank_epochs < 1 or not 0 <= args.rerank_floor <= 1:
        raise ModelError("--rerank must be >= 0, --rerank-epochs >= 1 and --rerank-floor in [0, 1]")
    tc = meta.get("train_config") or {}
    return rerank_config(epochs=args.rerank_epochs, seed=args.seed, threads=args.threads or 1,
                         compat=tc.get("compat") or TrainConfig().compat, loss_weights=tc.get("loss_weights") or {},
                         max_train_samples=args.rerank_max_train_samples)


def cmd_search(args) -> int:
    from hetsearch.report import format_table

    from ..train import set_threads
    from .search import LatencyTable, MacsCost, SearchConfig, run_search
    from .supernet import load_supernet

    set_threads(args.threads)
    net, meta = load_supernet(args.supernet)
    max_ms = _floats(args.max_ms, "--max-ms")
    device_check = None
    if args.latency_profile and args.latency_model:
        raise ModelError("give either --latency-model (measured with `hetsearch nas latency-model`) or "
                         "--latency-profile (a hand-written profile), not both")
    if args.latency_profile or args.latency_model:
        cost = LatencyTable(net.config, args.latency_model or args.latency_profile)
        cap = max(max_ms) if max_ms else None
        if args.max_mmacs is not None:
            raise ModelError("with a latency model the budgets are in ms: use --max-ms (and --budgets in ms)")
        if args.latency_model and not args.no_measure:
            from .latency import DeviceCheck

            device_check = DeviceCheck(cost.model, net, meta.get("space_id"))
        elif args.latency_model:
            print("WARNING: --no-measure: the chosen subnets' latency is predicted only, NOT measured on "
                  f"{cost.model.get('target')}", file=sys.stderr)
    else:
        cost = MacsCost(net.config)
        cap = args.max_mmacs
        if max_ms:
            raise ModelError("--max-ms needs --latency-model FILE (from `hetsearch nas latency-model`) or "
                             "--latency-profile FILE")
    budgets = _floats(args.budgets, "--budgets") + (max_ms or ([cap] if cap is not None else []))
    if not budgets:
        raise ModelError("give a budget: --max-mmacs X and/or --budgets a,b,c")
    if cap is not None and any(b > cap for b in budgets):
        raise ModelError(f"--budgets has a budget above the constraint {cap:g} {cost.unit}")
    if any(b <= 0 for b in budgets):
        raise ModelError("budgets must be > 0")
    _, data, _ = _training_data(args, meta, args.supernet)
    scfg = SearchConfig(population=args.population, generations=args.generations, parents=args.parents,
                        mutation_prob=args.mutation_prob, mutation_ratio=args.mutation_ratio, seed=args.seed,
                        tie_tolerance=args.tie_tolerance)
    res = run_search(args.supernet, data, _gallery_from(args, meta, args.supernet), args.out, budgets,
                     reward=args.reward, scfg=scfg, random_baseline=not args.no_random_baseline, cost_model=cost,
                     max_val_samples=args.max_val_samples, calib_images=args.calib_images,
                     save_models=not args.no_save_models, progress=not args.quiet, device_check=device_check,
                     max_rechecks=args.max_rechecks, rerank_k=args.rerank, rerank_floor=args.rerank_floor,
                     rerank_cfg=_rerank_cfg(args, meta) if args.rerank else None)
    rows = []
    for b, best in res["best"].items():
        rnd = (res.get("random") or {}).get("best", {}).get(b)
        row = {"budget": f"{b} {cost.unit}", "MMACs": best["mmacs"], "het R@1": best["het_r1"],
               "homo R@1": best["homo_r1"], "random het R@1": rnd["het_r1"] if rnd else None}
        if cost.unit == "ms":
            row["predicted ms"] = best["cost"]
        if "measured_ms" in best:
            row["measured ms"] = best["measured_ms"]
            row["within"] = "yes" if best["measured_within_budget"] else "NO"
        row["arch"] = f"w{best['arch']['width']} r{best['arch']['resolution']} d{best['arch']['depths']}"
        rows.append(row)
    print(format_table(rows, digits=4))
    if res.get("device_check"):
        target = next(iter(res["device_check"].values()))["target"]
        missed = [b for b, c in res["device_check"].items() if not c["within_budget"]]
        print(f"measured on {target} (export + profile, p50)" + (
            f"; WARNING: no finalist measured within budget {', '.join(missed)} ms" if missed else
            "; every chosen subnet measured within its budget"))
    print(f"{res['evaluations']} evaluations in {res['seconds']:.0f} s; Pareto front of {len(res['pareto'])} subnets; "
          f"written to {args.out}/search.json and pareto.png")
    return 0


def cmd_latency_model(args) -> int:
    from hetsearch.report import format_table

    from ..train import set_threads
    from .latency import TargetSettings, build_latency_model
    from .supernet import calib_subset, load_supernet

    set_threads(args.torch_threads)
    settings = TargetSettings(target=args.target, format=args.format, precision=args.precision, threads=args.threads,
                              warmup=args.warmup, runs=args.runs, min_seconds=args.min_seconds,
                              identity=args.identity, known_hosts=args.known_hosts, remote_python=args.remote_python,
                              benchmark_model=args.benchmark_model, adb=args.adb, timeout=args.timeout).validate()
    calib = None
    if settings.precision == "int8":  # calibration images from the supernet's own training data
        _, meta = load_supernet(args.supernet)
        _, data, _ = _training_data(args, meta, args.supernet)
        calib = calib_subset(data, args.calib_images, args.seed)
    model = build_latency_model(args.supernet, args.out, settings, samples=args.samples, seed=args.seed,
                                holdout=args.holdout, folds=args.folds, resume=args.resume, fresh=args.fresh,
                                calib=calib, progress=not args.quiet)
    sel, held = model["selection"], model["held_out"]
    print(format_table([{"candidate": c["candidate"], "CV MAPE %": c["cv_mape"], "CV tau": c["cv_kendall_tau"],
                         "chosen": "<-" if c["candidate"] == sel["chosen"] else ""} for c in sel["candidates"]],
                       digits=3))
    dev = model.get("device") or {}
    print(f"{model['target']} ({dev.get('cpu', '?')}, {dev.get('cores', '?')} cores), {model['format']} "
          f"{model['precision']}, {model['threads'] or 'default'} thread(s): {sel['fitting_subnets']} subnets fitted, "
          f"{held['subnets']} held out; chosen {sel['chosen']} by {sel['cv_folds']}-fold CV")
    print(f"held out: MAPE {held['mape_pct']:.2f}%, max {held['max_ape_pct']:.1f}%, Kendall tau "
          f"{held['kendall_tau']:.3f}; load average {model['load_average'].get('during_measurements')}")
    print(f"written to {args.out}; use it with `hetsearch nas search --latency-model {args.out} --max-ms ...`")
    return 0


def cmd_finetune(args) -> int:
    from ..cli import train_config
    from .search import finetune_subnet
    from .supernet import load_supernet

    cfg = train_config(args)
    _, meta = load_supernet(args.supernet)
    _, data, _ = _training_data(args, meta, args.supernet)
    ck = finetune_subnet(data, args.supernet, args.subnet, _gallery_from(args, meta, args.supernet), args.out, cfg,
                         calib_images=args.calib_images, progress=not args.quiet, resume=args.resume)
    m = ck.meta.get("metrics", {})
    print(f"query checkpoint written to {args.out}: {ck.meta.get('mmacs', 0):.3f} MMACs, "
          f"val heterogeneous R@1 {m.get('val_heterogeneous_r1', float('nan')):.2f}, "
          f"homogeneous {m.get('val_homogeneous_r1', float('nan')):.2f}")
    return 0


def register(sub) -> None:
    from hetsearch.cli import DefaultsHelpFormatter as HelpFormatter

    from ..cli import add_qat_args
    from .rerank import add_rerank_args
    from .search import FINETUNE_LR
    from hetsearch.export.profile_cli import add_profiler_args

    nas = sub.add_parser("nas", help="CMP-NAS: supernet, latency model, search, finetune", description=__doc__, epilog=NAS_EPILOG,
                         formatter_class=HelpFormatter)
    nsub = nas.add_subparsers(dest="nas_command", metavar="STEP")
    nas.set_defaults(func=lambda a: (nas.print_help(), 2)[1])

    p = nsub.add_parser("supernet", help="train an elastic supernet against a frozen gallery model",
                        description="Train an elastic MobileNetV3 supernet against a frozen gallery model with a "
                        "compatibility loss (sandwich rule + in-place distillation).",
                        epilog=SUPERNET_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--gallery", required=True, help="gallery checkpoint directory (the frozen model)")
    p.add_argument("--out", required=True, help="supernet directory to write")
    s = p.add_argument_group("search space")
    s.add_argument("--space", default=None, help="a supernet config.json (or JSON text) to start from")
    s.add_argument("--depths", default=None, help="blocks per stage choices (default 1,2,3)")
    s.add_argument("--kernels", default=None, help="depthwise kernel choices (default 3,5,7)")
    s.add_argument("--expands", default=None, help="expand ratio choices (default 3,4,6)")
    s.add_argument("--widths", default=None, help="width multiplier choices (default 0.35,0.5,0.75,1.0)")
    s.add_argument("--resolutions", default=None, help="input resolution choices (default: the gallery's size)")
    s.add_argument("--hires", default=None,
                   help="layout choices: 0 = downsample in the fixed first block, 1 = in stage 0's first block (the "
                        "first block and stage 0's expansion run at half the input size); default 0. Measured on "
                        "Fashion-MNIST: 1 gives better subnets at 0.4 and 1.3 MMACs but none below 0.15 MMACs, and 0,1 "
                        "as one elastic choice was worse than either (README, \"CMP-NAS: the paper-style table\")")
    w = p.add_argument_group("sandwich rule")
    w.add_argument("--schedule", choices=("progressive", "sandwich"), default="progressive",
                   help="progressive: Once-for-All's progressive shrinking (full net, then elastic kernel, depth, "
                        "expand/width); sandwich: every dimension elastic from the start")
    w.add_argument("--num-random", type=int, default=2, help="random subnets per step besides largest and smallest")
    w.add_argument("--distill", type=float, default=1.0, help="weight of in-place distillation from the largest subnet")
    w.add_argument("--calib-images", type=int, default=500, help="images for BN recalibration before validation")
    _add_training_flags(p, epochs=10, lr=0.1)
    p.set_defaults(func=cmd_supernet)

    p = nsub.add_parser("search", help="evolutionary search of a supernet under cost budgets",
                        description="Evolutionary search for the most compatible subnet under each budget.",
                        epilog=SEARCH_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--supernet", required=True, help="supernet directory (from `nas supernet`)")
    p.add_argument("--out", required=True, help="search directory to write")
    p.add_argument("--max-mmacs", type=float, default=None, help="the cost constraint in MMACs (never exceeded)")
    p.add_argument("--budgets", default=None, help="several budgets served by one search, e.g. 0.13,0.4,1.3")
    p.add_argument("--latency-model", default=None, metavar="FILE",
                   help="a latency model from `hetsearch nas latency-model`: budgets in ms, and each winner is "
                        "measured on the model's target")
    p.add_argument("--latency-profile", default=None, help="hand-written per-device latency profile JSON: budgets "
                   "in ms (predicted only)")
    p.add_argument("--max-ms", default=None, help="latency budgets in ms, e.g. 0.03,0.06 (with --latency-model or "
                   "--latency-profile)")
    p.add_argument("--no-measure", action="store_true", help="with --latency-model: do not measure the winners on "
                   "the target (predicted ms only)")
    p.add_argument("--max-rechecks", type=int, default=5, help="with --latency-model: finalists measured after a "
                   "winner measures over budget")
    p.add_argument("--gallery", default=None, help="gallery checkpoint (default: the one the supernet recorded)")
    p.add_argument("--data", default=None, help="training data to carve the validation split from "
                   "(default: what the supernet was trained on)")
    p.add_argument("--data-dir", default=None, help="folder holding the Fashion-MNIST idx files")
    e = p.add_argument_group("evolution")
    e.add_argument("--reward", default="heterogeneous", help="heterogeneous | homogeneous | mix:A (default heterogeneous)")
    e.add_argument("--population", type=int, default=24, help="per budget (default 24)")
    e.add_argument("--generations", type=int, default=6)
    e.add_argument("--parents", type=float, default=0.25, help="fraction of the population kept as parents")
    e.add_argument("--mutation-prob", type=float, default=0.1, help="per-gene mutation probability")
    e.add_argument("--mutation-ratio", type=float, default=0.5, help="fraction of children made by mutation "
                   "(the rest by crossover)")
    e.add_argument("--random-baseline", dest="no_random_baseline", action="store_false",
                   help="also run random search with the same number of evaluations (the default)")
    e.add_argument("--no-random-baseline", dest="no_random_baseline", action="store_true")
    e.add_argument("--tie-tolerance", type=float, default=0.3,
                   help="reward points within which the costliest subnet under a budget wins (rewards closer than "
                        "the validation noise do not rank; finetuning rewards capacity); 0: the highest reward wins")
    e.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("re-ranking (cmpnas/nas/rerank.py)")
    add_rerank_args(r)
    r.add_argument("--rerank-max-train-samples", type=int, default=None,
                   help="training images for the short finetunes (default: all)")
    v = p.add_argument_group("evaluation")
    v.add_argument("--max-val-samples", type=int, default=None,
                   help="cap on validation images per evaluation (default: the whole validation split)")
    v.add_argument("--calib-images", type=int, default=500, help="training images for BN recalibration")
    v.add_argument("--no-save-models", action="store_true", help="write arch.json + spec.json only")
    v.add_argument("--threads", type=int, default=None, help="torch threads")
    v.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_search, no_random_baseline=False)

    p = nsub.add_parser("latency-model", help="measure subnets on a device and fit the search's latency model",
                        description="Export and profile a designed sample of subnets on a target, fit latency "
                        "predictors, choose one by cross-validation and report its error on held-out subnets.",
                        epilog=LATENCY_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--supernet", required=True, help="supernet directory (from `nas supernet`)")
    p.add_argument("--out", required=True, help="the latency model JSON to write (rewritten after every measurement)")
    p.add_argument("--target", default="local", help="local | ssh://user@host[:port] | adb://SERIAL")
    p.add_argument("--format", default="tflite", choices=("tflite", "onnx"), help="the file format measured")
    p.add_argument("--precision", default="fp32", help="fp32 | fp16 | int8 (int8 calibrates on training images)")
    p.add_argument("--threads", type=int, default=1, help="runtime CPU threads on the target")
    p.add_argument("--samples", type=int, default=40, help="subnets to measure (smallest, largest, and one per "
                   "log-MMACs bin)")
    p.add_argument("--holdout", type=float, default=0.25, help="fraction of the subnets held out to report the error")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds for choosing the predictor")
    p.add_argument("--seed", type=int, default=0, help="seed of the design")
    p.add_argument("--resume", action="store_true", help="reuse the measurements in --out (same supernet, space, "
                   "target, format, precision, threads and profiler settings; refuses otherwise)")
    p.add_argument("--fresh", action="store_true", help="discard what --out holds and measure again")
    add_profiler_args(p.add_argument_group("profiler (per subnet)"), timeout=600.0)
    d = p.add_argument_group("int8 calibration")
    d.add_argument("--data", default=None, help="training data (default: what the supernet was trained on)")
    d.add_argument("--data-dir", default=None, help="folder holding the Fashion-MNIST idx files")
    d.add_argument("--calib-images", type=int, default=200, help="training images for int8 calibration")
    p.add_argument("--torch-threads", type=int, default=None, help="torch threads for extraction and export")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_latency_model)

    p = nsub.add_parser("finetune", help="finetune a searched subnet into a query checkpoint",
                        description="Extract a subnet with its inherited weights and finetune it against the "
                        "gallery model with the compatibility loss.",
                        epilog=FINETUNE_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--subnet", required=True, help="subnet-<budget>/ folder, arch.json file or arch JSON")
    p.add_argument("--supernet", required=True, help="supernet directory the subnet comes from")
    p.add_argument("--gallery", default=None, help="gallery checkpoint (default: the one the supernet recorded)")
    p.add_argument("--out", required=True, help="query checkpoint directory to write")
    p.add_argument("--calib-images", type=int, default=500)
    _add_training_flags(p, epochs=8, lr=FINETUNE_LR)
    add_qat_args(p)
    p.set_defaults(func=cmd_finetune)
