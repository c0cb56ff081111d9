"""Datasets: Fashion-MNIST (Debian's dataset-fashion-mnist), ImageFolder trees and .npz files.

Every source is loaded into an :class:`ImageSet` — uint8 images and int labels
in memory — and converted to a model's fixed input size and channel count with
:meth:`ImageSet.as_model_input`. Splits are deterministic under a seed and
stratified by class.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from hetsearch.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class ImageSet:
    """Images (a uint8 array N×H×W×C, or a list of such arrays of varying size) and labels."""

    images: np.ndarray | list
    labels: np.ndarray
    classes: list[str]
    source: str
    names: list[str] | None = None  # file names (ImageFolder) or None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: Sequence[int] | np.ndarray, tag: str = "subset") -> "ImageSet":
        index = np.asarray(index, dtype=np.int64)
        if isinstance(self.images, np.ndarray):
            images = self.images[index]
        else:
            images = [self.images[i] for i in index]
        names = [self.names[i] for i in index] if self.names is not None else None
        return ImageSet(images, self.labels[index], self.classes, f"{self.source}[{tag}]", names)

    def metadata(self, i: int) -> str:
        """A short description of item i: its file name, or its class name."""
        label = self.classes[int(self.labels[i])]
        if self.names is not None:
            return f"{self.names[i]} ({label})"
        return f"{self.source}#{i} ({label})"

    def as_model_input(self, height: int, width: int, channels: int) -> np.ndarray:
        """uint8 array N×C×H×W at the model's size and channel count (cached)."""
        key = (height, width, channels)
        if key not in self._cache:
            self._cache[key] = convert_images(self.images, height, width, channels)
        return self._cache[key]


def convert_images(images, height: int, width: int, channels: int) -> np.ndarray:
    """Colour conversion and resize, exactly as the SDK does on the device (one torch-free module,
    :func:`hetsearch.sdk.image.to_pixels`: ITU-R 601 luma for grayscale, PIL bilinear); returns uint8 N×C×H×W.
    Training, evaluation and the export checks all see what a deployed model is fed."""
    from hetsearch.sdk.image import to_pixels

    n = len(images)
    out = np.empty((n, channels, height, width), dtype=np.uint8)
    uniform = isinstance(images, np.ndarray)
    if uniform and images.shape[1:3] == (height, width) and images.shape[3] == channels:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    color = "grayscale" if channels == 1 else "rgb"
    for i in range(n):
        px = to_pixels(np.asarray(images[i]), f"image #{i}", color, height, width)
        out[i] = px[None] if px.ndim == 2 else px.transpose(2, 0, 1)
    return out


# ----------------------------------------------------------------------------- sources


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(data) < 4:
        raise DataError(f"{path} is too short to be an idx file")
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {body.size} bytes")
    return body.reshape(dims)


def fashion_mnist_dir(data_dir: str | None = None) -> Path:
    return Path(data_dir or os.environ.get("HETSEARCH_FASHION_MNIST") or FASHION_MNIST_DIR)


def load_fashion_mnist(split: str = "train", data_dir: str | None = None) -> ImageSet:
    root = fashion_mnist_dir(data_dir)
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"fashion-mnist has splits 'train' and 'test', not {split!r}")
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    lab_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (img_path, lab_path):
        if not p.exists():
            raise DataError(
                f"Fashion-MNIST file {p} not found; install it with `apt-get install dataset-fashion-mnist` "
                "or pass --data-dir DIR holding the four idx .gz files"
            )
    images = _read_idx(img_path)
    labels = _read_idx(lab_path).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path} has {images.shape[0]} images but {lab_path} has {labels.shape[0]} labels")
    return ImageSet(images[..., None], labels, list(FASHION_MNIST_CLASSES), f"fashion-mnist:{split}")


