"""An elastic MobileNetV3 supernet over the query family's space (after Once-for-All).

One set of weights holds every subnet. A subnet is an *arch*::

    {"resolution": 28, "width": 1.0,
     "depths":  [3, 2, 1],                      # blocks per elastic stage
     "kernels": [[7, 5, 3], [3, 3], [5]],       # depthwise kernel per active block
     "expands": [[6, 4, 3], [3, 4], [6]]}       # expand ratio per active block

and its static form is an ordinary ``mobilenetv3`` spec of the foundation (:func:`arch_to_spec`), so an
extracted subnet is a plain :class:`~hetsearch.cmpnas.models.MobileNetV3Embed` that trains, evaluates
and exports like any hand-designed query model.

Weights are shared by slicing: the first channels of every convolution and BatchNorm, the centre of
every depthwise kernel. ``width`` scales every channel count (stem, blocks, head) and ``resolution``
the input. :func:`arch_macs` is an analytic count equal to :func:`~hetsearch.cmpnas.flops.count_macs`
of the extracted model (tested), cheap enough for a search to cost thousands of candidates.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hetsearch.errors import ModelError

from .models import activation, build_model, make_divisible, EmbeddingNet, InputNorm, L2Norm

FAMILY = "elastic-mobilenetv3"
SUPERNET_FILE = "supernet.pt"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"


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

        for name in ("depths", "kernels", "expands", "widths", "resolutions"):
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
        if not self.stages:
            bad("needs at least one elastic stage")
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


def mid_channels(cin: int, expand: float) -> int:
    """The expanded width of an inverted-residual block, exactly as the static model computes it."""
    return make_divisible(cin * expand, 8) if expand != 1 else cin


def se_channels(mid: int) -> int:
    return make_divisible(mid / 4, 8)


# ----------------------------------------------------------------------------- arch encoding


def _num(v):
    """JSON-friendly: 3.0 -> 3, 0.5 stays."""
    f = float(v)
    return int(f) if f.is_integer() else f


def canonical_arch(cfg: SupernetConfig, arch: dict) -> dict:
    """Validate an arch against the space and return it trimmed to the active blocks, numbers normalised.

    ``kernels``/``expands`` may list more blocks than ``depths`` (a full genome); the extra ones are
    ignored. ``resolution`` and ``width`` default to the largest choice when absent.
    """
    if not isinstance(arch, dict):
        raise ModelError(f"a subnet arch must be a JSON object, not {type(arch).__name__}")
    for key in ("depths", "kernels", "expands"):
        if key not in arch:
            raise ModelError(f"subnet arch lacks {key!r} (needs depths, kernels, expands; optional width, resolution)")
    unknown = sorted(set(arch) - {"depths", "kernels", "expands", "width", "resolution", "mmacs", "macs"})
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
    out = {"resolution": res, "width": width, "depths": [], "kernels": [], "expands": []}
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
    return json.dumps({k: arch[k] for k in ("resolution", "width", "depths", "kernels", "expands")},
                      sort_keys=True, separators=(",", ":"))


def largest_arch(cfg: SupernetConfig) -> dict:
    d, k, e = max(cfg.depths), max(cfg.kernels), max(cfg.expands)
    return {"resolution": max(cfg.resolutions), "width": _num(max(cfg.widths)), "depths": [d] * cfg.num_stages,
            "kernels": [[k] * d for _ in cfg.stages], "expands": [[_num(e)] * d for _ in cfg.stages]}


def smallest_arch(cfg: SupernetConfig) -> dict:
    d, k, e = min(cfg.depths), min(cfg.kernels), min(cfg.expands)
    return {"resolution": min(cfg.resolutions), "width": _num(min(cfg.widths)), "depths": [d] * cfg.num_stages,
            "kernels": [[k] * d for _ in cfg.stages], "expands": [[_num(e)] * d for _ in cfg.stages]}


def random_genome(cfg: SupernetConfig, rng: random.Random) -> dict:
    """A uniformly random full genome (kernels/expands for every possible block)."""
    D = cfg.max_depth
    return {"resolution": rng.choice(cfg.resolutions), "width": _num(rng.choice(cfg.widths)),
            "depths": [rng.choice(cfg.depths) for _ in cfg.stages],
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
    if fb:
        stages.append({"out": cfg.channels(fb["out"], w), "stride": int(fb.get("stride", 1)), "se": bool(fb.get("se", False)),
                       "act": fb.get("act", "relu"), "blocks": [{"kernel": int(fb.get("kernel", 3)), "expand": 1}]})
    for s, d, ks, es in zip(cfg.stages, a["depths"], a["kernels"], a["expands"]):
        stages.append({"out": cfg.channels(s["out"], w), "stride": int(s["stride"]), "se": bool(s.get("se", False)),
                       "act": s.get("act", "hswish"),
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


# ----------------------------------------------------------------------------- elastic layers


def _centre(weight: torch.Tensor, k: int) -> torch.Tensor:
    K = weight.shape[-1]
    if k == K:
        return weight
    s = (K - k) // 2
    return weight[..., s : s + k, s : s + k]


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first C channels of its parameters and statistics (C from the input)."""

    def forward(self, x):
        c = x.shape[1]
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, factor, self.eps)


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, c: int) -> None:
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


