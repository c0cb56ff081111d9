"""Training the elastic supernet against a frozen gallery model (the first step of CMP-NAS).

The supernet trains in the one training loop (:func:`hetsearch.cmpnas.train.fit`) with a
:class:`SandwichStep`: per batch the largest subnet, the smallest subnet and ``num_random`` random ones run on
the same view of the images and their gradients accumulate into the shared weights before one optimiser step.
Each subnet gets the compatibility loss (default ``bct-l2``: its own cosine classifier, the frozen gallery
classifier, and regression to the frozen gallery embedding — from the cached gallery targets); every subnet
but the largest also regresses to the largest subnet's (detached) embedding — in-place distillation, weight
``distill_weight``.

Schedules (``schedule``):

* ``progressive`` — Once-for-All's progressive shrinking: the full network first, then elastic kernel, then
  elastic depth, then elastic expand ratio and width (and resolution, and the ``hires`` layout). Within a phase the sandwich rule
  samples only the dimensions made elastic so far; the others stay at their largest choice.
* ``sandwich`` — every dimension elastic from the first epoch.

After each epoch the largest and smallest subnets are BatchNorm-recalibrated and validated (heterogeneous
R@1 against the gallery's cached embeddings of the whole validation split), and the supernet is saved:
``supernet.pt`` + ``config.json`` + ``meta.json`` (with the gallery's space id), plus ``last.pt`` for resume.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hetsearch.errors import ModelError

from .. import losses as L
from ..checkpoint import Checkpoint, load_checkpoint, relative_ref
from ..data import ImageSet, train_val_split
from ..models import resize_batch
from ..train import GallerySide, TrainConfig, fit
from .space import SupernetConfig, arch_macs, largest_arch, random_genome, smallest_arch
from .supernet import ElasticMobileNetV3, calib_subset, evaluate_subnet, save_supernet

log = logging.getLogger("hetsearch.nas")

# Once-for-All's order; each phase adds dimensions to the elastic set, with its share of the epochs.
PHASES = (("full", (), 0.1), ("kernel", ("kernels",), 0.2), ("depth", ("kernels", "depths"), 0.25),
          ("all", ("kernels", "depths", "expands", "widths", "resolutions", "hires"), 0.45))
ALL_DIMS = ("kernels", "depths", "expands", "widths", "resolutions", "hires")


def phase_of(epoch: int, epochs: int, schedule: str) -> tuple[str, tuple[str, ...]]:
    """The phase name and elastic dimensions of an epoch under a schedule."""
    if schedule == "sandwich":
        return "all", ALL_DIMS
    bounds, acc = [], 0.0
    for name, dims, share in PHASES:
        acc += share
        bounds.append((name, dims, acc))
    t = (epoch + 0.5) / max(1, epochs)
    for name, dims, end in bounds:
        if t < end:
            return name, dims
    return bounds[-1][0], bounds[-1][1]


def restricted_space(space: SupernetConfig, elastic: tuple[str, ...]) -> SupernetConfig:
    """The space with every dimension outside ``elastic`` fixed to its largest choice."""
    fixed = {d: [max(getattr(space, d))] for d in ALL_DIMS if d not in elastic}
    return dataclasses.replace(space, **fixed)


def validate_subnets(net: ElasticMobileNetV3, archs: dict, calib: ImageSet, val: ImageSet, g_val: np.ndarray | None,
                     calib_images: int) -> dict:
    """BN-recalibrate and validate named subnets on extracted copies (the supernet is left untouched)."""
    out = {}
    if len(val) < 2:
        return out
    saved = net.active_arch()
    try:
        for name, arch in archs.items():
            r = evaluate_subnet(net, arch, calib, val, g_val, calib_images)
            out[f"val_{name}_homogeneous_r1"] = r["homo_r1"]
            if "het_r1" in r:
                out[f"val_{name}_heterogeneous_r1"] = r["het_r1"]
    finally:
        net.set_active_subnet(saved)
    return out


class SandwichStep:
    """The sandwich rule on an elastic supernet (a step for :func:`~hetsearch.cmpnas.train.fit`)."""

    keep_best = False  # a supernet is saved every epoch; its subnets are chosen later by the search

    def __init__(self, net: ElasticMobileNetV3, cfg: TrainConfig, calib: ImageSet, meta: dict):
        self.net, self.cfg, self.calib, self.meta = net, cfg, calib, meta
        self.space = net.config
        self.rng = random.Random(cfg.seed)
        self.phase_space = self.space
        self.phase = "all"

    def trainable(self):
        return [self.net]

    def train_mode(self) -> None:
        self.net.train()

    def begin_epoch(self, epoch: int, epochs: int) -> dict:
        self.phase, dims = phase_of(epoch, epochs, self.cfg.schedule)
        self.phase_space = restricted_space(self.space, dims)
        return {"phase": self.phase}

    def __call__(self, xb, yb, g_emb, objective) -> dict:
        ps = self.phase_space
        archs = [largest_arch(self.space), smallest_arch(ps)] + [random_genome(ps, self.rng)
                                                                  for _ in range(self.cfg.num_random)]
        if self.phase == "full":
            archs = archs[:1]
        sums: dict[str, float] = {}
        teacher = None
        for j, arch in enumerate(archs):
            a = self.net.set_active_subnet(arch)
            q = self.net(resize_batch(xb, a["resolution"]))
            total, parts = objective(q, yb, g_emb)
            if j == 0:
                teacher = q.detach()
            elif self.cfg.distill_weight > 0:
                kd = ((q - teacher) ** 2).sum(dim=1).mean()
                total = total + self.cfg.distill_weight * kd
                parts["kd"] = float(kd.detach())
            total.backward()
            tag = "max" if j == 0 else ("min" if j == 1 else "rnd")
            for k, v in parts.items():
                sums[f"{tag}_{k}"] = sums.get(f"{tag}_{k}", 0.0) + v / (1 if j < 2 else max(1, self.cfg.num_random))
        self.net.set_active_subnet(largest_arch(self.space))
        return sums

    def validate(self, val: ImageSet, g_val) -> dict:
        out = validate_subnets(self.net, {"largest": largest_arch(self.space), "smallest": smallest_arch(self.space)},
                               self.calib, val, g_val, self.cfg.calib_images)
        if "val_largest_heterogeneous_r1" in out:
            out["val_heterogeneous_r1"] = (out["val_largest_heterogeneous_r1"] + out["val_smallest_heterogeneous_r1"]) / 2
        return out

    def state(self) -> dict:
        return {"net": self.net.state_dict(), "rng": self.rng.getstate()}

    def load_state(self, st: dict) -> None:
        self.net.load_state_dict(st["net"])
        self.rng.setstate(st["rng"])

    def save(self, out: Path, *, head, gallery, loss, cfg, history, best_epoch, selection, targets_info) -> None:
        self.meta.update(epochs_done=best_epoch, history=list(history), gallery_targets=targets_info,
                         compat={"loss": loss.name, "terms": list(loss.terms), "weights": loss.weights})
        save_supernet(out, self.net, self.meta, head_state={k: v.clone() for k, v in head.state_dict().items()})


def default_supernet_config(gallery_model, in_channels: int, **overrides) -> SupernetConfig:
    """The default space sized for the gallery model's input and embedding."""
    size = int(gallery_model.input_size[0])
    kw: dict[str, Any] = {"input_size": size, "in_channels": int(in_channels), "embed_dim": int(gallery_model.embed_dim)}
    spec = getattr(gallery_model, "spec", {}) or {}
    if "mean" in spec:
        kw["mean"], kw["std"] = spec["mean"], spec.get("std", 0.5)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return SupernetConfig(**kw)