def load_npz(path: str | Path) -> ImageSet:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            for key in ("images", "labels"):
                if key not in keys:
                    raise DataError(f"{path}: missing key {key!r} (has {sorted(keys)}); expected 'images' and 'labels'")
            images, labels = z["images"], z["labels"]
            classes = [str(c) for c in z["classes"]] if "classes" in keys else None
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError …
        raise DataError(f"cannot read {path} as .npz: {exc}") from exc
    if images.dtype != np.uint8:
        raise DataError(f"{path}: key 'images' must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise DataError(f"{path}: key 'images' must be N×H×W or N×H×W×C with C in (1, 3), got shape {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: key 'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{path}: {images.shape[0]} images but {labels.shape[0]} labels")
    if len(labels) == 0:
        raise DataError(f"{path}: holds no images")
    if labels.min() < 0:
        raise DataError(f"{path}: key 'labels' has negative values")
    labels = labels.astype(np.int64)
    n_classes = int(labels.max()) + 1
    if classes is None or len(classes) != n_classes:
        classes = [str(i) for i in range(n_classes)]
    return ImageSet(np.ascontiguousarray(images), labels, classes, f"npz:{path.name}")


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as uint8 H×W×C (C = 1 for grayscale, 3 otherwise)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("L", "I;16", "I", "F", "1", "LA"):
                arr = np.asarray(im.convert("L"))[..., None]
            else:
                arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return arr


def load_image_folder(root: str | Path) -> ImageSet:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root} has no class subfolders; expected ImageFolder layout ROOT/CLASS/IMAGE.png")
    images, labels, names = [], [], []
    for label, d in enumerate(class_dirs):
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {d} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for f in files:
            images.append(read_image(f))
            labels.append(label)
            names.append(f"{d.name}/{f.name}")
    channels = 3 if any(im.shape[2] == 3 for im in images) else 1
    if channels == 3:
        images = [np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im for im in images]
    shapes = {im.shape for im in images}
    stacked = np.stack(images) if len(shapes) == 1 else images
    return ImageSet(stacked, np.asarray(labels, dtype=np.int64), [d.name for d in class_dirs], f"folder:{root.name}", names)


def load_data(data: str, split: str | None = None, data_dir: str | None = None) -> ImageSet:
    """Load ``--data``: ``fashion-mnist``, an ImageFolder directory or an ``.npz`` file.

    ``split`` applies to fashion-mnist only ("train" or "test"); folders and .npz are used whole.
    """
    if data in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return load_fashion_mnist(split or "train", data_dir)
    p = Path(data)
    if not p.exists():
        raise DataError(f"--data {data!r}: no such file or folder (use 'fashion-mnist', a folder or an .npz)")
    if p.is_dir():
        return load_image_folder(p)
    if p.suffix.lower() == ".npz":
        return load_npz(p)
    raise DataError(f"--data {data!r}: expected 'fashion-mnist', an ImageFolder directory or an .npz file")


# ----------------------------------------------------------------------------- splits


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held) with ``fraction`` of every class held out; deterministic under seed."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must be in (0, 1)")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        if len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        held.append(idx[:k])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[held] = False
    return np.flatnonzero(mask), held


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A deterministic, class-balanced sample of ``n`` indices (all of them when n >= len)."""
    if n >= len(labels):
        return np.arange(len(labels))
    _, held = stratified_split(labels, n / len(labels), seed)
    return held


VAL_MODES = ("auto", "stratified", "classes")


def class_holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held) holding out whole classes: about ``fraction`` of the classes (at least two of those
    with two or more images), all of their images. Deterministic under seed."""
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    eligible = classes[counts >= 2]
    if len(eligible) < 2:
        raise DataError("cannot hold out validation classes: fewer than two classes have two or more images")
    k = min(len(eligible), len(classes) - 1, max(2, int(round(fraction * len(classes)))))
    if k < 2:
        raise DataError("cannot hold out validation classes and keep one for training: too few classes")
    held_classes = rng.choice(eligible, size=k, replace=False)
    mask = np.isin(labels, held_classes)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def choose_val_mode(labels: np.ndarray, fraction: float) -> str:
    """``stratified`` when a stratified split leaves most classes at least two validation images (so leave-one-out
    R@1 measures something); otherwise ``classes`` (many small classes: hold out whole classes)."""
    _, counts = np.unique(labels, return_counts=True)
    per_class = np.round(counts * fraction)
    return "stratified" if np.median(per_class) >= 2 else "classes"


