"""Checkpoints: a directory holding a model's spec, weights, classifier head, embedding-space id and
training configuration. They round-trip exactly (tested).

Layout::

    DIR/checkpoint.pt   torch.save of {format, version, kind, spec, state_dict, head, meta}
    DIR/meta.json       the same metadata, human-readable (no tensors)
    DIR/last.pt         optional per-epoch training state for --resume
    DIR/external.*      a brought-your-own gallery model file (TorchScript / torch.export)

``kind`` is "gallery" or "query". A gallery checkpoint's ``space_id`` is derived from
its weights (hetsearch.space); a query checkpoint's is the space of the gallery model it
was trained against (or its own, for ``--compat independent``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hetsearch.errors import ModelError
from hetsearch.space import space_id_from_digest

from .flops import count_macs, count_params
from .models import EmbeddingNet, InputNorm, L2Norm, build_head, build_model

FORMAT = "hetsearch-checkpoint"
VERSION = 1
CKPT_NAME = "checkpoint.pt"
META_NAME = "meta.json"


def weights_digest(model: nn.Module) -> str:
    """sha256 over the state dict: sorted keys, dtype, shape and raw bytes of every tensor."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def model_space_id(model: EmbeddingNet) -> str:
    """The embedding space a model defines on its own (its content)."""
    return space_id_from_digest(weights_digest(model), model.embed_dim, True)


@dataclass
class Checkpoint:
    model: EmbeddingNet
    head: nn.Module | None
    kind: str
    space_id: str
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def spec(self) -> dict:
        return self.model.spec

    @property
    def name(self) -> str:
        return self.meta.get("model_id") or (self.path.name if self.path else self.spec.get("name", "model"))

    @property
    def macs(self) -> int:
        return int(self.meta.get("macs") or count_macs(self.model))


# ----------------------------------------------------------------------------- external gallery models


