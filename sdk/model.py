"""The query model on the device: load a bundle, embed images into the gallery's space.

    from hetsearch.sdk.model import QueryModel

    model = QueryModel.load("bundles/query")          # picks .onnx / .tflite for this device
    emb = model.embed(["shoe.png", frame_array])       # float32 [2, dim], unit norm
    model.space_id                                     # the embedding space the gallery must hold

Nothing is loaded that the bundle's manifest does not vouch for: the file's sha256
is checked first (:class:`hetsearch.errors.IntegrityError` when it differs).
Imports neither torch nor faiss.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from hetsearch import manifest as manifest_mod
from hetsearch.errors import BundleError, HetsearchError, MissingDependency, ModelError

from .image import ImageError, split_images, to_pixels, to_tensor
from .runtime import (
    BACKEND_OF_FORMAT,
    BACKENDS,
    FORMAT_OF_BACKEND,
    BackendUnavailable,
    Runtime,
    backend_available,
    format_of,
    open_runtime,
    require_coreml_platform,
)

__all__ = ["QueryModel", "ImageError", "BackendUnavailable", "PRECISION_PREFERENCE"]

PRECISION_PREFERENCE = ("fp32", "fp16", "int8")
log = logging.getLogger("hetsearch.sdk")
_MISSING_MODULE = {"onnxruntime": "onnxruntime", "litert": "ai_edge_litert", "coreml": "coremltools"}


def _locate(bundle_or_file: str | os.PathLike) -> tuple[Path, str | None]:
    """(bundle directory, relative path of a specific file or None)."""
    p = Path(bundle_or_file)
    if not p.exists():
        raise BundleError(f"{p} does not exist (expected a bundle directory, its manifest.json or a model file in it)")
    if p.is_file() and p.name == manifest_mod.MANIFEST_NAME:
        return p.parent, None
    if p.is_dir() and (p / manifest_mod.MANIFEST_NAME).is_file():
        return p, None
    if p.is_dir() and p.suffix.lower() != ".mlpackage":
        raise BundleError(f"{p} is not a hetsearch bundle: it has no {manifest_mod.MANIFEST_NAME}")
    bundle = p.parent
    if not (bundle / manifest_mod.MANIFEST_NAME).is_file():
        raise BundleError(
            f"{p} is not inside a bundle (no {manifest_mod.MANIFEST_NAME} next to it); the SDK only loads "
            "model files whose sha256 a manifest vouches for"
        )
    return bundle, p.name


def _precision_rank(precision: str) -> int:
    return PRECISION_PREFERENCE.index(precision) if precision in PRECISION_PREFERENCE else len(PRECISION_PREFERENCE)


def failed_check(manifest: dict, path: str) -> str | None:
    """Why the export's checks failed this file (None when they passed, were skipped or did not run)."""
    rec = (manifest.get("checks") or {}).get(path) or {}
    if rec.get("status") in ("failed", "error"):
        return rec.get("reason") or rec["status"]
    return None


