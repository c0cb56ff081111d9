"""``hetsearch index``: embed gallery images with the gallery model and store them in a gallery.

Writes either straight into a data directory (no server running: ``store.open_offline``) or through a
running server (``GalleryClient.upsert``). Ids are the images' positions in the data; metadata is the
file name (ImageFolder) or the class name. ``ray_index`` embeds on a Ray cluster and writes through the
same server writer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("hetsearch.index")


def _index_of(existing: str | None, asked: str | None, name: str) -> str:
    """The index factory a run writes with: an existing gallery's own (asking for another one is an error:
    its vectors would silently stay in the old index), else the one asked for, else Flat."""
    from hetsearch.errors import HetsearchError

    if existing is None:
        return asked or "Flat"
    if asked and asked.strip() != existing:
        raise HetsearchError(f"gallery {name!r} already exists with index {existing!r}, not {asked!r}: pass --replace "
                             f"to rebuild it as {asked!r}, or leave out --index to add to it")
    return existing


def index_gallery(gallery_ckpt, data, *, out: str | Path | None = None, server: str | None = None,
                  name: str = "default", index_factory: str | None = None, token: str | None = None,
                  tls=None, batch_size: int = 1000, progress: bool = True, replace: bool = False,
                  ids=None, metadata=None) -> dict:
    """Embed ``data`` (an ImageSet) with the gallery checkpoint and upsert it into gallery ``name``.

    ``index_factory``: for a new gallery (default Flat); an existing one keeps its own index (asking for
    another is an error unless ``replace``). ``ids``/``metadata``: one per image (default: its position in
    ``data`` and ``data.metadata``)."""
    from tqdm.auto import tqdm

    from hetsearch.cmpnas.checkpoint import Checkpoint, load_checkpoint
    from hetsearch.cmpnas.embed import embed, model_input

    if (out is None) == (server is None):
        raise ValueError("give exactly one of out (a data directory) or server (an address)")
    ck = gallery_ckpt if isinstance(gallery_ckpt, Checkpoint) else load_checkpoint(gallery_ckpt, expect_kind="gallery")
    space = ck.space_id
    ids_all, meta = ids_and_metadata(data, ids, metadata)
    n = len(data)
    pixels = model_input(ck.model, data)  # converted to the model's size and channels once
    t0 = time.time()
    writer = _OfflineWriter(out, name, space, index_factory, replace) if out is not None else \
        _ServerWriter(server, name, space, index_factory, token, tls, replace)
    done = 0
    try:
        bar = tqdm(total=n, desc=f"indexing {name}", unit="img", disable=not progress)
        for start in range(0, n, batch_size):
            emb = embed(ck.model, pixels[start:start + batch_size])
            writer.upsert(ids_all[start:start + len(emb)], emb, meta[start:start + len(emb)])
            done += len(emb)
            bar.update(len(emb))
        bar.close()
        writer.finish()
    finally:
        writer.close()
    secs = time.time() - t0
    return {"gallery": name, "space_id": space, "engine": "in-process", "vectors": done, "seconds": round(secs, 2),
            "images_per_second": round(done / max(secs, 1e-9), 1), "index_factory": writer.factory,
            "target": str(out) if out is not None else server}


def ids_and_metadata(data, ids=None, metadata=None) -> tuple[np.ndarray, list[str]]:
    """One id (default: the position in ``data``) and one metadata string per image, checked."""
    n = len(data)
    ids_all = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if len(ids_all) != n:
        raise ValueError(f"{len(ids_all)} ids for {n} images")
    meta = list(metadata) if metadata is not None else [data.metadata(i) for i in range(n)]
    if len(meta) != n:
        raise ValueError(f"{len(meta)} metadata strings for {n} images")
    return ids_all, meta


class _OfflineWriter:
    def __init__(self, out, name, space, index_factory, replace):
        from .store import open_offline

        self.store = open_offline(out)
        self.name = name
        try:
            if replace and any(g.spec.name == name for g in self.store.list()):
                self.store.drop_gallery(name)
            existing = {g.spec.name: g.spec.index_factory for g in self.store.list()}.get(name)
            self.factory = _index_of(existing, index_factory, name)
            self.store.create_gallery(name, space, index_factory=self.factory, exist_ok=True)
        except BaseException:
            self.store.close()
            raise
        self.space = space

    def upsert(self, ids, emb, meta):
        self.store.upsert(self.name, ids, emb, meta, space_id=self.space)

    def finish(self):
        self.store.snapshot(self.name)

    def close(self):
        self.store.close()


class _ServerWriter:
    """Upserts through a running gallery server (the one write path of both engines: the server's space guard,
    auth and write-ahead log apply). Opening it reaches the server and checks or creates the gallery."""

    def __init__(self, server, name, space, index_factory, token, tls, replace):
        from hetsearch.errors import HetsearchError
        from hetsearch.sdk.client import GalleryClient, GalleryClientError, GalleryNotFoundError

        self.client = GalleryClient(server, token=token, tls=tls, timeout=60.0)
        self.name, self.space = name, space
        try:
            if replace:
                try:
                    self.client.drop(name)
                except GalleryNotFoundError:
                    pass
            existing = {g.name: g for g in self.client.list_galleries()}.get(name)
            if existing is not None and existing.space_id != space:
                # the server would refuse every upsert (FAILED_PRECONDITION); say so before any embedding is done
                raise HetsearchError(f"gallery {name!r} on {server} holds embedding space {existing.space_id!r}, "
                                     f"but this gallery model's space is {space!r}: index into another --name, or "
                                     f"pass --replace to rebuild {name!r} in this space")
            self.factory = _index_of(existing.index_factory if existing else None, index_factory, name)
            if existing is None:
                self.client.create_gallery(name, space, index_factory=self.factory)
        except GalleryClientError as exc:
            self.client.close()
            if exc.code == "UNAVAILABLE":
                raise HetsearchError(f"the gallery server at {server} is not reachable ({exc.details}); is "
                                     f"`hetsearch serve` running there?") from None
            raise
        except BaseException:
            self.client.close()
            raise

    def upsert(self, ids, emb, meta):
        self.client.upsert(ids.tolist(), emb, list(meta), gallery=self.name, space_id=self.space)

    def finish(self):
        self.client.snapshot(self.name)

    def close(self):
        self.client.close()
