"""Image decoding and the manifest's preprocessing rules, without torch.

Accepted images: a file path (``str`` / ``Path``), encoded bytes, a PIL image, or
a numpy array — ``H×W`` grayscale, ``H×W×C`` with C in 1, 3, 4, or an
``N×H×W×C`` batch. Arrays should be ``uint8``; other integer arrays must lie in
0..255. Float arrays are pixel values in 0..255 (rounded) — unless ``float_range="0-1"`` says they are scaled to
0..1; a float array whose values all lie in 0..1 (not all zero) is refused without ``float_range``, because it
is almost certainly a 0..1 image that read as 0..255 would be a black one.

The rules applied (from ``manifest["input"]``): convert to the colour mode
(``grayscale`` uses ITU-R 601-2 luma as PIL does, ``rgb`` drops alpha), resize to
``height × width`` with PIL's bilinear filter (as torchvision's ``Resize`` does on
PIL images) when the size differs, map pixels 0..255 linearly to
``value_range``, then lay out as CHW or HWC float32. Normalisation lives inside
the model graph.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hetsearch.errors import DataError, MissingDependency

_SINGLE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview)


class ImageError(DataError):
    """An image is missing, unreadable, or of a type or shape the SDK does not take."""


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:  # pragma: no cover - pillow is part of [sdk]
        raise MissingDependency("PIL", "sdk", "reading images") from exc
    return Image, ImageOps


def _is_pil(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith("PIL.") and hasattr(obj, "convert") and hasattr(obj, "size")


def split_images(images: Any) -> list[tuple[str, Any]]:
    """One ``(label, image)`` per image: a single image, a list of them, or an N×H×W×C array."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [(f"image #{i} of the batch", images[i]) for i in range(images.shape[0])]
        return [("the image array", images)]
    if isinstance(images, _SINGLE_TYPES) or _is_pil(images):
        return [(_label(images, 0), images)]
    if isinstance(images, (list, tuple)):
        out: list[tuple[str, Any]] = []
        for i, item in enumerate(images):
            if isinstance(item, np.ndarray) and item.ndim == 4:
                out.extend((f"image #{len(out) + j}", item[j]) for j in range(item.shape[0]))
            else:
                out.append((_label(item, len(out)), item))
        return out
    if isinstance(images, Iterable) and not isinstance(images, dict):
        return split_images(list(images))
    raise ImageError(f"unsupported image type {type(images).__name__}; {_ACCEPTED}")


_ACCEPTED = ("pass a file path, encoded image bytes, a PIL image, or a numpy array "
             "(H×W grayscale, H×W×C with C in 1/3/4, or N×H×W×C), or a list of these")


