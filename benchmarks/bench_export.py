"""Export benchmark: a compact query model and the paragon gallery model, every format and precision.

    python -m benchmarks.bench_export                  # trains small models (minutes on 2 cores)
    python -m benchmarks.bench_export --quick          # tiny models, fewer images (about a minute)
    python -m benchmarks.bench_export --query runs/query --gallery runs/gallery   # your checkpoints

For each model, ``hetsearch.export.exporter.export_bundle`` writes ONNX, TFLite and Core ML files in
fp32, fp16 and int8 (calibrated on training images) and checks each one on validation images carved
out of the training data (never the test split): parity against the PyTorch model (cosine min/mean,
max abs diff) and the compatibility gate (heterogeneous R@1 against the gallery model's embeddings,
and its change from the PyTorch model's). The paragon is checked against itself (its R@1 Δ is what
the conversion costs the gallery side). Latency comes from ``hetsearch.export.profile.profile_bundle``
(target ``local``, one thread) when that module is installed; otherwise the latency columns are "-".
Core ML files are converted and interface-checked; their numbers need macOS ("-" here).

Without checkpoints it trains a gallery model and a query model (the default compatibility loss) with the
real trainer (``hetsearch.cmpnas.train``): quick ``resnet-tiny``/``mbv3-tiny`` for three epochs, otherwise
``resnet-gallery``/``mbv3-small`` for four, on a class-balanced subset of the training split.

Writes ``benchmarks/results/export.json`` and ``export.md`` (bundles under ``--work``).

    python -m benchmarks.bench_export --gallery G --qat Q1,Q2     # float vs post-training int8 vs QAT int8

``--qat`` takes checkpoints trained with ``hetsearch train query --init F --qat int8``; each records the float
checkpoint F it was finetuned from. Both are exported to ONNX and TFLite (fp32, int8) with the same int8 recipes and
calibration images and checked on the checkpoint's own validation split (all of it unless ``--check-samples``). Per
model and format it reports float, post-training int8 (from F) and QAT int8: parity against the model's own
PyTorch float weights (the export gate), heterogeneous R@1 and its paired change from F's PyTorch model (± standard
error over the same images), the delegate LiteRT ran and p50 latency. Writes ``export-qat.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from hetsearch.export.cli import _calib_and_probe
from hetsearch.report import format_table, markdown_table, write_json

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["model", "format", "precision", "status", "size_kb", "cos_min", "cos_mean", "max_abs_diff",
           "r1", "r1_delta", "p50_ms", "vs_paragon", "int8_float"]
HEADERS = {"size_kb": "size (KB)", "cos_min": "cos min", "cos_mean": "cos mean", "max_abs_diff": "max abs diff",
           "r1": "het R@1", "r1_delta": "R@1 Δ", "p50_ms": "p50 (ms)", "vs_paragon": "× paragon",
           "int8_float": "int8: also float"}


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny models, fewer images and timed runs")
    p.add_argument("--query", default=None, help="query checkpoint(s), comma-separated (default: train one)")
    p.add_argument("--gallery", default=None, help="gallery (paragon) checkpoint (default: train one)")
    p.add_argument("--work", default=str(REPO / "runs" / "bench_export"), help="where checkpoints and bundles go")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where export.json/.md go")
    p.add_argument("--formats", default="onnx,tflite,coreml")
    p.add_argument("--precisions", default="fp32,fp16,int8")
    p.add_argument("--check-samples", type=int, default=None, help="validation images (default 1000, quick 300)")
    p.add_argument("--calib-samples", type=int, default=200)
    p.add_argument("--probe-samples", type=int, default=3000,
                   help="other training images that choose what of an int8 graph stays float (0: a quarter of "
                        "the calibration images)")
    p.add_argument("--threads", type=int, default=1, help="torch and runtime threads")
    p.add_argument("--no-profile", action="store_true", help="skip latency profiling")
    p.add_argument("--note", default=None, help="a sentence for the report (e.g. what else ran on the machine)")
    p.add_argument("--qat", default=None, metavar="CKPTS",
                   help="QAT checkpoints, comma-separated: compare float, post-training int8 and QAT int8 (with "
                        "--gallery, comma-separated when they were trained against different gallery models), "
                        "writing export-qat.json/.md")
    return p.parse_args(argv)


def _train(work: Path, quick: bool, train_set):
    """A gallery model and a query model from the real trainer (default compatibility loss)."""
    from hetsearch.cmpnas.train import TrainConfig, train_gallery, train_query

    g_arch, q_arch = ("resnet-tiny", "mbv3-tiny") if quick else ("resnet-gallery", "mbv3-small")
    cfg = TrainConfig(epochs=3 if quick else 4, max_val_samples=300 if quick else 1000, threads=1)
    t0 = time.perf_counter()
    train_gallery(train_set, g_arch, work / "gallery", cfg, progress=False)
    train_query(train_set, work / "gallery", q_arch, work / "query", cfg, progress=False)
    print(f"trained {g_arch} (gallery) and {q_arch} (query) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return work / "gallery", work / "query"


def _rows(name: str, manifest: dict, profile: dict | None) -> list[dict]:
    from hetsearch.export.exporter import summary_rows

    prof = {}
    if profile:
        par = {(r["format"], r["precision"]): r for r in (profile.get("paragon") or {}).get("results", [])}
        for r in profile["results"]:
            p50 = r.get("p50_ms")
            ref = par.get((r["format"], r["precision"]), {}).get("p50_ms")
            prof[r["file"]] = (p50, p50 / ref if p50 and ref else None)
    rows = []
    for r in summary_rows(manifest):
        rec = manifest["checks"].get(r.get("path"), {})
        par, com = rec.get("parity", {}), rec.get("compat", {})
        p50, ratio = prof.get(r.get("path"), (r.get("latency"), None))
        rows.append({"model": name, "format": r["format"], "precision": r["precision"], "status": r["status"],
                     "size_kb": None if r["size"] is None else round(
                         next(e["bytes"] for e in manifest["files"] if e["path"] == r["path"]) / 1e3, 1),
                     "cos_min": par.get("cos_min"), "cos_mean": par.get("cos_mean"),
                     "max_abs_diff": par.get("max_abs_diff"), "r1": com.get("r1"), "r1_delta": com.get("delta"),
                     "r1_delta_se": com.get("delta_se"), "int8_float": _int8_float(manifest, r.get("path")),
                     "p50_ms": p50, "vs_paragon": ratio, "reason": r.get("reason") or rec.get("reason")})
    return rows


def _int8_float(manifest: dict, path: str | None) -> str | None:
    """What an int8 file kept in float beyond the fixed recipe (the escalation's choice), for the table."""
    entry = next((e for e in manifest["files"] if e["path"] == path), {})
    return (entry.get("int8_recipe") or {}).get("kept")


def main(argv=None) -> int:
    args = _args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.qat:
        return qat_main(args)
    from hetsearch.cmpnas.checkpoint import load_checkpoint
    from hetsearch.cmpnas.data import load_data, stratified_sample, train_val_split
    from hetsearch.export.exporter import export_bundle, tool_versions

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    n_check = args.check_samples or (300 if args.quick else 1000)
    ds = load_data("fashion-mnist", split="train")
    train, val = train_val_split(ds, 0.1, 0)
    small_train = train.subset(stratified_sample(train.labels, 3000 if args.quick else 6000, 1), "bench")
    if args.query and args.gallery:
        gallery_dir = Path(args.gallery)
        query_dirs = [Path(q) for q in args.query.split(",") if q.strip()]
    elif args.query or args.gallery:
        print("give both --query and --gallery, or neither", file=sys.stderr)
        return 2
    else:
        gallery_dir, query_dir = _train(work / "models", args.quick, small_train)
        query_dirs = [query_dir]
    names = {"paragon": gallery_dir} | ({"query": query_dirs[0]} if len(query_dirs) == 1 else
                                        {q.name: q for q in query_dirs})
    check = val.subset(stratified_sample(val.labels, n_check, 2), "check")
    calib, probe = _calib_and_probe(train, args.calib_samples, args.probe_samples, 1)
    n_probe = 0 if probe is None else len(probe)

    try:
        from hetsearch.export.profile import profile_bundle
    except ImportError:
        profile_bundle = None
    profile_note = None
    if args.no_profile:
        profile_bundle, profile_note = None, "latency not measured (--no-profile)"
    elif profile_bundle is None:
        profile_note = "latency not measured: hetsearch.export.profile is not installed"

    bundles, manifests, timings, trained = {}, {}, {}, {}
    for name, ckpt_dir in names.items():
        ckpt = load_checkpoint(ckpt_dir)
        trained[name] = {k: v for k, v in (ckpt.meta.get("train_config") or {}).items()
                         if isinstance(v, (int, float, str, bool))}
        bundles[name] = work / "bundles" / name
        t0 = time.perf_counter()
        manifests[name] = export_bundle(ckpt, bundles[name], formats=args.formats, precisions=args.precisions,
                                        calib_data=calib, gallery=gallery_dir, check_data=check, progress=True,
                                        threads=args.threads, keep_failed=True,  # a benchmark reports failures
                                        probe_data=probe)
        timings[name] = round(time.perf_counter() - t0, 1)

    profiles: dict = {}
    if profile_bundle is not None:
        runs, warmup, min_s = (30, 3, 0.2) if args.quick else (200, 10, 1.0)
        for name in names:
            if name == "paragon":
                continue
            try:
                profiles[name] = profile_bundle(bundles[name], "local", threads=1, warmup=warmup, runs=runs,
                                                min_seconds=min_s, paragon=bundles["paragon"])
            except Exception as exc:  # report, keep the parity/compat results
                profile_note = f"profiling failed: {type(exc).__name__}: {exc}"
                print(profile_note, file=sys.stderr)
    profile = next(iter(profiles.values()), None)
    paragon_profile = None
    if profile and profile.get("paragon"):
        paragon_profile = {"results": profile["paragon"]["results"], "paragon": {"results": profile["paragon"]["results"]}}

    rows = _rows("paragon", manifests["paragon"], paragon_profile)
    for name in names:
        if name != "paragon":
            rows += _rows(name, manifests[name], profiles.get(name))
    models = {name: {"model_id": m["model_id"], "architecture": m["architecture"].get("name") or m["architecture"]["family"],
                     "mmacs": m["macs"] / 1e6, "params": m["params"], "space_id": m["space_id"],
                     "export_seconds": timings[name], "failures": m["failures"], "training": trained[name],
                     "gallery_r1": m.get("check_config", {}).get("gallery_r1"),
                     "pytorch_r1": m.get("check_config", {}).get("reference_r1")}
              for name, m in manifests.items()}
    result = {
        "benchmark": "export",
        "quick": args.quick,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"platform": f"{platform.system()} {platform.machine()}", "python": platform.python_version()},
        "data": {"source": "fashion-mnist train split", "check_images": len(check), "calib_images": len(calib),
                 "probe_images": n_probe,
                 "note": "check images: validation split (10%, seed 0) of the training data"},
        "models": models,
        "profile": {"target": "local", "threads": 1, "note": profile_note,
                    "host": (profile or {}).get("host")} if profile or profile_note else None,
        "tools": tool_versions(),
        "note": args.note,
        "rows": rows,
    }
    out = Path(args.out)
    write_json(out / "export.json", result)
    md = [f"# Export benchmark{' (quick)' if args.quick else ''}", "",
          f"Measured {result['measured_at']} on {result['host']['platform']}; "
          f"{len(check)} validation images (from the training data), {len(calib)} calibration images, "
          f"{n_probe} other training images probing the int8 recipes."
          + (f" {args.note}" if args.note else ""), ""]
    for name, m in models.items():
        md.append(f"- **{name}**: {m['architecture']}, {m['mmacs']:.2f} MMACs, {m['params']:,} parameters; "
                  f"PyTorch heterogeneous R@1 {_pct(m['pytorch_r1'])}, gallery R@1 {_pct(m['gallery_r1'])}; "
                  f"export + checks {m['export_seconds']} s; training: "
                  + (", ".join(f"{k}={v}" for k, v in m["training"].items()) or "-"))
    md += ["", "R@1 Δ: heterogeneous R@1 of the file's embeddings minus the PyTorch model's (points), ± its paired "
           "standard error over the same images. 'int8: also float': the feature maps the int8 escalation kept float "
           "(chosen on probe training images; beyond the fixed recipe's float parts: TFLite keeps I/O, hard-swish, "
           "squeeze-excitation branches, pooling, the dense head's activations and the L2 norm float, ONNX the "
           "squeeze-excitation gating multiplies and the L2 norm). "
           "Core ML numbers need macOS. " + (profile_note or "Latency: local, one thread, p50."), "",
           markdown_table(_display(rows), COLUMNS, headers=HEADERS)]
    (out / "export.md").write_text("\n".join(md) + "\n")
    print(format_table(_display(rows), COLUMNS, headers=HEADERS))
    print(f"wrote {out / 'export.json'} and {out / 'export.md'}", file=sys.stderr)
    return 0


