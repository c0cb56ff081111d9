"""Training: the gallery (paragon) model, and compact query models with a compatibility loss.

One loop serves both. Per epoch: a seeded shuffle, light augmentation (random shifts and horizontal
flips), SGD with momentum and a warm-up + cosine schedule, a progress bar, validation on a split carved
from the training data (never the evaluation split), the best epoch kept as ``checkpoint.pt`` and the
full training state in ``last.pt`` so ``resume=True`` continues where it stopped.

The frozen gallery model and classifier get no gradient and stay in eval mode throughout.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from hetsearch.errors import ModelError

from . import losses as L
from .checkpoint import Checkpoint, freeze, load_checkpoint, model_space_id, save_checkpoint
from .data import ImageSet, train_val_split
from .embed import embed, model_input
from .metrics import retrieval_metrics
from .models import CosineClassifier, EmbeddingNet, build_model

log = logging.getLogger("hetsearch.train")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    seed: int = 0
    val_fraction: float = 0.1
    max_train_samples: int | None = None
    max_val_samples: int | None = 2000
    augment: bool = True
    head_scale: float = 16.0
    margin: float = 0.0
    margin_type: str = "none"  # none (normalised softmax) | arcface | cosface
    threads: int | None = None
    compat: str = L.DEFAULT_COMPAT
    loss_weights: dict = field(default_factory=dict)
    bct_lambda: float | None = None
    temperature: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)


def set_threads(n: int | None) -> None:
    n = n or int(os.environ.get("HETSEARCH_THREADS", 0)) or os.cpu_count() or 1
    torch.set_num_threads(max(1, n))


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shifts up to ``pad`` pixels (zero fill) and horizontal flips, per image."""
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # n×h
    cols = (dx[:, None] + torch.arange(w)[None, :])  # n×w
    idx_n = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n×h×w×c
    return out.permute(0, 3, 1, 2).contiguous()


def epoch_batches(x: torch.Tensor, y: torch.Tensor, cfg: "TrainConfig", gen: torch.Generator, steps: int,
                  desc: str, progress: bool):
    """One epoch of (step index, float images, labels, progress bar): a seeded shuffle, then batches with the
    configured augmentation. Shared by the model and supernet training loops."""
    perm = torch.randperm(len(y), generator=gen)
    bar = tqdm(range(steps), desc=desc, disable=not progress, unit="step", leave=False)
    for i in bar:
        idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        xb = x[idx].float()
        if cfg.augment:
            xb = augment_batch(xb, gen)
        yield i, xb, y[idx], bar
    bar.close()


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for m in modules:
        for name, p in m.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


@dataclass
class GallerySide:
    """The frozen gallery model (and its classifier, if any) that a query model is trained against."""

    model: EmbeddingNet
    head: nn.Module | None
    space_id: str
    macs: int

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint) -> "GallerySide":
        freeze(ck.model)
        freeze(ck.head)
        return cls(ck.model, ck.head, ck.space_id, ck.macs)


def _validate_inputs(model: EmbeddingNet, gallery: GallerySide | None) -> None:
    if gallery is None:
        return
    if model.embed_dim != gallery.model.embed_dim:
        raise ModelError(
            f"query embedding dim {model.embed_dim} != gallery embedding dim {gallery.model.embed_dim}; "
            "a compatible query model must embed into the gallery's space (pass --embed-dim)"
        )


def fit(model: EmbeddingNet, train: ImageSet, val: ImageSet, out: str | Path, cfg: TrainConfig, *,
        kind: str, gallery: GallerySide | None = None, loss: L.CompatLoss | None = None,
        resume: bool = False, progress: bool = True, extra_meta: dict | None = None,
        classes: list[str] | None = None) -> Checkpoint:
    """The training loop shared by gallery and query models. Returns the best checkpoint (by val R@1;
    for query models, heterogeneous R@1 against the gallery model)."""
    set_threads(cfg.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if loss is None:
        loss = L.build_loss("independent")
    _validate_inputs(model, gallery)
    num_classes = train.num_classes
    head = CosineClassifier(model.embed_dim, num_classes, cfg.head_scale, cfg.margin, cfg.margin_type)
    if loss.needs_gallery_head:
        gh = gallery.head if gallery else None
        if gh is None:
            raise ModelError("the bct loss needs the gallery model's classifier, and this gallery model has none")
        if gh.weight.shape[0] != num_classes:
            raise ModelError(
                f"the gallery classifier knows {gh.weight.shape[0]} classes but the training data has {num_classes}; "
                "bct needs the gallery's training classes (use l2 or contrastive for other data)"
            )
    trainable = [model] + ([head] if (loss.needs_own_head or kind == "gallery") else [])
    opt = torch.optim.SGD(_param_groups(trainable, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)

    x_train = torch.from_numpy(model_input(model, train))
    y_train = torch.from_numpy(train.labels)
    n = len(train)
    if n == 0:
        raise ModelError("no training images")
    steps_per_epoch = max(1, n // cfg.batch_size) if n >= cfg.batch_size else 1
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)

    # validation targets: the gallery model's embeddings of the validation split
    g_val = embed(gallery.model, val) if (gallery is not None and len(val) > 1) else None
    start_epoch, best, history = 0, -1.0, []
    saved_epochs = None  # how many epochs of history the saved checkpoint's metadata holds
    state_path = out / "last.pt"
    if resume and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        start_epoch, best, history = st["epoch"], st["best"], st["history"]
        log.info("resumed %s from epoch %d", out, start_epoch)
    step = start_epoch * steps_per_epoch
    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        head.train()
        sums: dict[str, float] = {}
        for i, xb, yb, bar in epoch_batches(x_train, y_train, cfg, gen, steps_per_epoch,
                                            f"{kind} {out.name} epoch {epoch + 1}/{cfg.epochs}", progress):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total_steps, warmup, cfg.lr)
            q = model(xb)
            g_emb = None
            if gallery is not None and loss.needs_gallery and any(t in loss.terms for t in ("l2", "contrastive")):
                with torch.no_grad():
                    g_emb = gallery.model(xb)
            total, parts = loss(q, yb, own_head=head, gallery_head=gallery.head if gallery else None, g_emb=g_emb)
            if not torch.isfinite(total):
                raise ModelError(f"training diverged at epoch {epoch + 1}, step {i}: loss is {float(total)}; lower --lr")
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if i % 10 == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        entry = {"epoch": epoch + 1, **{f"loss_{k}": v / steps_per_epoch for k, v in sums.items()},
                 "seconds": round(time.time() - t0, 1)}
        if len(val) > 1:
            q_val = embed(model, val)
            entry["val_homogeneous_r1"] = retrieval_metrics(q_val, q_val, val.labels, ks=(1,))["recall_at_1"]
            if g_val is not None:
                entry["val_heterogeneous_r1"] = retrieval_metrics(q_val, g_val, val.labels, ks=(1,))["recall_at_1"]
        score = entry.get("val_heterogeneous_r1", entry.get("val_homogeneous_r1", 0.0))
        history.append(entry)
        msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())
        if progress:
            tqdm.write(f"[{kind} {out.name}] {msg}")
        log.debug(msg)
        if score > best or epoch == start_epoch and best < 0:
            best = score
            _save(out, model, head, kind, gallery, loss, cfg, history, classes or train.classes, extra_meta, best_epoch=epoch + 1)
            saved_epochs = len(history)
        torch.save({"model": model.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                    "gen": gen.get_state(), "epoch": epoch + 1, "best": best, "history": history}, state_path)
    if saved_epochs != len(history):  # the best epoch was not the last: keep the full history too
        _update_history(out, history)
    return load_checkpoint(out)


