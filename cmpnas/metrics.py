"""Retrieval and verification metrics on embeddings (numpy only).

Leave-one-out retrieval: every item is a query (embedded by the query model) searched by cosine
similarity against all *other* items (embedded by the gallery model).

* R@k — the fraction of queries whose top-k neighbours contain an item of the same class.
* mAP@R — for a query with R same-class items, precision at each relevant position within the top R,
  summed and divided by R (Musgrave et al., "A Metric Learning Reality Check", 2020).
* TAR@FAR — verification from cross-model genuine/impostor pair scores.
"""

from __future__ import annotations

import numpy as np


def _check(q: np.ndarray, g: np.ndarray, labels: np.ndarray) -> None:
    if q.ndim != 2 or g.ndim != 2:
        raise ValueError("embeddings must be 2-D arrays [N, dim]")
    if q.shape[0] != g.shape[0] or q.shape[0] != labels.shape[0]:
        raise ValueError(f"query {q.shape}, gallery {g.shape} and labels {labels.shape} must have the same N")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}: not the same embedding space")
    if not (np.isfinite(q).all() and np.isfinite(g).all()):
        raise ValueError("embeddings contain NaN or Inf")


def _prepare(query_emb, gallery_emb, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    g = np.ascontiguousarray(gallery_emb, dtype=np.float32)
    labels = np.asarray(labels)
    _check(q, g, labels)
    if q.shape[0] < 2:
        raise ValueError("leave-one-out retrieval needs at least 2 items")
    return q, g, labels


def retrieval_metrics(query_emb: np.ndarray, gallery_emb: np.ndarray, labels: np.ndarray,
                      ks=(1, 5), chunk: int = 1024) -> dict:
    """Leave-one-out R@k and mAP@R; query i is never matched with gallery item i itself."""
    q, g, labels = _prepare(query_emb, gallery_emb, labels)
    n = q.shape[0]
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r_per_query = counts[inv.reshape(-1)] - 1  # same-class items other than itself
    max_r = int(max(r_per_query.max(), max(ks)))
    max_r = min(max_r, n - 1)
    hits = {k: 0 for k in ks}
    ap_sum = 0.0
    ap_count = 0
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sims = q[start:stop] @ g.T
        rows = np.arange(stop - start)
        sims[rows, np.arange(start, stop)] = -np.inf  # leave one out
        top = np.argpartition(-sims, max_r - 1, axis=1)[:, :max_r] if max_r < n else np.argsort(-sims, axis=1)
        top_s = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        rel = labels[top] == labels[start:stop, None]
        for k in ks:
            hits[k] += int(rel[:, :k].any(axis=1).sum())
        r = r_per_query[start:stop]
        pos = np.arange(1, max_r + 1)
        prec = np.cumsum(rel, axis=1) / pos
        within = pos[None, :] <= r[:, None]
        ap = (prec * rel * within).sum(axis=1)
        valid = r > 0
        ap_sum += float((ap[valid] / r[valid]).sum())
        ap_count += int(valid.sum())
    out = {f"recall_at_{k}": 100.0 * hits[k] / n for k in ks}
    out["map_at_r"] = 100.0 * ap_sum / max(ap_count, 1)
    out["n_queries"] = int(n)
    return out


def recall_at_1(query_emb: np.ndarray, gallery_emb: np.ndarray, labels: np.ndarray, chunk: int = 2048) -> float:
    """Leave-one-out R@1 (%) alone — what validation and the search reward need, without mAP@R's sorting."""
    q, g, labels = _prepare(query_emb, gallery_emb, labels)
    n = q.shape[0]
    hits = 0
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sims = q[start:stop] @ g.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        hits += int((labels[sims.argmax(axis=1)] == labels[start:stop]).sum())
    return 100.0 * hits / n


def pair_scores(query_emb: np.ndarray, gallery_emb: np.ndarray, labels: np.ndarray,
                max_items: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Cross-model genuine and impostor scores over all pairs i != j of (a sample of) the items."""
    q = np.asarray(query_emb, np.float32)
    g = np.asarray(gallery_emb, np.float32)
    labels = np.asarray(labels)
    _check(q, g, labels)
    n = q.shape[0]
    idx = np.arange(n)
    if n > max_items:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_items, replace=False))
    s = q[idx] @ g[idx].T
    same = labels[idx][:, None] == labels[idx][None, :]
    off = ~np.eye(len(idx), dtype=bool)
    return s[same & off], s[~same], len(idx)


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, fars=(1e-2, 1e-3)) -> dict:
    """True-accept rate at the thresholds where the false-accept rate equals each FAR."""
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("need both genuine and impostor pairs")
    imp = np.sort(np.asarray(impostor))[::-1]
    out = {}
    for far in fars:
        k = int(np.floor(far * len(imp)))
        thr = imp[k] if k < len(imp) else imp[-1]  # accept scores strictly above thr
        out[f"tar_at_far_{far:g}"] = 100.0 * float((np.asarray(genuine) > thr).mean())
        out[f"threshold_at_far_{far:g}"] = float(thr)
    out["n_genuine"] = int(len(genuine))
    out["n_impostor"] = int(len(impostor))
    return out
