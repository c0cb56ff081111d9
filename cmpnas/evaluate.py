"""Evaluation: leave-one-out heterogeneous retrieval, compatibility matrices, verification."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from .checkpoint import Checkpoint, load_checkpoint
from .data import ImageSet
from .embed import embed
from .metrics import pair_scores, retrieval_metrics, tar_at_far

log = logging.getLogger("hetsearch.eval")


def _ck(x) -> Checkpoint:
    return x if isinstance(x, Checkpoint) else load_checkpoint(x)


def evaluate_pair(query, gallery, data: ImageSet, *, ks=(1, 5), verification: bool = True,
                  progress: bool = False, query_emb: np.ndarray | None = None,
                  gallery_emb: np.ndarray | None = None) -> dict:
    """Every item is a query embedded by ``query`` and searched against all others embedded by ``gallery``.

    With the same model on both sides this is homogeneous search (the paragon for the gallery model).
    """
    q, g = _ck(query), _ck(gallery)
    qe = query_emb if query_emb is not None else embed(q.model, data, progress="embed query" if progress else False)
    ge = gallery_emb if gallery_emb is not None else (
        qe if g is q else embed(g.model, data, progress="embed gallery" if progress else False))
    res = retrieval_metrics(qe, ge, data.labels, ks=ks)
    res.update({
        "query_model": q.name,
        "gallery_model": g.name,
        "query_mmacs": q.macs / 1e6,
        "gallery_mmacs": g.macs / 1e6,
        "cost_reduction": g.macs / max(q.macs, 1),
        "query_params": int(q.meta.get("params", 0)),
        "homogeneous": q is g or (q.path is not None and q.path == g.path),
        "query_space_id": q.space_id,
        "gallery_space_id": g.space_id,
        "same_space": q.space_id == g.space_id,
        "data": data.source,
    })
    if verification:
        gen, imp, n_items = pair_scores(qe, ge, data.labels)
        res["verification"] = {**tar_at_far(gen, imp, (1e-2, 1e-3)), "n_items": n_items}
    return res


def compatibility_matrix(models: Sequence, data: ImageSet, progress: bool = True) -> dict:
    """R@1 for every (query model, gallery model) pair, embedding each model once."""
    cks = [_ck(m) for m in models]
    names = [c.name for c in cks]
    if len(set(names)) != len(names):
        names = [f"{c.name}@{i}" for i, c in enumerate(cks)]
    embs = [embed(c.model, data, progress=f"embed {n}" if progress else False) for c, n in zip(cks, names)]
    r1 = np.zeros((len(cks), len(cks)))
    for i, qe in enumerate(embs):
        for j, ge in enumerate(embs):
            if qe.shape[1] != ge.shape[1]:
                r1[i, j] = np.nan
                continue
            r1[i, j] = retrieval_metrics(qe, ge, data.labels, ks=(1,))["recall_at_1"]
    return {
        "models": names,
        "mmacs": [c.macs / 1e6 for c in cks],
        "space_ids": [c.space_id for c in cks],
        "recall_at_1": r1.tolist(),
        "rows": "query model",
        "cols": "gallery model",
        "data": data.source,
        "n_queries": len(data),
    }


def plot_matrix(matrix: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r1 = np.array(matrix["recall_at_1"], dtype=float)
    names = matrix["models"]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 1.0 * len(names) + 2))
    im = ax.imshow(r1, cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("gallery model")
    ax.set_ylabel("query model")
    for i in range(len(names)):
        for j in range(len(names)):
            v = r1[i, j]
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.1f}", ha="center", va="center",
                    color="white" if v < 60 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, label="R@1 (%)")
    ax.set_title(f"Compatibility matrix, {matrix['data']}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
