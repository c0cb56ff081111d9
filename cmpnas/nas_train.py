"""Training the elastic supernet against a frozen gallery model (the first step of CMP-NAS).

Every step follows the sandwich rule: the largest subnet, the smallest subnet and ``num_random`` random
ones run on the same augmented batch and their gradients are accumulated into the shared weights before
one optimiser step. Each subnet gets the compatibility loss of the foundation (default ``bct-l2``: its
own cosine classifier, the frozen gallery classifier, and regression to the frozen gallery embedding);
every subnet but the largest also regresses to the largest subnet's (detached) embedding — in-place
distillation, weight ``distill_weight``.

After each epoch the largest and smallest subnets are BatchNorm-recalibrated on training images and
validated (heterogeneous R@1 against the gallery model on a split carved from the training data), and
the supernet is saved: ``supernet.pt`` + ``config.json`` + ``meta.json`` (with the gallery's space id),
plus ``last.pt`` for ``resume``.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hetsearch.errors import ModelError

from . import losses as L
from .checkpoint import Checkpoint, load_checkpoint
from .data import ImageSet, train_val_split
from .embed import embed
from .metrics import retrieval_metrics
from .models import CosineClassifier
from .supernet import (ElasticMobileNetV3, SupernetConfig, arch_macs, largest_arch, random_genome, recalibrate_bn,
                       resize_batch, save_supernet, smallest_arch)
from .train import GallerySide, TrainConfig, _lr_at, _param_groups, epoch_batches, set_threads

log = logging.getLogger("hetsearch.nas")


@dataclass
class SupernetTrainConfig:
    """What the sandwich rule adds to the foundation's TrainConfig."""

    num_random: int = 2
    distill_weight: float = 1.0
    calib_images: int = 500


def default_supernet_config(gallery_model, in_channels: int, **overrides) -> SupernetConfig:
    """The default space sized for the gallery model's input and embedding."""
    size = int(gallery_model.input_size[0])
    kw: dict[str, Any] = {"input_size": size, "in_channels": int(in_channels), "embed_dim": int(gallery_model.embed_dim)}
    spec = getattr(gallery_model, "spec", {}) or {}
    if "mean" in spec:
        kw["mean"], kw["std"] = spec["mean"], spec.get("std", 0.5)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return SupernetConfig(**kw)


def validate_subnets(net: ElasticMobileNetV3, archs: dict, calib: ImageSet, val: ImageSet, g_val: np.ndarray | None,
                     calib_images: int) -> dict:
    """BN-recalibrate and validate named subnets on extracted copies (the supernet is left untouched)."""
    out = {}
    if len(val) < 2:
        return out
    saved = net.active_arch()
    try:
        for name, arch in archs.items():
            net.set_active_subnet(arch)
            sub = net.extract_subnet()
            recalibrate_bn(sub, calib, max_images=calib_images)
            q = embed(sub, val)
            out[f"val_{name}_homogeneous_r1"] = retrieval_metrics(q, q, val.labels, ks=(1,))["recall_at_1"]
            if g_val is not None:
                out[f"val_{name}_heterogeneous_r1"] = retrieval_metrics(q, g_val, val.labels, ks=(1,))["recall_at_1"]
    finally:
        net.set_active_subnet(saved)
    return out


