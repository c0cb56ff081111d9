"""Parity and compatibility checks of a bundle's files, run with their real runtimes.

**Parity** compares a file's embeddings with the PyTorch query model's on the same real images (a
few hundred from the validation split carved out of the *training* data): cosine similarity mean
and min, and max absolute difference. Thresholds per precision (:data:`DEFAULT_PARITY`):

=========  ==========  ===========  ==================================================================
precision  cos min ≥   cos mean ≥   why
=========  ==========  ===========  ==================================================================
fp32       0.9999      0.99999      only operator order differs (measured ≥ 0.99999 on every format)
fp16       0.999       0.9999       fp16 weights (TFLite, Core ML) / fp16 compute (ONNX): ~1e-3 error
int8       0.95        0.995        post-training int8 with the escalating recipe (what the probe needs
                                    stays float): measured cos min 0.977–0.998 and mean ≥ 0.9993 on
                                    2,000–6,000 images for every benchmark and calibration-draw file;
                                    the whole body int8 gave 0.82–0.97, which this floor refuses
int8, QAT  0.97        0.998        files from a ``--qat int8`` checkpoint, with the ranges it learned
                                    (:data:`DEFAULT_QAT_PARITY`; measured cos min ≥ 0.987, mean ≥ 0.9993
                                    on 6,000 images): re-calibrated ranges gave 0.87–0.89 before the
                                    escalation existed
=========  ==========  ===========  ==================================================================

**Compatibility** is what matters for search: the heterogeneous R@1 (%) of the file's embeddings
as queries against the *gallery model's* embeddings of the same images (leave-one-out,
:func:`hetsearch.cmpnas.metrics.retrieval_metrics`), compared with the PyTorch query model's. The
gate fails when

* the drop exceeds :data:`DEFAULT_COMPAT_DROP` points (0.2 fp32, 0.5 fp16, 1.5 int8), or
* the file's heterogeneous R@1 is below ``min_compat_ratio`` (default 0.5) × the gallery model's own
  R@1 on the same images — an absolute floor that catches a query model that is not compatible at
  all (trained against another gallery, untrained, mislabelled), for which the drop is zero.

A bundle whose ``space_id`` differs from the gallery checkpoint's is refused
(:class:`SpaceMismatchError`) unless ``allow_mismatch``.

Core ML off macOS: the interface (input/output names, shapes, dtypes) is checked; the numeric checks
are reported ``{"status": "skipped", "reason": "needs macOS"}`` — never "passed".
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hetsearch import manifest as mf
from hetsearch.errors import BundleError, ModelError, SpaceMismatchError

from .runners import NeedsPlatform, coreml_spec_problems, open_runner

log = logging.getLogger("hetsearch.export")

DEFAULT_PARITY = {
    "fp32": {"cos_min": 0.9999, "cos_mean": 0.99999},
    "fp16": {"cos_min": 0.999, "cos_mean": 0.9999},
    "int8": {"cos_min": 0.95, "cos_mean": 0.995},
}
# int8 files whose manifest entry says ``"int8_training": "qat"`` (benchmarks/results/export-qat.md)
DEFAULT_QAT_PARITY = {"int8": {"cos_min": 0.97, "cos_mean": 0.998}}
DEFAULT_COMPAT_DROP = {"fp32": 0.2, "fp16": 0.5, "int8": 1.5}
DEFAULT_MIN_COMPAT_RATIO = 0.5
DEFAULT_CHECK_SAMPLES = 2000  # the CLI default (export/check --check-samples)
DEFAULT_CALIB_SAMPLES = 200

PASSED, FAILED, SKIPPED, ERROR = "passed", "failed", "skipped", "error"


def default_thresholds() -> dict:
    return {"parity": copy.deepcopy(DEFAULT_PARITY), "qat_parity": copy.deepcopy(DEFAULT_QAT_PARITY),
            "compat_drop": dict(DEFAULT_COMPAT_DROP), "min_compat_ratio": DEFAULT_MIN_COMPAT_RATIO}


def merge_thresholds(overrides: dict | None) -> dict:
    """Defaults updated with ``overrides`` (same shape, any subset), e.g.
    ``{"compat_drop": {"int8": 3.0}, "parity": {"int8": {"cos_min": 0.8}}, "min_compat_ratio": 0.6}``
    (``qat_parity``: the same shape as ``parity``, for files from a quantization-aware checkpoint)."""
    t = default_thresholds()
    for key, value in (overrides or {}).items():
        if key in ("parity", "qat_parity"):
            for prec, limits in value.items():
                t[key].setdefault(prec, {}).update(limits)
        elif key == "compat_drop":
            t["compat_drop"].update({k: float(v) for k, v in value.items()})
        elif key == "min_compat_ratio":
            t["min_compat_ratio"] = float(value)
        else:
            raise ValueError(f"unknown threshold group {key!r}; use parity, qat_parity, compat_drop or min_compat_ratio")
    return t


def parse_threshold_args(compat_drop: str | None = None, min_compat_ratio: float | None = None) -> dict:
    """``"fp32=0.2,int8=2"`` (from ``--max-drop``) into an overrides dict for :func:`merge_thresholds`."""
    from hetsearch.errors import HetsearchError

    out: dict = {}
    if compat_drop:
        drops = {}
        for item in compat_drop.split(","):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in mf.PRECISIONS:
                raise HetsearchError(f"--max-drop: {item!r} is not PRECISION=POINTS with PRECISION in {mf.PRECISIONS}")
            try:
                drops[key] = float(value)
            except ValueError:
                raise HetsearchError(f"--max-drop: {value!r} is not a number") from None
        out["compat_drop"] = drops
    if min_compat_ratio is not None:
        out["min_compat_ratio"] = float(min_compat_ratio)
    return out


# ----------------------------------------------------------------------------- numbers


def parity_stats(reference: np.ndarray, emb: np.ndarray) -> dict:
    ref = np.asarray(reference, np.float64)
    got = np.asarray(emb, np.float64)
    if ref.shape != got.shape:
        raise BundleError(f"the file returns embeddings of shape {got.shape}; the PyTorch model {ref.shape}")
    if not np.isfinite(got).all():
        return {"cos_mean": float("nan"), "cos_min": float("nan"), "max_abs_diff": float("inf"), "n": int(len(ref))}
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cos = (ref * got).sum(axis=1) / np.maximum(den, 1e-12)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "max_abs_diff": float(np.abs(ref - got).max()), "n": int(len(ref))}


def judge_parity(stats: dict, precision: str, thresholds: dict, qat: bool = False) -> dict:
    """``stats`` against the precision's floors; ``qat``: the file comes from a quantization-aware checkpoint,
    judged by ``qat_parity`` where it names the precision (its stricter floors)."""
    qat = qat and precision in thresholds.get("qat_parity", {})
    limits = thresholds["qat_parity" if qat else "parity"].get(precision, {})
    fails = []
    for key, limit in limits.items():
        value = stats.get(key)
        if value is None or not np.isfinite(value) or value < limit:
            fails.append(f"{key} {value:.5f} < {limit}" if value is not None else f"{key} missing")
    if fails and qat:
        fails[-1] += " (the floor for quantization-aware int8)"
    return {**stats, "thresholds": dict(limits), **({"floor": "qat"} if qat else {}),
            "status": FAILED if fails else PASSED, **({"reason": "; ".join(fails)} if fails else {})}


# ----------------------------------------------------------------------------- context


@dataclass
class CheckContext:
    """Everything the checks of one bundle share: images, labels, reference and gallery embeddings."""

    pixels: np.ndarray  # uint8 N×C×H×W at the model's input size
    labels: np.ndarray
    source: str
    reference: np.ndarray | None = None  # PyTorch query model embeddings (parity); None without --query
    gallery_emb: np.ndarray | None = None
    gallery_space: str | None = None
    reference_r1: float | None = None  # PyTorch query -> gallery R@1
    reference_hits: np.ndarray | None = None  # its per-query terms (for the paired standard error)
    gallery_r1: float | None = None  # gallery -> gallery R@1 (the paragon)
    space_mismatch: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def has_compat(self) -> bool:
        return self.gallery_emb is not None and self.labels is not None and len(np.unique(self.labels)) > 1


def _hits(q: np.ndarray, g: np.ndarray, labels: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Per query: is its leave-one-out nearest gallery item of its class (the terms of R@1)."""
    q, g, labels = np.asarray(q, np.float32), np.asarray(g, np.float32), np.asarray(labels)
    out = np.zeros(len(q), bool)
    for start in range(0, len(q), chunk):
        stop = min(len(q), start + chunk)
        sims = q[start:stop] @ g.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        out[start:stop] = labels[sims.argmax(axis=1)] == labels[start:stop]
    return out


