"""``hetsearch export`` and ``hetsearch check`` (``profile`` is registered by the profiling module)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

RAW = argparse.RawDescriptionHelpFormatter

EXPORT_EPILOG = """\
examples:
  # every format and precision, checked against the gallery model (the compatibility gate)
  hetsearch export runs/query --formats onnx,tflite,coreml --precision fp32,fp16,int8 \\
      --gallery runs/gallery --out bundles/query

  # just ONNX fp32, parity only, table also as JSON
  hetsearch export runs/query --formats onnx --out bundles/query --json export.json

  # int8 calibrated on your own training images (an ImageFolder tree or an .npz)
  hetsearch export runs/query --precision int8 --data photos/train --calib-samples 500 --out bundles/q8

Calibration images (int8) and check images come from the TRAINING data: a validation split is
carved out of --data (stratified, --val-fraction, seed --seed); checks use --check-samples images of
it, calibration --calib-samples of the rest and the int8 probe (which layers stay float) --probe-samples
others. The evaluation split is never touched.

Every file takes float32 pixels [1, C, H, W] in [0, 255] named "pixels" and returns an L2-normalised
"embedding" [1, dim]; manifest.json records sha256, parity and compatibility of each file. A
format that fails to convert is listed as failed and the rest continue. A file whose checks fail
is removed from the bundle (listed under "failures" in manifest.json) and the exit status is 3;
--report-only keeps it, marked failed (the SDK refuses it without an override), and exits 0.
Exit status 2 on bad input.
"""

CHECK_EPILOG = """\
examples:
  # compatibility gate + parity against the PyTorch query model
  hetsearch check bundles/query --gallery runs/gallery --query runs/query

  # compatibility gate only, on 500 validation images of an .npz, results as JSON
  hetsearch check bundles/query --gallery runs/gallery --data data.npz --check-samples 500 --json check.json

  # a bundle for another gallery: report instead of refusing
  hetsearch check bundles/query --gallery runs/gallery-v2 --allow-space-mismatch --report-only

