"""Embedding images with a model, in batches, with a progress bar."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import ImageSet


def model_input(model, data) -> np.ndarray:
    """uint8 N×C×H×W at the model's input size from an ImageSet (or pass an array through)."""
    if isinstance(data, ImageSet):
        return data.as_model_input(model.input_size[0], model.input_size[1], model.in_channels)
    return np.asarray(data)


@torch.no_grad()
def embed(model, data, batch_size: int = 500, progress: bool | str = False) -> np.ndarray:
    """float32 [N, dim] embeddings; ``data`` is an ImageSet or a uint8/float N×C×H×W array."""
    x = model_input(model, data)
    was_training = model.training
    model.eval()
    out = []
    it = range(0, len(x), batch_size)
    if progress:
        it = tqdm(it, desc=progress if isinstance(progress, str) else "embedding", unit="batch", leave=False)
    try:
        for i in it:
            xb = torch.from_numpy(np.array(x[i : i + batch_size], dtype=np.float32))  # a writable copy
            out.append(model(xb).numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, model.embed_dim), np.float32)
    return np.concatenate(out).astype(np.float32)
