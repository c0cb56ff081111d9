"""Thin, uniform wrappers around the on-device runtimes.

One class per runtime, all with the same small surface: ``input_shape``,
``input_dtype``, ``output_shape``, ``run(array) -> array``, ``name`` and
``version``. :class:`hetsearch.sdk.model.QueryModel` and the on-device
profiler (:mod:`hetsearch.sdk.profile`) both run models through these.

* ``onnxruntime`` runs ``.onnx`` files (CPU execution provider).
* ``litert`` runs ``.tflite`` files through ``ai_edge_litert.interpreter``, or
  ``tflite_runtime.interpreter`` on platforms that only ship that.
* ``coreml`` runs ``.mlpackage`` / ``.mlmodel`` through ``coremltools`` — macOS only.

Imports neither torch nor faiss; each runtime is imported only when used.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hetsearch.errors import HetsearchError, MissingDependency, ModelError

BACKENDS = ("onnxruntime", "litert", "coreml")
FORMAT_OF_BACKEND = {"onnxruntime": "onnx", "litert": "tflite", "coreml": "coreml"}
BACKEND_OF_FORMAT = {v: k for k, v in FORMAT_OF_BACKEND.items()}
_SUFFIX_FORMAT = {".onnx": "onnx", ".tflite": "tflite", ".mlpackage": "coreml", ".mlmodel": "coreml"}
INPUT_NAME = "pixels"
OUTPUT_NAME = "embedding"


class BackendUnavailable(HetsearchError):
    """The requested runtime cannot run on this device (e.g. Core ML off macOS)."""


def format_of(path: str | os.PathLike) -> str:
    """Model format from the file name: onnx, tflite or coreml."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMAT:
        raise ModelError(
            f"{path}: unknown model file type {suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(sorted(_SUFFIX_FORMAT))}"
        )
    return _SUFFIX_FORMAT[suffix]


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def backend_available(backend: str) -> bool:
    """Whether ``backend`` can run here (its module is installed and the platform fits)."""
    if backend == "onnxruntime":
        return _has_module("onnxruntime")
    if backend == "litert":
        return _has_module("ai_edge_litert") or _has_module("tflite_runtime")
    if backend == "coreml":
        return sys.platform == "darwin" and _has_module("coremltools")
    raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def available_backends() -> list[str]:
    """The runtimes usable on this device, in order of preference."""
    return [b for b in BACKENDS if backend_available(b)]


def _dist_version(*names: str) -> str:
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def _numpy_dtype(type_name: str) -> np.dtype:
    # onnxruntime reports types as "tensor(float)", "tensor(float16)", ...
    inner = type_name[len("tensor("):-1] if type_name.startswith("tensor(") else type_name
    mapping = {"float": np.float32, "float16": np.float16, "double": np.float64, "uint8": np.uint8,
               "int8": np.int8, "int32": np.int32, "int64": np.int64}
    if inner not in mapping:
        raise ModelError(f"unsupported model input type {type_name!r}")
    return np.dtype(mapping[inner])


def _static_dim(d: Any) -> int | None:
    return int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None


def _pick(items: list, name_of, wanted: str, what: str, path: Path):
    """The item named ``wanted`` (or containing it), else the only one."""
    for item in items:
        if name_of(item) == wanted:
            return item
    for item in items:
        if wanted in name_of(item):
            return item
    if len(items) == 1:
        return items[0]
    names = ", ".join(name_of(i) for i in items)
    raise ModelError(f"{path}: cannot tell which {what} to use (none is called {wanted!r}; found {names})")


