"""The bundle manifest: what an exported query model directory vouches for.

A bundle is one directory per query model::

    BUNDLE/
      manifest.json
      model-fp32.onnx  model-fp16.onnx  model-int8.onnx
      model-fp32.tflite ...
      model-fp32.mlpackage/ ...

``manifest.json`` (schema version 1) holds, at least::

    schema_version  int (1)
    model_id        str   a name for this query model
    space_id        str   the embedding space (see hetsearch.space)
    architecture    dict  the architecture spec the model was built from
    macs, params    int   multiply-accumulates per image, parameters
    input           dict  height, width, channels, layout ("NCHW" or "NHWC"),
                          dtype ("float32"), value_range ([0, 255]),
                          resize ("bilinear"), color ("grayscale" or "rgb");
                          normalisation lives inside the graph
    output          dict  dim, l2_normalized, name
    files           list  {path, format (onnx|tflite|coreml), precision
                          (fp32|fp16|int8), sha256, bytes, ...}
    checks          dict  per file path: parity and compatibility results
    latency         dict  per target, per file path: profile results
    tools           dict  tool name -> version

Optional keys written by ``hetsearch export`` (readers may ignore them)::

    failures        list  {format, precision, reason} of conversions that failed
    source          dict  kind and weights_sha256 of the checkpoint the files came from
                          (``hetsearch check --query`` verifies it is the same model); ``qat``
                          when it was trained quantization-aware (``--qat int8``), and then
                          its int8 files say ``int8_training: "qat"`` (otherwise "ptq")
    check_config    dict  check images (source, count), gallery space and R@1, thresholds
    exported_at     str   UTC time of the export (ISO 8601)

The SDK trusts nothing the manifest does not vouch for: every file's sha256 is
checked before it is loaded (:func:`verify_file`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import BundleError, IntegrityError
from .space import is_space_id

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
FORMATS = ("onnx", "tflite", "coreml", "mediapipe")  # mediapipe: a .tflite for MediaPipe Tasks' ImageEmbedder
PRECISIONS = ("fp32", "fp16", "int8")
LAYOUTS = ("NCHW", "NHWC")
COLORS = ("grayscale", "rgb")

_REQUIRED = {
    "schema_version": int,
    "model_id": str,
    "space_id": str,
    "architecture": dict,
    "macs": int,
    "params": int,
    "input": dict,
    "output": dict,
    "files": list,
}
_INPUT_REQUIRED = {
    "height": int,
    "width": int,
    "channels": int,
    "layout": str,
    "dtype": str,
    "value_range": list,
    "resize": str,
    "color": str,
}
_FILE_REQUIRED = {"path": str, "format": str, "precision": str, "sha256": str, "bytes": int}


def _check_fields(obj: dict, required: dict, where: str, problems: list) -> None:
    for key, typ in required.items():
        if key not in obj:
            problems.append(f"{where}: missing key {key!r}")
        elif typ is int and isinstance(obj[key], bool):
            problems.append(f"{where}.{key}: expected int, got bool")
        elif not isinstance(obj[key], typ):
            problems.append(f"{where}.{key}: expected {typ.__name__}, got {type(obj[key]).__name__}")


def validation_problems(manifest: Any) -> list[str]:
    """Everything wrong with a manifest, as readable lines (empty when valid)."""
    problems: list[str] = []
    if not isinstance(manifest, dict):
        return [f"manifest must be a JSON object, got {type(manifest).__name__}"]
    _check_fields(manifest, _REQUIRED, "manifest", problems)
    if problems:
        return problems
    if manifest["schema_version"] != SCHEMA_VERSION:
        problems.append(
            f"manifest.schema_version is {manifest['schema_version']}, this hetsearch reads {SCHEMA_VERSION}"
        )
    if not is_space_id(manifest["space_id"]):
        problems.append(f"manifest.space_id {manifest['space_id']!r} is not a hetsearch space id")
    inp = manifest["input"]
    _check_fields(inp, _INPUT_REQUIRED, "manifest.input", problems)
    if not problems:
        if inp["layout"] not in LAYOUTS:
            problems.append(f"manifest.input.layout must be one of {LAYOUTS}, got {inp['layout']!r}")
        if inp["color"] not in COLORS:
            problems.append(f"manifest.input.color must be one of {COLORS}, got {inp['color']!r}")
        if inp["channels"] not in (1, 3):
            problems.append(f"manifest.input.channels must be 1 or 3, got {inp['channels']}")
        if min(inp["height"], inp["width"]) <= 0:
            problems.append("manifest.input height and width must be positive")
        if len(inp["value_range"]) != 2:
            problems.append("manifest.input.value_range must be [low, high]")
    out = manifest["output"]
    if not isinstance(out.get("dim"), int) or isinstance(out.get("dim"), bool) or out.get("dim", 0) <= 0:
        problems.append("manifest.output.dim must be a positive int")
    if not isinstance(out.get("l2_normalized"), bool):
        problems.append("manifest.output.l2_normalized must be true or false")
    seen = set()
    for i, entry in enumerate(manifest["files"]):
        where = f"manifest.files[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object")
            continue
        _check_fields(entry, _FILE_REQUIRED, where, problems)
        if entry.get("format") not in FORMATS:
            problems.append(f"{where}.format must be one of {FORMATS}, got {entry.get('format')!r}")
        if entry.get("precision") not in PRECISIONS:
            problems.append(f"{where}.precision must be one of {PRECISIONS}, got {entry.get('precision')!r}")
        path = entry.get("path", "")
        if isinstance(path, str) and (path.startswith("/") or ".." in Path(path).parts):
            problems.append(f"{where}.path must be relative and inside the bundle, got {path!r}")
        if path in seen:
            problems.append(f"{where}.path {path!r} is listed twice")
        seen.add(path)
        sha = entry.get("sha256", "")
        if isinstance(sha, str) and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            problems.append(f"{where}.sha256 must be 64 lowercase hex characters")
    return problems


def validate(manifest: Any, source: str = "manifest") -> dict:
    """Return the manifest if valid, else raise BundleError listing every problem."""
    problems = validation_problems(manifest)
    if problems:
        raise BundleError(f"{source} is not a valid hetsearch manifest:\n  - " + "\n  - ".join(problems))
    return manifest


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a directory (e.g. an .mlpackage) as a sorted walk of its files."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            rel = f.relative_to(p).as_posix().encode()
            h.update(len(rel).to_bytes(4, "little") + rel)
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def size_path(path: str | os.PathLike) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def load(bundle: str | os.PathLike) -> dict:
    """Read and validate ``BUNDLE/manifest.json`` (or a path to the manifest itself)."""
    p = Path(bundle)
    if p.is_dir() and p.suffix.lower() == ".mlpackage" and (p.parent / MANIFEST_NAME).exists():
        raise BundleError(f"{p} is a model file of a bundle; give the bundle directory {p.parent}")
    mpath = p / MANIFEST_NAME if p.is_dir() else p
    if not mpath.exists():
        raise BundleError(f"no {MANIFEST_NAME} at {mpath}: not a hetsearch bundle")
    if p.is_file() and p.name != MANIFEST_NAME:
        where = (f"; give the bundle directory {p.parent}" if (p.parent / MANIFEST_NAME).exists() else
                 " (expected a bundle directory or its manifest.json)")
        raise BundleError(f"{p} is not a bundle manifest but a {p.suffix or 'suffix-less'} file{where}")
    try:
        data = json.loads(mpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON: {exc}") from exc
    return validate(data, str(mpath))


def save(bundle: str | os.PathLike, manifest: dict) -> Path:
    """Validate and write ``manifest.json`` atomically."""
    validate(manifest)
    p = Path(bundle) / MANIFEST_NAME
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, p)
    return p


def file_entry(manifest: dict, path: str) -> dict:
    for entry in manifest["files"]:
        if entry["path"] == path:
            return entry
    raise BundleError(f"{path!r} is not listed in the manifest of model {manifest.get('model_id')!r}")


def verify_file(bundle: str | os.PathLike, entry: dict) -> Path:
    """Check a listed file exists and matches its sha256; return its path."""
    f = Path(bundle) / entry["path"]
    if not f.exists():
        raise BundleError(f"{f} is listed in the manifest but missing from the bundle")
    digest = sha256_path(f)
    if digest != entry["sha256"]:
        raise IntegrityError(
            f"{f} does not match the manifest: sha256 {digest[:16]}… != {entry['sha256'][:16]}…; "
            "the file was modified or corrupted after export"
        )
    return f