def train_val_split(ds: ImageSet, val_fraction: float = 0.1, seed: int = 0,
                    max_train_samples: int | None = None, max_val_samples: int | None = None,
                    mode: str = "auto") -> tuple[ImageSet, ImageSet]:
    """Carve a validation split (model selection only) from training data.

    ``stratified``: ``val_fraction`` of every class (validation queries search their class-mates within the
    validation split). ``classes``: whole classes held out (for many classes with few images each, where a
    stratified split would leave one image per class and R@1 could measure nothing). ``auto`` picks between them
    (:func:`choose_val_mode`); the chosen mode is in the validation set's ``source``."""
    if mode not in VAL_MODES:
        raise DataError(f"unknown validation mode {mode!r}; use one of {', '.join(VAL_MODES)}")
    if mode == "auto":
        mode = choose_val_mode(ds.labels, val_fraction)
    if mode == "classes":
        train_idx, val_idx = class_holdout_split(ds.labels, val_fraction, seed)
    else:
        train_idx, val_idx = stratified_split(ds.labels, val_fraction, seed)
    if max_train_samples:
        train_idx = train_idx[stratified_sample(ds.labels[train_idx], max_train_samples, seed + 1)]
    if max_val_samples:
        val_idx = val_idx[stratified_sample(ds.labels[val_idx], max_val_samples, seed + 2)]
    return ds.subset(train_idx, "train"), ds.subset(val_idx, f"val:{mode}")


# ----------------------------------------------------------------------------- open-set protocol


def parse_class_list(text: str | None, data: ImageSet) -> list[int]:
    """'7,8,9' or 'Sneaker,Bag' (class indices or names of ``data``) -> sorted class indices."""
    if not text:
        return []
    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        if item.lstrip("-").isdigit():
            c = int(item)
            if not 0 <= c < data.num_classes:
                raise DataError(f"--open-set-classes: class {c} is out of range (the data has classes 0.."
                                f"{data.num_classes - 1})")
        elif item in data.classes:
            c = data.classes.index(item)
        else:
            raise DataError(f"--open-set-classes: {item!r} is neither a class index nor a class name of {data.source} "
                            f"({', '.join(data.classes[:12])}{', ...' if data.num_classes > 12 else ''})")
        out.append(c)
    out = sorted(set(out))
    if len(out) >= data.num_classes:
        raise DataError("--open-set-classes holds out every class: nothing would be left to train on")
    return out


def open_set(data: ImageSet, held_out: list[int], role: str) -> ImageSet:
    """The open-set protocol: the ``held_out`` classes never appear in training or validation data
    (``role="train"``: they are removed and the remaining classes renumbered 0..K-1, in order) and form the
    evaluation set alone (``role="eval"``: only they are kept, with their original names)."""
    if not held_out:
        return data
    if role not in ("train", "eval"):
        raise ValueError("role must be 'train' or 'eval'")
    held = np.isin(data.labels, held_out)
    if role == "eval":
        keep = np.flatnonzero(held)
        if len(keep) < 2:
            raise DataError(f"the open-set evaluation classes {held_out} hold {len(keep)} images in {data.source}")
        sub = data.subset(keep, "open-set-eval")
        return sub
    keep = np.flatnonzero(~held)
    sub = data.subset(keep, "open-set-train")
    remaining = [c for c in range(data.num_classes) if c not in held_out]
    remap = np.full(data.num_classes, -1, np.int64)
    remap[remaining] = np.arange(len(remaining))
    return ImageSet(sub.images, remap[sub.labels], [data.classes[c] for c in remaining], sub.source, sub.names)
