"""Model families, built by name from a registry plus a JSON architecture spec.

Every model maps raw pixels (float32, N×C×H×W, values in [0, 255]) to an
L2-normalised embedding. Normalisation (scale, mean, std) lives inside the
module, so exported graphs carry it too.

Families:

* ``resnet`` — the gallery (paragon) family: a ResNet of basic blocks.
* ``mobilenetv3`` — the query family: inverted residual blocks with depthwise
  convolutions, optional squeeze-excite and hardswish, configurable per stage
  and per block (kernel, expand ratio). Supernet subnets extract to this family.

A spec is a plain dict (JSON). Presets name complete specs; ``build_model``
accepts a preset name, a spec dict, a JSON string or a path to a JSON file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from hetsearch.errors import ModelError


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def mid_channels(cin: int, expand: float) -> int:
    """The expanded width of an inverted-residual block (the static model and the supernet both use this)."""
    return make_divisible(cin * expand, 8) if expand != 1 else cin


def se_channels(channels: int, reduce: int = 4) -> int:
    """The squeeze width of a squeeze-and-excitation branch over ``channels``."""
    return make_divisible(channels / reduce, 8)


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "hswish": nn.Hardswish, "swish": nn.SiLU, "none": nn.Identity}[name]()


class InputNorm(nn.Module):
    """x in [0, 255] -> (x / 255 - mean) / std, per channel."""

    def __init__(self, channels: int, mean: float | list = 0.5, std: float | list = 0.5):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() == 1:
            mean = mean.repeat(channels)
        if std.numel() == 1:
            std = std.repeat(channels)
        # fold into one multiply-add: x * a + b
        self.register_buffer("scale", (1.0 / (255.0 * std)).reshape(1, channels, 1, 1))
        self.register_buffer("shift", (-mean / std).reshape(1, channels, 1, 1))

    def forward(self, x):
        return x * self.scale + self.shift


def resize_batch(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear, antialiased resize of a float batch to ``size`` (an int or (h, w)); close to PIL's bilinear."""
    hw = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(v) for v in size)
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)


class L2Norm(nn.Module):
    def forward(self, x):
        # explicit form (sqrt of sum of squares) exports cleanly to every format
        return x / torch.sqrt(torch.clamp((x * x).sum(dim=1, keepdim=True), min=1e-12))


class EmbeddingNet(nn.Module):
    """Base class: ``spec`` plus input description; forward returns unit-norm embeddings."""

    family = "base"

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = copy.deepcopy(spec)
        h, w = spec["input_size"]
        self.input_size = (int(h), int(w))
        self.in_channels = int(spec["in_channels"])
        self.embed_dim = int(spec["embed_dim"])
        self.norm_in = InputNorm(self.in_channels, spec.get("mean", 0.5), spec.get("std", 0.5))
        self.l2 = L2Norm()

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, *self.input_size)

    def features(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x):
        return self.l2(self.features(self.norm_in(x)))


# ----------------------------------------------------------------------------- ResNet (gallery)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class ResNetEmbed(EmbeddingNet):
    """spec: stem_width, stem_stride, widths[], depths[], strides[], embed_dim, dropout."""

    family = "resnet"

    def __init__(self, spec: dict):
        super().__init__(spec)
        widths, depths = spec["widths"], spec["depths"]
        strides = spec.get("strides", [1] + [2] * (len(widths) - 1))
        if not (len(widths) == len(depths) == len(strides)):
            raise ModelError("resnet spec: widths, depths and strides must have the same length")
        stem = int(spec.get("stem_width", widths[0]))
        self.stem = nn.Sequential(
            nn.Conv2d(self.in_channels, stem, 3, int(spec.get("stem_stride", 1)), 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        layers, cin = [], stem
        for w, d, s in zip(widths, depths, strides):
            for i in range(int(d)):
                layers.append(BasicBlock(cin, int(w), int(s) if i == 0 else 1))
                cin = int(w)
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(float(spec.get("dropout", 0.0)))
        self.fc = nn.Linear(cin, self.embed_dim)
        self.bn_out = nn.BatchNorm1d(self.embed_dim)

    def features(self, x):
        x = self.pool(self.blocks(self.stem(x))).flatten(1)
        return self.bn_out(self.fc(self.drop(x)))


# ----------------------------------------------------------------------------- MobileNetV3 (query)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduce: int = 4):
        super().__init__()
        mid = se_channels(channels, reduce)
        self.fc1 = nn.Conv2d(channels, mid, 1)
        self.fc2 = nn.Conv2d(mid, channels, 1)

    def forward(self, x):
        s = x.mean(dim=(2, 3), keepdim=True)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, expand: float, stride: int, se: bool, act: str):
        super().__init__()
        mid = mid_channels(cin, expand)
        self.use_res = stride == 1 and cin == cout
        self.expand = None
        if mid != cin:
            self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), activation(act))
        self.dw = nn.Sequential(
            nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            activation(act),
        )
        self.se = SqueezeExcite(mid) if se else None
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.use_res else y


