"""The bundle manifest: what an exported query model directory vouches for.

A bundle is one directory per query model::

    BUNDLE/
      manifest.json
      model-fp32.onnx  model-fp16.onnx  model-int8.onnx
      model-fp32.tflite ...
      model-fp32.mlpackage/ ...

``manifest.json`` (schema version 1) is declared once, below, as typed parts (:class:`Manifest`,
:class:`InputSpec`, :class:`OutputSpec`, :class:`FileEntry`, ...). Every field says its type, its
constraints and who needs it:

* ``READ`` fields are what every reader needs; :func:`validation_problems` checks them (the SDK
  runs it on device, without any schema library);
* ``WRITTEN`` fields are what ``hetsearch export`` always writes; they, and the ``strict``
  constraints, make the exporter's stricter contract, checked by ``validation_problems(m,
  strict=True)`` and by the JSON Schema that :func:`json_schema` derives from the same
  declarations (``python -m hetsearch.export.manifest_schema`` prints it);
* the rest are optional; readers may ignore them.

:class:`Manifest` is also a typed view (``Manifest.from_dict(d).to_dict() == d``); :func:`load`
keeps returning the plain dict that most readers index.

The SDK trusts nothing the manifest does not vouch for: every file's sha256 is
checked before it is loaded (:func:`verify_file`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .errors import BundleError, IntegrityError
from .space import SPACE_ID_RE

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class FormatRule:
    """What a file format fixes in its entries: the file name's ending, the runtime it runs on, keys its
    entries must have and values they must hold (checked at export level, and in the JSON Schema)."""

    suffix: str
    runtime: str
    needs: tuple = ()
    fixed: tuple = ()  # (key, value) pairs


FORMAT_RULES = {
    "onnx": FormatRule(".onnx", "onnxruntime", needs=("opset",)),
    "tflite": FormatRule(".tflite", "litert"),
    "coreml": FormatRule(".mlpackage", "coreml"),
    # a .tflite for MediaPipe Tasks' ImageEmbedder: NHWC uint8 pixels
    "mediapipe": FormatRule("-mediapipe.tflite", "mediapipe", fixed=(("layout", "NHWC"), ("input_dtype", "uint8"))),
}
FORMATS = tuple(FORMAT_RULES)
PRECISIONS = ("fp32", "fp16", "int8")
RUNTIMES = tuple(dict.fromkeys(rule.runtime for rule in FORMAT_RULES.values()))
LAYOUTS = ("NCHW", "NHWC")
COLORS = ("grayscale", "rgb")
CHECK_STATUSES = ("passed", "failed", "skipped", "error")
TOOLS = ("torch", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert", "coremltools")  # export must name these
def _ends(suffix: str) -> str:
    return suffix.replace(".", "\\.")  # a pattern JSON Schema (ECMA-262) reads too


FILE_NAME_RE = re.compile("^model-({})({})$".format(
    "|".join(PRECISIONS), "|".join(_ends(rule.suffix) for rule in FORMAT_RULES.values())))
_HEX64 = "^[0-9a-f]{64}$"


def file_name(fmt: str, precision: str) -> str:
    """The name of a bundle's file of this format and precision (``model-int8.onnx``)."""
    return f"model-{precision}{FORMAT_RULES[fmt].suffix}"


# ----------------------------------------------------------------------------- how a field is declared

READ, WRITTEN = "read", "written"  # who needs the field: every reader, or the exporter's contract
_UNSET = object()


def spec(need: str | None = None, *, null: bool = False, strict: dict | None = None, message: str | None = None,
         check=None, **constraints) -> Any:
    """One field of a part: ``need`` (READ, WRITTEN or None: optional); ``constraints`` hold for every reader
    (``enum``, ``const``, ``minimum``, ``min_length``, ``pattern``, ``length``, ``items`` (constraints of a list's
    items), ``keys`` (a dict's required keys), ``unique`` (list items' key that must not repeat)); ``strict`` adds
    constraints of the exporter's contract; ``null``: JSON null is a value (``X | None`` alone
    means the key may be absent); ``message`` (with ``{path}`` and ``{value}``) replaces the generic
    message of a broken constraint; ``check(value)`` returns a problem the JSON Schema cannot say (reader-level)."""
    meta = {"need": need, "null": null, "common": constraints, "strict": strict or {}, "message": message,
            "check": check}
    if need == READ:  # readers need it: no default, so a typed part always has it
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=None, metadata=meta)


