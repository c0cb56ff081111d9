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

Both int8 recipes then escalate by measurement: while parity with the fp32 file on probe images (training
images that did not calibrate) misses cos min 0.99, one more feature-map size (all 7x7 maps, say) stays
float, chosen greedily by the probe; the manifest's ``int8_recipe`` lists every recipe tried and the one kept,
and ``float_nodes`` / ``quantization`` what stayed float.

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

import copy
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
MAX_PROBE_IMAGES = 10000
MAX_PROBE_BYTES = 512 << 20  # the probe is held in memory as float32: 3,000 Fashion-MNIST images are 9 MB
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
                 qat_points: dict | None = None, probe: np.ndarray | None = None):
        import torch

        self.model = model.eval()
        self.out = out_dir
        self.work = work
        self.calib = calib
        self.probe = probe  # training images that choose how much of an int8 graph stays float
        self.probe_what = ("training images apart from the calibration ones" if probe is not None and len(probe)
                           else "a held-out quarter of the calibration images")
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

            fit, probe = self._int8_images()

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

            def build(float_nodes, candidate):
                quantize_static(str(pre), str(candidate), Reader(fit), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float + float_nodes,
                                extra_options={"TensorQuantOverrides": overrides} if overrides else None)

            groups = {hw: [n for n in names if n not in keep_float]
                      for hw, names in onnx_feature_maps(pre).items()}
            recipe, chosen, small = self._escalate(base, build, "onnx", groups, probe)
            shutil.copyfile(chosen, path)
            kept = "" if not small else f"; {recipe['kept']} ({len(small)} nodes)"
            extra["quantization"] = (f"static QDQ: int8 per-channel weights, uint8 activations, MinMax "
                                     f"calibration on {len(fit)} training images{self._qat_note(qat_info)}; float: "
                                     f"the squeeze-excitation gating multiplies and the L2 normalisation "
                                     f"({len(keep_float)} nodes){kept}")
            extra["calibration_images"] = int(len(fit))
            extra["float_nodes"] = keep_float + small
            extra["int8_recipe"] = recipe
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

    # int8 escalation (ONNX and TFLite): the body is quantized; then, while parity with the fp32 file on probe
    # images (training images that did not calibrate; the CLI's --probe-samples, 3,000 by default) misses
    # PROBE_TARGET, one more feature-map size stays float, chosen greedily by the probe (every size not yet float
    # is tried). Which layers need float depends on the model: the demo's mbv3-small needs its 14x14 maps float
    # (ONNX, 2,000 validation images: cos min 0.942 int8 body, 0.965 with the 7x7-and-smaller stages float, 0.997
    # with the 7x7 and 14x14 maps float) while its tiny and searched models need the small ones. The cos min
    # target is the 0.98 plus 0.01 because a probe sees only part of the gate's tail (a 1,000-image probe
    # read 0.985 where 2,000 validation images read 0.950 for the same file); the mean target is the int8 floor.
    # ``met`` records whether the target was reached; the checks then judge the file at the floor.
    PROBE_TARGET = {"cos_min": 0.99, "cos_mean": 0.995}
    MAX_FLOAT_SIZES: int | None = None  # rounds of escalation (None: until one feature-map size is left int8)

    # TFLite int8 calibration keeps the absolute min/max of every tensor over the calibration images (as
    # onnxruntime's MinMax does): ai-edge-quantizer's default update is a moving average over single-image
    # batches, which forgets rare large activations; on the demo's searched subnet that clipped them and left
    # 1% of validation images below cos 0.85 (mean 0.983, R@1 -1.9); absolute min/max gave cos min 0.96 / mean
    # 0.997 with the whole body in int8.
    def _tflite_int8(self, base: Path) -> tuple[bytes, dict]:
        from ai_edge_quantizer import calibrator, qtyping, quantizer, recipe_manager
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
        from ai_edge_quantizer.utils import qsv_utils

        op = qtyping.TFLOperationName
        fit, probe = self._int8_images()
        samples = {"serving_default": [{"pixels": fit[i : i + 1]} for i in range(len(fit))]}
        widened: dict[Path, list[str]] = {}  # per candidate: the zero-width ranges it widened

        def recipe(float_tensors):
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
            if float_tensors:  # feature maps kept float by the escalation (found by shape, not by exported names)
                rm.add_quantization_config(regex="|".join(re.escape(n) for n in float_tensors),
                                           operation_name=op.ALL_SUPPORTED, algorithm_key=AlgorithmName.NO_QUANTIZE)
            return rm

        # calibrated once, with the whole body int8 (every tensor a candidate can quantize), then the ranges QAT
        # learned where it has them; each candidate quantizes from a copy (widening edits it in place)
        cal_run = calibrator.Calibrator(base.read_bytes(), num_threads=max(1, self.threads),
                                        qsv_update_func=qsv_utils.min_max_update)
        cal_run.calibrate(samples, recipe([]))
        calibrated = cal_run.get_model_qsvs()
        learned, qat_info = self._qat_ranges("tflite", lambda: tflite_intermediates(base, self.qat_pixels), True)
        for name, (lo, hi) in learned.items():
            if isinstance(calibrated.get(name), dict) and "min" in calibrated[name]:
                calibrated[name]["min"] = np.full_like(np.asarray(calibrated[name]["min"]), lo)
                calibrated[name]["max"] = np.full_like(np.asarray(calibrated[name]["max"]), hi)

        def build(float_tensors, candidate):
            cal = copy.deepcopy(calibrated)
            widened[candidate] = widen_zero_ranges(cal)
            q = quantizer.Quantizer(str(base), recipe(float_tensors).get_quantization_recipe())
            candidate.write_bytes(bytes(q.quantize(cal, enable_progress_report=False).quantized_model))

        chosen_recipe, chosen, small = self._escalate(base, build, "tflite", tflite_feature_maps(base), probe,
                                                      int8_names=tflite_int8_tensors)
        kept = "" if not small else f", {chosen_recipe['kept']} ({len(small)} tensors)"
        extra = {"quantization": f"static int8 (ai-edge-quantizer): int8 per-channel weights, int8 activations "
                                 f"calibrated (absolute min/max) on {len(fit)} training images{self._qat_note(qat_info)}; "
                                 f"float32 I/O, hard-swish, squeeze-excitation branches, pooling, dense head (int8 weights), "
                                 f"L2 norm{kept}", **({"qat_ranges": qat_info} if qat_info else {}),
                 "calibration_images": int(len(fit)), "widened_ranges": len(widened[chosen]),
                 "int8_recipe": chosen_recipe}
        return chosen.read_bytes(), extra

    def _escalate(self, base: Path, build, suffix: str, groups: dict, probe: np.ndarray,
                  int8_names=None) -> tuple[dict, Path, list]:
        """Quantize with the whole body int8, then, while parity with the fp32 ``base`` on the ``probe`` images
        misses PROBE_TARGET, keep one more feature-map size float, chosen greedily: each round tries every size
        not yet float and keeps the one with the best cos min. ``build(names, path)`` writes a candidate that
        keeps ``names`` float; ``groups`` maps (h, w) to the names of that size. Returns the manifest's
        ``int8_recipe``, the chosen candidate file and what it keeps float. ``int8_names(file)``, when given,
        names what a candidate holds in int8: sizes are then limited to those names (the rest is float already)."""
        reference = _sdk_embed(base, probe)
        target = dict(self.PROBE_TARGET)
        tried: list[dict] = []

        def attempt(sizes: tuple) -> tuple[dict, Path, list]:
            names = [n for hw in sizes for n in groups[hw]]
            candidate = self.work / f"int8-try{len(tried)}.{suffix}"
            build(names, candidate)
            stats = ck.parity_stats(reference, _sdk_embed(candidate, probe, dim=reference.shape[1]))
            rec = {"float": _maps_label(sizes), "cos_min": round(stats["cos_min"], 5),
                   "cos_mean": round(stats["cos_mean"], 5), "float_tensors": len(names)}
            tried.append(rec)
            return rec, candidate, names

        def good(rec):  # NaN (a file the SDK refused) is never good
            return rec["cos_min"] >= target["cos_min"] and rec["cos_mean"] >= target["cos_mean"]

        def score(rec):
            return (np.nan_to_num(rec["cos_min"], nan=-2.0), np.nan_to_num(rec["cos_mean"], nan=-2.0))

        best = current = attempt(())
        if int8_names is not None:
            quantized = int8_names(current[1])
            groups = {hw: [n for n in names if n in quantized] for hw, names in groups.items()}
        chosen: tuple = ()
        remaining = sorted((hw for hw in groups if groups[hw]), key=lambda hw: -hw[0] * hw[1])
        # at least one feature-map size stays int8: a file with every map float would be fp32 named int8
        rounds = max(0, len(remaining) - 1)
        if self.MAX_FLOAT_SIZES is not None:
            rounds = min(self.MAX_FLOAT_SIZES, rounds)
        for _ in range(rounds):
            if good(current[0]):
                break
            trials = {hw: attempt(chosen + (hw,)) for hw in remaining}
            hw = max(trials, key=lambda k: score(trials[k][0]))
            chosen, current = chosen + (hw,), trials[hw]
            remaining.remove(hw)
            if score(current[0]) > score(best[0]):
                best = current
        rec, path, names = best
        recipe = {"parity_on_probe_images": tried, "kept": rec["float"], "probe_images": int(len(probe)),
                  "feature_map_tensors": sum(len(v) for v in groups.values()),
                  "probe": self.probe_what, "target": target, "met": good(rec)}
        return recipe, path, names

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

    def _int8_images(self) -> tuple[np.ndarray, np.ndarray]:
        """(calibration images, probe images): the probe images given, else a held-out quarter of calibration."""
        calib = self._need_calib()
        if self.probe is not None and len(self.probe):
            return calib, self.probe
        return _split_probe(calib)

    def _need_calib(self) -> np.ndarray:
        if self.calib is None or len(self.calib) == 0:
            raise BundleError("int8 needs calibration images from the training data (calib_data / --calib-data)")
        return self.calib


