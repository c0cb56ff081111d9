"""The GalleryService servicer: proto messages in, store calls, proto messages out.

Every handler runs through :func:`_rpc`, which turns store errors into gRPC
status codes with their message (a space mismatch also carries the two spaces
as trailing metadata), turns anything unexpected into INTERNAL without a
traceback to the client, checks the deadline, and records metrics.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid

import grpc
import numpy as np

from hetsearch.v1 import gallery_pb2 as pb
from hetsearch.v1 import gallery_pb2_grpc as pb_grpc

from .backend import GalleryInfo, StoreBase
from .errors import (DeadlineExceeded, InvalidArgument, ReadOnly, ResourceExhausted, SpaceMismatch, StoreError,
                     Unavailable)
from .logfmt import event

log = logging.getLogger("hetsearch.gallery_server.service")

MAX_STATUS_MESSAGE = 2000
MAX_META_VALUE = 256
STATES = {"READY": pb.GALLERY_STATE_READY, "LOADING": pb.GALLERY_STATE_LOADING,
          "UNAVAILABLE": pb.GALLERY_STATE_UNAVAILABLE}


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e7:  # no deadline set: grpc reports "forever"
        return None
    if remaining <= 0:
        raise DeadlineExceeded("the request's deadline had already passed when it arrived")
    return time.monotonic() + remaining


def _rpc(fn, writes: bool = False):
    method = fn.__name__

    @functools.wraps(fn)
    def wrapper(self, request, context):
        t0 = time.perf_counter()
        code = "OK"
        try:
            if not self.serving:
                raise Unavailable("server is starting or shutting down; retry shortly")
            if writes and self.read_only:
                raise ReadOnly(self.read_only)
            return fn(self, request, context, _deadline(context))
        except StoreError as exc:
            code = exc.code
            meta = [("hetsearch-error", exc.kind)]
            if isinstance(exc, SpaceMismatch):
                meta += [("hetsearch-expected-space", exc.expected), ("hetsearch-got-space", exc.got)]
            # clipped: gRPC's metadata (which carries the status message) is limited to 8 KB by default
            context.set_trailing_metadata([(k, v[:MAX_META_VALUE]) for k, v in meta])
            if code in ("INTERNAL", "DATA_LOSS"):
                log.error(event("rpc_failed", method=method, code=code, error=exc))
            msg = str(exc)
            if len(msg) > MAX_STATUS_MESSAGE:
                msg = msg[:MAX_STATUS_MESSAGE] + f"… (message clipped from {len(msg)} characters)"
            context.abort(getattr(grpc.StatusCode, code), msg)
        except Exception as exc:  # noqa: BLE001 - the client gets a status, never a traceback
            code = "INTERNAL"
            ref = uuid.uuid4().hex[:12]
            log.exception(event("rpc_internal_error", method=method, ref=ref, error=repr(exc)))
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method} (server log ref {ref})")
        finally:
            self.metrics.observe(method, code, time.perf_counter() - t0)

    return wrapper


def _write_rpc(fn):
    """A handler that changes galleries: refused (FAILED_PRECONDITION) while the servicer is read-only."""
    return _rpc(fn, writes=True)


def _params(p) -> dict:
    return {"ef_search": int(p.hnsw_ef_search), "nprobe": int(p.ivf_nprobe)}


def gallery_message(info: GalleryInfo) -> pb.Gallery:
    s = info.spec
    return pb.Gallery(
        name=s.name, space_id=s.space_id, dim=s.dim, metric=s.metric, index_factory=s.index_factory,
        default_params=pb.SearchParams(hnsw_ef_search=s.ef_search, ivf_nprobe=s.nprobe),
        state=STATES.get(info.state, pb.GALLERY_STATE_UNSPECIFIED), status_message=info.status_message,
        vector_count=info.vector_count, deleted_count=info.deleted_count, trained=info.trained,
        last_seq=info.last_seq, snapshot_seq=info.snapshot_seq, wal_records=info.wal_records,
        wal_bytes=info.wal_bytes, created_unix_ms=s.created_unix_ms)


def _floats(field) -> np.ndarray:
    return np.fromiter(field, dtype=np.float32, count=len(field))


def _result(ids, scores, metadata) -> pb.SearchResult:
    r = pb.SearchResult()
    r.ids.extend(ids.tolist())
    r.scores.extend(scores.tolist())
    r.metadata.extend(metadata)
    return r


class GalleryServicer(pb_grpc.GalleryServiceServicer):
    def __init__(self, store: StoreBase, metrics, max_batch_queries: int = 4096,
                 max_upsert_vectors: int = 100_000, max_batch_results: int = 1_000_000):
        self.store = store
        self.metrics = metrics
        self.max_batch_queries = max_batch_queries
        self.max_batch_results = max_batch_results
        self.max_upsert_vectors = max_upsert_vectors
        self.serving = False
        self.read_only = ""  # when set: why writes are refused (the status message of every write)

    # ------------------------------------------------------------- galleries
    @_write_rpc
    def CreateGallery(self, request, context, deadline):
        info = self.store.create_gallery(
            request.name, request.space_id, dim=request.dim, metric=request.metric or "cosine",
            index_factory=request.index_factory, ef_search=request.default_params.hnsw_ef_search,
            nprobe=request.default_params.ivf_nprobe)
        return gallery_message(info)

    @_rpc
    def ListGalleries(self, request, context, deadline):
        return pb.ListGalleriesResponse(galleries=[gallery_message(i) for i in self.store.list()])

    @_rpc
    def DescribeGallery(self, request, context, deadline):
        return gallery_message(self.store.get(request.name).info())

    @_write_rpc
    def DropGallery(self, request, context, deadline):
        self.store.drop_gallery(request.name)
        return pb.DropGalleryResponse()

    # ------------------------------------------------------------- writes
    @_write_rpc
    def Upsert(self, request, context, deadline):
        g = self.store.get(request.gallery)
        n = len(request.ids)
        if n == 0:
            raise InvalidArgument("upsert has no ids")
        if n > self.max_upsert_vectors:
            raise ResourceExhausted(f"upsert of {n} vectors exceeds the limit of {self.max_upsert_vectors} "
                                    "per request; split it")
        ids = np.fromiter(request.ids, dtype=np.int64, count=n)
        seq, count = g.upsert(ids, _floats(request.vectors), list(request.metadata), space_id=request.space_id,
                              deadline=deadline)
        # within one request the last occurrence of an id wins: count ids, not occurrences
        return pb.UpsertResponse(upserted=len(np.unique(ids)), vector_count=count, seq=seq)

    @_write_rpc
    def Delete(self, request, context, deadline):
        g = self.store.get(request.gallery)
        ids = np.fromiter(request.ids, dtype=np.int64, count=len(request.ids))
        seq, deleted, count = g.delete(ids, deadline=deadline)
        return pb.DeleteResponse(deleted=deleted, not_found=len(np.unique(ids)) - deleted, vector_count=count, seq=seq)

    @_write_rpc
    def Snapshot(self, request, context, deadline):
        done = self.store.snapshot(request.gallery or None, compact=request.compact, deadline=deadline)
        return pb.SnapshotResponse(snapshots=[pb.SnapshotInfo(**d) for d in done])

    # ------------------------------------------------------------- searches
    @_rpc
    def Search(self, request, context, deadline):
        g = self.store.get(request.gallery)
        g.require_ready()  # before the dim checks: an unreadable gallery's dim is unknown
        if not len(request.embedding):
            raise InvalidArgument("embedding is empty")
        if len(request.embedding) != g.spec.dim:
            raise InvalidArgument(f"embedding has dim {len(request.embedding)} but gallery "
                                  f"{g.spec.name!r} has dim {g.spec.dim}")
        [(ids, scores, meta)] = g.search(_floats(request.embedding), request.k, space_id=request.space_id,
                                         deadline=deadline, **_params(request.params))
        return pb.SearchResponse(result=_result(ids, scores, meta))

    @_rpc
    def BatchSearch(self, request, context, deadline):
        g = self.store.get(request.gallery)
        g.require_ready()
        total = len(request.embeddings)
        if total == 0:
            raise InvalidArgument("embeddings is empty")
        if request.dim != g.spec.dim:
            raise InvalidArgument(f"dim is {request.dim} but gallery {g.spec.name!r} has dim {g.spec.dim}")
        if total % g.spec.dim:
            raise InvalidArgument(f"embeddings has {total} values, not a multiple of dim {g.spec.dim}")
        nq = total // g.spec.dim
        if nq > self.max_batch_queries:
            raise ResourceExhausted(f"batch of {nq} queries exceeds the limit of {self.max_batch_queries}; split it")
        if nq * request.k > self.max_batch_results:
            raise ResourceExhausted(f"batch of {nq} queries x k={request.k} asks for {nq * request.k} results, over "
                                    f"the limit of {self.max_batch_results} per request; split the batch or lower k")
        out = g.search(_floats(request.embeddings), request.k, space_id=request.space_id, deadline=deadline,
                       **_params(request.params))
        return pb.BatchSearchResponse(results=[_result(*r) for r in out])
