"""Cost models: what a subnet costs on the target. Budgets and the search's constraint are in the model's unit.

* :class:`MacsCost` — MMACs, analytic (the default).
* :class:`LatencyTable` — milliseconds on one device, from a profile JSON (a per-layer lookup and/or a linear
  model in MACs fitted to measured models).
"""

from __future__ import annotations

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
    """

    name, unit = "latency", "ms"

    def __init__(self, space: SupernetConfig, profile: dict | str | os.PathLike):
        self.space = space
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
        if "linear" in profile:
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
        layers = arch_layers(self.space, arch)
        if self.layers:
            total = sum(self.layers.get(layer_key(l), self.slope * l["macs"] / 1e6) for l in layers)
            return float(total + self.intercept)
        return float(self.slope * sum(l["macs"] for l in layers) / 1e6 + self.intercept)

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit, "device": self.device, "ms_per_mmac": self.slope,
                "intercept_ms": self.intercept, "layer_entries": len(self.layers)}