def _sdk_embed(path: Path, pixels: np.ndarray, dim: int | None = None) -> np.ndarray:
    """An .onnx or .tflite file over N×C×H×W pixels through the SDK's runtime (what the checks and devices run). For a
    candidate (``dim`` given): NaN rows when the SDK refuses the file (e.g. degenerate quantization scales) or it
    computes nothing usable (NaN/Inf or all-zero outputs), so that its parity fails instead of the export."""
    from hetsearch.errors import ModelError

    from .runners import SdkRunner

    try:
        runner = SdkRunner(path)
        return runner.embed(pixels)
    except (ModelError, BundleError):
        if dim is None:
            raise
        return np.full((len(pixels), dim), np.nan, np.float32)


def describe_int8_recipe(recipe: dict) -> str:
    """One line on what an int8 file's escalation kept float and the probe parity behind it (``int8_recipe``)."""
    tried = recipe["parity_on_probe_images"]
    body = tried[0]
    kept = next((t for t in tried if t["float"] == recipe.get("kept")), body)
    what = "whole body int8" if not kept.get("float_tensors") else f"kept {kept['float']} float"
    if kept.get("float_tensors") and recipe.get("feature_map_tensors"):
        what += f" ({kept['float_tensors']} of {recipe['feature_map_tensors']} feature-map tensors)"
    line = (f"{what}; probe parity cos min {kept['cos_min']:.4f} / mean {kept['cos_mean']:.4f} on "
            f"{recipe.get('probe_images')} training images")
    if kept is not body:
        line += f" (body int8: {body['cos_min']:.4f} / {body['cos_mean']:.4f})"
    return line + f", {len(tried)} recipe(s) tried" + ("" if recipe.get("met") else ", below the probe target")