class ExternalEmbed(EmbeddingNet):
    """A user's own gallery model (TorchScript, torch.export or a factory) behind hetsearch's contract:
    pixels in [0, 255] are scaled/normalised before it, and its output is L2-normalised after it."""

    family = "external"

    def __init__(self, spec: dict, inner: nn.Module):
        super().__init__(spec)
        self.norm_in = InputNorm(self.in_channels, spec.get("mean", 0.0), spec.get("std", 1.0))
        self.inner = inner
        self.l2 = L2Norm()
        # modules from torch.export cannot switch train/eval; they always run as exported
        self._inner_switchable = spec.get("source_kind") != "torch.export"

    def train(self, mode: bool = True):
        self.training = mode
        for name, child in self.named_children():
            if name != "inner" or self._inner_switchable:
                child.train(mode)
        return self

    def _run(self, x):
        out = self.inner(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.flatten(1)

    def features(self, x):
        fixed = int(self.spec.get("static_batch") or 0)
        if fixed and x.shape[0] != fixed:  # e.g. a torch.export program traced at batch 1
            return torch.cat([self._run(x[i : i + fixed]) for i in range(0, x.shape[0], fixed)])
        return self._run(x)


def _load_external_module(source: str) -> tuple[nn.Module, nn.Module | None, str]:
    """Returns (module, classifier-or-None, kind) for a file path or 'package.module:factory'."""
    p = Path(source)
    if p.is_file():
        try:
            return torch.jit.load(str(p), map_location="cpu"), None, "torchscript"
        except Exception as jit_exc:  # not TorchScript: try torch.export
            try:
                return torch.export.load(str(p)).module(), None, "torch.export"
            except Exception as exp_exc:
                raise ModelError(
                    f"{p} is neither a TorchScript file ({jit_exc.__class__.__name__}) nor a torch.export "
                    f"file ({exp_exc.__class__.__name__}: {exp_exc})"
                ) from exp_exc
    if ":" in source:
        mod_name, fn_name = source.split(":", 1)
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise ModelError(f"cannot import gallery model factory {source!r}: {exc}") from exc
        out = fn()
        if isinstance(out, tuple):
            model, clf = out[0], (out[1] if len(out) > 1 else None)
        else:
            model, clf = out, None
        if not isinstance(model, nn.Module):
            raise ModelError(f"factory {source!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model, clf, "factory"
    raise ModelError(f"--model {source!r}: no such file, and not a 'module:factory' name")


def import_gallery(source: str, out_dir: str | os.PathLike, *, input_size: int | tuple = 28, in_channels: int = 1,
                   mean: float | list = 0.0, std: float | list = 1.0, classifier: str | None = None,
                   classes: list[str] | None = None, scale: float = 16.0) -> Checkpoint:
    """Wrap a user's own gallery model into a gallery checkpoint directory.

    The model receives ``(pixels / 255 - mean) / std``. ``classifier`` is an optional .npy/.pt file
    holding a [num_classes, embed_dim] weight matrix for a cosine classifier; without one, the
    ``bct`` loss is unavailable (and says so) while the others work.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inner, clf_module, kind = _load_external_module(source)
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    probe_spec = {"family": "external", "source_kind": kind, "input_size": [h, w], "in_channels": in_channels, "embed_dim": 1,
                  "mean": mean, "std": std}
    probe = ExternalEmbed(probe_spec, inner).eval()
    static_batch = None
    try:
        with torch.no_grad():
            dim = probe.features(probe.norm_in(torch.zeros(2, in_channels, h, w))).shape[1]
    except Exception as exc:
        try:  # a program exported with a fixed batch of one
            with torch.no_grad():
                dim = probe.features(probe.norm_in(torch.zeros(1, in_channels, h, w))).shape[1]
            static_batch = 1
        except Exception:
            raise ModelError(f"the gallery model failed on a {in_channels}x{h}x{w} input: {exc}") from exc
    spec = {**probe_spec, "embed_dim": int(dim), "static_batch": static_batch, "source_kind": kind, "source": Path(source).name if kind != "factory" else source}
    if kind != "factory":
        suffix = Path(source).suffix or ".pt"
        shutil.copyfile(source, out / f"external{suffix}")
        spec["external_file"] = f"external{suffix}"
    model = ExternalEmbed(spec, inner).eval()
    head = None
    weight = None
    if classifier:
        weight = _load_matrix(classifier)
    elif clf_module is not None:
        weight = next((p for n, p in clf_module.named_parameters() if p.ndim == 2), None)
    if weight is not None:
        if weight.shape[1] != dim:
            raise ModelError(f"classifier weight has shape {tuple(weight.shape)}; expected [num_classes, {dim}]")
        head = build_head({"embed_dim": dim, "num_classes": weight.shape[0], "scale": scale})
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
    save_checkpoint(out, model, kind="gallery", head=head, classes=classes,
                    train_config={"imported_from": spec["source"], "source_kind": kind})
    return load_checkpoint(out)


def _load_matrix(path: str) -> torch.Tensor:
    try:
        if path.endswith(".npy"):
            import numpy as np

            return torch.from_numpy(np.load(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            obj = next(v for v in obj.values() if torch.is_tensor(v) and v.ndim == 2)
        return obj
    except Exception as exc:
        raise ModelError(f"cannot read classifier weights from {path}: {exc}") from exc


# ----------------------------------------------------------------------------- save / load


def save_checkpoint(out_dir: str | os.PathLike, model: EmbeddingNet, *, kind: str, head: nn.Module | None = None,
                    space_id: str | None = None, train_config: dict | None = None, metrics: dict | None = None,
                    classes: list[str] | None = None, extra: dict | None = None) -> Path:
    """Write DIR/checkpoint.pt and DIR/meta.json atomically. Gallery models get a space id from their
    weights; query models must be given the space they are compatible with."""
    if kind not in ("gallery", "query"):
        raise ValueError(f"kind must be 'gallery' or 'query', not {kind!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    own_space = model_space_id(model)
    if kind == "gallery":
        space_id = own_space
    elif space_id is None:
        raise ValueError("a query checkpoint needs the space_id of the gallery model it is compatible with")
    state = {k: v for k, v in model.state_dict().items()}
    if isinstance(model, ExternalEmbed) and model.spec.get("source_kind") != "factory":
        state = {k: v for k, v in state.items() if not k.startswith("inner.")}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model_id": (extra or {}).get("model_id") or out.name,
        "family": model.spec.get("family"),
        "space_id": space_id,
        "own_space_id": own_space,
        "embed_dim": model.embed_dim,
        "input": {"height": model.input_size[0], "width": model.input_size[1], "channels": model.in_channels},
        "macs": count_macs(model),
        "params": count_params(model),
        "spec": model.spec,
        "head": head.config if head is not None else None,
        "classes": classes,
        "train_config": train_config or {},
        "metrics": metrics or {},
        "torch": str(torch.__version__),
    }
    meta["mmacs"] = meta["macs"] / 1e6
    if extra:
        meta.update({k: v for k, v in extra.items() if k != "model_id"})
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "spec": model.spec,
        "state_dict": state,
        "head": None if head is None else {"config": head.config, "state_dict": head.state_dict()},
        "meta": meta,
    }
    tmp = out / (CKPT_NAME + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, out / CKPT_NAME)
    tmpm = out / (META_NAME + ".tmp")
    tmpm.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    os.replace(tmpm, out / META_NAME)
    return out / CKPT_NAME


def _rebuild(spec: dict, folder: Path) -> EmbeddingNet:
    if spec.get("family") != "external":
        return build_model(spec)
    if spec.get("source_kind") == "factory":
        inner, _, _ = _load_external_module(spec["source"])
    else:
        inner, _, _ = _load_external_module(str(folder / spec["external_file"]))
    return ExternalEmbed(spec, inner)


def load_checkpoint(path: str | os.PathLike, expect_kind: str | None = None) -> Checkpoint:
    """Load a checkpoint directory (or its checkpoint.pt). The model and head come back in eval mode."""
    p = Path(path)
    f = p / CKPT_NAME if p.is_dir() else p
    folder = f.parent
    if not f.exists():
        raise ModelError(f"no hetsearch checkpoint at {p} (expected {CKPT_NAME} inside the folder)")
    try:
        payload = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{f} is not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{f} is not a hetsearch checkpoint")
    if payload.get("version") != VERSION:
        raise ModelError(f"{f} has checkpoint version {payload.get('version')}; this hetsearch reads {VERSION}")
    kind = payload["kind"]
    if expect_kind and kind != expect_kind:
        raise ModelError(f"{p} holds a {kind} model, but a {expect_kind} model is needed here")
    model = _rebuild(payload["spec"], folder)
    strict = not (payload["spec"].get("family") == "external" and payload["spec"].get("source_kind") != "factory")
    try:
        missing, unexpected = model.load_state_dict(payload["state_dict"], strict=strict)
    except RuntimeError as exc:
        raise ModelError(f"{f}: weights do not fit the architecture spec: {exc}") from exc
    head = None
    if payload.get("head"):
        head = build_head(payload["head"]["config"])
        head.load_state_dict(payload["head"]["state_dict"])
        head.eval()
    model.eval()
    meta = payload["meta"]
    space_id = meta["space_id"]
    if kind == "gallery" and model_space_id(model) != space_id:
        raise ModelError(f"{f}: the weights do not match the recorded embedding space {space_id} (modified file?)")
    return Checkpoint(model=model, head=head, kind=kind, space_id=space_id, meta=meta, path=folder)


def relative_ref(path: str | os.PathLike | None, base: str | os.PathLike) -> str | None:
    """``path`` as recorded in a file inside folder ``base``: relative to ``base`` (so the folder can move and be
    used from any working directory); a path that does not exist (e.g. a dataset name) is kept as given."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return str(path)
    return os.path.relpath(p.resolve(), Path(base).resolve())


def resolve_ref(ref: str | None, base: str | os.PathLike) -> Path | None:
    """The inverse of :func:`relative_ref`: a recorded path resolved against the folder that records it."""
    if not ref:
        return None
    p = Path(ref)
    return p if p.is_absolute() else (Path(base) / p)


def freeze(module: nn.Module | None) -> None:
    """No gradients, eval mode — for the frozen gallery model and classifier."""
    if module is None:
        return
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