def _r1(q: np.ndarray, g: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(_hits(q, g, labels).mean())


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error (points) of R@1(b) - R@1(a) over the same queries: only discordant queries carry noise."""
    n = len(a)
    up, down = int((~a & b).sum()), int((a & ~b).sum())
    return 100.0 * float(np.sqrt(max(up + down - (up - down) ** 2 / n, 0.0))) / n


def prepare_context(input_shape: tuple, images, *, query_model=None, gallery=None, space_id: str | None = None,
                    allow_mismatch: bool = False) -> CheckContext:
    """Build the shared check state.

    ``images`` is an ImageSet (labels needed for compatibility) or a uint8 N×C×H×W array (parity only);
    ``query_model`` is the PyTorch EmbeddingNet the bundle was exported from (or None);
    ``gallery`` a gallery checkpoint directory or a loaded Checkpoint (or None);
    ``space_id`` the bundle's space, compared with the gallery's.
    """
    from hetsearch.cmpnas.data import ImageSet

    _, c, h, w = input_shape
    if isinstance(images, ImageSet):
        pixels, labels, source = images.as_model_input(h, w, c), np.asarray(images.labels), images.source
    else:
        pixels, labels, source = np.asarray(images), None, "array"
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (c, h, w):
            raise BundleError(f"check images must be N×{c}×{h}×{w}, got {pixels.shape}")
    if len(pixels) < 2:
        raise BundleError("the checks need at least 2 images")
    ctx = CheckContext(pixels=pixels, labels=labels, source=source)
    ctx.info = {"data": source, "n_images": int(len(pixels))}
    if query_model is not None:
        from hetsearch.cmpnas.embed import embed

        ctx.reference = embed(query_model, pixels)
    if gallery is not None:
        from hetsearch.cmpnas.checkpoint import Checkpoint, load_checkpoint
        from hetsearch.cmpnas.embed import embed

        g = gallery if isinstance(gallery, Checkpoint) else load_checkpoint(gallery, expect_kind="gallery")
        ctx.gallery_space = g.space_id
        if space_id is not None and g.space_id != space_id:
            if not allow_mismatch:
                raise SpaceMismatchError(g.space_id, space_id, what="the query model")
            ctx.space_mismatch = f"bundle space {space_id} != gallery space {g.space_id} (allowed by --allow-mismatch)"
        if labels is not None:
            gin = images.as_model_input(g.model.input_size[0], g.model.input_size[1], g.model.in_channels)
            ctx.gallery_emb = embed(g.model, gin)
            qdim = ctx.reference.shape[1] if ctx.reference is not None else None
            if qdim is not None and qdim != ctx.gallery_emb.shape[1]:
                if not allow_mismatch:
                    raise SpaceMismatchError(g.space_id, space_id or "?", what=(
                        f"the query model (embedding dim {qdim}, the gallery's is {ctx.gallery_emb.shape[1]})"))
                ctx.gallery_emb = None
                ctx.space_mismatch = f"embedding dim {qdim} != gallery dim {g.model.embed_dim}; compatibility not measurable"
        if ctx.gallery_emb is not None:
            ctx.gallery_r1 = _r1(ctx.gallery_emb, ctx.gallery_emb, labels)
            if ctx.reference is not None:
                ctx.reference_hits = _hits(ctx.reference, ctx.gallery_emb, labels)
                ctx.reference_r1 = 100.0 * float(ctx.reference_hits.mean())
        ctx.info.update({"gallery_space_id": g.space_id, "gallery_r1": ctx.gallery_r1,
                         "reference_r1": ctx.reference_r1})
    return ctx


# ----------------------------------------------------------------------------- per file


def check_file(bundle: str | os.PathLike, entry: dict, ctx: CheckContext, thresholds: dict | None = None,
               manifest: dict | None = None, threads: int = 1, verify: bool = True) -> dict:
    """Run one listed file on the context's images; return its check record (also for the manifest)."""
    thresholds = thresholds or default_thresholds()
    precision = entry["precision"]
    rec: dict[str, Any] = {"format": entry["format"], "precision": precision, **ctx.info}
    if ctx.space_mismatch:
        rec["space_mismatch"] = ctx.space_mismatch
    if entry["format"] == "coreml" and manifest is not None:
        inp = manifest["input"]
        shape = (1, inp["channels"], inp["height"], inp["width"])
        if entry.get("layout", inp.get("layout")) == "NHWC":
            shape = (1, inp["height"], inp["width"], inp["channels"])
        if verify:
            mf.verify_file(bundle, entry)
        problems = coreml_spec_problems(Path(bundle) / entry["path"], shape, manifest["output"]["dim"])
        rec["spec"] = {"status": FAILED if problems else PASSED, **({"reason": "; ".join(problems)} if problems else {})}
        if problems:
            rec.update(status=FAILED, reason="interface: " + "; ".join(problems))
            return rec
    t0 = time.perf_counter()
    try:
        runner = open_runner(bundle, entry, threads=threads, verify=verify)
    except NeedsPlatform as exc:
        reason = "needs macOS" if entry["format"] == "coreml" else str(exc)
        rec["parity"] = {"status": SKIPPED, "reason": reason}
        rec["compat"] = {"status": SKIPPED, "reason": reason}
        rec.update(status=SKIPPED, reason=reason)
        return rec
    emb = runner.embed(ctx.pixels)
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    failures = []
    if ctx.reference is not None:
        rec["parity"] = judge_parity(parity_stats(ctx.reference, emb), precision, thresholds,
                                     qat=entry.get("int8_training") == "qat")
        if rec["parity"]["status"] == FAILED:
            failures.append("parity: " + rec["parity"]["reason"])
    else:
        rec["parity"] = {"status": SKIPPED, "reason": "no PyTorch reference (pass the query checkpoint)"}
    if ctx.has_compat and np.isfinite(emb).all():
        hits = _hits(emb, ctx.gallery_emb, ctx.labels)
        r1 = 100.0 * float(hits.mean())
        comp: dict[str, Any] = {"r1": r1, "gallery_r1": ctx.gallery_r1,
                                "ratio_to_gallery": r1 / ctx.gallery_r1 if ctx.gallery_r1 else None,
                                "min_ratio": thresholds["min_compat_ratio"]}
        fails = []
        if ctx.reference_r1 is not None:
            drop_limit = thresholds["compat_drop"].get(precision)
            se = paired_se(ctx.reference_hits, hits)
            drop = ctx.reference_r1 - r1
            comp.update(reference_r1=ctx.reference_r1, delta=r1 - ctx.reference_r1, delta_se=se, max_drop=drop_limit)
            if drop_limit is not None and drop > drop_limit + 1e-9:
                # a drop fails the gate when it is over the limit *and* real: more than twice its paired standard
                # error (one flipped near-tie among 300 images is 0.33 points, above the fp32 limit of 0.2)
                if drop > 2 * se + 1e-9:
                    fails.append(f"R@1 dropped {drop:.2f} ± {se:.2f} points (paired standard error on {len(hits)} "
                                 f"images; {ctx.reference_r1:.2f} -> {r1:.2f}), more than {drop_limit}")
                else:
                    comp["note"] = (f"the drop of {drop:.2f} points is over the limit of {drop_limit} but within "
                                    f"twice its paired standard error ({se:.2f}) on {len(hits)} images: not "
                                    "significant; check on more images to tell")
        if ctx.gallery_r1 and r1 < thresholds["min_compat_ratio"] * ctx.gallery_r1:
            fails.append(f"heterogeneous R@1 {r1:.2f} is below {thresholds['min_compat_ratio']} x the gallery "
                         f"model's own R@1 {ctx.gallery_r1:.2f}: not compatible with this gallery")
        comp["status"] = FAILED if fails else PASSED
        if fails:
            comp["reason"] = "; ".join(fails)
            failures.append("compatibility: " + comp["reason"])
        rec["compat"] = comp
    elif ctx.has_compat:
        rec["compat"] = {"status": FAILED, "reason": "the file produced NaN or Inf"}
        failures.append("compatibility: the file produced NaN or Inf")
    else:
        rec["compat"] = {"status": SKIPPED, "reason": "no gallery model given (--gallery)"}
    if failures:
        rec.update(status=FAILED, reason="; ".join(failures))
    elif rec["parity"]["status"] == SKIPPED and rec["compat"]["status"] == SKIPPED:
        rec.update(status=SKIPPED, reason="nothing to compare with (give --query and/or --gallery)")
    else:
        rec["status"] = PASSED
    return rec


# ----------------------------------------------------------------------------- whole bundle


def check_bundle(bundle: str | os.PathLike, images, *, gallery=None, query=None, allow_mismatch: bool = False,
                 thresholds: dict | None = None, files: list[str] | None = None, threads: int = 1,
                 update_manifest: bool = False, progress: bool = False) -> dict:
    """Check every file of a bundle (or those in ``files``). Returns ``{path: record}``.

    ``query`` — the query checkpoint (dir or Checkpoint) the bundle was exported from, for parity;
    it must have the bundle's architecture (and, when recorded, weights). ``gallery`` — the gallery
    checkpoint, for the compatibility gate. Every file's sha256 is verified first
    (:class:`IntegrityError` on a tampered file).
    """
    manifest = mf.load(bundle)
    thresholds = merge_thresholds(thresholds)
    entries = [e for e in manifest["files"] if files is None or e["path"] in files]
    if files:
        missing = set(files) - {e["path"] for e in entries}
        if missing:
            raise BundleError(f"not listed in the manifest: {', '.join(sorted(missing))}")
    for e in entries:
        mf.verify_file(bundle, e)
    query_model = None
    if query is not None:
        query_model = _query_model(query, manifest)
    inp = manifest["input"]
    ctx = prepare_context((1, inp["channels"], inp["height"], inp["width"]), images, query_model=query_model,
                          gallery=gallery, space_id=manifest["space_id"], allow_mismatch=allow_mismatch)
    results = {}
    for e in entries:
        if progress:
            print(f"checking {e['path']} ...", file=sys.stderr, flush=True)
        try:
            results[e["path"]] = check_file(bundle, e, ctx, thresholds, manifest, threads=threads, verify=False)
        except BundleError as exc:
            results[e["path"]] = {"format": e["format"], "precision": e["precision"], "status": ERROR,
                                  "reason": str(exc)}
    if update_manifest:
        manifest.setdefault("checks", {}).update(results)
        mf.save(bundle, manifest)
    return results


def _query_model(query, manifest: dict):
    from hetsearch.cmpnas.checkpoint import Checkpoint, load_checkpoint, weights_digest

    q = query if isinstance(query, Checkpoint) else load_checkpoint(query)
    if q.model.spec != manifest["architecture"]:
        raise ModelError(f"--query {getattr(q, 'path', '')}: its architecture differs from the bundle's; "
                         "pass the checkpoint the bundle was exported from")
    recorded = (manifest.get("source") or {}).get("weights_sha256")
    if recorded and weights_digest(q.model) != recorded:
        raise ModelError(f"--query {getattr(q, 'path', '')}: its weights differ from those the bundle was "
                         "exported from (manifest source.weights_sha256)")
    return q.model


def failed_records(results: dict) -> dict:
    return {p: r for p, r in results.items() if r.get("status") in (FAILED, ERROR)}
