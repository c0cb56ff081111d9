"""Export a query checkpoint to a bundle: ONNX, TFLite and Core ML files per precision + manifest.json.

Every file takes one float32 image ``pixels`` of shape [1, C, H, W] (NCHW) with values in [0, 255]
and returns ``embedding`` float32 [1, dim], L2-normalised: input normalisation and the L2 norm are
part of the graph (they are inside the PyTorch module).

======  =========  ========================================================================================
format  precision  how
======  =========  ========================================================================================
onnx    fp32       ``torch.onnx.export(..., dynamo=True)``, weights inlined (one self-contained file)
onnx    fp16       ``onnxruntime.transformers.float16.convert_float_to_float16`` (fp16 weights and
                   compute, float32 input/output kept)
onnx    int8       ``onnxruntime.quantization.quantize_static``: QDQ, int8 per-channel weights, uint8
                   activations calibrated (MinMax) on training images; the squeeze-excitation gating
                   multiplies and the L2 norm stay float (found by graph structure, listed in the manifest)
tflite  fp32       ``litert_torch.convert`` (signature ``serving_default``: ``pixels`` -> ``embedding``)
tflite  fp16       ``ai_edge_quantizer`` float casting of conv/dense weights to fp16 (fp32 compute)
tflite  int8       ``ai_edge_quantizer`` static int8 (int8 weights per channel, int8 activations
                   calibrated on training images) for the convolutional body; graph input/output,
                   hard-swish (XNNPACK has no int8 one), the squeeze-excitation branches, global
                   pooling, the dense head (int8 weights, float compute) and the L2 norm stay float32;
                   zero-width calibrated ranges are widened
coreml  fp32       ``coremltools`` mlprogram (iOS16+) from a traced module, compute precision fp32
coreml  fp16       the same with compute precision fp16 (float32 input/output kept)
coreml  int8       ``coremltools.optimize.coreml.linear_quantize_weights`` (int8 per-channel weights) of
                   the fp16 program
======  =========  ========================================================================================

A checkpoint trained with ``--qat int8`` (quantization-aware compatibility training, its meta records
``qat``) goes through the same int8 recipes: its weights were trained under the fake quantization those
recipes reproduce (BN folded, int8 per-channel weights, 8-bit activations). Its activation ranges are the
ones QAT learned: each fake-quantization point is found in the exported graph by its values (over two
calibration images; converters make up their own tensor names) and that tensor keeps the trained range;
tensors QAT did not quantize are calibrated as for any model. Re-calibrating instead gave the 0.13-MMAC
``mbv3-tiny`` cos min 0.87 against its float weights on 6,000 validation images; the learned ranges 0.97.
Its int8 files say ``"int8_training": "qat"`` (others ``"ptq"``), ``qat_ranges`` how many points were
found, and the manifest's ``source.qat`` what the training simulated.

A format/precision that fails is recorded in the manifest's ``failures`` with its reason and the rest
continue. When check images are given, parity (and with a gallery checkpoint, the compatibility gate)
runs on every file (:mod:`hetsearch.export.checks`).
"""

from __future__ import annotations

import logging
import platform
import re
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hetsearch import __version__ as HETSEARCH_VERSION
from hetsearch import manifest as mf
from hetsearch.errors import BundleError, CheckFailed, HetsearchError, SpaceMismatchError
from hetsearch.report import format_table
from hetsearch.sdk.runtime import captured_output as _captured

from . import checks as ck

log = logging.getLogger("hetsearch.export")

COREML_TARGET = "iOS16"
MAX_CALIB_IMAGES = 1000
QAT_MATCH_IMAGES = 2  # calibration images on which a QAT point's values are matched to graph tensors
TOOL_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "litert-torch", "ai-edge-litert",
                 "ai-edge-quantizer", "coremltools", "numpy")
_OUR_PROFILE = re.compile(r"^profile-[A-Za-z0-9_.-]+\.(json|md)$")  # hetsearch profile's reports in a bundle


def tool_versions() -> dict:
    out = {"python": platform.python_version(), "hetsearch": HETSEARCH_VERSION}
    for pkg in TOOL_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["platform"] = f"{platform.system()} {platform.machine()}"
    return out


def parse_list(text: str | Iterable[str], allowed: tuple, what: str) -> tuple:
    """'onnx,tflite' (or a sequence) into a validated tuple, keeping order, dropping duplicates."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t and t.strip()]
    if "all" in items:
        return tuple(allowed)
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise HetsearchError(f"unknown {what} {', '.join(repr(b) for b in bad) or '(none given)'}; "
                             f"choose from {', '.join(allowed)} (comma-separated) or 'all'")
    return tuple(dict.fromkeys(items))


def _tail(lines: list, n: int = 3) -> str:
    text = "".join(lines).strip().splitlines()
    text = [t for t in text if t.strip() and "Warning" not in t]
    return " | ".join(text[-n:])[-400:]


# ----------------------------------------------------------------------------- model wrappers


def _named_output_module(model):
    import torch.nn as nn

    class NamedEmbedding(nn.Module):
        """pixels -> {"embedding": ...} so that TFLite signatures carry the contract's names."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixels):
            return {"embedding": self.inner(pixels)}

    return NamedEmbedding(model).eval()