class Part:
    """A part of the manifest: declared fields, plus ``extra`` for keys this version does not declare."""

    extra: dict
    _keys: tuple = ()  # the key order it was read with

    @classmethod
    def from_dict(cls, data: dict):
        hints = _hints(cls)
        known = {f.name: _typed(data[f.name], hints[f.name]) for f in _declared(cls) if f.name in data}
        obj = cls(**known, extra={k: _copy(v) for k, v in data.items() if k not in known})
        obj._keys = tuple(data)
        return obj

    def to_dict(self) -> dict:
        present = set(self._keys)
        out = {}
        for f in _declared(type(self)):
            value = getattr(self, f.name)
            if value is not None or (f.name in present and f.metadata["null"]):
                out[f.name] = _plain(value)
        out.update({k: _copy(v) for k, v in self.extra.items()})
        order = [k for k in self._keys if k in out]
        return {**{k: out[k] for k in order}, **{k: v for k, v in out.items() if k not in order}}


def _part(cls):
    """Declare a part: a keyword-only dataclass with an ``extra`` dict last."""
    cls.__annotations__["extra"] = "dict"
    cls.extra = dataclasses.field(default_factory=dict, metadata={"extra": True})
    return dataclass(kw_only=True)(cls)


def _inside_bundle(path: str) -> str | None:
    if path.startswith("/") or ".." in Path(path).parts:
        return "must be relative and inside the bundle"
    return None


# ----------------------------------------------------------------------------- the manifest's parts


@_part
class Architecture(Part):
    """The architecture spec the model was built from (the builder's own keys are kept in ``extra``)."""

    family: str = spec(WRITTEN)
    input_size: list[int] = spec(WRITTEN, length=2, items={"minimum": 1})
    in_channels: int = spec(WRITTEN, enum=(1, 3))
    embed_dim: int = spec(WRITTEN, minimum=1)


@_part
class InputSpec(Part):
    """What the model takes; normalisation lives inside the graph."""

    height: int = spec(READ, minimum=1)
    width: int = spec(READ, minimum=1)
    channels: int = spec(READ, enum=(1, 3))
    layout: str = spec(READ, enum=LAYOUTS)
    dtype: str = spec(READ, strict={"const": "float32"})
    value_range: list[float] = spec(READ, length=2, message="{path} must be [low, high], got {value!r}",
                                    strict={"const": [0, 255]})
    resize: str = spec(READ, strict={"const": "bilinear"})
    color: str = spec(READ, enum=COLORS)
    name: str | None = spec(strict={"const": "pixels"})
    batch: int | None = spec(strict={"const": 1})


@_part
class OutputSpec(Part):
    dim: int = spec(READ, minimum=1)
    l2_normalized: bool = spec(READ, strict={"const": True})
    name: str | None = spec(WRITTEN, strict={"const": "embedding"})
    dtype: str | None = spec(strict={"const": "float32"})


@_part
class Int8Recipe(Part):
    """How an int8 file was made: parity with the fp32 file on probe images (training images that did not
    calibrate) per recipe tried, which one was kept (what stayed float), and whether the probe target was met."""

    parity_on_probe_images: list = spec(WRITTEN)
    kept: str = spec(WRITTEN)
    probe_images: int = spec(WRITTEN, minimum=1)
    feature_map_tensors: int = spec(WRITTEN, minimum=0)  # those the escalation could keep float
    met: bool = spec(WRITTEN)


@_part
class QatRanges(Part):
    """In an int8 file from a ``--qat`` checkpoint: how many of the QAT model's fake-quantization points were found
    in the exported graph (matched by values) and quantized with the ranges QAT learned."""

    points: int = spec(WRITTEN, minimum=0)
    matched_points: int = spec(WRITTEN, minimum=0)
    tensors: int = spec(WRITTEN, minimum=0)
    ambiguous_tensors: int | None = spec(minimum=0)
    unmatched_points: list[str] | None = spec()


@_part
class FileEntry(Part):
    """One model file of the bundle."""

    path: str = spec(READ, check=_inside_bundle, strict={"pattern": FILE_NAME_RE.pattern})
    format: str = spec(READ, enum=FORMATS)
    precision: str = spec(READ, enum=PRECISIONS)
    sha256: str = spec(READ, pattern=_HEX64, message="{path} must be 64 lowercase hex characters")
    bytes: int = spec(READ, strict={"minimum": 1})
    runtime: str | None = spec(WRITTEN, enum=RUNTIMES)
    layout: str | None = spec(enum=LAYOUTS)
    input_name: str | None = spec()
    output_name: str | None = spec()
    opset: int | None = spec(minimum=7)
    signature: str | None = spec()
    deployment_target: str | None = spec()
    compute_precision: str | None = spec(enum=("float32", "float16"))
    quantization: str | None = spec()
    calibration_images: int | None = spec(minimum=1)
    float_nodes: list[str] | None = spec()  # what stayed float in an int8 file
    widened_ranges: int | None = spec(minimum=0)
    int8_recipe: Int8Recipe | None = spec()
    int8_training: str | None = spec(enum=("ptq", "qat"))
    qat_ranges: QatRanges | None = spec()
    export_seconds: float | None = spec(minimum=0)
    input_dtype: str | None = spec(enum=("float32", "uint8"))
    input_color: str | None = spec(enum=COLORS)
    consumer: str | None = spec()


