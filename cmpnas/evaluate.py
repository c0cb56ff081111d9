"""Evaluation: leave-one-out heterogeneous retrieval, compatibility matrices, verification."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from hetsearch.errors import DataError, HetsearchError, ModelError

from .checkpoint import Checkpoint, load_checkpoint
from .data import ImageSet
from .embed import embed
from .metrics import pair_scores, retrieval_metrics, tar_at_far

log = logging.getLogger("hetsearch.eval")


FARS = (1e-2, 1e-3)


def _ck(x) -> Checkpoint:
    return x if isinstance(x, Checkpoint) else load_checkpoint(x)


def _need_two(data: ImageSet) -> None:
    """Leave-one-out needs a gallery left over for every query."""
    if len(data) < 2:
        raise DataError(f"{data.source} has {len(data)} image{'' if len(data) == 1 else 's'}; leave-one-out "
                        "retrieval needs at least 2 (every image is searched against all the others)")


def _check_embeddings(name: str, emb: np.ndarray, data: ImageSet) -> None:
    if not np.isfinite(emb).all():
        raise ModelError(f"model {name!r} produced NaN or Inf embeddings on {data.source}; the checkpoint is "
                         "broken (diverged training?)")


def _same_dim(q: Checkpoint, qe: np.ndarray, g: Checkpoint, ge: np.ndarray) -> None:
    if qe.shape[1] != ge.shape[1]:
        raise ModelError(f"query model {q.name!r} embeds into {qe.shape[1]} dimensions but gallery model "
                         f"{g.name!r} into {ge.shape[1]}: they do not share an embedding space, so one cannot "
                         "search the other")


def verification_metrics(query_emb: np.ndarray, gallery_emb: np.ndarray, labels: np.ndarray,
                         fars=FARS) -> dict:
    """TAR@FAR over cross-model pairs, or, when it cannot be computed, ``None`` values and the reason why.

    The reason (``not_computed``) is a sentence for people: the split has no genuine (same-class) pairs
    when every class has a single image, and no impostor (different-class) pairs with a single class.
    """
    gen, imp, n_items = pair_scores(query_emb, gallery_emb, labels)
    if len(gen) and len(imp):
        return {**tar_at_far(gen, imp, fars), "n_items": n_items}
    if not len(gen):
        why = "the evaluation split has no genuine (same-class) pairs: every class has a single image"
    else:
        why = "the evaluation split has no impostor (different-class) pairs: all its images are of one class"
    out: dict = {f"tar_at_far_{far:g}": None for far in fars}
    out.update({f"threshold_at_far_{far:g}": None for far in fars})
    out.update({"n_genuine": int(len(gen)), "n_impostor": int(len(imp)), "n_items": n_items, "not_computed": why})
    return out


def evaluate_pair(query, gallery, data: ImageSet, *, ks=(1, 5), verification: bool = True,
                  progress: bool = False, query_emb: np.ndarray | None = None,
                  gallery_emb: np.ndarray | None = None, baselines: bool = False) -> dict:
    """Every item is a query embedded by ``query`` and searched against all others embedded by ``gallery``.

    With the same model on both sides this is homogeneous search (the paragon for the gallery model).
    ``verification`` adds TAR@FAR under ``"verification"``; where the split makes it impossible (no
    same-class or no different-class pairs) its values are ``None`` and ``"not_computed"`` says why.
    ``baselines`` adds, for a heterogeneous pair, the homogeneous systems under ``"baselines"``: the query
    model on both sides (``"query_homogeneous"``) and the gallery model on both sides (``"paragon"``).
    Raises :class:`DataError` when ``data`` has fewer than 2 images.
    """
    _need_two(data)
    q, g = _ck(query), _ck(gallery)
    qe = query_emb if query_emb is not None else embed(q.model, data, progress="embed query" if progress else False)
    ge = gallery_emb if gallery_emb is not None else (
        qe if g is q else embed(g.model, data, progress="embed gallery" if progress else False))
    _check_embeddings(q.name, qe, data)
    if ge is not qe:
        _check_embeddings(g.name, ge, data)
    _same_dim(q, qe, g, ge)
    res = retrieval_metrics(qe, ge, data.labels, ks=ks)
    _, counts = np.unique(data.labels, return_counts=True)
    res["n_queries_with_a_match"] = int(counts[counts > 1].sum())  # queries with a same-class gallery item
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
        res["verification"] = verification_metrics(qe, ge, data.labels)
    if baselines and not res["homogeneous"]:
        res["baselines"] = {
            "query_homogeneous": {"query_model": q.name, "gallery_model": q.name,
                                  **retrieval_metrics(qe, qe, data.labels, ks=ks)},
            "paragon": {"query_model": g.name, "gallery_model": g.name,
                        **retrieval_metrics(ge, ge, data.labels, ks=ks)},
        }
    return res


def compatibility_matrix(models: Sequence, data: ImageSet, progress: bool = True) -> dict:
    """R@1 for every (query model, gallery model) pair, embedding each model once.

    Pairs whose embedding dimensions differ cannot search each other: their R@1 is NaN.
    Raises :class:`DataError` when ``data`` has fewer than 2 images.
    """
    _need_two(data)
    cks = [_ck(m) for m in models]
    names = [c.name for c in cks]
    if len(set(names)) != len(names):
        names = [f"{c.name}@{i}" for i, c in enumerate(cks)]
    embs = [embed(c.model, data, progress=f"embed {n}" if progress else False) for c, n in zip(cks, names)]
    for n, e in zip(names, embs):
        _check_embeddings(n, e, data)
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


def plot_formats() -> list[str]:
    """File extensions a plot can be written as (matplotlib's Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return sorted(FigureCanvasAgg.get_supported_filetypes())


def check_output_path(flag: str, path: str | os.PathLike, example: str) -> Path:
    """Refuse, before any work is done, an output file that cannot be written.

    ``path`` must not be a folder, and its folder must exist or be creatable (its nearest existing
    ancestor a writable folder). Messages name the flag and the path; ``example`` is a file name to suggest.
    """
    p = Path(path)
    parent = anc = p.parent
    try:
        if p.is_dir():
            raise HetsearchError(f"{flag} {path} is a folder; give a file name, e.g. {flag} {p / example}")
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        anc_is_dir = anc.is_dir()
    except OSError as exc:
        raise HetsearchError(f"{flag} {path}: cannot check the folder {parent}: {exc.strerror or exc}") from exc
    if not anc_is_dir:
        raise HetsearchError(f"{flag} {path}: cannot create the folder {parent}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        if anc == parent:
            raise HetsearchError(f"{flag} {path}: the folder {parent} is not writable")
        raise HetsearchError(f"{flag} {path}: cannot create the folder {parent}: {anc} is not writable")
    return p


def _save_figure(fig, path: str | os.PathLike, **kw) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the format comes from the suffix; without one, a PNG at exactly this path (not path + ".png")
        fig.savefig(path, dpi=120, format=path.suffix[1:].lower() or "png", **kw)
    finally:
        plt.close(fig)
    return path


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
    return _save_figure(fig, path)


PAIR_METRICS = (("recall_at_1", "R@1"), ("recall_at_5", "R@5"), ("map_at_r", "mAP@R"))


def plot_pair(result: dict, path: str | Path) -> Path:
    """Bar chart of R@1, R@5 and mAP@R for one (query model, gallery model) pair of :func:`evaluate_pair`.

    A heterogeneous pair evaluated with ``baselines=True`` is drawn next to its homogeneous baselines:
    the query model on both sides and the paragon (the gallery model on both sides).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [(k, label) for k, label in PAIR_METRICS if k in result]
    q, g = result["query_model"], result["gallery_model"]
    kind = "homogeneous" if result.get("homogeneous") else "heterogeneous"
    systems = [(f"{q} \u2192 {g} ({kind})", result)]
    base = result.get("baselines") or {}
    if "query_homogeneous" in base:
        systems.append((f"{q} \u2192 {q} (query model alone)", base["query_homogeneous"]))
    if "paragon" in base:
        systems.append((f"{g} \u2192 {g} (paragon)", base["paragon"]))
    x = np.arange(len(metrics))
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, r) in enumerate(systems):
        vals = [float(r.get(k, np.nan)) for k, _ in metrics]
        bars = ax.bar(x + (i - (len(systems) - 1) / 2) * width, vals, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(x, [label for _, label in metrics])
    ax.set_ylim(0, 108)
    ax.set_ylabel("%")
    ax.set_title(f"Leave-one-out retrieval (query \u2192 gallery), {result['data']}, "
                 f"{result['n_queries']} queries", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=1, frameon=False)
    fig.tight_layout()
    return _save_figure(fig, path, bbox_inches="tight")
