"""The search space of the elastic MobileNetV3 supernet: its configuration, the arch encoding, the static
``mobilenetv3`` spec of a subnet and its analytic cost.

A subnet is an *arch*::

    {"resolution": 28, "width": 1.0, "hires": 0,  # 1: downsample in stage 0, not in the fixed block
     "depths":  [3, 2, 1],                      # blocks per elastic stage
     "kernels": [[7, 5, 3], [3, 3], [5]],       # depthwise kernel per active block
     "expands": [[6, 4, 3], [3, 4], [6]]}       # expand ratio per active block

and its static form is an ordinary ``mobilenetv3`` spec (:func:`arch_to_spec`). Channel counts follow the
static model's own rules (:func:`~hetsearch.cmpnas.models.mid_channels`, ``se_channels``), so the two cannot
drift. :func:`arch_macs` equals :func:`~hetsearch.cmpnas.flops.count_macs` of the extracted model (tested).
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hetsearch.errors import ModelError

from ..models import make_divisible, mid_channels, se_channels

FAMILY = "elastic-mobilenetv3"
CONFIG_FILE = "config.json"

# ----------------------------------------------------------------------------- configuration


def _default_stages() -> list[dict]:
    # Scaled to 28x28 inputs: stem /2 (14x14), a fixed stride-2 block (7x7), then three elastic stages at
    # 7x7, 4x4 and 2x2. The largest subnet (~4.3 MMACs) is a bit over 3x mbv3-large; the smallest ~0.1 MMACs.
    return [
        {"out": 24, "stride": 1, "se": False, "act": "relu"},
        {"out": 40, "stride": 2, "se": True, "act": "hswish"},
        {"out": 64, "stride": 2, "se": True, "act": "hswish"},
    ]


@dataclass
class SupernetConfig:
    """The search space and the shape of the largest network. Serialised as JSON (``config.json``)."""

    input_size: int = 28
    in_channels: int = 1
    embed_dim: int = 128
    mean: float | list = 0.5
    std: float | list = 0.5
    stem: dict = field(default_factory=lambda: {"out": 16, "stride": 2, "act": "hswish"})
    # A fixed (non-elastic) block after the stem, as in OFA; expand 1, so it has no expand convolution.
    first_block: dict | None = field(default_factory=lambda: {"out": 16, "stride": 2, "kernel": 3, "act": "relu",
                                                               "se": False})
    stages: list = field(default_factory=_default_stages)
    head: dict = field(default_factory=lambda: {"channels": 160, "act": "hswish"})
    dropout: float = 0.1
    # elastic choices
    depths: list = field(default_factory=lambda: [1, 2, 3])
    kernels: list = field(default_factory=lambda: [3, 5, 7])
    expands: list = field(default_factory=lambda: [3, 4, 6])
    widths: list = field(default_factory=lambda: [0.35, 0.5, 0.75, 1.0])
    resolutions: list | None = None  # None: [input_size] (fixed resolution)
    # Where the stem's output is downsampled again: 0 = in the fixed first block (everything after it runs at a
    # quarter of the input size), 1 = in the first block of stage 0 instead (the fixed block and stage 0's first
    # expand convolution run at half the input size, as in mbv3-large). Choices [0] (default), [1] or [0, 1];
    # 1 needs a first block of stride 2 and a stage 0 of stride 1.
    hires: list = field(default_factory=lambda: [0])
    divisor: int = 8

    def __post_init__(self):
        if self.resolutions is None:
            self.resolutions = [int(self.input_size)]
        self.validate()

    # -- (de)serialisation
    def to_dict(self) -> dict:
        return {"family": FAMILY, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "SupernetConfig":
        d = dict(d)
        fam = d.pop("family", FAMILY)
        if fam != FAMILY:
            raise ModelError(f"supernet config family is {fam!r}; this hetsearch knows {FAMILY!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"supernet config: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def load(cls, source: Any) -> "SupernetConfig":
        """From a SupernetConfig, a dict, JSON text, a .json file or a supernet directory."""
        if isinstance(source, SupernetConfig):
            return copy.deepcopy(source)
        if isinstance(source, dict):
            return cls.from_dict(source)
        text = str(source)
        if text.lstrip().startswith("{"):
            try:
                return cls.from_dict(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ModelError(f"supernet config is not valid JSON: {exc}") from exc
        p = Path(text)
        if p.is_dir():
            p = p / CONFIG_FILE
        if not p.is_file():
            raise ModelError(f"no supernet config at {source} (expected a JSON file or a folder holding {CONFIG_FILE})")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{p} is not valid JSON: {exc}") from exc

    # -- checks
    def validate(self) -> None:
        def bad(msg):
            raise ModelError(f"supernet config: {msg}")

        for name in ("depths", "kernels", "expands", "widths", "resolutions", "hires"):
            vals = getattr(self, name)
            if not isinstance(vals, (list, tuple)) or not vals:
                bad(f"{name} must be a non-empty list of choices")
            setattr(self, name, sorted(set(vals)))
        if any(int(d) != d or d < 1 for d in self.depths):
            bad(f"depths must be integers >= 1, got {self.depths}")
        if any(int(k) != k or k < 1 or k % 2 == 0 for k in self.kernels):
            bad(f"kernels must be odd integers, got {self.kernels}")
        if any(e < 1 for e in self.expands):
            bad(f"expands must be >= 1, got {self.expands}")
        if any(w <= 0 for w in self.widths):
            bad(f"widths must be > 0, got {self.widths}")
        if any(int(r) != r or r < 4 for r in self.resolutions):
            bad(f"resolutions must be integers >= 4, got {self.resolutions}")
        if any(h not in (0, 1) for h in self.hires):
            bad(f"hires choices are 0 and 1, got {self.hires}")
        if not self.stages:
            bad("needs at least one elastic stage")
        if 1 in self.hires and not (self.first_block and int(self.first_block.get("stride", 1)) == 2
                                    and int(self.stages[0].get("stride", 1)) == 1):
            bad("hires 1 moves the first block's stride 2 into stage 0: it needs a first block of stride 2 and a "
                "stage 0 of stride 1")
        for i, s in enumerate(self.stages):
            for key in ("out", "stride"):
                if key not in s:
                    bad(f"stage {i} lacks {key!r}")
            if s.get("act", "hswish") not in ("relu", "hswish", "swish", "none"):
                bad(f"stage {i}: unknown activation {s.get('act')!r}")
        if "out" not in self.stem:
            bad("stem lacks 'out'")

    # -- derived
    def channels(self, base: int, width: float) -> int:
        return make_divisible(base * width, self.divisor)

    def max_channels(self, base: int) -> int:
        return max(self.channels(base, w) for w in self.widths)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def max_depth(self) -> int:
        return max(self.depths)


# ----------------------------------------------------------------------------- arch encoding


def _num(v):
    """JSON-friendly: 3.0 -> 3, 0.5 stays."""
    f = float(v)
    return int(f) if f.is_integer() else f


def canonical_arch(cfg: SupernetConfig, arch: dict) -> dict:
    """Validate an arch against the space and return it trimmed to the active blocks, numbers normalised.

    ``kernels``/``expands`` may list more blocks than ``depths`` (a full genome); the extra ones are
    ignored. ``resolution`` and ``width`` default to the largest choice when absent, ``hires`` to 0 (the
    layout of spaces that predate it).
    """
    if not isinstance(arch, dict):
        raise ModelError(f"a subnet arch must be a JSON object, not {type(arch).__name__}")
    for key in ("depths", "kernels", "expands"):
        if key not in arch:
            raise ModelError(f"subnet arch lacks {key!r} (needs depths, kernels, expands; optional width, resolution)")
    unknown = sorted(set(arch) - {"depths", "kernels", "expands", "width", "resolution", "hires", "mmacs", "macs"})
    if unknown:
        raise ModelError(f"subnet arch: unknown keys {unknown}")
    n = cfg.num_stages
    depths, kernels, expands = arch["depths"], arch["kernels"], arch["expands"]
    if not (isinstance(depths, list) and isinstance(kernels, list) and isinstance(expands, list)):
        raise ModelError("subnet arch: depths, kernels and expands must be lists")
    if not (len(depths) == len(kernels) == len(expands) == n):
        raise ModelError(f"subnet arch: depths, kernels and expands need one entry per stage ({n} stages); "
                         f"got {len(depths)}, {len(kernels)}, {len(expands)}")
    res = int(arch.get("resolution", max(cfg.resolutions)))
    width = _num(arch.get("width", max(cfg.widths)))
    if res not in cfg.resolutions:
        raise ModelError(f"subnet arch: resolution {res} is not a choice of this supernet ({cfg.resolutions})")
    match = [w for w in cfg.widths if abs(width - w) < 1e-9]
    if not match:
        raise ModelError(f"subnet arch: width {width} is not a choice of this supernet ({cfg.widths})")
    width = _num(match[0])
    hires = arch.get("hires", 0)
    if hires not in cfg.hires:
        raise ModelError(f"subnet arch: hires {hires!r} is not a choice of this supernet ({cfg.hires})")
    out = {"resolution": res, "width": width, "hires": int(hires), "depths": [], "kernels": [], "expands": []}
    for i, (d, ks, es) in enumerate(zip(depths, kernels, expands)):
        if d not in cfg.depths:
            raise ModelError(f"subnet arch: stage {i} depth {d} is not a choice ({cfg.depths})")
        d = int(d)
        if not isinstance(ks, list) or not isinstance(es, list) or len(ks) < d or len(es) < d:
            raise ModelError(f"subnet arch: stage {i} has depth {d} but lists {len(ks) if isinstance(ks, list) else '?'} "
                             f"kernels and {len(es) if isinstance(es, list) else '?'} expands")
        for j in range(d):
            if ks[j] not in cfg.kernels:
                raise ModelError(f"subnet arch: stage {i} block {j} kernel {ks[j]} is not a choice ({cfg.kernels})")
            if es[j] not in cfg.expands:
                raise ModelError(f"subnet arch: stage {i} block {j} expand {es[j]} is not a choice ({cfg.expands})")
        out["depths"].append(d)
        out["kernels"].append([int(k) for k in ks[:d]])
        out["expands"].append([_num(e) for e in es[:d]])
    return out


def arch_key(arch: dict) -> str:
    """A stable string key for caching evaluations (of a canonical arch)."""
    return json.dumps({k: arch.get(k, 0) for k in ("resolution", "width", "hires", "depths", "kernels", "expands")},
                      sort_keys=True, separators=(",", ":"))


def largest_arch(cfg: SupernetConfig) -> dict:
    d, k, e = max(cfg.depths), max(cfg.kernels), max(cfg.expands)
    return {"resolution": max(cfg.resolutions), "width": _num(max(cfg.widths)), "hires": max(cfg.hires),
            "depths": [d] * cfg.num_stages,
            "kernels": [[k] * d for _ in cfg.stages], "expands": [[_num(e)] * d for _ in cfg.stages]}


def smallest_arch(cfg: SupernetConfig) -> dict:
    d, k, e = min(cfg.depths), min(cfg.kernels), min(cfg.expands)
    return {"resolution": min(cfg.resolutions), "width": _num(min(cfg.widths)), "hires": min(cfg.hires),
            "depths": [d] * cfg.num_stages,
            "kernels": [[k] * d for _ in cfg.stages], "expands": [[_num(e)] * d for _ in cfg.stages]}


def random_genome(cfg: SupernetConfig, rng: random.Random) -> dict:
    """A uniformly random full genome (kernels/expands for every possible block)."""
    D = cfg.max_depth
    return {"resolution": rng.choice(cfg.resolutions), "width": _num(rng.choice(cfg.widths)),
            "hires": rng.choice(cfg.hires), "depths": [rng.choice(cfg.depths) for _ in cfg.stages],
            "kernels": [[rng.choice(cfg.kernels) for _ in range(D)] for _ in cfg.stages],
            "expands": [[_num(rng.choice(cfg.expands)) for _ in range(D)] for _ in cfg.stages]}


def random_arch(cfg: SupernetConfig, rng: random.Random) -> dict:
    return canonical_arch(cfg, random_genome(cfg, rng))


# ----------------------------------------------------------------------------- static form & cost


def arch_to_spec(cfg: SupernetConfig, arch: dict, name: str | None = None) -> dict:
    """The foundation's ``mobilenetv3`` spec of a subnet (build it with ``build_model``)."""
    a = canonical_arch(cfg, arch)
    w = a["width"]
    stem = {"out": cfg.channels(cfg.stem["out"], w), "stride": int(cfg.stem.get("stride", 2)),
            "act": cfg.stem.get("act", "hswish")}
    stages = []
    fb = cfg.first_block
    hires = a["hires"] == 1
    if fb:
        stages.append({"out": cfg.channels(fb["out"], w), "stride": 1 if hires else int(fb.get("stride", 1)),
                       "se": bool(fb.get("se", False)), "act": fb.get("act", "relu"), "blocks": [{"kernel": int(fb.get("kernel", 3)), "expand": 1}]})
    for i, (s, d, ks, es) in enumerate(zip(cfg.stages, a["depths"], a["kernels"], a["expands"])):
        stages.append({"out": cfg.channels(s["out"], w), "stride": 2 if (hires and i == 0) else int(s["stride"]),
                       "se": bool(s.get("se", False)), "act": s.get("act", "hswish"),
                       "blocks": [{"kernel": k, "expand": e} for k, e in zip(ks, es)]})
    hc = int(cfg.head.get("channels", 0))
    spec = {"family": "mobilenetv3", "input_size": [a["resolution"], a["resolution"]],
            "in_channels": int(cfg.in_channels), "embed_dim": int(cfg.embed_dim), "mean": cfg.mean, "std": cfg.std,
            "stem": stem, "stages": stages,
            "head": {"channels": cfg.channels(hc, w) if hc else 0, "act": cfg.head.get("act", "hswish")},
            "dropout": float(cfg.dropout)}
    if name:
        spec["name"] = name
    return spec


