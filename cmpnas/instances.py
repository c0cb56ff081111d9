"""An instance-retrieval set built from real images: many "products" with a few photos each, in RGB.

Real catalogues hold many products with a handful of photos each, not ten classes with thousands of images.
This builds such a set from images you have: each of ``instances`` distinct source images becomes one product
(its own class), optionally colourised (a random colour per product, so the set is RGB and colour matters), and
gets ``views`` photos — random rotation, scale, shift, horizontal flip, brightness and contrast, as a phone
camera would give. The result is an ``.npz`` that every ``--data`` flag reads::

    python -m hetsearch.cmpnas.instances --out instances.npz --instances 550 --views 8 --size 32
    hetsearch train gallery --data instances.npz --channels 3 --input-size 32 --out runs/g-inst
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hetsearch.errors import DataError

from .data import ImageSet, load_data


def _view(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image, ImageEnhance

    pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
    scale = rng.uniform(0.85, 1.15)
    pil = pil.resize((max(4, round(pil.width * scale)), max(4, round(pil.height * scale))), Image.BILINEAR)
    pil = pil.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, expand=False)
    canvas = Image.new(pil.mode, (size, size))
    off = (size - pil.width) // 2 + int(rng.integers(-3, 4)), (size - pil.height) // 2 + int(rng.integers(-3, 4))
    canvas.paste(pil, off)
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.FLIP_LEFT_RIGHT)
    canvas = ImageEnhance.Brightness(canvas).enhance(rng.uniform(0.75, 1.25))
    canvas = ImageEnhance.Contrast(canvas).enhance(rng.uniform(0.75, 1.25))
    out = np.asarray(canvas)
    return out[..., None] if out.ndim == 2 else out


def make_instance_set(source: ImageSet, instances: int, views: int, *, size: int = 32, rgb: bool = True,
                      seed: int = 0) -> ImageSet:
    """``instances`` products x ``views`` photos each (labels: the product), from distinct source images."""
    if instances < 2 or views < 1:
        raise DataError("an instance set needs at least 2 instances and 1 view each")
    if instances > len(source):
        raise DataError(f"{instances} instances asked for, but the source has {len(source)} images")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(source), size=instances, replace=False)
    imgs, labels, classes = [], [], []
    for k, i in enumerate(picks):
        base = np.asarray(source.images[i])
        if rgb:
            gray = base.mean(axis=2, keepdims=True) / 255.0 if base.shape[2] == 3 else base / 255.0
            colour = rng.uniform(0.25, 1.0, size=3)
            backdrop = rng.uniform(0.0, 0.25, size=3)
            base = np.clip(255 * (backdrop + gray * (colour - backdrop)), 0, 255).astype(np.uint8)
        for _ in range(views):
            imgs.append(_view(base, rng, size))
            labels.append(k)
        classes.append(f"{source.classes[int(source.labels[i])]}#{int(i)}")
    return ImageSet(np.stack(imgs), np.asarray(labels, np.int64), classes,
                    f"instances({instances}x{views} from {source.source})")


def save_npz(data: ImageSet, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(p, images=data.images, labels=data.labels, classes=np.asarray(data.classes))
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hetsearch.cmpnas.instances", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", required=True, help=".npz to write")
    ap.add_argument("--data", default="fashion-mnist", help="source images (any --data)")
    ap.add_argument("--split", default="train", help="Fashion-MNIST split of the source")
    ap.add_argument("--instances", type=int, default=550)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--gray", action="store_true", help="keep grayscale (default: colourise, RGB)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        src = load_data(args.data, args.split)
        data = make_instance_set(src, args.instances, args.views, size=args.size, rgb=not args.gray, seed=args.seed)
    except DataError as exc:
        print(f"instances: error: {exc}")
        return 2
    p = save_npz(data, args.out)
    print(f"wrote {p}: {args.instances} instances x {args.views} views = {len(data)} images, "
          f"{data.images.shape[1]}x{data.images.shape[2]}x{data.images.shape[3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
