"""Galleries in Milvus: one collection per gallery, behind the same store interface as the faiss backend.

    store = MilvusStore("http://127.0.0.1:19530", token=None, timeout_s=10)
    store.open(); store.load_all()           # what ``hetsearch serve --backend milvus`` does

A gallery ``NAME`` is the collection ``hs_<NAME>`` ('_', '-' and '.' escaped as ``_u``, ``_h``, ``_d``, since
Milvus allows only letters, digits and '_'): ``id`` INT64 primary key (no auto id), ``vector``
FLOAT_VECTOR(dim), ``metadata`` VARCHAR(65535), consistency level Strong (a search sees every acknowledged
write; searches and counts also ask for Strong). The gallery's spec (space id, metric, index string, default
knobs) and a schema version live in the collection's properties (``hetsearch.*``); Milvus knows nothing of
embedding spaces, so the space guard is the same code as the faiss backend's (:mod:`.backend`).

Index strings map explicitly: ``Flat`` → FLAT, ``HNSW<M>`` → HNSW (M, efConstruction 40 like faiss),
``IVF<nlist>,Flat`` → IVF_FLAT; anything else is INVALID_ARGUMENT. After creating (and on loading) a gallery
the index Milvus reports is compared with what was asked: pymilvus 3.0.2 with Milvus Lite 3.2.2 drops the build
parameters (Lite reads them from a JSON ``params`` key that this pymilvus no longer sends), which is logged as a
WARNING and shown in the gallery's ``status_message``.

Scores are what the faiss backend returns: cosine similarity (vectors are normalised here first, as there),
inner product, or squared L2 distance. Milvus orders writes itself, so ``seq``, ``last_seq`` and the log
counters are 0; a snapshot is a Milvus flush (``compact`` also asks Milvus to compact, in the background).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import numpy as np

from hetsearch.errors import DataError
from hetsearch.space import parse_space_id

from .backend import (DEFAULT_EF_SEARCH, DEFAULT_NPROBE, READY, UNAVAILABLE, GalleryBase, GalleryInfo, GallerySpec,
                      SearchKnobs, StoreBase, check_name, new_spec, not_found, reuse_existing)
from .errors import (AlreadyExists, DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, StoreError,
                     Unavailable, shown)
from .logfmt import event

log = logging.getLogger("hetsearch.gallery_server.milvus")

SCHEMA_VERSION = "1"
PROP = "hetsearch."
PREFIX = "hs_"
MAX_COLLECTION_NAME = 255
MAX_METADATA_BYTES = 65535
DEFAULT_INDEX = "HNSW32"
EF_CONSTRUCTION = 40  # faiss's default, so both backends build HNSW graphs alike
METRIC_TYPES = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}
SUPPORTED = ("'Flat' (FLAT), 'HNSW<M>' (HNSW, M 2..2048, efConstruction 40) and 'IVF<nlist>,Flat' "
             "(IVF_FLAT, nlist 1..65536)")
_ESCAPES = {"_": "_u", "-": "_h", ".": "_d"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}
# Milvus status codes (merr) and pymilvus's own
CONNECT_FAILED = 2
RATE_LIMIT = 8
COLLECTION_NOT_FOUND = 100
COLLECTION_NOT_LOADED = 101
PARAMETER_INVALID = 1100
ID_CHUNK = 4096  # ids per existence query


def collection_name(gallery: str) -> str:
    check_name(gallery)
    out = PREFIX + "".join(_ESCAPES.get(c, c) for c in gallery)
    if len(out) > MAX_COLLECTION_NAME:
        raise InvalidArgument(f"gallery name {shown(gallery)} is too long for Milvus once '_', '-' and '.' are "
                              f"escaped ({len(out)} of at most {MAX_COLLECTION_NAME} characters)")
    return out


def gallery_name(collection: str) -> str | None:
    """The gallery a collection name stands for, or None when it is not one of ours."""
    if not collection.startswith(PREFIX):
        return None
    out, chars = [], iter(collection[len(PREFIX):])
    for c in chars:
        if c == "_":
            c = _UNESCAPES.get(next(chars, ""))
            if c is None:
                return None
        out.append(c)
    return "".join(out)


def milvus_index(factory: str) -> tuple[str, dict]:
    """faiss index string → (Milvus index type, build parameters); INVALID_ARGUMENT for what has no mapping."""
    if factory == "Flat":
        return "FLAT", {}
    if m := re.fullmatch(r"HNSW(\d{1,5})", factory):
        if 2 <= int(m[1]) <= 2048:
            return "HNSW", {"M": int(m[1]), "efConstruction": EF_CONSTRUCTION}
    elif m := re.fullmatch(r"IVF(\d{1,6}),Flat", factory):
        if 1 <= int(m[1]) <= 65536:
            return "IVF_FLAT", {"nlist": int(m[1])}
    raise InvalidArgument(f"index_factory {shown(factory)} has no Milvus equivalent here; the Milvus backend "
                          f"supports {SUPPORTED}")


def display_uri(uri: str) -> str:
    """The URI without any user:password part, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def load_token_file(path) -> str:
    """A Milvus token (``user:password`` or an API key): the file's first line that is not a ``#`` comment."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise DataError(f"cannot read Milvus token file {path}: {exc.strerror}") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) != 1:
        raise DataError(f"Milvus token file {path}: expected one line with the token (user:password or an API "
                        f"key), found {len(lines)}")
    return lines[0]


def _properties(spec: GallerySpec) -> dict:
    props = {PROP + k: str(v) for k, v in vars(spec).items()}
    props[PROP + "schema_version"] = SCHEMA_VERSION
    return props


def _spec_from(props: dict, dim: int) -> GallerySpec:
    """The spec stored in a collection's properties; ValueError when it is missing or does not add up."""
    version = props.get(PROP + "schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"its hetsearch schema version is {version!r}; this server reads {SCHEMA_VERSION!r}")
    fields = {k: props[PROP + k] for k in GallerySpec.__dataclass_fields__ if PROP + k in props}
    for k in ("dim", "ef_search", "nprobe", "created_unix_ms"):
        if k in fields:
            fields[k] = int(fields[k])
    spec = GallerySpec(**fields)
    parse_space_id(spec.space_id)
    if spec.dim != dim:
        raise ValueError(f"its vector field has dim {dim} but its spec says {spec.dim}")
    return spec


def _index_params(described: dict) -> dict:
    """describe_index's answer with any nested ``params`` (a dict or JSON text) folded in."""
    out = dict(described)
    nested = out.pop("params", None)
    if isinstance(nested, str):
        try:
            nested = json.loads(nested)
        except ValueError:
            nested = None
    if isinstance(nested, dict):
        out.update(nested)
    return out


class MilvusGallery(GalleryBase):
    def __init__(self, store: "MilvusStore", collection: str, spec: GallerySpec, state: str = READY,
                 status_message: str = ""):
        self.store = store
        self.collection = collection
        self.spec = spec
        self.state = state
        self.status_message = status_message
        self.write_mutex = threading.Lock()  # one writer per gallery in this server: counts and deletes add up
        self.dropped = False

    def _call(self, what: str, fn, deadline: float | None):
        return self.store.call(f"{what} on gallery {self.spec.name!r}", fn, deadline, gallery=self)

    def count(self, deadline: float | None = None) -> int:
        rows = self._call("count", lambda c, t: c.query(self.collection, filter="", output_fields=["count(*)"],
                                                        consistency_level="Strong", timeout=t), deadline)
        return int(rows[0]["count(*)"])

    def _upsert(self, ids, vec, metadata, deadline) -> tuple[int, int]:
        texts = metadata or [""] * len(ids)
        for i, text in enumerate(texts):
            if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
                raise InvalidArgument(f"metadata row {i} is {len(text.encode('utf-8'))} bytes; the Milvus backend "
                                      f"stores metadata as VARCHAR({MAX_METADATA_BYTES})")
        rows = [{"id": i, "vector": v, "metadata": m} for i, v, m in zip(ids.tolist(), vec, texts)]
        with self._writing(deadline):
            self._call("upsert", lambda c, t: c.upsert(self.collection, rows, timeout=t), deadline)
            return 0, self.count(deadline)

    def _existing(self, ids: np.ndarray, deadline) -> list[int]:
        found = []
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start: start + ID_CHUNK].tolist()
            rows = self._call("lookup", lambda c, t: c.query(self.collection, ids=chunk, output_fields=["id"],
                                                             consistency_level="Strong", timeout=t), deadline)
            found += [int(r["id"]) for r in rows]
        return found

    def _delete(self, ids, deadline) -> tuple[int, int, int]:
        with self._writing(deadline):
            present = self._existing(np.unique(ids), deadline)
            if present:
                self._call("delete", lambda c, t: c.delete(self.collection, ids=present, timeout=t), deadline)
            return 0, len(present), self.count(deadline)

    def _search_params(self, k: int, knobs: SearchKnobs) -> dict:
        kind, build = milvus_index(self.spec.index_factory)
        params = {}
        if kind == "HNSW":  # faiss searches HNSW with max(efSearch, k); Milvus refuses ef < k
            params["ef"] = max(knobs.ef_search or DEFAULT_EF_SEARCH, k)
        elif kind == "IVF_FLAT":  # faiss visits at most nlist lists; Milvus refuses nprobe > nlist
            params["nprobe"] = min(knobs.nprobe or DEFAULT_NPROBE, build["nlist"])
        return {"metric_type": METRIC_TYPES[self.spec.metric], "params": params}

    def _search(self, q, k, knobs, deadline):
        params = self._search_params(k, knobs)
        res = self._call("search", lambda c, t: c.search(
            self.collection, data=list(q), limit=k, output_fields=["metadata"], search_params=params,
            anns_field="vector", consistency_level="Strong", timeout=t), deadline)
        out = []
        for hits in res:
            out.append((np.array([h["id"] for h in hits], dtype=np.int64),
                        np.array([h["distance"] for h in hits], dtype=np.float32),
                        [h["entity"].get("metadata", "") for h in hits]))
        return out

    def info(self) -> GalleryInfo:
        count = self.count() if self.state == READY else 0
        return GalleryInfo(spec=self.spec, state=self.state, status_message=self.status_message,
                           vector_count=count)