def _conv_out(size: int, k: int, stride: int) -> int:
    pad = k // 2
    return (size + 2 * pad - k) // stride + 1


def spec_layers(spec: dict) -> list[dict]:
    """Every convolution and linear layer of a static ``mobilenetv3`` spec with its shape and MACs
    (the same count as :func:`count_macs`: out_h*out_w*out_c*in_c/groups*k*k, and in*out for linear)."""
    h, w = (int(v) for v in spec["input_size"])
    cin = int(spec["in_channels"])
    layers = []

    def conv(kind, ci, co, k, s, groups=1):
        nonlocal h, w
        ho, wo = _conv_out(h, k, s), _conv_out(w, k, s)
        layers.append({"op": kind, "cin": ci, "cout": co, "k": k, "stride": s, "in_hw": [h, w], "groups": groups,
                       "macs": ho * wo * co * (ci // groups) * k * k})
        h, w = ho, wo

    st = spec["stem"]
    conv("stem", cin, int(st["out"]), 3, int(st.get("stride", 1)))
    cin = int(st["out"])
    for stage in spec["stages"]:
        cout = int(stage["out"])
        for bi, b in enumerate(stage["blocks"]):
            k, e = int(b["kernel"]), float(b["expand"])
            s = int(stage.get("stride", 1)) if bi == 0 else 1
            mid = mid_channels(cin, e)
            if mid != cin:
                conv("expand", cin, mid, 1, 1)
            conv("dw", mid, mid, k, s, groups=mid)
            if stage.get("se", False):
                sm = se_channels(mid)
                layers.append({"op": "se", "cin": mid, "cout": sm, "k": 1, "stride": 1, "in_hw": [1, 1], "groups": 1,
                               "macs": 2 * mid * sm})
            conv("project", mid, cout, 1, 1)
            cin = cout
    hc = int(spec.get("head", {}).get("channels", 0))
    if hc:
        conv("head", cin, hc, 1, 1)
        cin = hc
    layers.append({"op": "fc", "cin": cin, "cout": int(spec["embed_dim"]), "k": 1, "stride": 1, "in_hw": [1, 1],
                   "groups": 1, "macs": cin * int(spec["embed_dim"])})
    return layers


def arch_layers(cfg: SupernetConfig, arch: dict) -> list[dict]:
    return spec_layers(arch_to_spec(cfg, arch))


def arch_macs(cfg: SupernetConfig, arch: dict) -> int:
    """MACs of the extracted subnet, analytically (equal to ``count_macs`` of the static model)."""
    return int(sum(layer["macs"] for layer in arch_layers(cfg, arch)))