QAT_COLUMNS = ["model", "format", "weights", "precision", "status", "cos_min", "cos_mean", "cos_min_vs_float",
               "cos_min_vs_sim", "r1", "r1_delta", "delegate", "p50_ms"]
QAT_HEADERS = {"cos_min": "cos min", "cos_mean": "cos mean", "cos_min_vs_float": "cos min vs float model",
               "cos_min_vs_sim": "cos min vs QAT sim", "r1": "het R@1", "r1_delta": "R@1 Δ vs float", "p50_ms": "p50 (ms)"}
TARGET_COS_MIN, TARGET_R1_DROP = 0.98, 1.0  # the int8 targets


def qat_main(args) -> int:
    """Float vs post-training int8 vs QAT int8 per model and format (see the module doc)."""
    from hetsearch.cmpnas.checkpoint import load_checkpoint, resolve_ref
    from hetsearch.cmpnas.data import load_data, stratified_sample, train_val_split
    from hetsearch.cmpnas.embed import embed
    from hetsearch.cmpnas.qat import simulated
    from hetsearch.export import checks as ck
    from hetsearch.export.exporter import export_bundle, tool_versions
    from hetsearch.export.profile import profile_bundle
    from hetsearch.export.runners import SdkRunner
    from hetsearch.sdk.profile import delegate_label

    if not args.gallery:
        print("--qat needs --gallery (the gallery model the checkpoints are compatible with)", file=sys.stderr)
        return 2
    # several galleries: each checkpoint is checked against the one whose embedding space it was trained into
    galleries = {load_checkpoint(g, expect_kind="gallery").space_id: g for g in args.gallery.split(",") if g.strip()}
    ds = load_data("fashion-mnist", split="train")
    work = Path(args.work) / "qat"
    runs, warmup, min_s = (30, 3, 0.2) if args.quick else (200, 10, 1.0)
    rows, models = [], {}
    for qdir in [Path(q) for q in args.qat.split(",") if q.strip()]:
        q = load_checkpoint(qdir)
        init = (q.meta.get("init") or {}).get("path")
        if not q.meta.get("qat") or not init:
            print(f"{qdir} is not a QAT checkpoint finetuned from a float one (--init ... --qat int8)", file=sys.stderr)
            return 2
        f = load_checkpoint(resolve_ref(init, qdir))
        name = f.name
        gallery = galleries.get(q.space_id)
        if gallery is None:
            print(f"{qdir}: none of --gallery {args.gallery} is in its embedding space {q.space_id}", file=sys.stderr)
            return 2
        tc = q.meta["train_config"]
        split = {k: tc[k] for k in ("val_fraction", "seed", "val_mode")}
        if any(f.meta["train_config"].get(k) != v for k, v in split.items()):
            print(f"{qdir}: its validation split {split} differs from its float model's", file=sys.stderr)
            return 2
        train, val = train_val_split(ds, split["val_fraction"], split["seed"], mode=split["val_mode"])
        check = val.subset(stratified_sample(val.labels, args.check_samples, 2), "check") if args.check_samples else val
        calib, probe = _calib_and_probe(train, args.calib_samples, args.probe_samples, split["seed"] + 1)
        ctx = ck.prepare_context(f.model.input_shape, check, query_model=f.model, gallery=gallery,
                                 space_id=f.space_id)
        sim = embed(simulated(q), ctx.pixels)

        def row(weights, fmt, precision, emb, delegate=None, p50=None, status="-", own=None):
            hits = ck._hits(emb, ctx.gallery_emb, ctx.labels)
            par = own if own is not None else ck.parity_stats(ctx.reference, emb)
            return {"model": name, "format": fmt, "weights": weights, "precision": precision, "status": status,
                    "cos_min": par["cos_min"], "cos_mean": par["cos_mean"],
                    "cos_min_vs_float": ck.parity_stats(ctx.reference, emb)["cos_min"],
                    "cos_min_vs_sim": ck.parity_stats(sim, emb)["cos_min"] if weights == "QAT" else None,
                    "r1": 100.0 * float(hits.mean()), "r1_delta": 100.0 * float(hits.mean()) - ctx.reference_r1,
                    "r1_delta_se": ck.paired_se(ctx.reference_hits, hits), "delegate": delegate, "p50_ms": p50}

        qf = embed(q.model, ctx.pixels)
        rows += [row("float", "pytorch", "fp32", ctx.reference),
                 row("QAT", "pytorch", "fp32", qf, own=ck.parity_stats(qf, qf)),
                 row("QAT", "pytorch", "int8 (simulated)", sim, own=ck.parity_stats(qf, sim))]
        info = {"float_checkpoint": f.name, "qat_checkpoint": q.name, "mmacs": f.macs / 1e6,
                "architecture": f.spec.get("name") or f.spec.get("family"), "pytorch_r1": ctx.reference_r1,
                "gallery_r1": ctx.gallery_r1, "check_images": len(check), "calib_images": len(calib),
                "probe_images": 0 if probe is None else len(probe), "gallery": q.meta.get("gallery_model_id"),
                "qat_training": {k: tc.get(k) for k in ("epochs", "lr", "qat", "qat_consistency", "batch_size")}
                | {"seconds": round(sum(h.get("train_seconds", 0) for h in q.meta["metrics"]["history"]), 1)},
                "bundles": {}}
        for weights, ckpt in (("PTQ", f), ("QAT", q)):
            bundle = work / name / weights.lower()
            t0 = time.perf_counter()
            man = export_bundle(ckpt, bundle, formats=("onnx", "tflite"), precisions=("fp32", "int8"),
                                calib_data=calib, gallery=gallery, check_data=check, progress=False,
                                threads=args.threads, keep_failed=True, probe_data=probe)
            info["bundles"][weights] = {"export_seconds": round(time.perf_counter() - t0, 1),
                                        "qat_ranges": {e["format"]: e["qat_ranges"] for e in man["files"]
                                                       if e.get("qat_ranges")},
                                        "int8_recipes": {e["format"]: e.get("quantization") for e in man["files"]
                                                         if e["precision"] == "int8"}}
            prof = {} if args.no_profile else {
                r["file"]: r.get("p50_ms") for r in profile_bundle(bundle, "local", threads=1, warmup=warmup, runs=runs,
                                                                   min_seconds=min_s, update_manifest=False)["results"]}
            for e in man["files"]:
                if weights == "QAT" and e["precision"] == "fp32":
                    continue  # the QAT model's float weights are the 'pytorch' QAT row; its fp32 files match them
                runner = SdkRunner(bundle / e["path"], e, threads=args.threads)
                rec = man["checks"].get(e["path"], {})
                rows.append(row(weights if e["precision"] == "int8" else "float", e["format"], e["precision"],
                                runner.embed(ctx.pixels), p50=prof.get(e["path"]),
                                delegate=delegate_label(runner.delegate, runner.delegate_partitions) or "-",
                                status=rec.get("status", "-"), own=rec.get("parity")))
        models[name] = info
        print(format_table(_display([r for r in rows if r["model"] == name]), QAT_COLUMNS, headers=QAT_HEADERS),
              file=sys.stderr)
    targets = _qat_targets(rows)
    result = {"benchmark": "export-qat", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "host": {"platform": f"{platform.system()} {platform.machine()}", "python": platform.python_version()},
              "note": args.note, "models": models, "targets": targets, "tools": tool_versions(), "rows": rows}
    out = Path(args.out)
    write_json(out / "export-qat.json", result)
    md = ["# Export benchmark: float vs post-training int8 vs quantization-aware (QAT) int8", "",
          f"Measured {result['measured_at']} on {result['host']['platform']}. "
          "Each model's checks use its own validation split (carved from the training data, never trained on). "
          "PTQ: the float checkpoint through the int8 recipes. QAT: the same recipes on the checkpoint finetuned "
          "from it with `hetsearch train query --init F --qat int8`, with the activation ranges QAT learned at "
          "every fake-quantization point found in the graph (the manifest's `qat_ranges`; other tensors "
          "calibrated). cos min/mean: parity against the model's own "
          "PyTorch float weights (the export gate; for QAT files the QAT checkpoint's float weights); "
          "'vs float model': against the float model the QAT started from; 'vs QAT sim': against the "
          "fake-quantized model QAT trained. "
          "R@1 Δ: heterogeneous R@1 minus the float model's PyTorch R@1 on the same images, ± paired standard "
          "error. Latency: local, one thread, p50." + (f" {args.note}" if args.note else ""), ""]
    for name, m in models.items():
        t = m["qat_training"]
        md.append(f"- **{name}** ({m['architecture']}, {m['mmacs']:.2f} MMACs): {m['check_images']} check images, "
                  f"{m['calib_images']} calibration images, {m.get('probe_images', 0)} probe images; float PyTorch het R@1 {_pct(m['pytorch_r1'])}; QAT: "
                  f"{t['epochs']} epochs at lr {t['lr']}, consistency weight {t['qat_consistency']}, {t['seconds']} s")
    md += ["", markdown_table(_display(rows), QAT_COLUMNS, headers=QAT_HEADERS), "",
           f"Targets (int8 files): parity cos min >= {TARGET_COS_MIN} and R@1 within {TARGET_R1_DROP} point of the "
           "float PyTorch model; TFLite under XNNPACK.", "",
           markdown_table(targets, ["model", "format", "weights", "cos_min", "cos_min_met", "r1_delta", "r1_met",
                                    "delegate"], headers={"cos_min_met": f"cos min >= {TARGET_COS_MIN}",
                                                          "r1_met": f"R@1 within {TARGET_R1_DROP}"})]
    (out / "export-qat.md").write_text("\n".join(md) + "\n")
    print(format_table(_display(rows), QAT_COLUMNS, headers=QAT_HEADERS))
    print(f"wrote {out / 'export-qat.json'} and {out / 'export-qat.md'}", file=sys.stderr)
    return 0


