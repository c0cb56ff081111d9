"""The elastic MobileNetV3 supernet (after Once-for-All): one set of weights holds every subnet of the space
(:mod:`.space`); ``set_active_subnet`` picks one, ``extract_subnet`` copies it into a plain static
:class:`~hetsearch.cmpnas.models.MobileNetV3Embed` that trains, evaluates and exports like any hand-designed
query model. Also BatchNorm recalibration and the supernet's files.
"""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hetsearch.errors import ModelError

from ..models import EmbeddingNet, InputNorm, L2Norm, activation, build_model, resize_batch  # noqa: F401
from .elastic import DynamicBatchNorm2d, ElasticBlock, _copy_bn
from .space import (CONFIG_FILE, FAMILY, SupernetConfig, arch_macs, arch_to_spec, canonical_arch, largest_arch,
                    random_genome, smallest_arch)

SUPERNET_FILE = "supernet.pt"
META_FILE = "meta.json"


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
            # hires 1: the first block keeps the stem's resolution and stage 0's first block downsamples
            self.first.stride = 1 if a["hires"] else int(cfg.first_block.get("stride", 1))
            self.stages[0][0].stride = 2 if a["hires"] else int(cfg.stages[0]["stride"])
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


# ----------------------------------------------------------------------------- BatchNorm recalibration


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images, batch_size: int = 250, max_images: int | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average, momentum None)
    from ``images`` (an ImageSet or a uint8/float N×C×H×W array) with the rest of the model in eval
    mode (dropout off), no gradients. Returns the number of images used; the model ends in eval mode."""
    from ..embed import model_input

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


def calib_subset(train, images: int, seed: int):
    """The training images BatchNorm is recalibrated on: a seeded random ``images`` of them."""
    return train.subset(np.random.default_rng(seed).permutation(len(train))[:images], "calib")


def evaluate_subnet(net: ElasticMobileNetV3, arch: dict, calib, val, g_val: np.ndarray | None,
                    calib_images: int) -> dict:
    """Extract ``arch``, recalibrate its BatchNorm on ``calib`` and measure leave-one-out R@1 on ``val``:
    homogeneous, and heterogeneous against the gallery's ``g_val`` when given. Leaves ``arch`` active."""
    from ..embed import embed
    from ..metrics import recall_at_1

    net.set_active_subnet(arch)
    sub = net.extract_subnet()
    recalibrate_bn(sub, calib, max_images=calib_images)
    q = embed(sub, val)
    out = {"homo_r1": recall_at_1(q, q, val.labels)}
    if g_val is not None:
        out["het_r1"] = recall_at_1(q, g_val, val.labels)
    return out


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
