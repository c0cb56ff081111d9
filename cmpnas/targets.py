"""Gallery targets computed once: what the frozen gallery side gives training, cached on disk.

Training a query model (or a supernet, or a finetune) against a frozen gallery model needs the gallery's
embedding of every training view, and the gallery's forward pass costs several times a compact model's
forward + backward. It never changes, so it is computed once for a fixed set of views of each training image
and reused by every run:

* **Views.** Each training image gets ``views`` fixed views: the image itself, its horizontal flip, and
  ``views - 2`` random shift/flip views (shifts up to ``pad`` pixels, zero fill — the same transform as the
  live augmentation), drawn once from ``seed``. A view is three small integers (flip, dy, dx).
* **Cache.** The gallery embeddings of all views of all training images, stored under a key made of the
  gallery's space id, a digest of the exact training pixels (so the data, its split, the subset and the input
  size are all part of it) and the view settings; the gallery embeddings of the whole validation split in an
  entry of their own (``val-<key>.npy``, keyed by the validation pixels), which the search reuses. A changed key builds a new entry (with a progress bar); an unchanged one loads in a moment.
* **Use.** Each step samples one cached view per image, builds that view of the image for the query model and
  takes the gallery's embedding of the same view from the cache.

BCT needs no gallery embeddings (only the frozen classifier applied to the query embedding); the ``l2`` and
``contrastive`` terms and every validation against the gallery do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hetsearch.errors import DataError

from .embed import embed

log = logging.getLogger("hetsearch.targets")

CACHE_FORMAT = 2  # 2: validation embeddings live in their own entry (val-<key>.npy)
ENV_CACHE = "HETSEARCH_TARGETS_CACHE"


@dataclass(frozen=True)
class ViewSpec:
    """The fixed views of every training image: identity, flip, then ``views - 2`` random shift/flip views."""

    views: int = 6
    pad: int = 2
    seed: int = 0

    def validate(self) -> None:
        if self.views < 1:
            raise DataError(f"--target-views must be >= 1, got {self.views}")
        if self.pad < 0:
            raise DataError(f"view shift pad must be >= 0, got {self.pad}")


def view_params(n: int, spec: ViewSpec) -> np.ndarray:
    """int16 [n, views, 3]: (flip, dy, dx) per view; dy = dx = pad means no shift."""
    spec.validate()
    p = spec.pad
    out = np.zeros((n, spec.views, 3), np.int16)
    out[:, :, 1:] = p
    if spec.views > 1:
        out[:, 1, 0] = 1
    if spec.views > 2:
        rng = np.random.default_rng(spec.seed + 104729)
        k = spec.views - 2
        out[:, 2:, 0] = rng.integers(0, 2, (n, k))
        out[:, 2:, 1] = rng.integers(0, 2 * p + 1, (n, k))
        out[:, 2:, 2] = rng.integers(0, 2 * p + 1, (n, k))
    return out


def apply_views(x: torch.Tensor, params: torch.Tensor, pad: int) -> torch.Tensor:
    """Per image: optional horizontal flip, then a shift read from a ``pad``-padded copy (zero fill).

    ``x`` float N×C×H×W, ``params`` int N×3 (flip, dy, dx) with dy, dx in [0, 2·pad]."""
    n, c, h, w = x.shape
    params = params.long()
    flip = params[:, 0].bool()
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if pad == 0:
        return x.contiguous()
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = params[:, 1, None] + torch.arange(h)[None, :]
    cols = params[:, 2, None] + torch.arange(w)[None, :]
    idx_n = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_view_params(n: int, gen: torch.Generator, pad: int) -> torch.Tensor:
    """Fresh random (flip, dy, dx) per image: the live augmentation."""
    flip = (torch.rand(n, generator=gen) < 0.5).long()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    return torch.stack([flip, dy, dx], dim=1)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


class GalleryTargets:
    """Cached gallery embeddings: ``train`` [N, V, D] for the views ``params`` [N, V, 3], ``val`` [M, D]."""

    def __init__(self, params: np.ndarray, train: np.ndarray, val: np.ndarray, spec: ViewSpec, key: str,
                 path: Path | None, built: bool, seconds: float):
        self.params = torch.from_numpy(params.astype(np.int64))
        self.train = torch.from_numpy(np.asarray(train, np.float32))
        self.val = np.asarray(val, np.float32)
        self.spec, self.key, self.path, self.built, self.seconds = spec, key, path, built, seconds

    def sample(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One cached view per image of ``idx``: (view params B×3, gallery embeddings B×D)."""
        v = torch.randint(0, self.spec.views, (len(idx),), generator=gen)
        return self.params[idx, v], self.train[idx, v]

    def describe(self) -> dict:
        return {"mode": "cached", "key": self.key, "views": self.spec.views, "pad": self.spec.pad,
                "path": str(self.path) if self.path else None, "built": self.built, "seconds": round(self.seconds, 1)}