class ElasticBlock(nn.Module):
    """An inverted-residual block with elastic input/output width, kernel size and expand ratio."""

    def __init__(self, cin_choices: Iterable[int], cout_max: int, kernel_max: int, expands: Sequence[float],
                 stride: int, se: bool, act: str):
        super().__init__()
        cin_choices = sorted(set(cin_choices))
        cin_max = max(cin_choices)
        mid_max = max(max(mid_channels(c, e) for c in cin_choices for e in expands), cin_max)
        self.stride, self.use_se, self.kernel_max = int(stride), bool(se), int(kernel_max)
        self.expand_conv = nn.Conv2d(cin_max, mid_max, 1, bias=False)
        self.expand_bn = DynamicBatchNorm2d(mid_max)
        self.dw_conv = nn.Conv2d(mid_max, mid_max, kernel_max, stride, kernel_max // 2, groups=mid_max, bias=False)
        self.dw_bn = DynamicBatchNorm2d(mid_max)
        if se:
            sm = se_channels(mid_max)
            self.se_fc1 = nn.Conv2d(mid_max, sm, 1)
            self.se_fc2 = nn.Conv2d(sm, mid_max, 1)
        self.project_conv = nn.Conv2d(mid_max, cout_max, 1, bias=False)
        self.project_bn = DynamicBatchNorm2d(cout_max)
        self.act = activation(act)
        # active settings
        self.cout, self.kernel, self.expand = cout_max, kernel_max, max(expands)

    def forward(self, x):
        cin, cout, k = x.shape[1], self.cout, self.kernel
        mid = mid_channels(cin, self.expand)
        y = x
        if mid != cin:
            y = self.act(self.expand_bn(F.conv2d(x, self.expand_conv.weight[:mid, :cin])))
        y = F.conv2d(y, _centre(self.dw_conv.weight[:mid], k), None, self.stride, k // 2, 1, mid)
        y = self.act(self.dw_bn(y))
        if self.use_se:
            sm = se_channels(mid)
            s = y.mean(dim=(2, 3), keepdim=True)
            s = F.relu(F.conv2d(s, self.se_fc1.weight[:sm, :mid], self.se_fc1.bias[:sm]))
            s = F.hardsigmoid(F.conv2d(s, self.se_fc2.weight[:mid, :sm], self.se_fc2.bias[:mid]))
            y = y * s
        y = self.project_bn(F.conv2d(y, self.project_conv.weight[:cout, :mid]))
        return x + y if (self.stride == 1 and cin == cout) else y

    @torch.no_grad()
    def copy_to(self, block: nn.Module, cin: int) -> None:
        """Copy the active slice into a static ``InvertedResidual`` built with the same settings."""
        cout, k = self.cout, self.kernel
        mid = mid_channels(cin, self.expand)
        if (block.expand is None) != (mid == cin):
            raise ModelError("internal: static block and elastic block disagree on the expand layer")
        if block.expand is not None:
            block.expand[0].weight.copy_(self.expand_conv.weight[:mid, :cin])
            _copy_bn(block.expand[1], self.expand_bn, mid)
        block.dw[0].weight.copy_(_centre(self.dw_conv.weight[:mid], k))
        _copy_bn(block.dw[1], self.dw_bn, mid)
        if self.use_se:
            sm = se_channels(mid)
            block.se.fc1.weight.copy_(self.se_fc1.weight[:sm, :mid])
            block.se.fc1.bias.copy_(self.se_fc1.bias[:sm])
            block.se.fc2.weight.copy_(self.se_fc2.weight[:mid, :sm])
            block.se.fc2.bias.copy_(self.se_fc2.bias[:mid])
        block.project[0].weight.copy_(self.project_conv.weight[:cout, :mid])
        _copy_bn(block.project[1], self.project_bn, cout)


# ----------------------------------------------------------------------------- the supernet


class ElasticMobileNetV3(nn.Module):
    """The supernet. Forward runs the active subnet on raw pixels (N×C×H×W in [0, 255]); inputs of
    another size are resized (bilinear, antialiased) to the active resolution."""

    family = FAMILY

    def __init__(self, config: SupernetConfig | dict | None = None):
        super().__init__()
        cfg = SupernetConfig.load(config) if config is not None else SupernetConfig()
        self.config = cfg
        self.in_channels = int(cfg.in_channels)
        self.embed_dim = int(cfg.embed_dim)
        self.norm_in = InputNorm(self.in_channels, cfg.mean, cfg.std)
        self.l2 = L2Norm()
        stem_max = cfg.max_channels(cfg.stem["out"])
        self.stem_conv = nn.Conv2d(self.in_channels, stem_max, 3, int(cfg.stem.get("stride", 1)), 1, bias=False)
        self.stem_bn = DynamicBatchNorm2d(stem_max)
        self.stem_act = activation(cfg.stem.get("act", "hswish"))
        prev = [cfg.channels(cfg.stem["out"], w) for w in cfg.widths]
        self.first = None
        if cfg.first_block:
            fb = cfg.first_block
            self.first = ElasticBlock(prev, cfg.max_channels(fb["out"]), int(fb.get("kernel", 3)), [1],
                                      int(fb.get("stride", 1)), bool(fb.get("se", False)), fb.get("act", "relu"))
            prev = [cfg.channels(fb["out"], w) for w in cfg.widths]
        self.stages = nn.ModuleList()
        for s in cfg.stages:
            outs = [cfg.channels(s["out"], w) for w in cfg.widths]
            blocks = nn.ModuleList()
            for j in range(cfg.max_depth):
                blocks.append(ElasticBlock(prev if j == 0 else outs, max(outs), max(cfg.kernels), cfg.expands,
                                           int(s["stride"]) if j == 0 else 1, bool(s.get("se", False)), s.get("act", "hswish")))
            self.stages.append(blocks)
            prev = outs
        hc = int(cfg.head.get("channels", 0))
        self.head_conv = self.head_bn = None
        if hc:
            hmax = cfg.max_channels(hc)
            self.head_conv = nn.Conv2d(max(prev), hmax, 1, bias=False)
            self.head_bn = DynamicBatchNorm2d(hmax)
            self.head_act = activation(cfg.head.get("act", "hswish"))
            prev = [cfg.channels(hc, w) for w in cfg.widths]
        self.drop = nn.Dropout(float(cfg.dropout))
        self.fc = nn.Linear(max(prev), self.embed_dim)
        self.bn_out = nn.BatchNorm1d(self.embed_dim)
        self._arch: dict = {}
        self.set_active_subnet(largest_arch(cfg))

    # -- the active subnet
    @property
    def input_size(self) -> tuple[int, int]:
        r = int(self._arch["resolution"])
        return (r, r)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, *self.input_size)

    def set_active_subnet(self, arch: dict | str) -> dict:
        """Activate a subnet: an arch dict, its JSON, or 'largest' / 'smallest'. Returns the canonical arch."""
        cfg = self.config
        if isinstance(arch, str):
            if arch == "largest":
                arch = largest_arch(cfg)
            elif arch == "smallest":
                arch = smallest_arch(cfg)
            else:
                try:
                    arch = json.loads(arch)
                except json.JSONDecodeError as exc:
                    raise ModelError(f"subnet arch is not valid JSON: {exc}") from exc
        a = canonical_arch(cfg, arch)
        w = a["width"]
        if self.first is not None:
            self.first.cout = cfg.channels(cfg.first_block["out"], w)
        for s, blocks, d, ks, es in zip(cfg.stages, self.stages, a["depths"], a["kernels"], a["expands"]):
            for j in range(d):
                blocks[j].cout = cfg.channels(s["out"], w)
                blocks[j].kernel, blocks[j].expand = ks[j], es[j]
        self._arch = a
        return copy.deepcopy(a)

    def sample_active_subnet(self, rng: random.Random | int | None = None) -> dict:
        """Activate a uniformly random subnet and return its arch."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        return self.set_active_subnet(random_genome(self.config, rng))

    def active_arch(self) -> dict:
        return copy.deepcopy(self._arch)

    def active_spec(self, name: str | None = None) -> dict:
        return arch_to_spec(self.config, self._arch, name)

    def active_macs(self) -> int:
        return arch_macs(self.config, self._arch)

    # -- forward
    def features(self, x):
        cfg, a = self.config, self._arch
        w = a["width"]
        c = cfg.channels(cfg.stem["out"], w)
        x = F.conv2d(x, self.stem_conv.weight[:c], None, self.stem_conv.stride, self.stem_conv.padding)
        x = self.stem_act(self.stem_bn(x))
        if self.first is not None:
            x = self.first(x)
        for blocks, d in zip(self.stages, a["depths"]):
            for j in range(d):
                x = blocks[j](x)
        if self.head_conv is not None:
            hc = cfg.channels(int(cfg.head["channels"]), w)
            x = self.head_act(self.head_bn(F.conv2d(x, self.head_conv.weight[:hc, : x.shape[1]])))
        x = self.drop(x.mean(dim=(2, 3)))
        x = F.linear(x, self.fc.weight[:, : x.shape[1]], self.fc.bias)
        return self.bn_out(x)

    def forward(self, x):
        r = self.input_size
        if tuple(x.shape[-2:]) != r:
            x = resize_batch(x, r[0])
        return self.l2(self.features(self.norm_in(x)))

    # -- extraction
    @torch.no_grad()
    def extract_subnet(self, name: str | None = None) -> EmbeddingNet:
        """The active subnet as a standalone static ``MobileNetV3Embed`` with its own copy of the weights."""
        cfg, a = self.config, self._arch
        spec = arch_to_spec(cfg, a, name)
        model = build_model(spec)
        w = a["width"]
        model.norm_in.load_state_dict(self.norm_in.state_dict())
        c = cfg.channels(cfg.stem["out"], w)
        model.stem[0].weight.copy_(self.stem_conv.weight[:c])
        _copy_bn(model.stem[1], self.stem_bn, c)
        static = iter(model.blocks)
        cin = c
        if self.first is not None:
            self.first.copy_to(next(static), cin)
            cin = self.first.cout
        for blocks, d in zip(self.stages, a["depths"]):
            for j in range(d):
                blocks[j].copy_to(next(static), cin)
                cin = blocks[j].cout
        if self.head_conv is not None:
            hc = cfg.channels(int(cfg.head["channels"]), w)
            model.head_conv[0].weight.copy_(self.head_conv.weight[:hc, :cin])
            _copy_bn(model.head_conv[1], self.head_bn, hc)
            cin = hc
        model.fc.weight.copy_(self.fc.weight[:, :cin])
        model.fc.bias.copy_(self.fc.bias)
        model.bn_out.load_state_dict(self.bn_out.state_dict())
        model.train(self.training)
        return model


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a float batch (close to PIL's bilinear resize used for datasets)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# ----------------------------------------------------------------------------- BatchNorm recalibration


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images, batch_size: int = 250, max_images: int | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average, momentum None)
    from ``images`` (an ImageSet or a uint8/float N×C×H×W array) with the rest of the model in eval
    mode (dropout off), no gradients. Returns the number of images used; the model ends in eval mode."""
    from .embed import model_input

    x = model_input(model, images)
    if max_images is not None:
        x = x[:max_images]
    if len(x) == 0:
        raise ModelError("BatchNorm recalibration needs at least one image")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).float()
            if xb.shape[0] < 2 and any(isinstance(m, nn.BatchNorm1d) for m in bns):
                continue  # BatchNorm1d cannot train on a single item
            model(xb)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return int(len(x))