@_part
class CheckStatus(Part):
    """How a check went, and why when it did not pass."""

    status: str = spec(WRITTEN, enum=CHECK_STATUSES)
    reason: str | None = spec()


@_part
class CheckPart(CheckStatus):
    """One check of a file (parity against PyTorch, compatibility with the gallery, the I/O spec)."""

    cos_mean: float | None = spec(null=True)
    cos_min: float | None = spec(null=True)
    max_abs_diff: float | None = spec(null=True)
    n: int | None = spec(minimum=0)
    thresholds: dict[str, float] | None = spec()
    floor: str | None = spec(enum=("qat",))  # judged by the stricter quantization-aware int8 floors
    r1: float | None = spec(null=True)
    reference_r1: float | None = spec(null=True)
    gallery_r1: float | None = spec(null=True)
    delta: float | None = spec(null=True)
    delta_se: float | None = spec(null=True)
    note: str | None = spec()
    max_drop: float | None = spec(null=True)
    ratio_to_gallery: float | None = spec(null=True)
    min_ratio: float | None = spec(null=True)


@_part
class CheckEntry(CheckStatus):
    """The checks of one file, under its path in ``checks``."""

    format: str | None = spec(enum=FORMATS)
    precision: str | None = spec(enum=PRECISIONS)
    parity: CheckPart | None = spec()
    compat: CheckPart | None = spec()
    spec: CheckPart | None = spec()


@_part
class Failure(Part):
    """A conversion that failed, or a file removed because its checks failed (``stage``)."""

    format: str = spec(WRITTEN, enum=FORMATS)
    precision: str = spec(WRITTEN, enum=PRECISIONS)
    reason: str = spec(WRITTEN, min_length=1)
    stage: str | None = spec(enum=("export", "checks"))


@_part
class QatInfo(Part):
    """How the checkpoint was trained quantization-aware (``--qat int8``)."""

    scheme: str = spec(WRITTEN)


@_part
class Source(Part):
    """The checkpoint the files came from (``hetsearch check --query`` verifies it is the same model)."""

    kind: str | None = spec(enum=("gallery", "query"))
    weights_sha256: str | None = spec(pattern=_HEX64, message="{path} must be 64 lowercase hex characters")
    checkpoint_model_id: str | None = spec(null=True)
    qat: QatInfo | None = spec()  # then its int8 files say int8_training "qat"


@_part
class Manifest(Part):
    """``manifest.json``. ``checks`` per file path; ``latency`` per target, per file path (profile results);
    ``tools``: tool name -> version; ``check_config``: check images, gallery space and R@1, thresholds."""

    schema_version: int = spec(READ, const=SCHEMA_VERSION,
                               message="{path} is {value!r}, this hetsearch reads " + str(SCHEMA_VERSION))
    model_id: str = spec(READ, strict={"min_length": 1})
    # the space id pattern without its group names (Python-only syntax)
    space_id: str = spec(READ, pattern="^{}$".format(re.sub(r"\?P<\w+>", "", SPACE_ID_RE.pattern)),
                         message="{path} {value!r} is not a hetsearch space id")
    architecture: Architecture = spec(READ)
    macs: int = spec(READ, strict={"minimum": 0})  # multiply-accumulates per image
    params: int = spec(READ, strict={"minimum": 0})
    input: InputSpec = spec(READ)
    output: OutputSpec = spec(READ)
    files: list[FileEntry] = spec(READ, unique="path")
    checks: dict[str, CheckEntry] | None = spec(WRITTEN)
    latency: dict[str, dict] | None = spec(WRITTEN)
    tools: dict[str, str | None] | None = spec(WRITTEN, strict={"keys": TOOLS})
    failures: list[Failure] | None = spec(WRITTEN)
    source: Source | None = spec()
    check_config: dict | None = spec()
    exported_at: str | None = spec()  # UTC, ISO 8601

    SCHEMA_ID: ClassVar[str] = "https://hetsearch.invalid/schemas/bundle-manifest-v1.json"

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> "Manifest":
        """The typed view of a manifest dict (validated for readers first)."""
        return super().from_dict(validate(data, source))

    @classmethod
    def load(cls, bundle: str | os.PathLike) -> "Manifest":
        return cls.from_dict(load(bundle))

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise BundleError(f"{path!r} is not listed in the manifest of model {self.model_id!r}")


