"""Logging for the command line: one format, the user's verbosity, third-party chatter kept out."""

from __future__ import annotations

import logging


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) in one format. faiss announces at INFO which CPU build it loads
    ("Could not load library with AVX512 support …"), which reads like a failure: only its warnings show.
    ``quiet`` keeps hetsearch's own INFO events (``event=gallery_loaded`` …) out too."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("faiss").setLevel(logging.WARNING)
    if quiet and not verbose:
        logging.getLogger("hetsearch").setLevel(logging.WARNING)
