"""One search result, the same whether it comes from the gallery server (``GalleryClient``) or from a data
directory opened without a server (``open_offline``). Imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hit:
    id: int
    score: float  # cosine / inner product (higher is closer) or squared L2 distance (lower is closer)
    metadata: str = ""