def choose_file(manifest: dict, backend: str = "auto", precision: str | None = None,
                allow_failed: bool = False) -> tuple[dict, str]:
    """The manifest entry to run here and the backend to run it with.

    ``auto`` tries onnxruntime, then LiteRT, then Core ML (macOS), taking the first
    runtime that is installed and for which the bundle has a file; among those files
    fp32 is preferred unless ``precision`` is given. Files whose checks failed at export
    are never chosen unless ``allow_failed``.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise HetsearchError(f"unknown backend {backend!r}; expected auto or one of {', '.join(BACKENDS)}")
    if precision is not None and precision not in manifest_mod.PRECISIONS:
        raise HetsearchError(f"unknown precision {precision!r}; expected one of {', '.join(manifest_mod.PRECISIONS)}")
    have = ", ".join(f"{e['path']} ({e['format']}, {e['precision']})" for e in manifest["files"]) or "no files"
    failed = {e["path"]: failed_check(manifest, e["path"]) for e in manifest["files"]}
    files = [e for e in manifest["files"] if allow_failed or not failed[e["path"]]]
    refused = "".join(f"; {p} failed its checks at export ({why})" for p, why in failed.items()
                      if why and not allow_failed)

    def candidates(b: str) -> list[dict]:
        fmt = FORMAT_OF_BACKEND[b]
        found = [e for e in files if e["format"] == fmt and (precision is None or e["precision"] == precision)]
        return sorted(found, key=lambda e: _precision_rank(e["precision"]))

    if backend != "auto":
        if backend == "coreml":
            require_coreml_platform()
        found = candidates(backend)
        if not found:
            want = f"a {FORMAT_OF_BACKEND[backend]} file" + (f" in {precision}" if precision else "")
            raise BundleError(f"bundle {manifest.get('model_id')!r} has no {want} for the {backend} backend; it has "
                              f"{have}{refused}")
        if not backend_available(backend):
            raise MissingDependency(_MISSING_MODULE[backend], "sdk", f"the {backend} backend")
        return found[0], backend
    installed = [b for b in BACKENDS if backend_available(b)]
    for b in installed:
        found = candidates(b)
        if found:
            return found[0], b
    want = f" in {precision}" if precision else ""
    raise BundleError(
        f"no file of bundle {manifest.get('model_id')!r}{want} can run here: the bundle has {have}{refused}; "
        f"runtimes usable on this device: {', '.join(installed) or 'none'} "
        "(install hetsearch[sdk] for onnxruntime and LiteRT; Core ML needs macOS)"
    )


def embed_with(runtime: Runtime, inputs: np.ndarray, dim: int, l2_normalized: bool = True,
               name: str = "the model") -> np.ndarray:
    """Model inputs [N, ...] (the layout and value range the file takes) through a runtime: float32 [N, dim],
    unit rows when ``l2_normalized``. What :meth:`QueryModel.run` does, and what the export checks run, so that
    the checks vouch for the SDK's own code. NaN/Inf or all-zero outputs raise :class:`ModelError`."""
    n = inputs.shape[0]
    emb = np.empty((n, dim), dtype=np.float32)
    if n == 0:
        return emb

    def rows(y: np.ndarray, m: int) -> np.ndarray:
        y = np.asarray(y)
        if y.size != m * dim:
            raise ModelError(f"{name} returned shape {list(y.shape)}; expected [{m}, {dim}]")
        return y.reshape(m, dim).astype(np.float32, copy=False)

    x = runtime.prepare(inputs)
    if runtime.batch_fixed:
        for i in range(n):
            emb[i] = rows(runtime.run(x[i : i + 1]), 1)[0]
    else:
        emb[:] = rows(runtime.run(x), n)
    if not np.isfinite(emb).all():
        bad = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
        raise ModelError(f"{name} ({runtime.name}) produced NaN or infinite values for image #{bad}; "
                         "the model file is broken or overflows at this precision")
    if l2_normalized:
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if (norms < 1e-6).any():
            raise ModelError(f"{name} produced an all-zero embedding; it cannot be normalised")
        emb /= norms
    return emb