def _mediapipe_module(model):
    """MediaPipe ImageEmbedder's contract around the model: uint8 RGB N×H×W×3 in, [1, dim] out. The
    grayscale conversion (ITU-R 601 luma, what the SDK's PIL path does) and the normalisation are in the graph,
    so the file needs no normalisation metadata."""
    import torch
    import torch.nn as nn

    class MediaPipeEmbedding(nn.Module):
        def __init__(self, inner, channels: int):
            super().__init__()
            self.inner, self.channels = inner, channels
            self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))

        def forward(self, image):
            x = image.to(torch.float32).permute(0, 3, 1, 2)
            if self.channels == 1:
                x = (x * self.luma).sum(dim=1, keepdim=True)
            return self.inner(x)

    return MediaPipeEmbedding(model, int(model.in_channels)).eval()


class _Converter:
    """Converts one model to every format/precision, caching each format's fp32 base file."""

    def __init__(self, model, out_dir: Path, work: Path, calib: np.ndarray | None, threads: int = 1,
                 qat_points: dict | None = None):
        import torch

        self.model = model.eval()
        self.out = out_dir
        self.work = work
        self.calib = calib
        self.threads = threads
        self.qat_points = qat_points  # a --qat checkpoint's fake-quantization points (activation_points)
        self.qat_pixels = None if calib is None else calib[:QAT_MATCH_IMAGES]
        self._learned: dict[str, tuple[dict, dict]] = {}
        self.sample = torch.from_numpy(_sample_input(model, calib))
        self._base: dict[str, Any] = {}

    # ---- ONNX

    def _onnx_base(self) -> Path:
        if "onnx" not in self._base:
            import onnx
            import torch

            path = self.work / "base.onnx"
            with torch.no_grad():
                torch.onnx.export(self.model, (self.sample,), str(path), dynamo=True, input_names=["pixels"],
                                  output_names=["embedding"], external_data=False, verbose=False, optimize=True)
            m = onnx.load(str(path), load_external_data=False)
            if _has_external_data(m):  # inline weights: one self-contained file
                m = onnx.load(str(path))
                onnx.save(m, str(path), save_as_external_data=False)
            for stray in path.parent.glob("base.onnx.*"):
                stray.unlink()
            onnx.checker.check_model(str(path))
            self._base["onnx"] = path
        return self._base["onnx"]

    def onnx(self, precision: str, path: Path) -> dict:
        import onnx

        base = self._onnx_base()
        extra: dict[str, Any] = {}
        if precision == "fp32":
            shutil.copyfile(base, path)
        elif precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            m16 = convert_float_to_float16(onnx.load(str(base)), keep_io_types=True)
            onnx.save(m16, str(path), save_as_external_data=False)
            extra["quantization"] = "fp16 weights and compute (onnxruntime float16 converter), float32 I/O"
        else:
            from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                                  QuantType, quantize_static)
            from onnxruntime.quantization.shape_inference import quant_pre_process

            calib = self._need_calib()

            class Reader(CalibrationDataReader):
                def __init__(self, x):
                    self.it = iter(range(len(x)))
                    self.x = x

                def get_next(self):
                    i = next(self.it, None)
                    return None if i is None else {"pixels": self.x[i : i + 1]}

            pre = self.work / "pre.onnx"
            # skip_optimization keeps the graph as exported (the default rewrites HardSwish into unnamed nodes)
            quant_pre_process(str(base), str(pre), skip_symbolic_shape=True, skip_optimization=True)
            keep_float = onnx_float_nodes(onnx.load(str(pre)))
            learned, qat_info = self._qat_ranges("onnx", lambda: onnx_intermediates(pre, self.qat_pixels), False)
            overrides = {t: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for t, (lo, hi) in learned.items()}
            quantize_static(str(pre), str(path), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float,
                            extra_options={"TensorQuantOverrides": overrides} if overrides else None)
            extra["quantization"] = (f"static QDQ: int8 per-channel weights, uint8 activations, MinMax "
                                     f"calibration on {len(calib)} training images{self._qat_note(qat_info)}; float: "
                                     f"the squeeze-excitation gating multiplies and the L2 normalisation "
                                     f"({len(keep_float)} nodes)")
            extra["calibration_images"] = int(len(calib))
            extra["float_nodes"] = keep_float
            if qat_info:
                extra["qat_ranges"] = qat_info
        m = onnx.load(str(path), load_external_data=False)
        if _has_external_data(m):
            raise BundleError(f"{path.name} refers to external data; expected a self-contained file")
        opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
        return {"opset": opset, "ir_version": int(m.ir_version), "producer": f"{m.producer_name} {m.producer_version}".strip(),
                **extra}

    # ---- TFLite

    def _tflite_base(self) -> Path:
        if "tflite" not in self._base:
            import litert_torch

            path = self.work / "base.tflite"
            edge = litert_torch.convert(_named_output_module(self.model), sample_kwargs={"pixels": self.sample})
            edge.export(str(path))
            self._base["tflite"] = path
        return self._base["tflite"]

    def tflite(self, precision: str, path: Path) -> dict:
        base = self._tflite_base()
        extra: dict[str, Any] = {"signature": "serving_default"}
        if precision == "fp32":
            shutil.copyfile(base, path)
            return extra
        from ai_edge_quantizer import qtyping, quantizer, recipe_manager
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        op = qtyping.TFLOperationName
        rm = recipe_manager.RecipeManager()
        if precision == "fp16":
            for name in (op.CONV_2D, op.DEPTHWISE_CONV_2D, op.FULLY_CONNECTED):
                rm.add_weight_only_config(regex=".*", operation_name=name, num_bits=16,
                                          algorithm_key=AlgorithmName.FLOAT_CASTING)
            q = quantizer.Quantizer(str(base), rm.get_quantization_recipe())
            result = q.quantize(enable_progress_report=False)
            extra["quantization"] = "fp16 weights (ai-edge-quantizer float casting), fp32 compute and I/O"
        else:
            quantized, extra_int8 = self._tflite_int8(base)
            extra.update(extra_int8)
            path.write_bytes(quantized)
            return extra
        path.write_bytes(bytes(result.quantized_model))
        return extra

    # TFLite int8. Calibration keeps the absolute min/max of every tensor over the calibration images (as
    # onnxruntime's MinMax does): ai-edge-quantizer's default update is a moving average over single-image
    # batches, which forgets rare large activations; on the demo's searched subnet that clipped them and left
    # 1% of validation images below cos 0.85 (mean 0.983, R@1 -1.9); absolute min/max gave cos min 0.96 / mean
    # 0.997 with the whole body in int8. Then escalation: if parity with the fp32 file on calibration images held
    # out from calibration misses the int8 parity thresholds, more of the graph stays float (found by shape).
    INT8_LEVELS = (("int8 body", None), ("the 4x4 and smaller stages", 16), ("the 7x7 and smaller stages", 49))
    # The held-out probe is a quarter of the calibration images (50 of 200), while the gate takes the minimum
    # over thousands of check images, whose worst one sits much lower: a fresh demo's mbv3-small had probe cos
    # min 0.970 with the whole body int8 and then failed the gate on 2,000 images (0.895 < 0.90). So a level is
    # kept only when its probe reaches 0.98 (the floor + PROBE_MARGIN, the parity target); that model
    # then keeps its 7x7-and-smaller stages float and passes (0.910 on 2,000 images). ``met`` in the manifest
    # is still judged at the floor itself.
    PROBE_MARGIN = 0.08

    def _tflite_int8(self, base: Path) -> tuple[bytes, dict]:
        from ai_edge_quantizer import calibrator, qtyping, quantizer, recipe_manager
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
        from ai_edge_quantizer.utils import qsv_utils

        op = qtyping.TFLOperationName
        calib = self._need_calib()
        held = len(calib) // 4 if len(calib) >= 8 else 0
        fit, probe = calib[: len(calib) - held], calib[len(calib) - held :] if held else calib
        samples = {"serving_default": [{"pixels": fit[i : i + 1]} for i in range(len(fit))]}
        reference = _sdk_embed(base, probe)
        target = ck.DEFAULT_PARITY["int8"]
        tried = []
        for label, max_hw in self.INT8_LEVELS:
            rm = recipe_manager.RecipeManager()
            rm.add_static_config(regex=".*", operation_name=op.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
            # keep the graph's input and output float32 (the bundle contract)
            rm.add_quantization_config(regex=".*", operation_name=op.INPUT, algorithm_key=AlgorithmName.NO_QUANTIZE)
            rm.add_quantization_config(regex=".*", operation_name=op.OUTPUT, algorithm_key=AlgorithmName.NO_QUANTIZE)
            # ... and the embedding head's activations float: global pooling + dense (int8 activations there
            # cost the paragon ~0.12 of cosine at the worst image; the dense weights stay int8) and the L2
            # normalisation (int8 drifts the output norm by up to 30%)
            for name in (op.MEAN, op.SUM, op.SQRT, op.RSQRT, op.DIV, op.MAXIMUM):
                rm.add_quantization_config(regex=".*", operation_name=name, algorithm_key=AlgorithmName.NO_QUANTIZE)
            rm.add_weight_only_config(regex=".*", operation_name=op.FULLY_CONNECTED, num_bits=8)
            rm.add_quantization_config(regex="L2Norm|embedding_output", operation_name=op.ALL_SUPPORTED,
                                       algorithm_key=AlgorithmName.NO_QUANTIZE)
            # hard-swish in float between int8 layers (DEQUANTIZE -> HARD_SWISH -> QUANTIZE): XNNPACK has no int8
            # HARD_SWISH, so each int8 one ran on TFLite's own kernels and cut the delegated graph in pieces (the
            # demo's mbv3-small: 5 XNNPACK partitions, 34 us a query against 7.9 us for fp32); with it float the
            # whole graph is one partition and runs in 6.6 us. The ranges on both sides stay int8 (as QAT simulates).
            rm.add_quantization_config(regex=".*", operation_name=op.HARD_SWISH, algorithm_key=AlgorithmName.NO_QUANTIZE)
            # the squeeze-excitation branches (a gate in [0, 1] multiplying the features): measured on 2,000
            # held-out training images, float there kept R@1 at the fp32 model's (int8 there: -0.45 points)
            rm.add_quantization_config(regex="SqueezeExcite", operation_name=op.ALL_SUPPORTED,
                                       algorithm_key=AlgorithmName.NO_QUANTIZE)
            small = _small_tensor_names(base, max_hw) if max_hw else []
            if small:  # found by shape (output maps of at most max_hw pixels), not by exported names
                rm.add_quantization_config(regex="|".join(re.escape(n) for n in small),
                                           operation_name=op.ALL_SUPPORTED, algorithm_key=AlgorithmName.NO_QUANTIZE)
            q = quantizer.Quantizer(str(base), rm.get_quantization_recipe())
            cal_run = calibrator.Calibrator(base.read_bytes(), num_threads=max(1, self.threads),
                                            qsv_update_func=qsv_utils.min_max_update)
            cal_run.calibrate(samples, rm)
            cal = cal_run.get_model_qsvs()
            learned, qat_info = self._qat_ranges("tflite", lambda: tflite_intermediates(base, self.qat_pixels), True)
            for name, (lo, hi) in learned.items():
                if isinstance(cal.get(name), dict) and "min" in cal[name]:
                    cal[name]["min"] = np.full_like(np.asarray(cal[name]["min"]), lo)
                    cal[name]["max"] = np.full_like(np.asarray(cal[name]["max"]), hi)
            widened = widen_zero_ranges(cal)
            quantized = bytes(q.quantize(cal, enable_progress_report=False).quantized_model)
            candidate = self.work / "int8-candidate.tflite"
            candidate.write_bytes(quantized)
            stats = ck.parity_stats(reference, _sdk_embed(candidate, probe, dim=reference.shape[1]))
            tried.append({"float": label, "cos_min": round(stats["cos_min"], 5), "cos_mean": round(stats["cos_mean"], 5),
                          "float_tensors": len(small)})
            if stats["cos_min"] >= target["cos_min"] + self.PROBE_MARGIN and stats["cos_mean"] >= target["cos_mean"]:
                break
        kept = "" if len(tried) == 1 else f", {label} ({len(small)} tensors)"
        extra = {"quantization": f"static int8 (ai-edge-quantizer): int8 per-channel weights, int8 activations "
                                 f"calibrated (absolute min/max) on {len(fit)} training images{self._qat_note(qat_info)}; "
                                 f"float32 I/O, hard-swish, squeeze-excitation branches, pooling, dense head (int8 weights), "
                                 f"L2 norm{kept}", **({"qat_ranges": qat_info} if qat_info else {}),
                 "calibration_images": int(len(calib)), "widened_ranges": len(widened),
                 "int8_recipe": {"parity_on_calibration_images": tried, "held_out_images": int(len(probe)),
                                 "calibrated_on": int(len(fit)), "target": dict(target),
                                 "met": tried[-1]["cos_min"] >= target["cos_min"]
                                 and tried[-1]["cos_mean"] >= target["cos_mean"]}}
        return quantized, extra

    # ---- QAT: the learned activation ranges

    def _qat_ranges(self, fmt: str, intermediates, channels_last: bool) -> tuple[dict, dict]:
        """For a --qat checkpoint, ``({graph tensor: learned (lo, hi)}, info)`` for format ``fmt`` (matched by
        values over a few calibration images, :func:`match_qat_ranges`; once per format); ``({}, {})`` for any
        other model. Tensors without a QAT point (e.g. inside the squeeze-excitation branches, which QAT keeps
        float) stay calibrated. A QAT point that no tensor holds is said loudly: its range is calibrated."""
        if not self.qat_points:
            return {}, {}
        if fmt not in self._learned:
            ranges, info = match_qat_ranges(self.qat_points, intermediates(), channels_last)
            if info["unmatched_points"]:
                miss = info["unmatched_points"]
                _say(f"{fmt} int8: WARNING: {len(miss)} of the QAT model's {info['points']} fake-quantization points "
                     f"match no tensor of the exported graph ({', '.join(miss[:4])}{', ...' if len(miss) > 4 else ''}"
                     f"); their ranges are calibrated, not the ones QAT trained with")
            self._learned[fmt] = (ranges, info)
        return self._learned[fmt]

    @staticmethod
    def _qat_note(info: dict) -> str:
        return (f", except the {info['tensors']} tensors holding {info['matched_points']} of the QAT model's "
                f"{info['points']} fake-quantization points, which keep the ranges QAT learned") if info else ""

    # ---- Core ML

    def _coreml_program(self, precision: str):
        key = f"coreml-{precision}"
        if key not in self._base:
            import coremltools as ct
            import torch

            if "traced" not in self._base:
                with torch.no_grad():
                    self._base["traced"] = torch.jit.trace(self.model, self.sample)
            self._base[key] = ct.convert(
                self._base["traced"],
                inputs=[ct.TensorType(name="pixels", shape=tuple(self.sample.shape), dtype=np.float32)],
                outputs=[ct.TensorType(name="embedding", dtype=np.float32)],
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                minimum_deployment_target=getattr(ct.target, COREML_TARGET),
            )
        return self._base[key]

    # ---- MediaPipe (a .tflite with ImageEmbedder's input contract)

    def mediapipe(self, precision: str, path: Path) -> dict:
        if precision != "fp32":
            raise BundleError(f"MediaPipe files are exported in fp32 only (asked for {precision}); the bundle's "
                              ".tflite files carry the other precisions")
        import litert_torch
        import torch

        h, w = (int(v) for v in self.model.input_size)
        sample = torch.zeros(1, h, w, 3, dtype=torch.uint8)
        litert_torch.convert(_mediapipe_module(self.model), (sample,)).export(str(path))
        return {"layout": "NHWC", "input_dtype": "uint8", "input_color": "rgb", "input_name": "image",
                "consumer": "MediaPipe Tasks ImageEmbedder (uint8 RGB in, no metadata needed; the grayscale "
                            "conversion and normalisation are in the graph)"}

    def coreml(self, precision: str, path: Path) -> dict:
        extra: dict[str, Any] = {"deployment_target": COREML_TARGET, "model_type": "mlprogram"}
        if precision in ("fp32", "fp16"):
            ml = self._coreml_program(precision)
            extra["compute_precision"] = "float32" if precision == "fp32" else "float16"
        else:
            import coremltools.optimize as cto

            cfg = cto.coreml.OptimizationConfig(global_config=cto.coreml.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel"))
            ml = cto.coreml.linear_quantize_weights(self._coreml_program("fp16"), config=cfg)
            extra["compute_precision"] = "float16"
            extra["quantization"] = "int8 per-channel weights (coremltools.optimize linear_quantize_weights)"
        if path.exists():
            shutil.rmtree(path)
        ml.save(str(path))
        return extra

    def _need_calib(self) -> np.ndarray:
        if self.calib is None or len(self.calib) == 0:
            raise BundleError("int8 needs calibration images from the training data (calib_data / --calib-data)")
        return self.calib


def _sdk_embed(path: Path, pixels: np.ndarray, dim: int | None = None) -> np.ndarray:
    """A .tflite file over N×C×H×W pixels through the SDK's runtime (what the checks and devices run). For a
    candidate (``dim`` given): NaN rows when the SDK refuses the file (e.g. degenerate quantization scales) or it
    computes nothing usable (NaN/Inf or all-zero outputs), so that its parity fails instead of the export."""
    from hetsearch.errors import ModelError

    from .runners import SdkRunner

    try:
        runner = SdkRunner(path, {"format": "tflite"})
        return runner.embed(pixels)
    except (ModelError, BundleError):
        if dim is None:
            raise
        return np.full((len(pixels), dim), np.nan, np.float32)


def _small_tensor_names(model: Path, max_hw: int) -> list[str]:
    """Names of the op outputs of a TFLite file that are feature maps (N×H×W×C) of at most ``max_hw`` pixels."""
    from ai_edge_litert import interpreter as litert

    interp = litert.Interpreter(model_path=str(model))
    details = interp.get_tensor_details()
    names = []
    for o in interp._get_ops_details():
        for i in o["outputs"]:
            shape = details[i]["shape"]
            if len(shape) == 4 and shape[1] * shape[2] <= max_hw:
                names.append(details[i]["name"])
    return names


def widen_zero_ranges(calibration: dict) -> list[str]:
    """Widen every zero-width calibrated range (min == max) to [min, min + 1], in place; returns their tensors.

    A tensor that never varies over the calibration images (the squeeze-excitation branch of a block whose
    first layer never fires: its ReLU output is always 0) gets min == max. ai-edge-quantizer turns that into
    an activation scale of ~1e-12; the next layer's int32 bias overflows and everything after it is garbage
    (cos -0.5 against fp32) and XNNPACK refuses the graph. [lo, lo + 1] keeps lo (and so zero) exact."""
    widened = []
    for name, qsv in calibration.items():
        if not isinstance(qsv, dict) or "min" not in qsv or "max" not in qsv:
            continue
        lo, hi = np.asarray(qsv["min"]), np.asarray(qsv["max"])
        flat = hi <= lo
        if flat.any():
            qsv["max"] = np.where(flat, lo + 1.0, hi).astype(hi.dtype)
            widened.append(name)
    return widened


def onnx_intermediates(path: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor an ONNX graph computes over ``pixels`` (one image at a time), by name."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(path))
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o and o not in have:
                m.graph.output.append(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None))
                have.add(o)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got: dict[str, list] = {}
    for i in range(len(pixels)):
        for name, v in zip(names, sess.run(None, {"pixels": pixels[i : i + 1]})):
            if isinstance(v, np.ndarray) and v.dtype == np.float32:
                got.setdefault(name, []).append(v)
    return {k: np.concatenate(v) for k, v in got.items()}


def tflite_intermediates(path: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor a .tflite file computes over ``pixels`` (N×C×H×W; 4-D tensors come back N×H×W×C, as
    the file holds them), by name: the reference interpreter with every tensor kept, no delegate."""
    from ai_edge_litert import interpreter as litert

    interp = litert.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    ops = [i for o in interp._get_ops_details() for i in o["outputs"]]
    details = {d["index"]: d for d in interp.get_tensor_details()}
    got: dict[str, list] = {}
    for i in range(len(pixels)):
        interp.set_tensor(inp["index"], pixels[i : i + 1].reshape(inp["shape"]).astype(np.float32))
        interp.invoke()
        for t in ops:
            v = interp.get_tensor(t)
            if v.dtype == np.float32:
                got.setdefault(details[t]["name"], []).append(v.copy())
    return {k: np.concatenate(v) for k, v in got.items()}


def match_qat_ranges(points: dict, tensors: dict, channels_last: bool = False) -> tuple[dict, dict]:
    """Graph tensors that hold a QAT fake-quantization point's values, with that point's learned range.

    ``points``: :func:`hetsearch.cmpnas.qat.activation_points` (values N×C×H×W and (lo, hi)); ``tensors``: the
    float graph's intermediates over the same images (``channels_last`` when its 4-D tensors are N×H×W×C).
    Matched by values (same shape, max difference within 1e-3 of the tensor's scale), not by names, which each
    converter makes up. A tensor that matches points with different ranges is left to calibration. Returns
    ``({tensor: (lo, hi)}, {"points", "matched_points", "tensors", "ambiguous_tensors", "unmatched_points"})``."""
    ranges, hit_points, ambiguous = {}, set(), 0
    for name, v in tensors.items():
        found = []
        for point, (a, rng) in points.items():
            if channels_last and a.ndim == 4:
                a = a.transpose(0, 2, 3, 1)
            if a.shape != v.shape and a.ndim == 4 and a.size == v.size and a.shape[1:3] == (1, 1):
                a = a.reshape(v.shape)  # N×1×1×C pooled features flattened to N×C by the converter
            if a.shape == v.shape and np.abs(a - v).max() <= 1e-3 * (np.abs(a).max() + 1e-6):
                found.append((point, rng))
        if not found:
            continue
        if len({rng for _, rng in found}) > 1:
            ambiguous += 1
            continue
        ranges[name] = found[0][1]
        hit_points.update(p for p, _ in found)
    return ranges, {"points": len(points), "matched_points": len(hit_points), "tensors": len(ranges),
                    "ambiguous_tensors": ambiguous, "unmatched_points": sorted(set(points) - hit_points)}


def onnx_float_nodes(model) -> list[str]:
    """Nodes an int8 ONNX graph keeps in float, found by structure (not by exported names): every Mul fed by a
    HardSigmoid (the squeeze-excitation gate multiplying the features) and everything downstream of the last
    Gemm (the L2 normalisation: in uint8 it drifts the output norm by ~2%)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    out = [n.name for n in g.node if n.op_type == "Mul"
           and any(i in producer and producer[i].op_type == "HardSigmoid" for i in n.input)]
    gemms = [n for n in g.node if n.op_type == "Gemm"]
    if gemms:
        down = set(gemms[-1].output)
        for n in g.node:  # nodes are topologically sorted
            if any(i in down for i in n.input):
                out.append(n.name)
                down.update(n.output)
    missing = [n for n in out if not n]
    if missing:
        raise BundleError("int8 ONNX: a node to keep in float has no name; cannot exclude it from quantization")
    return out


def _has_external_data(model) -> bool:
    from onnx import TensorProto

    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def _sample_input(model, calib: np.ndarray | None) -> np.ndarray:
    shape = (1, model.in_channels, *model.input_size)
    if calib is not None and len(calib):
        return np.ascontiguousarray(calib[:1], dtype=np.float32)
    return np.random.default_rng(0).uniform(0, 255, size=shape).astype(np.float32)


def _pixels(model, data, what: str) -> np.ndarray | None:
    """uint8/float N×C×H×W at the model's input size from an ImageSet or an array."""
    if data is None:
        return None
    from hetsearch.cmpnas.data import ImageSet

    h, w = model.input_size
    c = model.in_channels
    if isinstance(data, ImageSet):
        x = data.as_model_input(h, w, c)
    else:
        x = np.asarray(data)
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise BundleError(f"{what} must be an ImageSet or an N×{c}×{h}×{w} array, got shape {x.shape}")
    if len(x) > MAX_CALIB_IMAGES and what == "calib_data":
        idx = np.linspace(0, len(x) - 1, MAX_CALIB_IMAGES).round().astype(int)
        x = x[idx]
    return np.ascontiguousarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------- the bundle


def export_bundle(checkpoint, out_dir, formats=("onnx", "tflite", "coreml"), precisions=("fp32",),
                  calib_data=None, gallery=None, check_data=None, thresholds=None, progress=True,
                  *, allow_mismatch: bool = False, threads: int = 1, keep_failed: bool = False) -> dict:
    """Export ``checkpoint`` (a checkpoint directory or a loaded Checkpoint) to ``out_dir``.

    ``calib_data`` — training images (ImageSet or uint8 N×C×H×W) for int8 calibration (≤ 1000 used);
    ``check_data`` — validation images (an ImageSet, labelled) for parity, and with ``gallery`` (a
    gallery checkpoint directory) the compatibility gate; ``thresholds`` — overrides for
    :func:`hetsearch.export.checks.merge_thresholds`. A gallery whose embedding space differs from the
    checkpoint's raises :class:`SpaceMismatchError` before anything is converted, unless
    ``allow_mismatch``. Returns the manifest (also written to ``out_dir/manifest.json``); a
    format/precision that fails is listed in ``manifest["failures"]`` and the rest continue. A file whose
    checks fail is removed from the bundle and listed there too (``"stage": "checks"``), unless
    ``keep_failed`` (then it stays, marked failed in ``checks``; the SDK refuses it without an override).
    """
    from hetsearch.cmpnas.checkpoint import Checkpoint, load_checkpoint, weights_digest

    formats = parse_list(formats, mf.FORMATS, "format")
    precisions = parse_list(precisions, mf.PRECISIONS, "precision")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    model = ckpt.model.eval()
    qat = ckpt.meta.get("qat")
    thresholds = ck.merge_thresholds(thresholds)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} exists and is not a folder")
    say = _say if progress else (lambda *a, **k: None)

    ctx = None
    if check_data is not None:
        say(f"preparing checks on {len(check_data)} images" + (" with the gallery model" if gallery else ""))
        ctx = ck.prepare_context((1, model.in_channels, *model.input_size), check_data, query_model=model,
                                 gallery=gallery, space_id=ckpt.space_id, allow_mismatch=allow_mismatch)
    elif gallery is not None:
        g = load_checkpoint(gallery, expect_kind="gallery")
        if g.space_id != ckpt.space_id and not allow_mismatch:
            raise SpaceMismatchError(g.space_id, ckpt.space_id, what="the query model")
    calib = _pixels(model, calib_data, "calib_data")

    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():  # files of a previous export (and their latency profiles) this one may not rewrite
        if mf.FILE_NAME_RE.match(old.name) or _OUR_PROFILE.match(old.name):
            shutil.rmtree(old) if old.is_dir() else old.unlink()

    files, failures, results = [], [], {}
    inp = {"height": model.input_size[0], "width": model.input_size[1], "channels": model.in_channels,
           "layout": "NCHW", "dtype": "float32", "value_range": [0, 255], "resize": "bilinear",
           "color": "grayscale" if model.in_channels == 1 else "rgb", "name": "pixels", "batch": 1}
    with tempfile.TemporaryDirectory(prefix="hetsearch-export-") as work:
        qat_points = None
        if qat and calib is not None and any(p == "int8" for p in precisions):
            from hetsearch.cmpnas.qat import activation_points

            qat_points = activation_points(ckpt, calib[:QAT_MATCH_IMAGES])
        conv = _Converter(model, out, Path(work), calib, threads=threads, qat_points=qat_points)
        for fmt in formats:
            for prec in precisions:
                name = mf.file_name(fmt, prec)
                path = out / name
                t0 = time.perf_counter()
                chatter: list = []
                try:
                    with _captured(chatter):
                        extra = getattr(conv, fmt)(prec, path)
                except Exception as exc:  # any converter error: record it, continue with the rest
                    reason = _reason(exc, chatter)
                    failures.append({"format": fmt, "precision": prec, "reason": reason})
                    if path.exists():
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
                    say(f"{fmt} {prec}: FAILED: {reason}")
                    log.debug("converter output for %s %s:\n%s", fmt, prec, "".join(chatter))
                    continue
                entry = {"path": name, "format": fmt, "precision": prec, "sha256": mf.sha256_path(path),
                         "bytes": mf.size_path(path), "runtime": mf.FORMAT_RULES[fmt].runtime, "layout": "NCHW",
                         "input_name": "pixels", "output_name": "embedding",
                         "export_seconds": round(time.perf_counter() - t0, 2), **extra}
                if prec == "int8" and fmt in ("onnx", "tflite"):
                    entry["int8_training"] = "qat" if qat else "ptq"
                    if qat:
                        entry["quantization"] = ("quantization-aware trained weights (--qat int8) and activation "
                                                 "ranges through the int8 recipe: " + entry["quantization"])
                files.append(entry)
                say(f"{fmt} {prec}: exported {name} ({_size(entry['bytes'])}, {entry['export_seconds']:.1f} s)")
                recipe = entry.get("int8_recipe")
                if recipe and len(recipe["parity_on_calibration_images"]) > 1:
                    first, last = recipe["parity_on_calibration_images"][0], recipe["parity_on_calibration_images"][-1]
                    say(f"{fmt} {prec}: with the body in int8, parity on held-out calibration images was cos min "
                        f"{first['cos_min']:.3f} / mean {first['cos_mean']:.4f}; kept {last['float']} float "
                        f"(cos min {last['cos_min']:.3f} / mean {last['cos_mean']:.4f})")
                if recipe and not recipe["met"]:
                    say(f"{fmt} {prec}: WARNING: no int8 recipe reached cos min {recipe['target']['cos_min']} / mean "
                        f"{recipe['target']['cos_mean']} on held-out calibration images; the checks decide")
                if entry.get("widened_ranges"):
                    say(f"{fmt} {prec}: {entry['widened_ranges']} tensor(s) never varied over the calibration images "
                        "(zero-width range, e.g. a ReLU that never fires): ranges widened to [lo, lo + 1]")
                if ctx is not None:
                    manifest_stub = {"input": inp, "output": {"dim": model.embed_dim}}
                    try:
                        results[name] = ck.check_file(out, entry, ctx, thresholds, manifest_stub, threads=threads)
                    except HetsearchError as exc:
                        results[name] = {"format": fmt, "precision": prec, "status": ck.ERROR, "reason": str(exc)}
                    r = results[name]
                    say(f"{fmt} {prec}: checks {r['status']}" + (f" ({r['reason']})" if r.get("reason") else ""))

    if not keep_failed:
        for entry in list(files):
            r = results.get(entry["path"]) or {}
            if r.get("status") in (ck.FAILED, ck.ERROR):
                path = out / entry["path"]
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                files.remove(entry)
                failures.append({"format": entry["format"], "precision": entry["precision"], "stage": "checks",
                                 "reason": f"removed from the bundle: its checks failed ({r.get('reason')})"})
                say(f"{entry['format']} {entry['precision']}: removed {entry['path']} (checks failed)")
    manifest = {
        "schema_version": mf.SCHEMA_VERSION,
        "model_id": str(ckpt.name),
        "space_id": ckpt.space_id,
        "architecture": ckpt.spec,
        "macs": int(ckpt.macs),
        "params": int(ckpt.meta.get("params") or sum(p.numel() for p in model.parameters())),
        "input": inp,
        "output": {"dim": int(model.embed_dim), "l2_normalized": True, "name": "embedding", "dtype": "float32"},
        "files": files,
        "checks": results,
        "latency": {},
        "tools": tool_versions(),
        "failures": failures,
        "source": {"kind": ckpt.kind, "weights_sha256": weights_digest(model),
                   "checkpoint_model_id": ckpt.meta.get("model_id"),
                   **({"qat": {k: v for k, v in qat.items() if k != "activation_ranges"}} if qat else {})},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if ctx is not None:
        manifest["check_config"] = {**ctx.info, "thresholds": thresholds}
    if not files:  # nothing to vouch for: no manifest, the error lists every reason
        err = CheckFailed if any(f.get("stage") == "checks" for f in failures) else BundleError
        raise err("no file could be exported and checked:\n  - " + "\n  - ".join(
            f"{f['format']} {f['precision']}: {f['reason']}" for f in failures))
    mf.save(out, manifest)
    if progress:
        print(format_summary(manifest))
    return manifest


def _reason(exc: BaseException, chatter: list) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    reason = f"{type(exc).__name__}: {first}"[:300]
    tail = _tail(chatter)
    if tail and not isinstance(exc, HetsearchError):
        reason += f" [converter said: {tail}]"
    return reason


def _say(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


# ----------------------------------------------------------------------------- summary table

COLUMNS = ("format", "precision", "status", "size", "parity", "compat", "latency")
HEADERS = {"parity": "parity (cos min)", "compat": "compat (R@1 Δ)", "latency": "latency p50 (ms)"}


def _latency_p50(manifest: dict, path: str) -> float | None:
    """p50 in ms of a file from the manifest's latency profiles (the first target that has one)."""
    for target, per_file in (manifest.get("latency") or {}).items():
        rec = per_file.get(path) if isinstance(per_file, dict) else None
        if isinstance(rec, dict):
            for key in ("p50_ms", "p50", "median_ms"):
                if isinstance(rec.get(key), (int, float)):
                    return float(rec[key])
    return None


def summary_rows(manifest: dict, results: dict | None = None) -> list[dict]:
    """One row per exported file and per failure: format, precision, status, size, parity, compat, latency."""
    results = manifest.get("checks", {}) if results is None else results
    rows = []
    for e in manifest["files"]:
        r = results.get(e["path"], {})
        par = r.get("parity", {})
        com = r.get("compat", {})
        status = "exported" if not r else r.get("status", "?")
        if status == ck.SKIPPED and r.get("reason"):
            status = f"skipped: {r['reason']}"
        rows.append({
            "format": e["format"], "precision": e["precision"], "status": status, "size": _size(e["bytes"]),
            "parity": f"{par['cos_min']:.5f}" if isinstance(par.get("cos_min"), float) else None,
            "compat": (f"{com['delta']:+.2f}" + (f" ± {com['delta_se']:.2f}" if isinstance(com.get("delta_se"), float)
                                                 else "")) if isinstance(com.get("delta"), float) else (
                f"R@1 {com['r1']:.1f}" if isinstance(com.get("r1"), float) else None),
            "latency": _latency_p50(manifest, e["path"]),
            "path": e["path"],
        })
    for f in manifest.get("failures", []):
        rows.append({"format": f["format"], "precision": f["precision"],
                     "status": "failed checks (removed)" if f.get("stage") == "checks" else "export failed",
                     "size": None, "parity": None, "compat": None, "latency": None, "reason": f["reason"]})
    order = {f: i for i, f in enumerate(mf.FORMATS)}
    porder = {p: i for i, p in enumerate(mf.PRECISIONS)}
    rows.sort(key=lambda r: (order.get(r["format"], 9), porder.get(r["precision"], 9)))
    return rows


def format_summary(manifest: dict, results: dict | None = None) -> str:
    rows = summary_rows(manifest, results)
    text = format_table(rows, COLUMNS, digits=3, headers=HEADERS)
    notes = [f"  {r['format']} {r['precision']}: {r['reason']}" for r in rows if r.get("reason")]
    failed = [f"  {r['format']} {r['precision']}: {(results or manifest.get('checks', {})).get(r.get('path'), {}).get('reason')}"
              for r in rows if r["status"] in (ck.FAILED, ck.ERROR)]
    if notes:
        text += "\nexport failures:\n" + "\n".join(notes)
    if failed:
        text += "\ncheck failures:\n" + "\n".join(failed)
    return text
