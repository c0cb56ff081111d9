"""Small, fast gallery/query model pairs for tests, benchmarks and demos of the export toolchain.

The full trainer lives in :mod:`hetsearch.cmpnas.train`; this module only needs *a* gallery model
that defines an embedding space and *a* query model compatible with it, trained in seconds on a
few thousand images, so that parity and the compatibility gate have something meaningful to measure.

* :func:`train_gallery` — a model (``resnet-tiny`` by default) trained with a cosine classifier.
* :func:`train_query` — a query model trained by L2 regression to a frozen gallery model's
  embeddings (the ``l2`` compatibility loss), so it lives in that gallery's space.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hetsearch.cmpnas.checkpoint import freeze, load_checkpoint, save_checkpoint
from hetsearch.cmpnas.models import build_head, build_model


def _batches(n: int, batch: int, steps: int, seed: int):
    rng = np.random.default_rng(seed)
    order = np.zeros(0, np.int64)
    for _ in range(steps):
        if len(order) < batch:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch], order[batch:]
        yield idx


def train_gallery(x: np.ndarray, labels: np.ndarray, out_dir: str | os.PathLike, *, arch: str | dict = "resnet-tiny",
                  steps: int = 80, batch: int = 128, lr: float = 3e-3, seed: int = 0, num_classes: int | None = None):
    """Train a gallery model with a cosine-classifier loss on uint8 N×C×H×W images; save and load it."""
    torch.manual_seed(seed)
    model = build_model(arch)
    num_classes = int(num_classes or labels.max() + 1)
    head = build_head({"embed_dim": model.embed_dim, "num_classes": num_classes, "scale": 16.0})
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=lr)
    xt = torch.from_numpy(np.ascontiguousarray(x)).float()
    yt = torch.from_numpy(np.asarray(labels, np.int64))
    model.train()
    for idx in _batches(len(x), batch, steps, seed):
        loss = F.cross_entropy(head(model(xt[idx])), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    head.eval()
    save_checkpoint(out_dir, model, kind="gallery", head=head, train_config={"toy": True, "steps": steps, "seed": seed})
    return load_checkpoint(out_dir)


def train_query(x: np.ndarray, gallery_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                arch: str | dict = "mbv3-tiny", steps: int = 80, batch: int = 128, lr: float = 3e-3, seed: int = 0,
                space_id: str | None = None):
    """Train a query model to regress the frozen gallery model's embeddings (l2 compatibility loss).

    ``space_id`` overrides the recorded space (tests use it to build a deliberately mislabelled model).
    """
    gallery = load_checkpoint(gallery_dir, expect_kind="gallery")
    freeze(gallery.model)
    torch.manual_seed(seed)
    model = build_model(arch, embed_dim=gallery.model.embed_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt = torch.from_numpy(np.ascontiguousarray(x)).float()
    with torch.no_grad():
        target = torch.cat([gallery.model(xt[i : i + 512]) for i in range(0, len(xt), 512)])
    model.train()
    for idx in _batches(len(x), batch, steps, seed + 1):
        loss = ((model(xt[idx]) - target[idx]) ** 2).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_checkpoint(out_dir, model, kind="query", space_id=space_id or gallery.space_id,
                    train_config={"toy": True, "compat": "l2", "steps": steps, "seed": seed,
                                  "gallery": Path(gallery_dir).name})
    return load_checkpoint(out_dir)
