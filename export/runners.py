"""Minimal runners that execute a bundle's files with their real runtimes, for the export checks.

Each runner takes float32 pixels N×C×H×W in [0, 255] (the bundle's input contract) and returns
float32 [N, dim] embeddings, one image at a time (the files have a static batch of one). A file that
a runtime cannot load — corrupted bytes, a truncated download — raises :class:`BundleError` naming
the file and the runtime; a tampered file is caught earlier by the sha256 check
(:func:`hetsearch.manifest.verify_file` raises :class:`IntegrityError`).

The SDK's ``QueryModel`` is the production runtime; these are deliberately small.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from hetsearch.errors import BundleError, HetsearchError, require
from hetsearch.manifest import verify_file
from hetsearch.sdk.runtime import captured_output  # noqa: F401 - used here and by the exporter

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


class OnnxRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, path, entry=None, threads=1):
        super().__init__(path, entry, threads)
        ort = require("onnxruntime", "sdk", "running .onnx files")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own (pybind) exception types
            raise BundleError(f"{self.path}: ONNX Runtime cannot load this file ({_first_line(exc)}); "
                              "it is corrupted or not an ONNX model") from exc
        names = [i.name for i in self.session.get_inputs()]
        outs = [o.name for o in self.session.get_outputs()]
        if INPUT_NAME not in names or OUTPUT_NAME not in outs:
            raise BundleError(f"{self.path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                              f"found inputs {names} and outputs {outs}")

    def run_one(self, x):
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


class TFLiteRunner(Runner):
    runtime = "litert"

    def __init__(self, path, entry=None, threads=1):
        super().__init__(path, entry, threads)
        interp = require("ai_edge_litert.interpreter", "sdk", "running .tflite files")
        from hetsearch.sdk.runtime import open_litert_interpreter

        try:
            self.interpreter, self.delegate = open_litert_interpreter(interp.Interpreter, self.path, threads)
            self.runner = self.interpreter.get_signature_runner(self.entry.get("signature"))
        except Exception as exc:
            raise BundleError(f"{self.path}: the LiteRT interpreter cannot load this file ({_first_line(exc)}); "
                              "it is corrupted or not a TFLite model") from exc
        details = self.runner.get_input_details()
        if INPUT_NAME in details:  # warm up inside open_runner's output capture (the delegate logs on first use)
            shape = tuple(details[INPUT_NAME]["shape"])
            try:
                self.runner(**{INPUT_NAME: np.zeros(shape, np.float32)})
            except Exception as exc:
                raise BundleError(f"{self.path}: the LiteRT interpreter cannot run this file ({_first_line(exc)})") from exc
        if INPUT_NAME not in details or OUTPUT_NAME not in self.runner.get_output_details():
            raise BundleError(f"{self.path}: expected signature input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                              f"found {sorted(details)} and {sorted(self.runner.get_output_details())}")

    def run_one(self, x):
        return self.runner(**{INPUT_NAME: x})[OUTPUT_NAME]


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


RUNNERS = {"onnx": OnnxRunner, "tflite": TFLiteRunner, "coreml": CoreMLRunner, "mediapipe": MediaPipeRunner}


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