def _split_probe(calib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The calibration images split into those that calibrate and a held-out quarter that probes an int8
    recipe's parity (with fewer than 8 images all of them do both)."""
    held = len(calib) // 4 if len(calib) >= 8 else 0
    return (calib[: len(calib) - held], calib[len(calib) - held :]) if held else (calib, calib)


def _maps_label(sizes: tuple) -> str:
    return "int8 body" if not sizes else "the " + ", ".join(f"{h}x{w}" for h, w in sizes) + " maps"


def onnx_feature_maps(model: Path) -> dict[tuple, list[str]]:
    """{(h, w): names of the nodes of an ONNX file whose output is an N×C×h×w feature map} (shapes by ONNX
    shape inference; the input's shape is fixed)."""
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load(str(model)))
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*m.graph.value_info, *m.graph.output)}
    groups: dict[tuple, list[str]] = {}
    for n in m.graph.node:
        shape = next((dims[o] for o in n.output if len(dims.get(o, [])) == 4), None)
        if shape and shape[2] > 0 and shape[3] > 0:
            if not n.name:
                raise BundleError("int8 ONNX: a feature-map node has no name; cannot keep it float")
            groups.setdefault((shape[2], shape[3]), []).append(n.name)
    return groups


def tflite_feature_maps(model: Path) -> dict[tuple, list[str]]:
    """{(h, w): names of the op outputs of a TFLite file that are N×h×w×C feature maps}. A PAD's output counts
    at its input's size (the padded 16x16 map of a 14x14 stage is that stage's), and the input normalisation,
    computed on the N×C×H×W graph input before the layout change, at the input's H×W."""
    from ai_edge_litert import interpreter as litert

    interp = litert.Interpreter(model_path=str(model))
    details = interp.get_tensor_details()
    nchw_input = [int(d) for d in interp.get_input_details()[0]["shape"]]
    groups: dict[tuple, list[str]] = {}
    for o in interp._get_ops_details():
        for i in o["outputs"]:
            shape = [int(d) for d in details[i]["shape"]]
            if len(shape) != 4:
                continue
            if shape == nchw_input:
                hw = (shape[2], shape[3])
            elif o["op_name"] == "PAD":
                src = details[o["inputs"][0]]["shape"]
                hw = (int(src[1]), int(src[2]))
            else:
                hw = (shape[1], shape[2])
            groups.setdefault(hw, []).append(details[i]["name"])
    return groups