# ----------------------------------------------------------------------------- types


def _declared(cls) -> list:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("extra")]


_HINTS: dict = {}


def _hints(cls) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _split(tp) -> tuple:
    """(type without None, whether None is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _is_part(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, Part)


def _typed(value, tp):
    tp, _ = _split(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_part(tp) and isinstance(value, dict):
        return Part.from_dict.__func__(tp, value)
    if origin is list and isinstance(value, list):
        return [_typed(v, args[0]) for v in value]
    if origin is dict and isinstance(value, dict):
        return {k: _typed(v, args[1]) for k, v in value.items()}
    return _copy(value)


def _plain(value):
    if isinstance(value, Part):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _copy(value):
    return json.loads(json.dumps(value)) if isinstance(value, (dict, list)) else value


_PY = {int: "int", float: "number", str: "str", bool: "bool", dict: "dict", list: "list"}
_JSON = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array"}


def _base(tp):
    """The JSON-level Python type of a declared type (a part is a dict)."""
    tp = typing.get_origin(tp) or tp
    return dict if _is_part(tp) else tp


def _is_instance(value, base) -> bool:
    if base is Any:
        return True
    if isinstance(value, bool):
        return base is bool
    if base is float:
        return isinstance(value, (int, float))
    return isinstance(value, base)


# ----------------------------------------------------------------------------- reader-side validation


def _constraint_problems(value, c: dict, path: str, message: str | None) -> list[str]:
    bad = []
    if "const" in c and value != c["const"]:
        bad.append(f"{path} must be {c['const']!r}, got {value!r}")
    if "enum" in c and value not in c["enum"]:
        bad.append(f"{path} must be one of {tuple(c['enum'])}, got {value!r}")
    if "minimum" in c and _is_instance(value, float) and value < c["minimum"]:
        bad.append(f"{path} must be {'positive' if c['minimum'] == 1 else '>= ' + str(c['minimum'])}, got {value!r}")
    if "min_length" in c and isinstance(value, str) and len(value) < c["min_length"]:
        bad.append(f"{path} must have at least {c['min_length']} character(s)")
    if "pattern" in c and isinstance(value, str) and not re.search(c["pattern"], value):
        bad.append(f"{path} {value!r} does not match {c['pattern']}")
    if "length" in c and isinstance(value, list) and len(value) != c["length"]:
        bad.append(f"{path} must have {c['length']} items, got {len(value)}")
    if "keys" in c and isinstance(value, dict):
        bad += [f"{path}: missing key {k!r}" for k in c["keys"] if k not in value]
    if bad and message:
        return [message.format(path=path, value=value)]
    return bad


def _value_problems(value, tp, meta: dict, path: str, strict: bool, nullable: bool = False) -> list[str]:
    if value is None and nullable:
        return []
    base = _base(tp)
    if not _is_instance(value, base):
        want = _PY.get(base, getattr(base, "__name__", str(base)))
        return [f"{path}: expected {want}{' or null' if nullable else ''}, got {type(value).__name__}"]
    c = {**meta.get("common", {}), **(meta.get("strict", {}) if strict else {})}
    problems = _constraint_problems(value, c, path, meta.get("message"))
    why = meta["check"](value) if meta.get("check") else None
    if why:
        problems.append(f"{path} {why}, got {value!r}")
    args = typing.get_args(tp)
    if _is_part(tp):
        problems += _part_problems(value, tp, path, strict)
    elif base is list:
        item_meta, (item_tp, item_null) = {"common": c.get("items", {})}, _split(args[0]) if args else (Any, False)
        for i, item in enumerate(value):
            problems += _value_problems(item, item_tp, item_meta, f"{path}[{i}]", strict, item_null)
        if c.get("unique"):
            seen = set()
            for i, item in enumerate(value):
                key = item.get(c["unique"]) if isinstance(item, dict) else None
                if key is not None and key in seen:
                    problems.append(f"{path}[{i}].{c['unique']} {key!r} is listed twice")
                seen.add(key)
    elif base is dict and args:
        for k, v in value.items():
            problems += _value_problems(v, _split(args[1])[0], {}, f"{path}[{k!r}]", strict, _split(args[1])[1])
    return problems


def _part_problems(obj: dict, cls, path: str, strict: bool) -> list[str]:
    problems, hints = [], _hints(cls)
    for f in _declared(cls):
        need = f.metadata["need"]
        if not strict and need != READ:
            continue  # readers look only at what they need
        if f.name not in obj:
            if need == READ or strict and need == WRITTEN:
                problems.append(f"{path}: missing key {f.name!r}")
            continue
        problems += _value_problems(obj[f.name], _split(hints[f.name])[0], f.metadata, f"{path}.{f.name}", strict,
                                    f.metadata["null"])
    if strict and cls is FileEntry and obj.get("format") in FORMAT_RULES:
        problems += _format_problems(obj, FORMAT_RULES[obj["format"]], path)
    return problems


def _format_problems(entry: dict, rule: FormatRule, path: str) -> list[str]:
    fmt = entry["format"]
    problems = [f"{path}: missing key {k!r} (format {fmt!r})" for k in rule.needs if k not in entry]
    if isinstance(entry.get("path"), str) and not entry["path"].endswith(rule.suffix):
        problems.append(f"{path}.path must end with {rule.suffix!r} for format {fmt!r}, got {entry['path']!r}")
    for key, value in (("runtime", rule.runtime), *rule.fixed):
        if key in entry and entry[key] != value:
            problems.append(f"{path}.{key} must be {value!r} for format {fmt!r}, got {entry[key]!r}")
    return problems


def validation_problems(manifest: Any, strict: bool = False) -> list[str]:
    """Everything wrong with a manifest, as readable lines (empty when valid).

    By default what every reader needs; ``strict``: also the exporter's contract (what the JSON Schema says).
    """
    if not isinstance(manifest, dict):
        return [f"manifest must be a JSON object, got {type(manifest).__name__}"]
    return _part_problems(manifest, Manifest, "manifest", strict)


# ----------------------------------------------------------------------------- the JSON Schema


def _type_schema(tp, nullable: bool = False) -> dict:
    if tp is Any:
        return {}
    base, args = _base(tp), typing.get_args(tp)
    s = {"type": [_JSON[base], "null"] if nullable else _JSON[base]}
    if _is_part(tp):
        s.update(_part_schema(tp))
    elif base is list and args:
        s["items"] = _type_schema(*_split(args[0]))
    elif base is dict and args:
        s["additionalProperties"] = _type_schema(*_split(args[1]))
    return s


def _field_schema(tp, meta: dict) -> dict:
    c = {**meta.get("common", {}), **meta.get("strict", {})}
    if "const" in c:  # implies the type and every other constraint
        return {"const": c["const"]}
    if "enum" in c:
        return {"enum": list(c["enum"])}
    s = _type_schema(tp, meta.get("null", False))
    if "items" in c:
        s["items"] = {**s.get("items", {}), **c["items"]}
    for key, name in (("minimum", "minimum"), ("min_length", "minLength"), ("pattern", "pattern"),
                      ("length", "minItems"), ("length", "maxItems")):
        if key in c:
            s[name] = c[key]
    if "keys" in c:
        s["required"] = list(c["keys"])
    if "unique" in c:
        s["uniqueItems"] = True  # JSON Schema cannot say "unique by key"; validation_problems checks that
    return s


def _part_schema(cls) -> dict:
    hints, fields = _hints(cls), _declared(cls)
    s = {"type": "object"}
    required = [f.name for f in fields if f.metadata["need"] in (READ, WRITTEN)]
    if required:
        s["required"] = required
    s["properties"] = {f.name: _field_schema(_split(hints[f.name])[0], f.metadata) for f in fields}
    if cls is FileEntry:
        s["allOf"] = [_format_schema(fmt, rule) for fmt, rule in FORMAT_RULES.items()]
    return s


def _format_schema(fmt: str, rule: FormatRule) -> dict:
    then: dict = {"required": list(rule.needs)} if rule.needs else {}
    then["properties"] = {"path": {"pattern": _ends(rule.suffix) + "$"}, "runtime": {"const": rule.runtime},
                          **{k: {"const": v} for k, v in rule.fixed}}
    return {"if": {"properties": {"format": {"const": fmt}}}, "then": then}


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of the manifest ``hetsearch export`` writes, from the declarations above."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": Manifest.SCHEMA_ID,
            "title": f"hetsearch bundle manifest (schema_version {SCHEMA_VERSION})", **_part_schema(Manifest)}


# ----------------------------------------------------------------------------- reading and writing bundles

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