# ----------------------------------------------------------------------------- persistence


def save_supernet(out: str | os.PathLike, net: ElasticMobileNetV3, meta: dict, head_state: dict | None = None) -> Path:
    """Write DIR/supernet.pt (weights + config + meta), DIR/config.json and DIR/meta.json atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"format": "hetsearch-supernet", "version": 1, "config": net.config.to_dict(),
               "state_dict": net.state_dict(), "head": head_state, "meta": meta}
    tmp = out / (SUPERNET_FILE + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, out / SUPERNET_FILE)
    for name, data in ((CONFIG_FILE, net.config.to_dict()), (META_FILE, meta)):
        t = out / (name + ".tmp")
        t.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(t, out / name)
    return out / SUPERNET_FILE


def load_supernet(path: str | os.PathLike) -> tuple[ElasticMobileNetV3, dict]:
    """Load a supernet directory (or its supernet.pt). Returns (net in eval mode, meta)."""
    p = Path(path)
    f = p / SUPERNET_FILE if p.is_dir() else p
    if not f.exists():
        raise ModelError(f"no supernet at {p} (expected {SUPERNET_FILE} inside the folder; "
                         "train one with `hetsearch nas supernet`)")
    try:
        payload = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{f} is not a readable supernet file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != "hetsearch-supernet":
        raise ModelError(f"{f} is not a hetsearch supernet file")
    net = ElasticMobileNetV3(SupernetConfig.from_dict(payload["config"]))
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{f}: weights do not fit the supernet config: {exc}") from exc
    net.eval()
    return net, dict(payload.get("meta") or {})