def default_cache_dir(gallery_path: str | os.PathLike | None) -> Path:
    """``$HETSEARCH_TARGETS_CACHE``, else ``<gallery checkpoint>/targets`` when writable, else the user cache."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    if gallery_path is not None:
        d = Path(gallery_path)
        d = d if d.is_dir() else d.parent
        if os.access(d, os.W_OK):
            return d / "targets"
        log.warning("gallery checkpoint folder %s is not writable: caching its targets under the user cache", d)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hetsearch" / "targets"


def val_embeddings(gallery_model, space_id: str, x_val: np.ndarray, *, cache_dir=None, gallery_path=None) -> np.ndarray:
    """The gallery's embeddings of a validation split (uint8 N×C×H×W at its input size), cached like the targets."""
    key = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "space_id": space_id, "val": _digest(x_val)},
                                    sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cache_dir) if cache_dir else default_cache_dir(gallery_path)
    f = root / f"val-{key}.npy"
    if f.exists():
        try:
            v = np.load(f)
            if v.shape[0] == len(x_val):
                return v
        except (OSError, ValueError) as exc:
            log.warning("cached validation embeddings %s unreadable (%s): recomputing", f, exc)
    v = embed(gallery_model, x_val)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".val-{key}.{os.getpid()}.npy"
        np.save(tmp, v)
        os.replace(tmp, f)
    except OSError as exc:
        log.warning("could not cache validation embeddings under %s: %s", root, exc)
    return v


@torch.no_grad()
def _embed_views(model, x: np.ndarray, params: np.ndarray, pad: int, batch_size: int, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    n, V = params.shape[:2]
    out = np.empty((n, V, int(model.embed_dim)), np.float32)
    model.eval()
    bar = tqdm(total=n * V, desc="gallery targets (once)", unit="img", disable=not progress, leave=False)
    for v in range(V):
        for i in range(0, n, batch_size):
            xb = torch.from_numpy(np.array(x[i : i + batch_size], dtype=np.float32))
            xb = apply_views(xb, torch.from_numpy(params[i : i + batch_size, v]), pad)
            out[i : i + len(xb), v] = model(xb).numpy()
            bar.update(len(xb))
    bar.close()
    return out


def load_or_build(gallery_model, space_id: str, x_train: np.ndarray, x_val: np.ndarray, spec: ViewSpec, *,
                  cache_dir: str | os.PathLike | None = None, gallery_path=None, progress: bool = True,
                  batch_size: int = 500, describe: dict | None = None) -> GalleryTargets:
    """The cached targets for these exact pixels and this gallery, building (and storing) them if needed.

    ``x_train``/``x_val`` are uint8 N×C×H×W at the gallery model's input size."""
    spec.validate()
    t0 = time.time()
    key_src = {"format": CACHE_FORMAT, "space_id": space_id, "train": _digest(x_train), "views": asdict(spec)}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cache_dir) if cache_dir else default_cache_dir(gallery_path)
    folder = root / key
    params = view_params(len(x_train), spec)
    val = val_embeddings(gallery_model, space_id, x_val, cache_dir=root)
    if (folder / "meta.json").exists():
        try:
            train = np.load(folder / "train.npy")
            if train.shape[:2] != params.shape[:2]:
                raise ValueError(f"shape {train.shape} does not fit {params.shape[0]} images x {spec.views} views")
            log.info("gallery targets: reusing %s", folder)
            return GalleryTargets(params, train, val, spec, key, folder, False, time.time() - t0)
        except (OSError, ValueError) as exc:
            log.warning("gallery targets cache %s is unreadable (%s): rebuilding it", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    if progress:
        print(f"gallery targets: embedding {len(x_train)} training images x {spec.views} views with the frozen "
              f"gallery model, once (cache {folder})", flush=True)
    train = _embed_views(gallery_model, x_train, params, spec.pad, batch_size, progress)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        np.save(tmp / "train.npy", train)
        (tmp / "meta.json").write_text(json.dumps({**key_src, "key": key, "train_images": len(x_train),
                                                   "embed_dim": int(train.shape[-1]),
                                                   "input_shape": list(x_train.shape[1:]),
                                                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                   **(describe or {})}, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        stored = folder
    except OSError as exc:
        log.warning("could not store gallery targets under %s (%s): using them for this run only", root, exc)
        print(f"warning: gallery targets not cached ({exc}); this run computed them in memory only", flush=True)
        stored = None
    return GalleryTargets(params, train, val, spec, key, stored, True, time.time() - t0)