def _qat_targets(rows: list[dict]) -> list[dict]:
    """Per int8 file: the issue's targets, met or missed by how much."""
    out = []
    for r in rows:
        if r["precision"] != "int8" or r["format"] == "pytorch":
            continue
        cos_gap, r1_gap = r["cos_min"] - TARGET_COS_MIN, r["r1_delta"] + TARGET_R1_DROP
        out.append({"model": r["model"], "format": r["format"], "weights": r["weights"],
                    "cos_min": f"{r['cos_min']:.5f}", "r1_delta": f"{r['r1_delta']:+.2f} ± {r['r1_delta_se']:.2f}",
                    "delegate": r["delegate"],
                    "cos_min_met": "met" if cos_gap >= 0 else f"missed by {-cos_gap:.4f}",
                    "r1_met": "met" if r1_gap >= 0 else f"missed by {-r1_gap:.2f}"})
    return out


_DIGITS = {"size_kb": 1, "cos_min": 5, "cos_mean": 5, "max_abs_diff": 4, "r1": 2, "r1_delta": 2, "p50_ms": 4,
           "vs_paragon": 3, "cos_min_vs_sim": 5, "cos_min_vs_float": 5}


def _display(rows: list[dict]) -> list[dict]:
    """Rows with numbers rounded per column for the tables (the JSON keeps full precision)."""
    out = []
    for r in rows:
        d = dict(r)
        for key, n in _DIGITS.items():
            if isinstance(d.get(key), float):
                d[key] = f"{d[key]:+.{n}f}" if key == "r1_delta" else f"{d[key]:.{n}f}"
        if isinstance(r.get("r1_delta"), float) and isinstance(r.get("r1_delta_se"), float):
            d["r1_delta"] += f" ± {r['r1_delta_se']:.2f}"
        out.append(d)
    return out


def _pct(v):
    return "-" if v is None else f"{v:.2f}%"


if __name__ == "__main__":
    sys.exit(main())