class MilvusStore(StoreBase):
    """Galleries as collections of one Milvus (a cluster, a standalone server, Milvus Lite over gRPC, or a
    local Milvus Lite file when ``uri`` is a path). Thread-safe; connects lazily and reconnects after an outage."""

    backend = "milvus"

    def __init__(self, uri: str, token: str | None = None, timeout_s: float = 10.0, db_name: str = ""):
        if not uri:
            raise DataError("--backend milvus needs --milvus-uri (http://HOST:19530, or a path for Milvus Lite's "
                            "embedded engine)")
        self.uri = uri
        self.shown_uri = display_uri(uri)
        self._token = token or ""
        self.db_name = db_name  # "": Milvus's default database
        self.timeout_s = float(timeout_s)
        self.galleries: dict[str, MilvusGallery] = {}
        self._lock = threading.RLock()
        self._connect_lock = threading.Lock()
        self._client = None
        self.loaded = False

    # ------------------------------------------------------------------ the connection
    def _connect(self, timeout: float):
        with self._connect_lock:
            if self._client is None:
                try:
                    from pymilvus import MilvusClient
                    from pymilvus.exceptions import MilvusException
                except ImportError:
                    raise DataError("the Milvus backend needs pymilvus: pip install 'hetsearch[milvus]'") from None
                try:
                    self._client = MilvusClient(uri=self.uri, token=self._token, db_name=self.db_name,
                                                timeout=timeout, dedicated=True)
                except MilvusException as exc:
                    raise Unavailable(f"Milvus at {self.shown_uri} is unavailable: {exc.message}") from None
            return self._client

    def _disconnect(self) -> None:
        with self._connect_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - a broken connection may fail to close; we drop it anyway
                log.info(event("milvus_close_failed", uri=self.shown_uri, error=repr(exc)))

    def call(self, what: str, fn, deadline: float | None = None, gallery: MilvusGallery | None = None):
        """``fn(client, timeout)`` with Milvus's errors turned into the store's (and so into gRPC status codes)."""
        from pymilvus.exceptions import MilvusException

        timeout, by_deadline = self.timeout_s, False
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"deadline passed before {what}")
            if left < timeout:
                timeout, by_deadline = left, True
        client = self._connect(timeout)
        try:
            try:
                return fn(client, timeout)
            except MilvusException as exc:
                if exc.code != COLLECTION_NOT_LOADED or gallery is None:
                    raise
                # released, e.g. by a Milvus Lite restart (a cluster restores what was loaded): load it, once
                log.warning(event("milvus_collection_not_loaded", gallery=gallery.spec.name, uri=self.shown_uri,
                                  action="load"))
                client.load_collection(gallery.collection, timeout=timeout)
                return fn(client, timeout)
        except MilvusException as exc:
            raise self._error(exc.code, exc.message, getattr(exc, "is_input_error", False), what, gallery,
                              timeout, by_deadline) from None
        except grpc.RpcError as exc:
            raise self._error(exc.code(), exc.details() or "", False, what, gallery, timeout, by_deadline) from None

    def _error(self, code, message: str, input_error: bool, what: str, gallery, timeout: float,
               by_deadline: bool) -> StoreError:
        message = message or "(no message)"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED or "Retry timeout" in message:
            if by_deadline:
                return DeadlineExceeded(f"deadline passed during {what} (Milvus at {self.shown_uri})")
            return Unavailable(f"Milvus at {self.shown_uri} did not answer {what} within {timeout:g} s: {message}")
        if code in (CONNECT_FAILED, grpc.StatusCode.UNAVAILABLE) or "Fail connecting" in message:
            self._disconnect()
            return Unavailable(f"Milvus at {self.shown_uri} is unavailable ({what}): {message}")
        if code == COLLECTION_NOT_FOUND and gallery is None:
            return NotFound(f"Milvus at {self.shown_uri} no longer has the collection ({what}): {message}")
        if code == COLLECTION_NOT_FOUND:
            with self._lock:
                if self.galleries.get(gallery.spec.name) is gallery:
                    del self.galleries[gallery.spec.name]
            gallery.dropped = True
            return NotFound(f"gallery {gallery.spec.name!r} no longer exists in Milvus at {self.shown_uri} "
                            f"(collection {gallery.collection!r} is gone; dropped by another server?)")
        if code == COLLECTION_NOT_LOADED:
            return Unavailable(f"Milvus at {self.shown_uri} has not loaded the collection ({what}): {message}")
        if code == RATE_LIMIT:
            return ResourceExhausted(f"Milvus at {self.shown_uri} is rate-limiting {what}: {message}")
        if input_error or code == PARAMETER_INVALID:
            return InvalidArgument(f"Milvus at {self.shown_uri} refused {what}: {message}")
        log.error(event("milvus_error", uri=self.shown_uri, op=what, code=code, error=message))
        return StoreError(f"Milvus at {self.shown_uri} failed {what} (code {code}): {message}")

    def _load(self, collection: str) -> None:
        try:
            self.call(f"load of collection {collection!r}",
                      lambda c, t: c.load_collection(collection, timeout=t))
        except StoreError as exc:
            log.error(event("milvus_load_failed", collection=collection, error=exc))

    # ------------------------------------------------------------------ lifecycle
    def open(self, create: bool = True) -> "MilvusStore":
        return self  # nothing local; the connection is made on first use

    def load_all(self) -> dict:
        """Find the galleries in Milvus. Milvus being down is logged; calls then answer UNAVAILABLE until it is back."""
        try:
            infos = self.list()
        except Unavailable as exc:
            log.error(event("milvus_unavailable", uri=self.shown_uri, error=exc))
            infos = []
        for info in infos:
            log.info(event("gallery_loaded", gallery=info.name, backend="milvus", vectors=info.vector_count,
                           state=info.state))
        self.loaded = True
        return {info.name: info for info in infos}

    def close(self) -> None:
        self._disconnect()

    # ------------------------------------------------------------------ galleries
    def _collections(self) -> list[str]:
        return self.call("list of collections", lambda c, t: c.list_collections(timeout=t))

    def _discover(self, collection: str) -> MilvusGallery | None:
        """The gallery a collection holds, from its properties (None when it is not a hetsearch collection)."""
        d = self.call(f"describe of collection {collection!r}",
                      lambda c, t: c.describe_collection(collection, timeout=t))
        props = d.get("properties") or {}
        name = gallery_name(collection)
        if PROP + "space_id" not in props or name is None:
            log.warning(event("milvus_collection_skipped", collection=collection,
                              reason="no hetsearch.space_id property: not a hetsearch gallery"))
            return None
        dims = [int(f["params"]["dim"]) for f in d.get("fields", []) if f.get("name") == "vector"]
        try:
            spec = _spec_from(props, dims[0] if dims else -1)
        except (ValueError, TypeError, KeyError) as exc:
            msg = f"collection {collection!r} in Milvus at {self.shown_uri} cannot be served: {exc}"
            log.error(event("gallery_unavailable", gallery=name, reason=msg))
            return MilvusGallery(self, collection, GallerySpec(name=name, space_id="", dim=0), UNAVAILABLE, msg)
        g = MilvusGallery(self, collection, spec)
        notes = self._index_notes(g)
        if d.get("consistency_level") not in (0, "Strong"):
            notes.append(f"the collection's consistency level is {d.get('consistency_level_name', '?')}, not "
                         "Strong; hetsearch asks for Strong on every search and count")
        g.status_message = "; ".join(notes)
        if notes:
            log.warning(event("milvus_gallery_differs", gallery=name, collection=collection, uri=self.shown_uri,
                              detail=g.status_message))
        state = self.call(f"load state of {collection!r}", lambda c, t: c.get_load_state(collection, timeout=t))
        if "NotLoad" in str(state.get("state")):
            self._load(collection)
        return g

    def _index_notes(self, g: MilvusGallery) -> list[str]:
        """What the index Milvus reports lacks of what the gallery asked for."""
        kind, build = milvus_index(g.spec.index_factory)
        names = self.call(f"list of indexes of {g.collection!r}", lambda c, t: c.list_indexes(g.collection, timeout=t))
        if not names:
            return [f"Milvus reports no index on {g.collection!r}"]
        got = _index_params(self.call(f"describe of index of {g.collection!r}",
                                      lambda c, t: c.describe_index(g.collection, names[0], timeout=t)))
        notes = []
        for key, want in (("index_type", kind), ("metric_type", METRIC_TYPES[g.spec.metric])):
            if got.get(key) != want:
                notes.append(f"Milvus reports {key} {got.get(key)!r}, not {want!r}")
        dropped = [f"{k}={v}" for k, v in build.items() if str(got.get(k)) != str(v)]
        if dropped:
            notes.append(f"Milvus reports the {kind} index without the build parameters {', '.join(dropped)} that "
                         f"{g.spec.index_factory!r} asks for, so its own defaults apply (pymilvus 3.0.2 with Milvus "
                         "Lite 3.2.2 drops them); search parameters are applied")
        return notes

    def _sync(self) -> list[MilvusGallery]:
        """The galleries Milvus holds now (discovering new ones, forgetting vanished ones), by name."""
        collections = {c: n for c in self._collections() if (n := gallery_name(c)) is not None}
        with self._lock:
            for name in [n for n, g in self.galleries.items() if g.collection not in collections]:
                self.galleries.pop(name).dropped = True
            for collection, name in collections.items():
                if name not in self.galleries and (g := self._discover(collection)) is not None:
                    self.galleries[name] = g
            return [self.galleries[n] for n in sorted(self.galleries)]

    def get(self, name: str) -> MilvusGallery:
        collection = collection_name(name)
        g = self.galleries.get(name)
        if g is not None:
            return g
        with self._lock:
            if name not in self.galleries:
                if not self.call(f"lookup of gallery {name!r}",
                                 lambda c, t: c.has_collection(collection, timeout=t)):
                    raise not_found(name, [g.spec.name for g in self._sync()])
                g = self._discover(collection)
                if g is None:
                    raise NotFound(f"gallery {name!r} not found: collection {collection!r} in Milvus at "
                                   f"{self.shown_uri} is not a hetsearch gallery (it has no hetsearch.space_id "
                                   "property)")
                self.galleries[name] = g
            return self.galleries[name]

    def list(self) -> list[GalleryInfo]:
        return [g.info() for g in self._sync()]

    def create_gallery(self, name: str, space_id: str, dim: int = 0, metric: str = "cosine", index_factory: str = "",
                       ef_search: int = 0, nprobe: int = 0, exist_ok: bool = False) -> GalleryInfo:
        from pymilvus import DataType, MilvusClient

        spec = new_spec(name, space_id, dim, metric, index_factory, ef_search, nprobe, default_index=DEFAULT_INDEX)
        kind, build = milvus_index(spec.index_factory)
        collection = collection_name(name)
        with self._lock:
            try:
                existing = self.get(name)
            except NotFound:
                existing = None
                if self.call(f"lookup of gallery {name!r}", lambda c, t: c.has_collection(collection, timeout=t)):
                    raise AlreadyExists(f"cannot create gallery {name!r}: collection {collection!r} already exists "
                                        f"in Milvus at {self.shown_uri} and is not a hetsearch gallery") from None
            if existing is not None and reuse_existing(existing.spec, spec, exist_ok):
                return existing.info()
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=spec.dim)
            schema.add_field("metadata", DataType.VARCHAR, max_length=MAX_METADATA_BYTES)
            index = MilvusClient.prepare_index_params()
            index.add_index(field_name="vector", index_type=kind, metric_type=METRIC_TYPES[spec.metric], **build)
            self.call(f"create of gallery {name!r}", lambda c, t: c.create_collection(
                collection, schema=schema, index_params=index, consistency_level="Strong",
                properties=_properties(spec), timeout=t))
            g = self._discover(collection)
            if g is None:
                raise StoreError(f"Milvus at {self.shown_uri} created collection {collection!r} but does not report "
                                 "the hetsearch properties it was given")
            self.galleries[name] = g
        log.info(event("gallery_created", gallery=name, backend="milvus", collection=collection,
                       space_id=spec.space_id, index=spec.index_factory, milvus_index=kind, metric=spec.metric))
        return g.info()

    def drop_gallery(self, name: str) -> None:
        with self._lock:
            g = self.get(name)
            with g.write_mutex:
                self.call(f"drop of gallery {name!r}", lambda c, t: c.drop_collection(g.collection, timeout=t))
                g.dropped = True
                self.galleries.pop(name, None)
        log.info(event("gallery_dropped", gallery=name, backend="milvus", collection=g.collection))

    def snapshot(self, name: str | None = None, compact: bool = False, deadline=None) -> list[dict]:
        """A Milvus flush per gallery (sealing what it holds in memory); with ``compact`` Milvus is also asked to
        compact, which it does in the background (``compacted`` is then 0: Milvus does not say how many)."""
        galleries = [self.get(name)] if name else [g for g in self._sync() if g.state == READY]
        out = []
        for g in galleries:
            g.require_ready()
            t0 = time.perf_counter()
            g._call("flush", lambda c, t: c.flush(g.collection, timeout=t), deadline)
            if compact:
                job = g._call("compact", lambda c, t: c.compact(g.collection, timeout=t), deadline)
                log.info(event("milvus_compaction_requested", gallery=g.spec.name, job=job))
            count = g.count(deadline)
            seconds = time.perf_counter() - t0
            log.info(event("snapshot", gallery=g.spec.name, backend="milvus", vectors=count, seconds=round(seconds, 3)))
            out.append({"gallery": g.spec.name, "seq": 0, "vector_count": count, "bytes": 0, "compacted": 0,
                        "seconds": seconds})
        return out
