"""Runners that execute a bundle's files for the export checks.

Each runner takes float32 pixels N×C×H×W in [0, 255] (the bundle's input contract) and returns
float32 [N, dim] embeddings. ONNX and TFLite files run through the SDK's own runtime layer — the code a
device runs (``hetsearch.sdk.runtime`` + ``hetsearch.sdk.model.embed_with``, as ``QueryModel`` does) —
so a check vouches for it; MediaPipe files through MediaPipe's ``ImageEmbedder``; Core ML files only on
macOS. A file that a runtime cannot load — corrupted bytes, a truncated download — raises
:class:`BundleError` naming the file and the runtime; a tampered file is caught earlier by the sha256 check
(:func:`hetsearch.manifest.verify_file` raises :class:`IntegrityError`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from hetsearch.errors import BundleError, HetsearchError, ModelError, require
from hetsearch.manifest import verify_file
from hetsearch.sdk.runtime import captured_output

INPUT_NAME = "pixels"
OUTPUT_NAME = "embedding"


class NeedsPlatform(HetsearchError):
    """The file's runtime does not exist on this operating system (e.g. Core ML off macOS)."""


class Runner:
    runtime = "base"

    def __init__(self, path: Path, entry: dict | None = None, threads: int = 1):
        self.path = Path(path)
        self.entry = entry or {}
        self.threads = threads
        self.layout = self.entry.get("layout", "NCHW")

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return x

    def run_one(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [N, dim] for pixels N×C×H×W (uint8 or float, values in [0, 255])."""
        x = self._prepare(pixels)
        out = [np.asarray(self.run_one(x[i : i + 1]), dtype=np.float32).reshape(1, -1) for i in range(len(x))]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class SdkRunner(Runner):
    """An .onnx or .tflite file run by the SDK's own runtime layer (:func:`hetsearch.sdk.runtime.open_runtime` and
    :func:`hetsearch.sdk.model.embed_with`, what ``QueryModel`` runs on a device): the checks vouch for that code,
    not for a second runtime stack."""

    NAMES = {"onnx": ("onnxruntime", "ONNX Runtime"), "tflite": ("litert", "the LiteRT interpreter")}

    def __init__(self, path, entry=None, threads=1):
        super().__init__(path, entry, threads)
        from hetsearch.sdk.runtime import open_runtime  # raises MissingDependency for an absent runtime

        fmt = self.entry.get("format") or ("onnx" if self.path.suffix == ".onnx" else "tflite")
        backend, label = self.NAMES[fmt]
        self.runtime = backend
        try:
            self.rt = open_runtime(self.path, backend, threads)
            self.rt.run(self.rt.prepare(np.zeros((1, *self.rt.input_shape[1:]), np.float32)))  # loads and runs
        except (ModelError, RuntimeError, ValueError) as exc:
            raise BundleError(f"{self.path}: {label} cannot load or run this file ({_first_line(exc)}); "
                              "it is corrupted or not a model of this bundle") from exc
        self.delegate = getattr(self.rt, "delegate", None)
        self.delegate_partitions = getattr(self.rt, "delegate_partitions", None)
        self.dim = int(self.rt.output_shape[-1])

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        from hetsearch.sdk.model import embed_with

        return embed_with(self.rt, self._prepare(pixels), self.dim, True, self.path.name)


class CoreMLRunner(Runner):
    runtime = "coreml"

    def __init__(self, path, entry=None, threads=1):
        super().__init__(path, entry, threads)
        if sys.platform != "darwin":
            raise NeedsPlatform(f"{self.path}: Core ML runs only on macOS/iOS; this is {sys.platform}")
        ct = require("coremltools", "export", "running .mlpackage files")
        try:
            self.model = ct.models.MLModel(str(self.path), compute_units=ct.ComputeUnit.CPU_ONLY)
        except Exception as exc:  # pragma: no cover - macOS only
            raise BundleError(f"{self.path}: Core ML cannot load this package ({_first_line(exc)})") from exc

    def run_one(self, x):  # pragma: no cover - macOS only
        return self.model.predict({INPUT_NAME: x})[OUTPUT_NAME]


class MediaPipeRunner(Runner):
    """The file through MediaPipe Tasks' real ImageEmbedder (what an app calls), fed RGB uint8 images."""

    runtime = "mediapipe"

    def __init__(self, path, entry=None, threads=1):
        super().__init__(path, entry, threads)
        try:
            import mediapipe as mp
            from mediapipe.tasks import python as mp_tasks
            from mediapipe.tasks.python import vision
        except ImportError:
            raise NeedsPlatform("needs the mediapipe package (pip install mediapipe)") from None
        self._mp = mp
        opts = vision.ImageEmbedderOptions(base_options=mp_tasks.BaseOptions(model_asset_path=str(self.path)),
                                           l2_normalize=False, quantize=False)
        try:
            self.embedder = vision.ImageEmbedder.create_from_options(opts)
        except Exception as exc:
            raise BundleError(f"{self.path}: MediaPipe's ImageEmbedder cannot load this file ({_first_line(exc)})") \
                from exc

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        x = np.asarray(pixels)
        if x.shape[1] == 1:  # grayscale check images: the same gray in R, G and B
            x = np.repeat(x, 3, axis=1)
        rgb = np.clip(np.rint(x.astype(np.float32)), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        out = []
        for img in rgb:
            res = self.embedder.embed(self._mp.Image(image_format=self._mp.ImageFormat.SRGB,
                                                     data=np.ascontiguousarray(img)))
            out.append(np.asarray(res.embeddings[0].embedding, np.float32))
        return np.stack(out)


RUNNERS = {"onnx": SdkRunner, "tflite": SdkRunner, "coreml": CoreMLRunner, "mediapipe": MediaPipeRunner}


def open_runner(bundle: str | os.PathLike, entry: dict, threads: int = 1, verify: bool = True) -> Runner:
    """Verify a listed file's sha256 (unless ``verify`` is false) and open it with its runtime."""
    path = verify_file(bundle, entry) if verify else Path(bundle) / entry["path"]
    fmt = entry.get("format")
    if fmt not in RUNNERS:
        raise BundleError(f"{entry.get('path')}: no runtime for format {fmt!r}")
    chatter: list = []
    with captured_output(chatter):  # runtimes log to the C++ stderr (e.g. "Created XNNPACK delegate")
        return RUNNERS[fmt](path, entry, threads)


def coreml_spec_problems(path: str | os.PathLike, input_shape: tuple, dim: int) -> list[str]:
    """Check an .mlpackage's interface without running it (works on every OS): input 'pixels'
    float32 of ``input_shape`` and output 'embedding' of [1, dim]."""
    with captured_output([]):  # coremltools logs warnings about its native parts on import
        ct = require("coremltools", "export", "checking .mlpackage files")
    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as exc:
        return [f"cannot read the Core ML spec: {_first_line(exc)}"]
    problems = []
    ins = {i.name: i for i in spec.description.input}
    outs = {o.name: o for o in spec.description.output}
    if INPUT_NAME not in ins:
        problems.append(f"no input named {INPUT_NAME!r} (found {sorted(ins)})")
    else:
        arr = ins[INPUT_NAME].type.multiArrayType
        if tuple(arr.shape) != tuple(input_shape):
            problems.append(f"input shape {list(arr.shape)} != {list(input_shape)}")
        if arr.dataType != ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32:
            problems.append("input dtype is not float32")
    if OUTPUT_NAME not in outs:
        problems.append(f"no output named {OUTPUT_NAME!r} (found {sorted(outs)})")
    else:
        arr = outs[OUTPUT_NAME].type.multiArrayType
        if arr.shape and tuple(arr.shape) != (1, dim):
            problems.append(f"output shape {list(arr.shape)} != [1, {dim}]")
        if arr.dataType != ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32:
            problems.append("output dtype is not float32")
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type is {spec.WhichOneof('Type')}, expected mlProgram")
    return problems


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