def train_supernet(data: ImageSet, gallery: str | Path | Checkpoint, out: str | Path, cfg: TrainConfig | None = None,
                   space: SupernetConfig | dict | None = None, *, resume: bool = False, progress: bool = True,
                   data_name: str | None = None, extra_meta: dict | None = None) -> Path:
    """Train a supernet against a frozen gallery model; returns the supernet directory."""
    cfg = cfg or TrainConfig()
    cfg.validate()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelError(f"--out {out} exists and is not a folder; give a folder for the supernet")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gck = gallery if isinstance(gallery, Checkpoint) else load_checkpoint(gallery, expect_kind="gallery")
    side = GallerySide.from_checkpoint(gck)
    imgs = data.images
    in_ch = int(imgs.shape[3] if isinstance(imgs, np.ndarray) else imgs[0].shape[2])
    if space is None:
        space = default_supernet_config(side.model, in_ch)
    space = SupernetConfig.load(space)
    if space.embed_dim != side.model.embed_dim:
        raise ModelError(f"supernet embed_dim {space.embed_dim} != gallery embedding dim {side.model.embed_dim}")
    if space.in_channels != in_ch:
        raise ModelError(f"supernet in_channels {space.in_channels} != the data's {in_ch} channels")
    loss = L.build_loss(cfg.compat, cfg.loss_weights, lam=cfg.bct_lambda, temperature=cfg.temperature,
                        gallery_has_head=side.head is not None)
    train, val = train_val_split(data, cfg.val_fraction, cfg.seed, cfg.max_train_samples, cfg.max_val_samples,
                                 cfg.val_mode)
    net = ElasticMobileNetV3(space)
    calib = calib_subset(train, cfg.calib_images, cfg.seed)
    big, small = largest_arch(space), smallest_arch(space)
    data_ref = data_name or data.source
    if data_name and Path(data_name).exists():
        data_ref = relative_ref(data_name, out)
    meta: dict[str, Any] = {
        "format": "hetsearch-supernet", "kind": "supernet", "space_id": side.space_id,
        "gallery": relative_ref(gck.path, out) if gck.path else None, "paths_relative_to": "supernet folder",
        "gallery_model_id": gck.name, "gallery_macs": side.macs, "data": data_ref,
        "train_config": cfg.to_dict(), "schedule": cfg.schedule,
        "sandwich": {"num_random": cfg.num_random, "distill_weight": cfg.distill_weight, "calib_images": cfg.calib_images},
        "largest_mmacs": arch_macs(space, big) / 1e6, "smallest_mmacs": arch_macs(space, small) / 1e6,
        "epochs_done": 0, "history": [], **(extra_meta or {}),
    }
    step = SandwichStep(net, cfg, calib, meta)
    fit(step, train, val, out, cfg, gallery=side, loss=loss, resume=resume, progress=progress, desc="supernet")
    return out
