"""Parameter-level compatibility losses, behind a registry.

A loss is called once per batch with the query model's embeddings and what the frozen gallery side
provides. The gallery model and its classifier are frozen (no gradient, eval mode) by the trainer;
these losses only ever read them.

Terms (each weighted):

* ``own``         — cross-entropy of the query model's own cosine classifier.
* ``bct``         — cross-entropy of the *frozen gallery classifier* applied to the query embedding
                    (Backward-Compatible Training, Shen et al. CVPR 2020; weight λ = 1 by default).
* ``l2``          — regression to the frozen gallery embedding, ||φ_q(x) - φ_g(x)||² (Budnik & Avrithis).
* ``contrastive`` — InfoNCE of each query embedding against the batch's gallery embeddings:
                    the gallery embedding of the same image (and of same-class images) are positives,
                    the rest negatives.

Named presets combine them: ``independent`` (own), ``bct`` (own + bct), ``l2`` (l2),
``contrastive`` (contrastive), ``bct-l2`` (own + bct + l2, the default). Any combination can be
written ``own+bct+l2`` with ``--loss-weights bct=1,l2=10``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hetsearch.errors import ModelError

TERMS = ("own", "bct", "l2", "contrastive")
PRESETS = {
    "independent": ("own",),
    "bct": ("own", "bct"),
    "l2": ("l2",),
    "contrastive": ("contrastive",),
    "bct-l2": ("own", "bct", "l2"),
    "bct-contrastive": ("own", "bct", "contrastive"),
}
DEFAULT_COMPAT = "bct-l2"
DEFAULT_WEIGHTS = {"own": 1.0, "bct": 1.0, "l2": 30.0, "contrastive": 1.0}


@dataclass
class CompatLoss:
    """A weighted sum of terms. ``needs_gallery_head`` is true when ``bct`` is used."""

    terms: tuple[str, ...]
    weights: dict
    temperature: float = 0.05
    name: str = ""

    @property
    def needs_gallery(self) -> bool:
        return any(t in self.terms for t in ("bct", "l2", "contrastive"))

    @property
    def needs_gallery_head(self) -> bool:
        return "bct" in self.terms

    @property
    def needs_own_head(self) -> bool:
        return "own" in self.terms

    def __call__(self, q_emb, labels, *, own_head=None, gallery_head=None, g_emb=None) -> tuple[torch.Tensor, dict]:
        parts = {}
        if "own" in self.terms:
            parts["own"] = F.cross_entropy(own_head(q_emb, labels), labels)
        if "bct" in self.terms:
            parts["bct"] = F.cross_entropy(gallery_head(q_emb, labels), labels)
        if "l2" in self.terms:
            parts["l2"] = ((q_emb - g_emb) ** 2).sum(dim=1).mean()
        if "contrastive" in self.terms:
            logits = q_emb @ g_emb.t() / self.temperature
            pos = (labels[:, None] == labels[None, :]).float()
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            parts["contrastive"] = -((log_prob * pos).sum(1) / pos.sum(1)).mean()
        total = sum(self.weights.get(k, 1.0) * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}


def parse_weights(text: str | None) -> dict:
    """'bct=1,l2=10' -> {'bct': 1.0, 'l2': 10.0}"""
    out = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in TERMS:
            raise ModelError(f"unknown loss term {key!r} in --loss-weights; terms: {', '.join(TERMS)}")
        try:
            out[key] = float(value)
        except ValueError:
            raise ModelError(f"--loss-weights: {item!r} is not TERM=NUMBER") from None
    return out


def build_loss(compat: str = DEFAULT_COMPAT, weights: dict | str | None = None, *, lam: float | None = None,
               temperature: float = 0.05, gallery_has_head: bool = True) -> CompatLoss:
    """A compatibility loss by name (a preset or 'term+term'). ``lam`` is BCT's λ."""
    if compat in PRESETS:
        terms = PRESETS[compat]
    else:
        terms = tuple(t.strip() for t in compat.split("+") if t.strip())
        bad = [t for t in terms if t not in TERMS]
        if bad or not terms:
            raise ModelError(
                f"unknown --compat {compat!r}; use one of {', '.join(PRESETS)} or terms joined by '+' ({', '.join(TERMS)})"
            )
    w = dict(DEFAULT_WEIGHTS)
    w.update(parse_weights(weights) if isinstance(weights, str) else (weights or {}))
    if lam is not None:
        w["bct"] = float(lam)
    loss = CompatLoss(terms=terms, weights={k: w[k] for k in terms}, temperature=temperature, name=compat)
    if loss.needs_gallery_head and not gallery_has_head:
        raise ModelError(
            f"--compat {compat} needs the gallery model's classifier (the 'bct' term), but this gallery model "
            "has none; use l2 or contrastive, or import the gallery with --classifier"
        )
    return loss


def available() -> list[str]:
    return list(PRESETS)