class Runtime:
    """Common surface of the runtime wrappers."""

    name = "runtime"
    version = "unknown"
    path: Path
    threads: int | None
    input_name: str
    output_name: str
    input_shape: tuple  # ints, None where dynamic
    input_dtype: np.dtype
    output_shape: tuple

    @property
    def batch_fixed(self) -> bool:
        """True when the model only takes one image per call (static batch 1)."""
        return bool(self.input_shape) and self.input_shape[0] == 1

    _in_quant: tuple = (0.0, 0)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Float pixels (in the manifest's value range) -> the array this file's input takes.

        A no-op for float32 inputs; integer inputs are quantized with the file's scale and
        zero point when it has them, else rounded and clipped.
        """
        if np.issubdtype(self.input_dtype, np.integer):
            scale, zero = self._in_quant
            if scale:
                x = x / scale + zero
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x), info.min, info.max)
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Run one prepared input (see :meth:`prepare`); the output as the runtime returns it."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"runtime": self.name, "runtime_version": self.version,
                "input_name": self.input_name, "input_shape": list(self.input_shape),
                "input_dtype": str(self.input_dtype), "output_name": self.output_name,
                "output_shape": list(self.output_shape), "threads": self.threads,
                **({"delegate": self.delegate, "delegate_partitions": self.delegate_partitions}
                   if getattr(self, "delegate", None) else {})}


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependency("onnxruntime", "sdk", "running .onnx models") from exc
        self.path = Path(path)
        self.threads = threads
        self.version = getattr(ort, "__version__", _dist_version("onnxruntime"))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelError(f"onnxruntime cannot load {self.path}: {exc}") from exc
        inp = _pick(self._session.get_inputs(), lambda i: i.name, INPUT_NAME, "input", self.path)
        out = _pick(self._session.get_outputs(), lambda o: o.name, OUTPUT_NAME, "output", self.path)
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = tuple(_static_dim(d) for d in inp.shape)
        self.input_dtype = _numpy_dtype(inp.type)
        self.output_shape = tuple(_static_dim(d) for d in out.shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            return self._session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:
            raise ModelError(f"onnxruntime failed to run {self.path.name} on input {x.shape} {x.dtype}: {exc}") from exc


def _litert_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, _dist_version("ai-edge-litert")
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # platforms that only ship tflite_runtime

        return Interpreter, _dist_version("tflite-runtime", "tflite_runtime")
    except ImportError as exc:
        raise MissingDependency("ai_edge_litert", "sdk", "running .tflite models") from exc


def delegate_partitions(interp) -> int | None:
    """How many pieces a delegate took of the graph (its DELEGATE nodes): 1 when it runs the whole graph; more
    when nodes it cannot run (e.g. an int8 HARD_SWISH under XNNPACK) stay on the built-in kernels between
    pieces. None where the interpreter does not list its nodes."""
    details = getattr(interp, "_get_ops_details", None)
    if details is None:
        return None
    try:
        return sum(1 for op in details() if op.get("op_name") == "DELEGATE")
    except (RuntimeError, ValueError, KeyError):
        return None


MIN_QUANT_SCALE = 1e-10  # an int8 activation scale below this is a zero-width range, not a measured one


def degenerate_quantization(interpreter_cls, path) -> str | None:
    """Why ``path``'s quantization cannot be run, or None: an 8/16-bit activation (an op's output, not a weight:
    an all-zero weight channel may legitimately have scale 0) whose scale is not finite, not positive or below
    :data:`MIN_QUANT_SCALE` (e.g. ~4e-12 from a calibrated range of width zero). LiteRT's XNNPACK delegate aborts
    the whole process on some such files ("double free or corruption"), so they are refused before it sees them.
    Read with the built-in kernels, before any tensor is allocated."""
    resolver = sys.modules[interpreter_cls.__module__].OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    probe = interpreter_cls(model_path=str(path), experimental_op_resolver_type=resolver)
    ops = getattr(probe, "_get_ops_details", None)
    if ops is None:  # an interpreter that does not list its nodes: nothing to tell activations by
        return None
    produced = {i for op in ops() for i in op["outputs"]}
    for d in probe.get_tensor_details():
        if d["index"] not in produced or np.dtype(d["dtype"]) not in (np.int8, np.uint8, np.int16):
            continue
        scales = np.asarray((d.get("quantization_parameters") or {}).get("scales", []), np.float64)
        if scales.size and (not np.isfinite(scales).all() or scales.min() < MIN_QUANT_SCALE):
            name = str(d["name"]).split(";")[0].rsplit("/", 1)[-1]
            return (f"tensor {d['index']} {name!r} ({np.dtype(d['dtype']).name}) has quantization scale {scales.min():.3g}, "
                    f"a range of width ~0 (e.g. a calibrated activation that never varied); re-export the file "
                    f"(hetsearch export widens such ranges)")
    return None


def open_litert_interpreter(interpreter_cls, path, threads: int | None = None):
    """A ready interpreter for ``path``. LiteRT applies its XNNPACK delegate by default; when the delegate
    refuses a graph (some int8 graphs fail to prepare), fall back to the built-in kernels alone. A file with
    degenerate quantization scales is refused first (:func:`degenerate_quantization`): ValueError.
    Returns (interpreter, delegate description)."""
    kw = {"model_path": str(path), "num_threads": int(threads) if threads else None}
    bad = degenerate_quantization(interpreter_cls, path)
    if bad:
        raise ValueError(bad)
    try:
        interp = interpreter_cls(**kw)
        interp.allocate_tensors()
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        interp.invoke()
        return interp, "xnnpack"
    except RuntimeError as exc:
        if "delegate" not in str(exc).lower() and "xnnpack" not in str(exc).lower():
            raise
    resolver = sys.modules[interpreter_cls.__module__].OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = interpreter_cls(**kw, experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    return interp, "builtin kernels (XNNPACK refused this graph)"


@contextlib.contextmanager
def captured_output(sink: list):
    """Silence console chatter of native runtimes and converters (Python and C++: LiteRT prints "INFO: Created
    TensorFlow Lite XNNPACK delegate" on every load), keeping it in ``sink`` for error messages."""
    sys.stdout.flush()
    sys.stderr.flush()
    buf = io.StringIO()
    with tempfile.TemporaryFile() as tmp:
        saved = []
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(tmp.fileno(), fd)
                except OSError:  # no such descriptor (embedded interpreters)
                    pass
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:  # pragma: no cover
                pass
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace") + buf.getvalue())



class LiteRT(Runtime):
    name = "litert"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        interpreter_cls, self.version = _litert_interpreter_class()
        self.path = Path(path)
        self.threads = threads
        chatter: list = []
        try:
            with captured_output(chatter):
                self._interp, self.delegate = open_litert_interpreter(interpreter_cls, self.path, threads)
            self.delegate_partitions = delegate_partitions(self._interp) if self.delegate == "xnnpack" else None
        except (ValueError, RuntimeError) as exc:
            said = " ".join("".join(chatter).split())[-300:]
            raise ModelError(f"LiteRT cannot load {self.path}: {exc}" + (f" [LiteRT said: {said}]" if said else "")) \
                from exc
        inp = _pick(self._interp.get_input_details(), lambda d: d["name"], INPUT_NAME, "input", self.path)
        out = _pick(self._interp.get_output_details(), lambda d: d["name"], OUTPUT_NAME, "output", self.path)
        self.input_name, self.output_name = inp["name"], out["name"]
        self._in_index, self._out_index = inp["index"], out["index"]
        sig = inp.get("shape_signature", inp["shape"])
        self.input_shape = tuple(_static_dim(d) for d in sig)
        self.input_dtype = np.dtype(inp["dtype"])
        self.output_shape = tuple(_static_dim(d) for d in out.get("shape_signature", out["shape"]))
        self._in_quant = inp.get("quantization", (0.0, 0))
        self._out_quant = out.get("quantization", (0.0, 0))
        self._out_dtype = np.dtype(out["dtype"])
        self._allocated_shape = tuple(int(d) for d in inp["shape"])

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            if tuple(x.shape) != self._allocated_shape:
                self._interp.resize_tensor_input(self._in_index, list(x.shape), strict=True)
                self._interp.allocate_tensors()
                self._allocated_shape = tuple(x.shape)
            self._interp.set_tensor(self._in_index, x)
            self._interp.invoke()
            y = self._interp.get_tensor(self._out_index)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"LiteRT failed to run {self.path.name} on input {x.shape} {x.dtype}: {exc}") from exc
        scale, zero = self._out_quant
        if np.issubdtype(self._out_dtype, np.integer) and scale:
            return (y.astype(np.float32) - zero) * scale
        return y