class QueryModel:
    """An exported query model ready to embed images on this device.

    Attributes: ``space_id`` (the embedding space), ``manifest`` (dict), ``dim``,
    ``backend`` (onnxruntime | litert | coreml), ``path`` (the model file),
    ``precision``, ``format``, ``model_id``, ``input_spec`` and ``runtime``.
    """

    def __init__(self, runtime: Runtime, manifest: dict, entry: dict, bundle: Path):
        self.runtime = runtime
        self.manifest = manifest
        self.entry = entry
        self.bundle = bundle
        self.path = runtime.path
        self.backend = runtime.name
        self.format = entry["format"]
        self.precision = entry["precision"]
        self.space_id: str = manifest["space_id"]
        self.model_id: str = manifest["model_id"]
        self.dim: int = int(manifest["output"]["dim"])
        self.l2_normalized: bool = bool(manifest["output"].get("l2_normalized", True))
        spec = dict(manifest["input"])
        spec["layout"] = entry.get("layout", spec["layout"])
        self.input_spec = spec
        self._check_shapes()

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, bundle_or_file: str | os.PathLike, backend: str = "auto", precision: str | None = None,
             threads: int | None = None, allow_failed: bool = False) -> "QueryModel":
        """Load the file of a bundle that runs on this device (or a given file of a bundle).

        ``bundle_or_file``: a bundle directory, its ``manifest.json``, or one model file
        inside a bundle. ``backend``: ``auto`` | ``onnxruntime`` | ``litert`` | ``coreml``.
        ``precision``: fp32 | fp16 | int8 (default: fp32 if present). ``threads``: CPU
        threads for the runtime (default: the runtime's own choice). A file whose checks failed at
        export (manifest ``checks``) is refused unless ``allow_failed`` (then a warning is logged).
        """
        if backend == "coreml":
            require_coreml_platform()
        bundle, rel = _locate(bundle_or_file)
        manifest = manifest_mod.load(bundle)
        if rel is None:
            entry, backend = choose_file(manifest, backend, precision, allow_failed=allow_failed)
        else:
            entry = manifest_mod.file_entry(manifest, rel)
            if entry["format"] not in FORMAT_OF_BACKEND.values():
                raise BundleError(f"{rel} is a {entry['format']} file ({entry.get('consumer') or 'not for this SDK'}); "
                                  "load the bundle's .onnx or .tflite files with the SDK")
            why = failed_check(manifest, rel)
            if why and not allow_failed:
                raise BundleError(f"{rel} failed its checks at export ({why}); it may not land in the gallery's "
                                  "embedding space. Re-export it, or pass allow_failed=True to run it anyway")
            fmt = format_of(rel)
            if backend == "auto":
                backend = BACKEND_OF_FORMAT[fmt]
            elif backend not in BACKENDS:
                raise HetsearchError(f"unknown backend {backend!r}; expected auto or one of {', '.join(BACKENDS)}")
            elif FORMAT_OF_BACKEND[backend] != fmt:
                raise BundleError(f"{rel} is in {fmt} format; the {backend} backend runs {FORMAT_OF_BACKEND[backend]} files")
            if precision is not None and entry["precision"] != precision:
                raise BundleError(f"{rel} is {entry['precision']}, not {precision}")
        why = failed_check(manifest, entry["path"])
        if why:
            log.warning("running %s although it failed its checks at export (%s)", entry["path"], why)
        path = manifest_mod.verify_file(bundle, entry)
        runtime = open_runtime(path, backend, threads)
        return cls(runtime, manifest, entry, bundle)

    def _check_shapes(self) -> None:
        spec = self.input_spec
        c, h, w = spec["channels"], spec["height"], spec["width"]
        want = (c, h, w) if spec["layout"] == "NCHW" else (h, w, c)
        got = self.runtime.input_shape
        if len(got) != 4 or any(g is not None and g != x for g, x in zip(got[1:], want)):
            raise ModelError(
                f"{self.path.name} takes input of shape {list(got)}, but the manifest describes "
                f"{spec['layout']} {['N', *want]}; the bundle is inconsistent"
            )
        if spec["color"] == "grayscale" and c != 1 or spec["color"] == "rgb" and c != 3:
            raise ModelError(f"manifest input color {spec['color']!r} does not fit {c} channels")
        out = self.runtime.output_shape
        if out and out[-1] is not None and out[-1] != self.dim:
            raise ModelError(f"{self.path.name} outputs {list(out)} but the manifest says dim {self.dim}")

    # ------------------------------------------------------------------ embedding

    def preprocess(self, images: Any, float_range: str | None = None) -> np.ndarray:
        """The model inputs for ``images``: float32 [N, C, H, W] (or [N, H, W, C]) in the value range.
        ``float_range``: '0-1' or '0-255' for float arrays (see :mod:`hetsearch.sdk.image`)."""
        items = split_images(images)
        spec = self.input_spec
        shape = (spec["channels"], spec["height"], spec["width"]) if spec["layout"] == "NCHW" else (
            spec["height"], spec["width"], spec["channels"])
        out = np.empty((len(items), *shape), dtype=np.float32)
        for i, (label, item) in enumerate(items):
            pixels = to_pixels(item, label, spec["color"], spec["height"], spec["width"], float_range)
            out[i] = to_tensor(pixels, spec["layout"], spec["value_range"])
        return out

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run preprocessed inputs ([N, ...] from :meth:`preprocess`) through the model: float32 [N, dim]."""
        return embed_with(self.runtime, inputs, self.dim, self.l2_normalized, self.path.name)

    def embed(self, images: Any, float_range: str | None = None) -> np.ndarray:
        """Embed one image or a batch: float32 [N, dim], one unit-norm row per image, in input order.

        ``images``: file paths, encoded bytes, PIL images, numpy arrays (H×W, H×W×C
        uint8, or an N×H×W×C batch), or a list of these. Float arrays are 0..255 pixel values; pass
        ``float_range="0-1"`` for arrays scaled to 0..1 (such arrays are refused without it). Raises
        :class:`ImageError` for an unreadable or unsupported image.
        """
        return self.run(self.preprocess(images, float_range))

    __call__ = embed

    def describe(self) -> dict:
        return {"model_id": self.model_id, "space_id": self.space_id, "dim": self.dim, "backend": self.backend,
                "format": self.format, "precision": self.precision, "path": str(self.path),
                "runtime_version": self.runtime.version, "input": self.input_spec}

    def __repr__(self) -> str:
        return (f"QueryModel({self.model_id!r}, space={self.space_id}, dim={self.dim}, "
                f"{self.backend} {self.precision} {self.path.name})")