class MobileNetV3Embed(EmbeddingNet):
    """spec: stem {out, stride, act}, stages [{out, stride, se, act, blocks [{kernel, expand}]}],
    head {channels, act}, embed_dim, dropout."""

    family = "mobilenetv3"

    def __init__(self, spec: dict):
        super().__init__(spec)
        stem = spec["stem"]
        self.stem = nn.Sequential(
            nn.Conv2d(self.in_channels, int(stem["out"]), 3, int(stem.get("stride", 1)), 1, bias=False),
            nn.BatchNorm2d(int(stem["out"])),
            activation(stem.get("act", "hswish")),
        )
        cin = int(stem["out"])
        blocks = []
        for si, stage in enumerate(spec["stages"]):
            if not stage["blocks"]:
                raise ModelError(f"mobilenetv3 spec: stage {si} has no blocks")
            for bi, b in enumerate(stage["blocks"]):
                blocks.append(
                    InvertedResidual(
                        cin, int(stage["out"]), int(b["kernel"]), float(b["expand"]),
                        int(stage.get("stride", 1)) if bi == 0 else 1,
                        bool(stage.get("se", False)), stage.get("act", "hswish"),
                    )
                )
                cin = int(stage["out"])
        self.blocks = nn.Sequential(*blocks)
        head = spec.get("head", {})
        hc = int(head.get("channels", 0))
        if hc:
            self.head_conv = nn.Sequential(nn.Conv2d(cin, hc, 1, bias=False), nn.BatchNorm2d(hc), activation(head.get("act", "hswish")))
            cin = hc
        else:
            self.head_conv = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(float(spec.get("dropout", 0.0)))
        self.fc = nn.Linear(cin, self.embed_dim)
        self.bn_out = nn.BatchNorm1d(self.embed_dim)

    def features(self, x):
        x = self.pool(self.head_conv(self.blocks(self.stem(x)))).flatten(1)
        return self.bn_out(self.fc(self.drop(x)))


# ----------------------------------------------------------------------------- registry & presets

FAMILIES: dict[str, Callable[[dict], EmbeddingNet]] = {
    "resnet": ResNetEmbed,
    "mobilenetv3": MobileNetV3Embed,
}


def register_family(name: str, ctor: Callable[[dict], EmbeddingNet]) -> None:
    FAMILIES[name] = ctor


def _mb_stage(out, stride, se, act, n, kernel=3, expand=4):
    return {"out": out, "stride": stride, "se": se, "act": act,
            "blocks": [{"kernel": kernel, "expand": expand} for _ in range(n)]}


_BASE = {"input_size": [28, 28], "in_channels": 1, "embed_dim": 128, "mean": 0.5, "std": 0.5}

PRESETS: dict[str, dict] = {
    # Gallery / paragon family.
    "resnet-gallery": {**_BASE, "family": "resnet", "stem_width": 32, "stem_stride": 1,
                       "widths": [32, 64, 128], "depths": [2, 2, 2], "strides": [2, 2, 2], "dropout": 0.1},
    "resnet-gallery-large": {**_BASE, "family": "resnet", "stem_width": 48, "stem_stride": 1,
                             "widths": [48, 96, 192], "depths": [2, 3, 2], "strides": [2, 2, 2], "dropout": 0.1},
    "resnet-tiny": {**_BASE, "family": "resnet", "stem_width": 8, "stem_stride": 2,
                    "widths": [8, 16], "depths": [1, 1], "strides": [1, 2]},
    # Query family (MobileNetV3-style), ~20x, ~60x and ~200x fewer MACs than resnet-gallery.
    "mbv3-large": {**_BASE, "family": "mobilenetv3", "stem": {"out": 16, "stride": 2, "act": "hswish"},
                   "stages": [_mb_stage(16, 1, False, "relu", 1, 3, 1), _mb_stage(24, 2, False, "relu", 2, 3, 3),
                              _mb_stage(48, 2, True, "hswish", 2, 5, 4)],
                   "head": {"channels": 160, "act": "hswish"}, "dropout": 0.1},
    "mbv3-small": {**_BASE, "family": "mobilenetv3", "stem": {"out": 16, "stride": 2, "act": "hswish"},
                   "stages": [_mb_stage(16, 2, True, "relu", 1, 3, 1), _mb_stage(24, 1, False, "relu", 1, 3, 3),
                              _mb_stage(40, 2, True, "hswish", 1, 5, 3)],
                   "head": {"channels": 96, "act": "hswish"}, "dropout": 0.1},
    "mbv3-tiny": {**_BASE, "family": "mobilenetv3", "stem": {"out": 8, "stride": 2, "act": "hswish"},
                  "stages": [_mb_stage(16, 2, False, "relu", 1, 3, 2), _mb_stage(24, 2, True, "hswish", 1, 3, 2)],
                  "head": {"channels": 48, "act": "hswish"}},
}
DEFAULT_GALLERY = "resnet-gallery"
DEFAULT_QUERY = "mbv3-small"
QUERY_PRESETS = ("mbv3-large", "mbv3-small", "mbv3-tiny")


