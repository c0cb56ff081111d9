"""Embedding spaces.

An embedding space is named by the gallery model that defines it. Its id is
derived from the model's *content*: a digest of its weights, the embedding
dimension and whether embeddings are L2-normalised. Retraining the gallery
model therefore creates a new space, and a query model trained against the old
one is refused by the gallery server.
"""

from __future__ import annotations

import hashlib
import re

from .errors import shown

SPACE_ID_RE = re.compile(r"sp1-d(?P<dim>[0-9]+)-(?P<norm>[nu])-(?P<digest>[0-9a-f]{20})")  # fullmatch only


def space_id_from_digest(weights_sha256: str, dim: int, normalized: bool = True) -> str:
    """Space id from the hex sha256 of the gallery model's weights.

    Format: ``sp1-d<dim>-<n|u>-<20 hex>``; ``n`` means L2-normalised embeddings.
    """
    if not re.fullmatch(r"[0-9a-f]{64}", weights_sha256 or ""):
        raise ValueError("weights_sha256 must be 64 lowercase hex characters")
    if int(dim) <= 0:
        raise ValueError(f"embedding dim must be positive, got {dim}")
    norm = "n" if normalized else "u"
    h = hashlib.sha256(f"{weights_sha256}|dim={int(dim)}|norm={norm}".encode()).hexdigest()
    return f"sp1-d{int(dim)}-{norm}-{h[:20]}"


def parse_space_id(space_id: str) -> dict:
    """Split a space id into ``dim``, ``normalized`` and ``digest``; ValueError if malformed."""
    m = SPACE_ID_RE.fullmatch(space_id or "")
    if not m:
        raise ValueError(f"not a hetsearch space id: {shown(space_id)} (expected sp1-d<dim>-<n|u>-<20 hex>)")
    return {"dim": int(m["dim"]), "normalized": m["norm"] == "n", "digest": m["digest"]}


def is_space_id(value: str) -> bool:
    return bool(SPACE_ID_RE.fullmatch(value or ""))
