"""Cost models: what a subnet costs on the target. Budgets and the search's constraint are in the model's unit.

* :class:`MacsCost` — MMACs, analytic (the default).
* :class:`LatencyTable` — milliseconds on one device, from a profile JSON (a per-layer lookup and/or a linear
  model in MACs fitted to measured models), or from a latency model measured on the device by
  ``hetsearch nas latency-model`` (:mod:`.latency`): a linear model on per-op-type features (:func:`op_features`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from hetsearch.errors import DataError

from .space import SupernetConfig, arch_layers, arch_macs


class CostModel:
    """Prices a subnet arch. Subclasses set ``name`` and ``unit`` and implement :meth:`cost`."""

    name = "cost"
    unit = ""

    def cost(self, arch: dict) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit}


class MacsCost(CostModel):
    """Multiply-accumulates of the extracted subnet, in millions (exact, analytic)."""

    name, unit = "macs", "MMACs"

    def __init__(self, space: SupernetConfig):
        self.space = space

    def cost(self, arch: dict) -> float:
        return arch_macs(self.space, arch) / 1e6


LATENCY_MODEL_KIND = "hetsearch-latency-model"
FEATURES_VERSION = 1


def space_digest(space: SupernetConfig) -> str:
    """A short digest of a supernet's search space (its config.json): latency models are tied to one space."""
    text = json.dumps(space.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def op_features(space: SupernetConfig, arch: dict) -> dict[str, float]:
    """Latency features of a subnet from its layers (:func:`arch_layers`): MMACs per op kind (depthwise split by
    kernel size), the number of layers of each repeated kind, and the millions of output elements written (memory
    traffic, which dominates tiny layers). A latency model is linear in these plus an intercept."""
    feats: dict[str, float] = {}
    elems = 0.0
    for layer in arch_layers(space, arch):
        op = layer["op"]
        kind = f"dw:k{layer['k']}" if op == "dw" else op
        feats[f"mmacs:{kind}"] = feats.get(f"mmacs:{kind}", 0.0) + layer["macs"] / 1e6
        if op in ("expand", "dw", "se", "project"):
            feats[f"count:{op}"] = feats.get(f"count:{op}", 0.0) + 1.0
        if op not in ("se", "fc"):
            h, w = layer["in_hw"]
            s = layer["stride"]
            elems += layer["cout"] * ((h - 1) // s + 1) * ((w - 1) // s + 1)
    feats["melems"] = elems / 1e6
    return feats


def feature_names(space: SupernetConfig) -> list[str]:
    """Every feature :func:`op_features` can give for this space, in a fixed order."""
    ops = ["stem", "expand", *[f"dw:k{k}" for k in space.kernels], "se", "project", "head", "fc"]
    return [f"mmacs:{o}" for o in ops] + [f"count:{o}" for o in ("expand", "dw", "se", "project")] + ["melems"]


def predictor_ms(predictor: dict, feats: dict[str, float]) -> float:
    """A latency model's predictor (``macs-linear`` or ``op-linear``) applied to :func:`op_features`."""
    if predictor["name"] == "macs-linear":
        mmacs = sum(v for k, v in feats.items() if k.startswith("mmacs:"))
        return float(predictor["intercept_ms"] + predictor["ms_per_mmac"] * mmacs)
    return float(predictor["intercept_ms"] + sum(c * feats.get(k, 0.0) for k, c in predictor["coef"].items()))


def layer_key(layer: dict) -> str:
    """The lookup key of one layer in a latency table: op:CINxCOUT:kK:sS:HxW."""
    h, w = layer["in_hw"]
    return f"{layer['op']}:{layer['cin']}x{layer['cout']}:k{layer['k']}:s{layer['stride']}:{h}x{w}"


class LatencyTable(CostModel):
    """Latency in milliseconds on one device, from a profile JSON::

        {"device": "pixel-7/cpu/fp32",
         "linear": {"ms_per_mmac": 0.8, "intercept_ms": 0.3},          # or "measurements" to fit it:
         "measurements": [{"mmacs": 1.3, "latency_ms": 1.4}, ...],      # measured models (least squares)
         "layers": {"dw:96x96:k5:s1:7x7": 0.021, ...}}                  # optional per-layer lookup

    With ``layers``, a subnet costs the sum of its layers (the linear model prices layers missing from the
    table by their MACs, and its intercept is added once); without, the linear model prices the whole net.

    A latency model measured on the device (``hetsearch nas latency-model``, ``"kind":
    "hetsearch-latency-model"``) is accepted too: its chosen ``predictor`` prices the subnet (``macs-linear``, or
    ``op-linear`` over :func:`op_features`), and it must have been built for this supernet's search space.
    """

    name, unit = "latency", "ms"

    def __init__(self, space: SupernetConfig, profile: dict | str | os.PathLike):
        self.space = space
        self.source = None if isinstance(profile, dict) else str(profile)
        if not isinstance(profile, dict):
            p = Path(profile)
            try:
                profile = json.loads(p.read_text())
            except FileNotFoundError:
                raise DataError(f"latency profile {p} not found") from None
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"cannot read latency profile {p}: {exc}") from exc
        if not isinstance(profile, dict):
            raise DataError("a latency profile must be a JSON object")
        self.device = str(profile.get("device", "unknown"))
        self.layers = {str(k): float(v) for k, v in (profile.get("layers") or {}).items()}
        self.model = profile if profile.get("kind") == LATENCY_MODEL_KIND else None
        self.predictor: dict | None = None
        if self.model is not None:
            self._load_model(profile)
        elif "linear" in profile:
            lin = profile["linear"]
            try:
                self.slope, self.intercept = float(lin["ms_per_mmac"]), float(lin.get("intercept_ms", 0.0))
            except (KeyError, TypeError, ValueError):
                raise DataError("latency profile: 'linear' needs ms_per_mmac (and optionally intercept_ms)") from None
        elif profile.get("measurements"):
            self.slope, self.intercept = self.fit(profile["measurements"])
        elif self.layers:
            self.slope, self.intercept = 0.0, 0.0
        else:
            raise DataError("latency profile needs 'linear', 'measurements' or 'layers'")

    def _load_model(self, model: dict) -> None:
        where = self.source or "the latency model"
        if model.get("space_digest") != space_digest(self.space):
            raise DataError(f"{where} was built for another supernet search space (space digest "
                            f"{model.get('space_digest')!r}, this supernet's is {space_digest(self.space)!r}); "
                            "build one for this supernet with `hetsearch nas latency-model`")
        pred = model.get("predictor")
        if not isinstance(pred, dict):
            raise DataError(f"{where} has no fitted predictor yet ({model.get('status', 'unfinished')}); finish it "
                            "with `hetsearch nas latency-model ... --resume`")
        if model.get("features_version", FEATURES_VERSION) != FEATURES_VERSION:
            raise DataError(f"{where} uses latency features version {model.get('features_version')}; this hetsearch "
                            f"computes version {FEATURES_VERSION}: rebuild it with --fresh")
        if pred.get("name") not in ("macs-linear", "op-linear"):
            raise DataError(f"{where}: unknown predictor {pred.get('name')!r} (expected macs-linear or op-linear)")
        try:
            self.intercept = float(pred["intercept_ms"])
            self.slope = float(pred["ms_per_mmac"]) if pred["name"] == "macs-linear" else 0.0
            coef = {} if pred["name"] == "macs-linear" else {str(k): float(v) for k, v in pred["coef"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DataError(f"{where}: the predictor entry is incomplete (needs name, intercept_ms and "
                            "ms_per_mmac or coef)") from None
        self.predictor = {**pred, "intercept_ms": self.intercept, "ms_per_mmac": self.slope, "coef": coef}
        d = model.get("device") or {}
        self.device = (f"{model.get('target', '?')}: {d.get('cpu', '?')}, {model.get('format', '?')} "
                       f"{model.get('precision', '?')}, {model.get('threads') or 'default'} thread(s)")

    @staticmethod
    def fit(measurements: list) -> tuple[float, float]:
        """Least-squares latency_ms ≈ slope·mmacs + intercept over measured models."""
        try:
            xs = np.array([float(m["mmacs"]) for m in measurements])
            ys = np.array([float(m["latency_ms"]) for m in measurements])
        except (KeyError, TypeError, ValueError):
            raise DataError("latency profile: each measurement needs 'mmacs' and 'latency_ms'") from None
        if len(xs) == 1:
            return float(ys[0] / max(xs[0], 1e-9)), 0.0
        if np.ptp(xs) == 0:
            raise DataError("latency profile: measurements need at least two different MMACs values")
        slope, intercept = np.polyfit(xs, ys, 1)
        return float(slope), float(intercept)

    def cost(self, arch: dict) -> float:
        if self.predictor is not None:
            return predictor_ms(self.predictor, op_features(self.space, arch))
        layers = arch_layers(self.space, arch)
        if self.layers:
            total = sum(self.layers.get(layer_key(l), self.slope * l["macs"] / 1e6) for l in layers)
            return float(total + self.intercept)
        return float(self.slope * sum(l["macs"] for l in layers) / 1e6 + self.intercept)

    def describe(self) -> dict:
        out = {"name": self.name, "unit": self.unit, "device": self.device, "ms_per_mmac": self.slope,
               "intercept_ms": self.intercept, "layer_entries": len(self.layers)}
        if self.model is not None:
            m = self.model
            out.update(source=self.source, predictor=m["predictor"]["name"], target=m.get("target"),
                       format=m.get("format"), precision=m.get("precision"), threads=m.get("threads"),
                       held_out=m.get("held_out"))
        return out