def _save(out, model, head, kind, gallery, loss, cfg, history, classes, extra_meta, best_epoch):
    if kind == "gallery":
        space = None
    elif loss.needs_gallery:
        space = gallery.space_id
    else:  # independent: not trained for compatibility; it lives in its own space
        space = model_space_id(model)
    metrics = {"best_epoch": best_epoch, "history": list(history), **{k: v for k, v in history[best_epoch - 1].items()
                                                                      if k.startswith("val_")}}
    extra = dict(extra_meta or {})
    if gallery is not None:
        extra.setdefault("gallery_space_id", gallery.space_id)
        extra.setdefault("gallery_macs", gallery.macs)
        extra["compat"] = {"loss": loss.name, "terms": list(loss.terms), "weights": loss.weights}
    m = copy.deepcopy(model).eval()
    save_checkpoint(out, m, kind=kind, head=copy.deepcopy(head).eval(), space_id=space, train_config=cfg.to_dict(),
                    metrics=metrics, classes=classes, extra=extra)


def _update_history(out: Path, history: list) -> None:
    path = out / "checkpoint.pt"
    payload = torch.load(path, map_location="cpu", weights_only=False)
    payload["meta"]["metrics"]["history"] = history
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    import json

    (out / "meta.json").write_text(json.dumps(payload["meta"], indent=2, default=str) + "\n")


def _split(data: ImageSet, cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    return train_val_split(data, cfg.val_fraction, cfg.seed, cfg.max_train_samples, cfg.max_val_samples)


def train_gallery(data: ImageSet, arch: Any, out: str | Path, cfg: TrainConfig | None = None, *,
                  resume: bool = False, progress: bool = True, **overrides) -> Checkpoint:
    """Train the gallery (paragon) model with a cosine classifier."""
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    model = arch if isinstance(arch, nn.Module) else build_model(arch, **_data_overrides(data, overrides))
    train, val = _split(data, cfg)
    return fit(model, train, val, out, cfg, kind="gallery", loss=L.build_loss("independent"),
               resume=resume, progress=progress, classes=data.classes)


def train_query(data: ImageSet, gallery: str | Path | Checkpoint, arch: Any, out: str | Path,
                cfg: TrainConfig | None = None, *, resume: bool = False, progress: bool = True,
                extra_meta: dict | None = None, **overrides) -> Checkpoint:
    """Train a compact query model against a frozen gallery model with ``cfg.compat``.

    ``arch`` is a preset name, a spec, or an already-built model (e.g. an extracted subnet to finetune).
    """
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    gck = gallery if isinstance(gallery, Checkpoint) else load_checkpoint(gallery, expect_kind="gallery")
    side = GallerySide.from_checkpoint(gck)
    loss = L.build_loss(cfg.compat, cfg.loss_weights, lam=cfg.bct_lambda, temperature=cfg.temperature,
                        gallery_has_head=side.head is not None)
    if isinstance(arch, nn.Module):
        model = arch
    else:
        ov = _data_overrides(data, overrides)
        ov.setdefault("embed_dim", side.model.embed_dim)
        ov.setdefault("input_size", tuple(side.model.input_size) if "input_size" not in ov else ov["input_size"])
        model = build_model(arch, **ov)
    train, val = _split(data, cfg)
    meta = {"gallery_model_id": gck.name, **(extra_meta or {})}
    return fit(model, train, val, out, cfg, kind="query", gallery=side, loss=loss, resume=resume,
               progress=progress, extra_meta=meta, classes=data.classes)


def _data_overrides(data: ImageSet, overrides: dict) -> dict:
    ov = {k: v for k, v in overrides.items() if v is not None}
    if "in_channels" not in ov:
        imgs = data.images
        ov["in_channels"] = int(imgs.shape[3] if isinstance(imgs, np.ndarray) else imgs[0].shape[2])
    return ov
