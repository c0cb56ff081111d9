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
from .checkpoint import Checkpoint, freeze, load_checkpoint, model_space_id, relative_ref, save_checkpoint
from .data import ImageSet, train_val_split
from .embed import embed
from .metrics import recall_at_1
from .models import CosineClassifier, EmbeddingNet, build_model, resize_batch
from .qat import QAT_SCHEMES, QATModel, prepare_qat
from .targets import ViewSpec, apply_views, load_or_build, random_view_params

log = logging.getLogger("hetsearch.train")


@dataclass
class TrainConfig:
    """One configuration for every training: gallery, query, supernet (sandwich rule) and finetune."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    seed: int = 0
    val_fraction: float = 0.1
    max_train_samples: int | None = None
    max_val_samples: int | None = None  # None: the whole validation split
    val_mode: str = "auto"  # auto | stratified | classes (hold out whole classes: many small classes)
    augment: bool = True
    head_scale: float = 16.0
    margin: float = 0.0
    margin_type: str = "none"  # none (normalised softmax) | arcface | cosface
    threads: int | None = None
    compat: str = L.DEFAULT_COMPAT
    loss_weights: dict = field(default_factory=dict)
    bct_lambda: float | None = None
    temperature: float = 0.05
    # what the frozen gallery side provides: computed once and cached (default) or recomputed every step
    gallery_targets: str = "cached"
    target_views: int = 6
    targets_cache: str | None = None
    # the sandwich rule (supernet training only)
    num_random: int = 2
    distill_weight: float = 1.0
    calib_images: int = 500
    schedule: str = "progressive"  # progressive (OFA order) | sandwich (every dimension elastic from the start)
    # quantization-aware training of a query model (cmpnas/qat.py): None (float) | "int8"; with it, the weight of
    # a term 1 - cos(int8 embedding, float embedding of the same weights) that keeps the two close (parity)
    qat: str | None = None
    qat_consistency: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "target_views"):
            if getattr(self, name) < 1:
                raise ModelError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ModelError(f"--lr must be > 0, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise ModelError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.gallery_targets not in ("cached", "live"):
            raise ModelError(f"--gallery-targets must be 'cached' or 'live', not {self.gallery_targets!r}")
        if self.num_random < 0:
            raise ModelError(f"--num-random must be >= 0, got {self.num_random}")
        if self.val_mode not in ("auto", "stratified", "classes"):
            raise ModelError(f"--val-mode must be auto, stratified or classes, not {self.val_mode!r}")
        if self.schedule not in ("progressive", "sandwich"):
            raise ModelError(f"--schedule must be 'progressive' or 'sandwich', not {self.schedule!r}")
        if self.qat is not None and self.qat not in QAT_SCHEMES:
            raise ModelError(f"--qat must be one of {', '.join(QAT_SCHEMES)}, not {self.qat!r}")
        if self.qat_consistency < 0:
            raise ModelError(f"--qat-consistency must be >= 0, got {self.qat_consistency}")


AUGMENT_PAD = 2


def set_threads(n: int | None) -> None:
    n = n or int(os.environ.get("HETSEARCH_THREADS", 0)) or os.cpu_count() or 1
    torch.set_num_threads(max(1, n))


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = AUGMENT_PAD) -> torch.Tensor:
    """Random shifts up to ``pad`` pixels (zero fill) and horizontal flips, per image."""
    return apply_views(x, random_view_params(len(x), gen, pad), pad)


def param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for m in modules:
        for name, p in m.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
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
    path: Path | None = None

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint) -> "GallerySide":
        freeze(ck.model)
        freeze(ck.head)
        return cls(ck.model, ck.head, ck.space_id, ck.macs, ck.path)


def check_loss_fits(loss: L.CompatLoss, gallery: GallerySide | None, num_classes: int) -> None:
    """BCT needs the frozen gallery classifier, over the training data's classes."""
    if not loss.needs_gallery_head:
        return
    gh = gallery.head if gallery else None
    if gh is None:
        raise ModelError("the bct loss needs the gallery model's classifier, and this gallery model has none")
    if gh.weight.shape[0] != num_classes:
        raise ModelError(
            f"the gallery classifier knows {gh.weight.shape[0]} classes but the training data has {num_classes}; "
            "bct needs the gallery's training classes (use --compat l2 or contrastive for other data)")