def train_supernet(data: ImageSet, gallery: str | Path | Checkpoint, out: str | Path, cfg: TrainConfig | None = None,
                   space: SupernetConfig | dict | None = None, ncfg: SupernetTrainConfig | None = None, *,
                   resume: bool = False, progress: bool = True, data_name: str | None = None,
                   gallery_ref: str | None = None) -> Path:
    """Train a supernet against a frozen gallery model; returns the supernet directory."""
    cfg = cfg or TrainConfig()
    ncfg = ncfg or SupernetTrainConfig()
    if ncfg.num_random < 0:
        raise ModelError(f"--num-random must be >= 0, got {ncfg.num_random}")
    set_threads(cfg.threads)
    out = Path(out)
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
    gsize = tuple(side.model.input_size)
    loss = L.build_loss(cfg.compat, cfg.loss_weights, lam=cfg.bct_lambda, temperature=cfg.temperature,
                        gallery_has_head=side.head is not None)
    train, val = train_val_split(data, cfg.val_fraction, cfg.seed, cfg.max_train_samples, cfg.max_val_samples)
    n = len(train)
    if n == 0:
        raise ModelError("no training images")
    if loss.needs_gallery_head and side.head.weight.shape[0] != train.num_classes:
        raise ModelError(f"the gallery classifier knows {side.head.weight.shape[0]} classes but the training data has "
                         f"{train.num_classes}; bct needs the gallery's training classes (use --compat l2)")

    net = ElasticMobileNetV3(space)
    head = CosineClassifier(space.embed_dim, train.num_classes, cfg.head_scale, cfg.margin, cfg.margin_type)
    trainable = [net] + ([head] if loss.needs_own_head else [])
    opt = torch.optim.SGD(_param_groups(trainable, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)

    # Every image at the gallery's input size (the supernet resizes to each subnet's resolution).
    x_train = torch.from_numpy(train.as_model_input(gsize[0], gsize[1], in_ch))
    y_train = torch.from_numpy(train.labels)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    calib = train.subset(np.arange(min(n, ncfg.calib_images)), "calib")
    g_val = embed(side.model, val) if len(val) > 1 else None
    big, small = largest_arch(space), smallest_arch(space)

    meta: dict[str, Any] = {
        "format": "hetsearch-supernet", "kind": "supernet", "space_id": side.space_id,
        "gallery": gallery_ref if gallery_ref is not None else (str(gck.path) if gck.path else None),
        "gallery_model_id": gck.name, "gallery_macs": side.macs, "data": data_name or data.source,
        "compat": {"loss": loss.name, "terms": list(loss.terms), "weights": loss.weights},
        "train_config": cfg.to_dict(), "sandwich": {"num_random": ncfg.num_random, "distill_weight": ncfg.distill_weight,
                                                    "calib_images": ncfg.calib_images},
        "largest_mmacs": arch_macs(space, big) / 1e6, "smallest_mmacs": arch_macs(space, small) / 1e6,
        "epochs_done": 0, "history": [],
    }
    start_epoch, history = 0, []
    state_path = out / "last.pt"
    if resume and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        net.load_state_dict(st["net"])
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        rng.setstate(st["rng"])
        start_epoch, history = st["epoch"], st["history"]
        log.info("resumed supernet %s from epoch %d", out, start_epoch)
    step = start_epoch * steps_per_epoch
    t0 = time.time()
    need_g = loss.needs_gallery and any(t in loss.terms for t in ("l2", "contrastive"))
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        head.train()
        sums: dict[str, float] = {}
        for i, xb, yb, bar in epoch_batches(x_train, y_train, cfg, gen, steps_per_epoch,
                                            f"supernet {out.name} epoch {epoch + 1}/{cfg.epochs}", progress):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total_steps, warmup, cfg.lr)
            g_emb = None
            if need_g:
                with torch.no_grad():
                    g_emb = side.model(xb)
            opt.zero_grad(set_to_none=True)
            archs = [big, small] + [random_genome(space, rng) for _ in range(ncfg.num_random)]
            teacher = None
            for j, arch in enumerate(archs):
                a = net.set_active_subnet(arch)
                q = net(resize_batch(xb, a["resolution"]))
                total, parts = loss(q, yb, own_head=head, gallery_head=side.head, g_emb=g_emb)
                if j == 0:
                    teacher = q.detach()
                elif ncfg.distill_weight > 0:
                    kd = ((q - teacher) ** 2).sum(dim=1).mean()
                    total = total + ncfg.distill_weight * kd
                    parts["kd"] = float(kd.detach())
                if not torch.isfinite(total):
                    raise ModelError(f"supernet training diverged at epoch {epoch + 1}, step {i}: loss is "
                                     f"{float(total)}; lower --lr")
                total.backward()
                tag = "max" if j == 0 else ("min" if j == 1 else "rnd")
                for k, v in parts.items():
                    sums[f"{tag}_{k}"] = sums.get(f"{tag}_{k}", 0.0) + v / (1 if j < 2 else max(1, ncfg.num_random))
            opt.step()
            step += 1
            if i % 10 == 0:
                bar.set_postfix({k: f"{v / (i + 1):.3f}" for k, v in sums.items() if k.endswith(("l2", "bct"))})
        net.set_active_subnet(big)
        entry: dict[str, Any] = {"epoch": epoch + 1, **{f"loss_{k}": v / steps_per_epoch for k, v in sums.items()}}
        entry.update(validate_subnets(net, {"largest": big, "smallest": small}, calib, val, g_val, ncfg.calib_images))
        entry["seconds"] = round(time.time() - t0, 1)
        history.append(entry)
        if progress:
            tqdm.write("[supernet {}] {}".format(out.name, " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())))
        meta.update(epochs_done=epoch + 1, history=list(history))
        save_supernet(out, net, meta, head_state=copy.deepcopy(head.state_dict()))
        torch.save({"net": net.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "rng": rng.getstate(), "epoch": epoch + 1, "history": history}, state_path)
    if start_epoch >= cfg.epochs and not (out / "supernet.pt").exists():
        meta.update(epochs_done=start_epoch, history=list(history))
        save_supernet(out, net, meta, head_state=head.state_dict())
    return out