def resolve_spec(arch: Any, *, input_size: int | tuple | None = None, in_channels: int | None = None,
                 embed_dim: int | None = None) -> dict:
    """A full spec from a preset name, dict, JSON text or JSON file path, with overrides applied."""
    if isinstance(arch, dict):
        spec = copy.deepcopy(arch)
    elif isinstance(arch, str) and arch in PRESETS:
        spec = copy.deepcopy(PRESETS[arch])
        spec.setdefault("name", arch)
    elif isinstance(arch, str) and arch.lstrip().startswith("{"):
        try:
            spec = json.loads(arch)
        except json.JSONDecodeError as exc:
            raise ModelError(f"--arch is not valid JSON: {exc}") from exc
    elif isinstance(arch, str) and Path(arch).is_file():
        try:
            spec = json.loads(Path(arch).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read architecture spec {arch}: {exc}") from exc
    else:
        raise ModelError(f"unknown architecture {arch!r}: use a preset ({', '.join(PRESETS)}), a JSON spec or a .json file")
    if input_size is not None:
        spec["input_size"] = list(input_size) if isinstance(input_size, (tuple, list)) else [int(input_size)] * 2
    if in_channels is not None:
        spec["in_channels"] = int(in_channels)
    if embed_dim is not None:
        spec["embed_dim"] = int(embed_dim)
    for key in ("family", "input_size", "in_channels", "embed_dim"):
        if key not in spec:
            raise ModelError(f"architecture spec lacks {key!r}")
    if spec["family"] not in FAMILIES:
        raise ModelError(f"unknown model family {spec['family']!r}; known: {', '.join(FAMILIES)}")
    return spec


def build_model(arch: Any, **overrides) -> EmbeddingNet:
    spec = resolve_spec(arch, **overrides)
    try:
        return FAMILIES[spec["family"]](spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"invalid {spec['family']} spec: {exc!r}") from exc


# ----------------------------------------------------------------------------- classifier heads


class CosineClassifier(nn.Module):
    """Cosine classifier on unit embeddings: logits = s * cos(theta), with an optional margin.

    margin_type "none" is the normalised softmax; "arcface" uses cos(theta + m); "cosface" cos(theta) - m.
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 16.0, margin: float = 0.0,
                 margin_type: str = "none", generator: torch.Generator | None = None):
        super().__init__()
        if margin_type not in ("none", "arcface", "cosface"):
            raise ModelError(f"unknown margin type {margin_type!r}")
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dim, generator=generator) * 0.01)
        self.scale, self.margin, self.margin_type = float(scale), float(margin), margin_type

    @property
    def config(self) -> dict:
        return {"type": "cosine", "num_classes": self.weight.shape[0], "embed_dim": self.weight.shape[1],
                "scale": self.scale, "margin": self.margin, "margin_type": self.margin_type}

    def cosine(self, emb):
        return F.linear(F.normalize(emb, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, emb, labels=None):
        cos = self.cosine(emb)
        if labels is None or self.margin_type == "none" or self.margin == 0.0:
            return self.scale * cos
        onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        if self.margin_type == "cosface":
            return self.scale * (cos - self.margin * onehot)
        theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
        target = torch.cos(theta + self.margin)
        return self.scale * (cos * (1 - onehot) + target * onehot)


def build_head(config: dict) -> CosineClassifier:
    return CosineClassifier(config["embed_dim"], config["num_classes"], config.get("scale", 16.0),
                            config.get("margin", 0.0), config.get("margin_type", "none"))