Parity needs the PyTorch weights, which a bundle does not carry: pass --query CKPT (the checkpoint
the bundle was exported from; the manifest's weights digest is checked). The compatibility gate
needs only --gallery. Every file's sha256 is verified first. Exit status: 0 when every check
passed, 3 when one failed (0 with --report-only; --allow-space-mismatch accepts a gallery of another
embedding space, never a failed check), 2 on bad input or a tampered file.
"""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (training data: a validation split is carved out of it)")
    g.add_argument("--data", default="fashion-mnist",
                   help="'fashion-mnist', an ImageFolder directory or an .npz with 'images' and 'labels' "
                        "(default: fashion-mnist, its train split)")
    g.add_argument("--data-dir", default=None, help="where Fashion-MNIST's idx .gz files are")
    g.add_argument("--val-fraction", type=float, default=None,
                   help="validation split fraction (default: the checkpoint's own, as recorded when it trained; "
                        "0.1 when nothing is recorded)")
    g.add_argument("--seed", type=int, default=None,
                   help="seed of the split and the samples (default: the checkpoint's own training seed; else 0)")
    g.add_argument("--check-samples", type=int, default=2000,
                   help="validation images for parity and compatibility (default: 2000; the R@1 change is "
                        "reported with its paired standard error, ~0.5 points at 2000 images for int8)")


def _add_gate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("thresholds")
    g.add_argument("--max-drop", default=None, metavar="P=PTS,...",
                   help="largest allowed heterogeneous R@1 drop in points per precision "
                        "(default: fp32=0.2,fp16=0.5,int8=1.5)")
    g.add_argument("--min-compat-ratio", type=float, default=None,
                   help="heterogeneous R@1 must be at least this fraction of the gallery model's own R@1 "
                        "(default: 0.5)")
    g.add_argument("--allow-space-mismatch", "--allow-mismatch", dest="allow_mismatch", action="store_true",
                   help="accept a gallery of a different embedding space (its compatibility is reported, not "
                        "refused); failed checks still fail")
    g.add_argument("--report-only", action="store_true",
                   help="report failed checks and exit 0; export keeps the failed files in the bundle, marked "
                        "failed in manifest.json (the SDK refuses them without an override)")


def register(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX / TFLite / Core ML, checked",
                       description="Export a query checkpoint to a bundle: one file per format and precision "
                                   "plus manifest.json, each file checked for parity and compatibility.",
                       epilog=EXPORT_EPILOG, formatter_class=RAW)
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory (hetsearch train query / nas)")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory to write")
    p.add_argument("--formats", default="onnx,tflite,coreml",
                   help="comma-separated: onnx,tflite,coreml,mediapipe or all (default: onnx,tflite,coreml); "
                        "mediapipe is a .tflite for MediaPipe Tasks' ImageEmbedder (uint8 RGB input, fp32)")
    p.add_argument("--precision", "--precisions", dest="precision", default="fp32",
                   help="comma-separated: fp32,fp16,int8 or all (default: fp32)")
    p.add_argument("--gallery", default=None, metavar="DIR",
                   help="gallery checkpoint: run the compatibility gate against its embeddings")
    p.add_argument("--calib-data", default=None, metavar="SRC",
                   help="int8 calibration images (same kinds as --data; default: the training part of --data)")
    p.add_argument("--calib-samples", type=int, default=200, help="calibration images for int8 (default: 200)")
    p.add_argument("--probe-samples", type=int, default=3000,
                   help="other training images on which int8 parity with fp32 chooses how much of the graph "
                        "stays float (default: 3000; 0: a quarter of the calibration images)")
    p.add_argument("--no-check", action="store_true", help="export only; no parity or compatibility checks")
    p.add_argument("--threads", type=int, default=1, help="runtime threads for the checks (default: 1)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the manifest and table as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    _add_data_args(p)
    _add_gate_args(p)
    p.set_defaults(func=cmd_export)

    c = sub.add_parser("check", help="parity and compatibility checks of an exported bundle",
                       description="Run every file of a bundle with its real runtime: parity against the PyTorch "
                                   "query model and the compatibility gate against the gallery model.",
                       epilog=CHECK_EPILOG, formatter_class=RAW)
    c.add_argument("bundle", metavar="BUNDLE", help="bundle directory (hetsearch export --out)")
    c.add_argument("--gallery", default=None, metavar="DIR", help="gallery checkpoint (compatibility gate)")
    c.add_argument("--query", default=None, metavar="CKPT",
                   help="the query checkpoint the bundle was exported from (parity)")
    c.add_argument("--files", default=None, help="comma-separated file names to check (default: all)")
    c.add_argument("--threads", type=int, default=1, help="runtime threads (default: 1)")
    c.add_argument("--update-manifest", action="store_true", help="store the results in the manifest's checks")
    c.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    _add_data_args(c)
    _add_gate_args(c)
    c.set_defaults(func=cmd_check)

    s = sub.add_parser("show", help="what a bundle holds: files, checks, latency per target",
                       description="Show a bundle: model, embedding space, MMACs, input contract, and per file its "
                                   "format, precision, size, check status (parity, R@1 change) and measured latency "
                                   "per profiled target. Reads manifest.json only; verifies nothing.",
                       formatter_class=RAW, epilog="examples:\n  hetsearch show bundles/query\n"
                                                   "  hetsearch show bundles/query --json bundle.json\n")
    s.add_argument("bundle", metavar="BUNDLE", help="bundle directory")
    s.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    s.set_defaults(func=cmd_show)


# ----------------------------------------------------------------------------- data


def _recorded_split(ckpt_dir) -> dict:
    """The validation split a checkpoint trained with (fraction, seed, mode, open-set classes), from its meta."""
    import json
    from pathlib import Path

    meta_path = Path(ckpt_dir) / "meta.json" if ckpt_dir else None
    if not meta_path or not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return {}
    tc = meta.get("train_config") or {}
    out = {k: tc[k] for k in ("val_fraction", "seed", "val_mode") if tc.get(k) is not None}
    if meta.get("open_set_classes"):
        out["open_set_classes"] = list(meta["open_set_classes"])
    return out


def _split(args, ckpt_dir=None):
    """(train part, validation part) of --data; the checks use validation images only. By default the split is
    the one the checkpoint trained with (its recorded fraction, seed, mode and open-set classes), so that check
    images are never images it was trained on; flags override, and the choice is printed."""
    from hetsearch.cmpnas.data import load_data, open_set, train_val_split
    from hetsearch.errors import DataError

    rec = _recorded_split(ckpt_dir)
    fraction = args.val_fraction if args.val_fraction is not None else rec.get("val_fraction", 0.1)
    seed = args.seed if args.seed is not None else rec.get("seed", 0)
    mode = rec.get("val_mode", "auto")
    args.seed = seed
    ds = load_data(args.data, split="train", data_dir=args.data_dir)
    held = [ds.classes.index(c) for c in rec.get("open_set_classes", []) if c in ds.classes]
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1), got {fraction}")
    origin = "the checkpoint's own training split" if rec else "defaults (no checkpoint split recorded)"
    print(f"check images: validation split of {args.data} (fraction {fraction}, seed {seed}, mode {mode}"
          + (f", open-set classes {rec['open_set_classes']} left out" if held else "") + f"): {origin}",
          file=sys.stderr, flush=True)
    return train_val_split(open_set(ds, held, "train"), fraction, seed, mode=mode)


def _sample_index(ds, n: int, seed: int, what: str):
    """Indices of a stratified sample of ``n`` images of ``ds`` (for ``what``, named in errors)."""
    from hetsearch.cmpnas.data import stratified_sample
    from hetsearch.errors import DataError

    if n is None or n <= 0:
        raise DataError(f"{what} must be a positive number of images")
    if len(ds) < 2:
        raise DataError(f"{ds.source} has {len(ds)} images; at least 2 are needed for {what}")
    return stratified_sample(ds.labels, n, seed)


def _sample(ds, n: int, seed: int, what: str):
    return ds.subset(_sample_index(ds, n, seed, what), what.lstrip("-"))


def _calib_and_probe(train, n_calib: int, n_probe: int, seed: int, what: str = "--calib-samples"):
    """(calibration images, probe images) from the training part: ``n_calib`` stratified images calibrate
    int8, and up to ``n_probe`` others (none of the calibration ones) choose how much of the graph stays
    float; the probe is None (with a note) when no training image is left for it."""
    from hetsearch.cmpnas.data import stratified_sample

    idx = _sample_index(train, n_calib, seed, what)
    calib = train.subset(idx, what.lstrip("-"))
    if n_probe is None or n_probe <= 0:
        return calib, None
    rest = np.setdiff1d(np.arange(len(train)), idx)
    if len(rest) == 0:
        print("int8 probe: every training image calibrates; a quarter of them is held out to choose what stays "
              "float instead", file=sys.stderr, flush=True)
        return calib, None
    pick = rest[stratified_sample(train.labels[rest], n_probe, seed + 10)]
    return calib, train.subset(pick, "probe")


def _thresholds(args) -> dict:
    from .checks import parse_threshold_args

    return parse_threshold_args(args.max_drop, args.min_compat_ratio)


def _failed_message(results: dict) -> str:
    from .checks import failed_records

    bad = failed_records(results)
    return (f"{len(bad)} of {len(results)} files failed the checks:\n  - "
            + "\n  - ".join(f"{p}: {r.get('reason')}" for p, r in bad.items())
            + "\n(--report-only reports without failing)")


# ----------------------------------------------------------------------------- commands


def cmd_export(args) -> int:
    from hetsearch.errors import CheckFailed, HetsearchError
    from hetsearch.report import write_json

    from .checks import failed_records
    from .exporter import export_bundle, format_summary, parse_list, summary_rows
    from hetsearch import manifest as mf

    formats = parse_list(args.formats, mf.FORMATS, "format")
    precisions = parse_list(args.precision, mf.PRECISIONS, "precision")
    thresholds = _thresholds(args)
    calib = check = probe = None
    need_data = (not args.no_check) or "int8" in precisions
    if need_data:
        train, val = _split(args, args.checkpoint)
        if not args.no_check:
            check = _sample(val, args.check_samples, args.seed + 2, "--check-samples")
        if "int8" in precisions:
            if args.calib_data:
                from hetsearch.cmpnas.data import load_data
                from hetsearch.errors import DataError

                try:
                    train = load_data(args.calib_data, split="train", data_dir=args.data_dir)
                except DataError as exc:
                    raise DataError(str(exc).replace("--data ", "--calib-data ", 1)) from exc
            calib, probe = _calib_and_probe(train, args.calib_samples, args.probe_samples, args.seed + 1)
    if args.threads < 1:
        raise HetsearchError("--threads must be at least 1")
    manifest = export_bundle(args.checkpoint, args.out, formats=formats, precisions=precisions, calib_data=calib,
                             gallery=args.gallery, check_data=check, thresholds=thresholds,
                             progress=not args.quiet, allow_mismatch=args.allow_mismatch, threads=args.threads,
                             keep_failed=args.report_only, probe_data=probe)
    if args.quiet:
        print(format_summary(manifest))
    if args.json:
        write_json(args.json, {"bundle": str(args.out), "rows": summary_rows(manifest), "manifest": manifest})
    if manifest["failures"]:
        print(f"warning: {len(manifest['failures'])} format/precision combinations failed to export "
              "(see the table and manifest.json 'failures')", file=sys.stderr)
    if failed_records(manifest["checks"]):
        if not args.report_only:
            raise CheckFailed(_failed_message(manifest["checks"])
                              .replace("(--report-only reports without failing)",
                                       "(removed from the bundle; --report-only keeps them, marked failed)"))
        print("warning: " + _failed_message(manifest["checks"]).replace(
            "(--report-only reports without failing)", "(kept, marked failed: --report-only)"), file=sys.stderr)
    return 0


def cmd_check(args) -> int:
    from hetsearch import manifest as mf
    from hetsearch.errors import CheckFailed, HetsearchError
    from hetsearch.report import write_json

    from .checks import check_bundle, failed_records
    from .exporter import format_summary, summary_rows

    if not args.gallery and not args.query:
        raise HetsearchError("nothing to check against: give --gallery DIR (compatibility gate) "
                             "and/or --query CKPT (parity)")
    if args.threads < 1:
        raise HetsearchError("--threads must be at least 1")
    manifest = mf.load(args.bundle)
    _, val = _split(args, args.query)
    images = _sample(val, args.check_samples, args.seed + 2, "--check-samples")
    files = [f.strip() for f in args.files.split(",") if f.strip()] if args.files else None
    results = check_bundle(args.bundle, images, gallery=args.gallery, query=args.query,
                           allow_mismatch=args.allow_mismatch, thresholds=_thresholds(args), files=files,
                           threads=args.threads, update_manifest=args.update_manifest)
    shown = dict(manifest, files=[e for e in manifest["files"] if e["path"] in results], failures=[])
    print(format_summary(shown, results))
    ok = not failed_records(results)
    if args.json:
        write_json(args.json, {"bundle": str(args.bundle), "passed": ok, "rows": summary_rows(shown, results),
                               "results": results})
    if not ok:
        if not args.report_only:
            raise CheckFailed(_failed_message(results))
        print("warning: " + _failed_message(results).replace("(--report-only reports without failing)",
                                                             "(reported only: --report-only)"), file=sys.stderr)
    return 0


def cmd_show(args) -> int:
    from hetsearch import manifest as mf
    from hetsearch.report import format_table, write_json

    from .exporter import describe_int8_recipe, summary_rows

    m = mf.load(args.bundle)
    inp, arch = m["input"], m["architecture"]
    print(f"bundle {args.bundle}: model {m['model_id']!r} ({arch.get('name') or arch.get('family')}), "
          f"{m['macs'] / 1e6:.3f} MMACs, {m['params']:,} parameters")
    print(f"embedding space {m['space_id']} (dim {m['output']['dim']}, "
          f"{'L2-normalised' if m['output'].get('l2_normalized') else 'not normalised'})")
    print(f"input {inp['channels']}x{inp['height']}x{inp['width']} {inp['color']} {inp['layout']} {inp['dtype']} "
          f"in {inp['value_range']}, resize {inp['resize']}; exported {m.get('exported_at', '?')}")
    cfg = m.get("check_config") or {}
    if cfg:
        print(f"checked on {cfg.get('n_images')} images of {cfg.get('data')} against gallery "
              f"{cfg.get('gallery_space_id')} (its own R@1 {cfg.get('gallery_r1') or 0:.2f})")
    rows = summary_rows(m)
    for r in rows:
        r["latency"] = "; ".join(
            f"{t}: {per[r['path']]['p50_ms']:.4f} ms" for t, per in (m.get("latency") or {}).items()
            if isinstance(per, dict) and isinstance(per.get(r.get("path")), dict)
            and isinstance(per[r["path"]].get("p50_ms"), (int, float))) or "-"
    cols = ["path", "format", "precision", "status", "size", "parity", "compat", "latency"]
    print(format_table(rows, cols, headers={"parity": "parity (cos min)", "compat": "R@1 change",
                                           "latency": "p50 per target"}))
    for entry in m["files"]:
        if (entry.get("int8_recipe") or {}).get("parity_on_probe_images"):
            print(f"{entry['path']}: {describe_int8_recipe(entry['int8_recipe'])}")
    if args.json:
        write_json(args.json, {"bundle": str(args.bundle), "rows": rows, "manifest": m})
    return 0
