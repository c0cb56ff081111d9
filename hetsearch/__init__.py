"""hetsearch: heterogeneous visual search.

A large *gallery model* embeds the gallery once on a server; a compact *query
model* runs on the device and embeds queries into the gallery model's space.

This root package holds only the shared contracts (embedding spaces, bundle
manifests, errors, reports) and the command line. It never imports torch or
faiss, so the on-device SDK (``hetsearch.sdk``) stays small.
"""

__version__ = "0.1.0"

from .errors import HetsearchError  # noqa: E402,F401