def tflite_int8_tensors(model: Path) -> set[str]:
    """Names of the int8 tensors of a TFLite file."""
    from ai_edge_litert import interpreter as litert

    return {t["name"] for t in litert.Interpreter(model_path=str(model)).get_tensor_details() if t["dtype"] == np.int8}


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
    """float32 N×C×H×W at the model's input size from an ImageSet or an array; calibration images are capped
    at MAX_CALIB_IMAGES, probe images at MAX_PROBE_IMAGES and MAX_PROBE_BYTES (evenly spaced, said loudly)."""
    if data is None:
        return None
    from hetsearch.cmpnas.data import ImageSet

    h, w = model.input_size
    c = model.in_channels
    most = {"calib_data": MAX_CALIB_IMAGES,
            "probe_data": min(MAX_PROBE_IMAGES, max(1, MAX_PROBE_BYTES // (4 * c * h * w)))}.get(what)
    if most and len(data) > most:
        if what == "probe_data":
            log.warning("int8 probe: %d of the %d images given are used (at most %d, and %d MB of %dx%dx%d input)",
                        most, len(data), MAX_PROBE_IMAGES, MAX_PROBE_BYTES >> 20, c, h, w)
        idx = np.linspace(0, len(data) - 1, most).round().astype(int)
        data = data.subset(idx, what) if isinstance(data, ImageSet) else np.asarray(data)[idx]
    if isinstance(data, ImageSet):
        x = data.as_model_input(h, w, c)
    else:
        x = np.asarray(data)
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise BundleError(f"{what} must be an ImageSet or an N×{c}×{h}×{w} array, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------- the bundle


def export_bundle(checkpoint, out_dir, formats=("onnx", "tflite", "coreml"), precisions=("fp32",),
                  calib_data=None, gallery=None, check_data=None, thresholds=None, progress=True,
                  *, allow_mismatch: bool = False, threads: int = 1, keep_failed: bool = False,
                  probe_data=None) -> dict:
    """Export ``checkpoint`` (a checkpoint directory or a loaded Checkpoint) to ``out_dir``.

    ``calib_data`` — training images (ImageSet or uint8 N×C×H×W) for int8 calibration (≤ 1000 used);
    ``probe_data`` — other training images on which an int8 recipe's parity with fp32 decides how much of
    the graph stays float (≤ 10,000 used; without them a quarter of ``calib_data`` is held out for that);
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
    probe = _pixels(model, probe_data, "probe_data")

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
        conv = _Converter(model, out, Path(work), calib, threads=threads, qat_points=qat_points, probe=probe)
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
                if recipe and len(recipe["parity_on_probe_images"]) > 1:
                    say(f"{fmt} {prec}: {describe_int8_recipe(recipe)}")
                if recipe and not recipe["met"]:
                    say(f"{fmt} {prec}: WARNING: no int8 recipe reached cos min {recipe['target']['cos_min']} / mean "
                        f"{recipe['target']['cos_mean']} on {recipe['probe_images']} probe images; the checks decide")
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