def needs_gallery_embeddings(loss: L.CompatLoss) -> bool:
    return any(t in loss.terms for t in ("l2", "contrastive"))


class PlainStep:
    """One model, one forward and backward per batch; the best epoch by validation is kept as the checkpoint."""

    keep_best = True

    def __init__(self, model: EmbeddingNet, kind: str, classes: list[str] | None = None,
                 extra_meta: dict | None = None, consistency: float = 0.0):
        self.model, self.kind, self.classes, self.extra_meta = model, kind, classes, dict(extra_meta or {})
        self.consistency = consistency if isinstance(model, QATModel) else 0.0

    def trainable(self) -> list[nn.Module]:
        return [self.model]

    def train_mode(self) -> None:
        self.model.train()

    def begin_epoch(self, epoch: int, epochs: int) -> dict:
        return {}

    def __call__(self, xb, yb, g_emb, objective) -> dict:
        if tuple(xb.shape[-2:]) != tuple(self.model.input_size):
            xb = resize_batch(xb, self.model.input_size)
        q = self.model(xb)
        total, parts = objective(q, yb, g_emb)
        if self.consistency:  # QAT: the int8 (fake-quantized) embedding and the float one of the same weights agree
            with self.model.float_mode():
                qf = self.model(xb)
            term = (1.0 - (q * qf).sum(dim=1)).mean()
            total = total + self.consistency * term
            parts["qat_consistency"] = float(term.detach())
        total.backward()
        return parts

    def validate(self, val: ImageSet, g_val: np.ndarray | None) -> dict:
        q = embed(self.model, val)
        out = {"val_homogeneous_r1": recall_at_1(q, q, val.labels)}
        if g_val is not None:
            out["val_heterogeneous_r1"] = recall_at_1(q, g_val, val.labels)
        if isinstance(self.model, QATModel):  # the metrics above are the fake-quantized (int8) model's
            with self.model.float_mode():
                qf = embed(self.model, val)
            if g_val is not None:
                out["val_float_heterogeneous_r1"] = recall_at_1(qf, g_val, val.labels)
            out["val_float_cos_min"] = float(((q * qf).sum(1) / np.maximum(
                np.linalg.norm(q, axis=1) * np.linalg.norm(qf, axis=1), 1e-12)).min())
        return out

    def state(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state(self, st: dict) -> None:
        self.model.load_state_dict(st["model"])

    def save(self, out: Path, *, head, gallery, loss, cfg, history, best_epoch, selection, targets_info) -> None:
        if self.kind == "gallery":
            space = None
        elif loss.needs_gallery:
            space = gallery.space_id
        else:  # independent: not trained for compatibility; it lives in its own space
            space = model_space_id(self.model)
        metrics = {"best_epoch": best_epoch, "selection": selection, "history": list(history),
                   **{k: v for k, v in history[best_epoch - 1].items() if k.startswith("val_")}}
        extra = dict(self.extra_meta)
        if gallery is not None:
            extra.setdefault("gallery_space_id", gallery.space_id)
            extra.setdefault("gallery_macs", gallery.macs)
            extra["compat"] = {"loss": loss.name, "terms": list(loss.terms), "weights": loss.weights}
            extra["gallery_targets"] = targets_info
        if isinstance(self.model, QATModel):  # the float model with the trained weights; meta says it is QAT
            m = self.model.to_plain()
            extra["qat"] = {**extra.get("qat", {}), **self.model.describe()}
        else:
            m = copy.deepcopy(self.model).eval()
        save_checkpoint(out, m, kind=self.kind, head=copy.deepcopy(head).eval(), space_id=space,
                        train_config=cfg.to_dict(), metrics=metrics, classes=self.classes, extra=extra)


def val_can_measure(labels: np.ndarray) -> bool:
    """Leave-one-out R@1 measures something only if some class has at least two validation images."""
    if len(labels) < 2:
        return False
    _, counts = np.unique(labels, return_counts=True)
    return bool((counts >= 2).any())


def fit(step, train: ImageSet, val: ImageSet, out: str | Path, cfg: TrainConfig, *, gallery: GallerySide | None = None,
        loss: L.CompatLoss | None = None, resume: bool = False, progress: bool = True, desc: str = "train",
        head_state: dict | None = None) -> list:
    """The one training loop: gallery models, query models, finetunes and supernets (``step`` decides).

    Per epoch: a seeded shuffle; one view per image (a cached gallery view, or a fresh random shift/flip);
    the step's forward/backward; SGD with warm-up + cosine; validation on a split carved from the training
    data; the step's save (best epoch for models, every epoch for a supernet); ``last.pt`` for ``resume``.
    ``head_state``: the model's own classifier to start from (a finetune of a checkpoint keeps its classifier).
    Returns the history."""
    cfg.validate()
    set_threads(cfg.threads)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelError(f"--out {out} exists and is not a folder; give a folder for the checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    loss = loss or L.build_loss("independent")
    n = len(train)
    if n == 0:
        raise ModelError("no training images")
    check_loss_fits(loss, gallery, train.num_classes)
    dim = int(step.trainable()[0].embed_dim)
    if gallery is not None and dim != gallery.model.embed_dim:
        raise ModelError(f"query embedding dim {dim} != gallery embedding dim {gallery.model.embed_dim}; a compatible "
                         "query model must embed into the gallery's space (pass --embed-dim)")
    # The model's own classifier starts from its own draw: a gallery model and a query model trained with the same
    # seed would otherwise start from identical class vectors, a hidden coupling that makes even an "independent"
    # query model partly compatible with the gallery.
    head_gen = torch.Generator().manual_seed(cfg.seed * 7919 + (104729 if gallery is not None else 0) + 13)
    head = CosineClassifier(dim, train.num_classes, cfg.head_scale, cfg.margin, cfg.margin_type, generator=head_gen)
    if head_state is not None:
        if tuple(head_state["weight"].shape) != tuple(head.weight.shape):
            raise ModelError(f"the starting checkpoint's classifier has shape {tuple(head_state['weight'].shape)}, "
                             f"this data needs {tuple(head.weight.shape)}")
        head.load_state_dict(head_state)
    trainable = step.trainable() + ([head] if loss.needs_own_head else [])
    opt = torch.optim.SGD(param_groups(trainable, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)

    # Images at the gallery model's input (the step resizes for its model); without a gallery, the model's own.
    ref = gallery.model if gallery is not None else step.trainable()[0]
    h, w = (int(v) for v in ref.input_size)
    ch = int(step.trainable()[0].in_channels)
    if gallery is not None and int(gallery.model.in_channels) != ch:
        raise ModelError(f"the query model takes {ch}-channel images but the gallery model takes "
                         f"{gallery.model.in_channels}; give the query model --channels {gallery.model.in_channels}")
    x_np = train.as_model_input(h, w, ch)
    x_train = torch.from_numpy(x_np)
    y_train = torch.from_numpy(train.labels)
    steps_per_epoch = max(1, n // cfg.batch_size) if n >= cfg.batch_size else 1
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)

    measurable = val_can_measure(val.labels)
    if not measurable:
        msg = (f"warning: the validation split ({len(val)} images, {len(np.unique(val.labels))} classes) has no class "
               "with two images, so validation R@1 cannot measure anything: no epoch selection, the LAST epoch is kept")
        print(msg, flush=True)
        log.warning(msg)
    targets, g_val, targets_info = None, None, {"mode": "none"}
    need_g = gallery is not None and needs_gallery_embeddings(loss)
    if gallery is not None:
        x_val = val.as_model_input(h, w, ch)
        if cfg.gallery_targets == "cached":
            spec = ViewSpec(views=cfg.target_views if cfg.augment else 1, pad=AUGMENT_PAD, seed=cfg.seed)
            targets = load_or_build(gallery.model, gallery.space_id, x_np, x_val, spec, cache_dir=cfg.targets_cache,
                                    gallery_path=gallery.path, progress=progress,
                                    describe={"data": train.source, "val": val.source})
            g_val = targets.val
            targets_info = targets.describe()
        else:
            g_val = embed(gallery.model, x_val) if len(val) else None
            targets_info = {"mode": "live"}
    selection = "best validation R@1" if measurable else "last epoch (validation could not measure anything)"

    def objective(q, yb, g_emb):
        total, parts = loss(q, yb, own_head=head, gallery_head=gallery.head if gallery else None, g_emb=g_emb)
        if not torch.isfinite(total):
            raise ModelError(f"training diverged: loss is {float(total)}; lower --lr")
        return total, parts

    start_epoch, best, history = 0, -1.0, []
    saved_epochs = None  # how many epochs of history the saved checkpoint's metadata holds
    state_path = out / "last.pt"
    if resume and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        step.load_state(st["step"])
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        start_epoch, best, history = st["epoch"], st["best"], st["history"]
        log.info("resumed %s from epoch %d", out, start_epoch)
    it = start_epoch * steps_per_epoch
    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        step.train_mode()
        head.train()
        phase = step.begin_epoch(epoch, cfg.epochs)
        sums: dict[str, float] = {}
        perm = torch.randperm(n, generator=gen)
        t_train = time.time()
        bar = tqdm(range(steps_per_epoch), desc=f"{desc} {out.name} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, unit="step", leave=False)
        for i in bar:
            idx = perm[i * cfg.batch_size: (i + 1) * cfg.batch_size]
            xb = x_train[idx].float()
            g_emb = None
            if targets is not None:
                params, g_emb = targets.sample(idx, gen)
                xb = apply_views(xb, params, targets.spec.pad)
            else:
                if cfg.augment:
                    xb = augment_batch(xb, gen)
                if need_g:
                    with torch.no_grad():
                        g_emb = gallery.model(xb)
            for g in opt.param_groups:
                g["lr"] = lr_at(it, total_steps, warmup, cfg.lr)
            opt.zero_grad(set_to_none=True)
            try:
                parts = step(xb, y_train[idx], g_emb, objective)
            except ModelError as exc:
                raise ModelError(f"{desc} {out.name}, epoch {epoch + 1}, step {i}: {exc}") from None
            opt.step()
            it += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if i % 10 == 0:
                bar.set_postfix({k: f"{v / (i + 1):.3f}" for k, v in list(sums.items())[:4]})
        bar.close()
        entry = {"epoch": epoch + 1, **phase, **{f"loss_{k}": v / steps_per_epoch for k, v in sums.items()},
                 "steps": steps_per_epoch, "train_seconds": round(time.time() - t_train, 2)}
        if measurable:
            entry.update(step.validate(val, g_val))
        entry["seconds"] = round(time.time() - t0, 1)
        score = entry.get("val_heterogeneous_r1", entry.get("val_homogeneous_r1", 0.0)) if measurable else epoch
        history.append(entry)
        msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())
        if progress:
            tqdm.write(f"[{desc} {out.name}] {msg}")
        else:  # no bars, but long work still says where it is: one line per epoch
            log.info("[%s %s] %s", desc, out.name, msg)
        save_kw = dict(head=head, gallery=gallery, loss=loss, cfg=cfg, history=history, selection=selection,
                       targets_info=targets_info)
        if not step.keep_best or score > best or (epoch == start_epoch and best < 0):
            best = score if step.keep_best else best
            step.save(out, best_epoch=epoch + 1, **save_kw)
            saved_epochs = len(history)
        torch.save({"step": step.state(), "head": head.state_dict(), "opt": opt.state_dict(),
                    "gen": gen.get_state(), "epoch": epoch + 1, "best": best, "history": history}, state_path)
    if step.keep_best and saved_epochs != len(history) and (out / "checkpoint.pt").exists():
        _update_history(out, history)  # the best epoch was not the last: keep the full history too
    return history


def _update_history(out: Path, history: list) -> None:
    import json

    path = out / "checkpoint.pt"
    payload = torch.load(path, map_location="cpu", weights_only=False)
    payload["meta"]["metrics"]["history"] = history
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    (out / "meta.json").write_text(json.dumps(payload["meta"], indent=2, default=str) + "\n")


def _split(data: ImageSet, cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    return train_val_split(data, cfg.val_fraction, cfg.seed, cfg.max_train_samples, cfg.max_val_samples, cfg.val_mode)


def train_gallery(data: ImageSet, arch: Any, out: str | Path, cfg: TrainConfig | None = None, *,
                  resume: bool = False, progress: bool = True, extra_meta: dict | None = None,
                  **overrides) -> Checkpoint:
    """Train the gallery (paragon) model with a cosine classifier."""
    cfg = cfg or TrainConfig()
    if cfg.qat:
        raise ModelError("--qat is for query models (the gallery model defines the space and stays float)")
    torch.manual_seed(cfg.seed)
    model = arch if isinstance(arch, nn.Module) else build_model(arch, **_data_overrides(data, overrides))
    train, val = _split(data, cfg)
    fit(PlainStep(model, "gallery", data.classes, extra_meta), train, val, out, cfg, loss=L.build_loss("independent"),
        resume=resume, progress=progress, desc="gallery")
    return load_checkpoint(out)


def train_query(data: ImageSet, gallery: str | Path | Checkpoint, arch: Any, out: str | Path,
                cfg: TrainConfig | None = None, *, resume: bool = False, progress: bool = True,
                extra_meta: dict | None = None, init: str | Path | Checkpoint | None = None,
                **overrides) -> Checkpoint:
    """Train a compact query model against a frozen gallery model with ``cfg.compat``.

    ``arch`` is a preset name, a spec, or an already-built model (e.g. an extracted subnet to finetune).
    ``init``: a query checkpoint to finetune (its model and classifier; ``arch`` is then ignored), e.g. a float
    model to finetune with ``cfg.qat`` (quantization-aware, :mod:`hetsearch.cmpnas.qat`).
    """
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    gck = gallery if isinstance(gallery, Checkpoint) else load_checkpoint(gallery, expect_kind="gallery")
    side = GallerySide.from_checkpoint(gck)
    loss = L.build_loss(cfg.compat, cfg.loss_weights, lam=cfg.bct_lambda, temperature=cfg.temperature,
                        gallery_has_head=side.head is not None)
    if cfg.qat and init is None and not isinstance(arch, nn.Module):
        raise ModelError(f"--qat {cfg.qat} finetunes a trained float model (its batch norms are folded first): give "
                         "--init CKPT, a query checkpoint trained against this gallery")
    head_state, init_meta = None, {}
    if init is not None:
        ick = init if isinstance(init, Checkpoint) else load_checkpoint(init, expect_kind="query")
        if ick.space_id != side.space_id:
            raise ModelError(f"--init {ick.path}: that query model is compatible with space {ick.space_id}, not with "
                             f"this gallery's {side.space_id}")
        arch, head_state = ick.model, (ick.head.state_dict() if ick.head is not None else None)
        init_meta = {"init": {"model_id": ick.name, "path": relative_ref(ick.path, out),
                              "val_heterogeneous_r1": ick.meta.get("metrics", {}).get("val_heterogeneous_r1")},
                     **({"nas": ick.meta["nas"]} if ick.meta.get("nas") else {})}
    if isinstance(arch, nn.Module):
        model = arch
    else:
        ov = _data_overrides(data, overrides)
        ov.setdefault("embed_dim", side.model.embed_dim)
        ov.setdefault("input_size", tuple(side.model.input_size) if "input_size" not in ov else ov["input_size"])
        model = build_model(arch, **ov)
    if cfg.qat:
        model = prepare_qat(model, cfg.qat)  # BN folded, fake quantization in; trained with the same loss
    train, val = _split(data, cfg)
    meta = {"gallery_model_id": gck.name, **init_meta, **(extra_meta or {})}
    fit(PlainStep(model, "query", data.classes, meta, consistency=cfg.qat_consistency), train, val, out, cfg,
        gallery=side, loss=loss, resume=resume, progress=progress, desc="query", head_state=head_state)
    return load_checkpoint(out)


def _data_overrides(data: ImageSet, overrides: dict) -> dict:
    ov = {k: v for k, v in overrides.items() if v is not None}
    if "in_channels" not in ov:
        imgs = data.images
        ov["in_channels"] = int(imgs.shape[3] if isinstance(imgs, np.ndarray) else imgs[0].shape[2])
    return ov