class CoreML(Runtime):
    name = "coreml"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        require_coreml_platform()
        try:
            import coremltools as ct
        except ImportError as exc:
            raise BackendUnavailable(
                "running Core ML models needs coremltools on this Mac: pip install coremltools"
            ) from exc
        self.path = Path(path)
        self.threads = threads  # Core ML schedules its own threads; recorded only
        self.version = getattr(ct, "__version__", _dist_version("coremltools"))
        try:
            self._model = ct.models.MLModel(str(self.path))
        except Exception as exc:
            raise ModelError(f"Core ML cannot load {self.path}: {exc}") from exc
        desc = self._model.get_spec().description
        inp = _pick(list(desc.input), lambda f: f.name, INPUT_NAME, "input", self.path)
        out = _pick(list(desc.output), lambda f: f.name, OUTPUT_NAME, "output", self.path)
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = tuple(_static_dim(d) for d in inp.type.multiArrayType.shape)
        # ArrayDataType FLOAT16 is 65552; everything else is fed as float32
        self.input_dtype = np.dtype(np.float16 if inp.type.multiArrayType.dataType == 65552 else np.float32)
        self.output_shape = tuple(_static_dim(d) for d in out.type.multiArrayType.shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            result = self._model.predict({self.input_name: x})
        except Exception as exc:
            raise ModelError(f"Core ML failed to run {self.path.name}: {exc}") from exc
        return np.asarray(result[self.output_name])


_CLASSES = {"onnxruntime": OnnxRuntime, "litert": LiteRT, "coreml": CoreML}
_MODULES = {"onnxruntime": ("onnxruntime",), "litert": ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
            "coreml": ("coremltools",)}


def preload(backend: str) -> None:
    """Import a runtime's module ahead of time (so a measured load time excludes the import)."""
    for module in _MODULES.get(backend, ()):
        try:
            importlib.import_module(module)
            return
        except ImportError:
            continue


def require_coreml_platform() -> None:
    if sys.platform != "darwin":
        raise BackendUnavailable(
            "Core ML runs only on macOS (this is "
            f"{sys.platform}); use the bundle's .onnx (onnxruntime) or .tflite (LiteRT) file here"
        )


def open_runtime(path: str | os.PathLike, backend: str | None = None, threads: int | None = None) -> Runtime:
    """Load a model file with ``backend`` (default: the runtime for its format)."""
    fmt = format_of(path)
    backend = backend or BACKEND_OF_FORMAT[fmt]
    if backend not in _CLASSES:
        raise HetsearchError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if FORMAT_OF_BACKEND[backend] != fmt:
        raise ModelError(f"{path} is in {fmt} format; the {backend} backend runs {FORMAT_OF_BACKEND[backend]} files")
    if threads is not None and int(threads) < 1:
        raise HetsearchError(f"threads must be at least 1, got {threads}")
    if not Path(path).exists():
        raise ModelError(f"model file {path} does not exist")
    return _CLASSES[backend](path, threads)
