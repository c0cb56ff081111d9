"""hetsearch.sdk — the on-device runtime and gallery client. Imports neither torch nor faiss.

    from hetsearch.sdk import QueryModel, GalleryClient, Hit

Names are imported on first use, so ``QueryModel`` alone does not load gRPC and ``GalleryClient`` alone does
not load the model runtimes.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "QueryModel": "hetsearch.sdk.model",
    "ImageError": "hetsearch.sdk.model",
    "BackendUnavailable": "hetsearch.sdk.model",
    "GalleryClient": "hetsearch.sdk.client",
    "Hit": "hetsearch.hit",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hetsearch.sdk' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