def _label(item: Any, i: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return f"image #{i} ({type(item).__name__})"


FLOAT_RANGES = ("0-255", "0-1")


def _array_to_uint8(a: np.ndarray, label: str, float_range: str | None = None) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ImageError(f"{label}: integer pixel values must lie in 0..255 (got {a.min()}..{a.max()}); "
                             "pass uint8 images")
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if a.size and not np.isfinite(a).all():
            raise ImageError(f"{label}: the array contains NaN or infinite values")
        if float_range not in (None, *FLOAT_RANGES):
            raise ImageError(f"float_range must be one of {FLOAT_RANGES}, got {float_range!r}")
        top = 1.0 if float_range == "0-1" else 255.0
        if a.size and (a.min() < 0 or a.max() > top):
            raise ImageError(f"{label}: float pixel values must lie in 0..{top:g} (got {a.min():.3g}..{a.max():.3g})"
                             + ("" if float_range else "; pass float_range='0-1' for images scaled to 0..1"))
        if float_range is None and a.size and a.max() <= 1.0 and a.max() > 0:
            raise ImageError(f"{label}: float pixel values all lie in 0..1 ({a.min():.3g}..{a.max():.3g}): an image "
                             "scaled to 0..1? Pass float_range='0-1' (or '0-255' if they really are 0..255 values)")
        return np.round(a * (255.0 if float_range == "0-1" else 1.0)).astype(np.uint8)
    raise ImageError(f"{label}: unsupported array dtype {a.dtype}; pass uint8 pixels")


def _normalise_array(a: np.ndarray, label: str, float_range: str | None = None) -> np.ndarray:
    """An HW or HWC (C in 1, 3, 4) uint8 array."""
    if a.ndim == 3 and a.shape[2] not in (1, 3, 4):
        hint = " (it looks channels-first; pass H×W×C)" if a.shape[0] in (1, 3, 4) else ""
        raise ImageError(f"{label}: array of shape {a.shape} is not H×W×C with C in 1, 3 or 4{hint}")
    if a.ndim not in (2, 3):
        raise ImageError(f"{label}: array of shape {a.shape} is not an image; {_ACCEPTED}")
    if min(a.shape[:2]) == 0:
        raise ImageError(f"{label}: empty image of shape {a.shape}")
    a = _array_to_uint8(a, label, float_range)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return np.ascontiguousarray(a)


def _open_pil(item: Any, label: str):
    Image, ImageOps = _pil()
    if isinstance(item, (str, os.PathLike)):
        p = Path(item)
        if not p.exists():
            raise ImageError(f"image file {p} does not exist")
        if p.is_dir():
            raise ImageError(f"{p} is a directory, not an image file")
        source: Any = p
    else:
        source = io.BytesIO(bytes(item))
        if not source.getbuffer().nbytes:
            raise ImageError(f"{label}: empty bytes are not an image")
    try:
        img = Image.open(source)
        img.load()
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not a readable image (unknown or corrupt format)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{label}: cannot decode the image: {exc}") from exc
    if "exif" in img.info or img.format in ("TIFF", "MPO"):
        try:
            img = ImageOps.exif_transpose(img)  # camera photos: upright as the user saw them
        except Exception:  # malformed EXIF must not make a readable image unusable
            pass
    return img


def _pil_to_array(img: Any, color: str, label: str) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        a = np.asarray(img).astype(np.float32) / 257.0  # 16-bit to 8-bit scale
        return np.round(a).astype(np.uint8) if color == "grayscale" else np.stack([np.round(a).astype(np.uint8)] * 3, -1)
    if mode in ("I", "F"):
        raise ImageError(f"{label}: 32-bit {'float' if mode == 'F' else 'integer'} images are not supported; "
                         "convert to 8-bit first")
    target = "L" if color == "grayscale" else "RGB"
    if mode != target:
        img = img.convert(target)
    return np.asarray(img, dtype=np.uint8)


def to_pixels(item: Any, label: str, color: str, height: int, width: int,
              float_range: str | None = None) -> np.ndarray:
    """Decode one image and apply colour conversion and resize: HW (grayscale) or HWC (rgb) uint8."""
    if isinstance(item, np.ndarray):
        a = _normalise_array(item, label, float_range)
        channels = 1 if a.ndim == 2 else a.shape[2]
        if a.shape[:2] == (height, width) and ((color == "grayscale" and channels == 1)
                                               or (color == "rgb" and channels == 3)):
            return a  # already what the model takes: no conversion needed
        Image, _ = _pil()
        img = Image.fromarray(a, {1: "L", 3: "RGB", 4: "RGBA"}[channels])
    elif _is_pil(item):
        img = item
    elif isinstance(item, _SINGLE_TYPES):
        img = _open_pil(item, label)
    else:
        raise ImageError(f"{label}: unsupported image type {type(item).__name__}; {_ACCEPTED}")
    try:
        a = _pil_to_array(img, color, label)
    except ImageError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageError(f"{label}: cannot convert the image to {color}: {exc}") from exc
    if a.shape[:2] != (height, width):
        Image, _ = _pil()
        resized = Image.fromarray(a).resize((width, height), Image.Resampling.BILINEAR)
        a = np.asarray(resized, dtype=np.uint8)
    return a


def to_tensor(pixels: np.ndarray, layout: str, value_range: tuple[float, float], dtype=np.float32) -> np.ndarray:
    """uint8 HW / HWC pixels -> one model input (no batch axis) in ``layout`` and ``value_range``."""
    x = pixels.astype(np.float32)
    lo, hi = float(value_range[0]), float(value_range[1])
    if (lo, hi) != (0.0, 255.0):
        x = lo + x * ((hi - lo) / 255.0)
    if x.ndim == 2:
        x = x[None, :, :] if layout == "NCHW" else x[:, :, None]
    elif layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=dtype)
