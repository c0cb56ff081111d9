"""Gallery client: search a hetsearch gallery server from a device.

    from hetsearch.sdk.client import GalleryClient

    with GalleryClient("gallery.example.com:50051", token=TOKEN, tls=True) as client:
        hits = client.search(embedding, k=10, gallery="shoes", space_id=model.space_id)
        for hit in hits:
            print(hit.id, hit.score, hit.metadata)
        hits = client.search_images(model, "shoe.jpg", k=10, gallery="shoes")

A 1-D embedding gives one list of :class:`Hit`; a 2-D batch gives a list of
lists (sent as BatchSearch calls). UNAVAILABLE is retried with exponential
backoff; every other failure raises a specific :class:`GalleryClientError`
subclass carrying the server's message. Needs grpcio, protobuf and numpy
only: no torch, no faiss.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import grpc
import numpy as np

from hetsearch.errors import HetsearchError, SpaceMismatchError
from hetsearch.hit import Hit
from hetsearch.v1 import gallery_pb2 as pb
from hetsearch.v1 import gallery_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# --------------------------------------------------------------------------- errors
class GalleryClientError(HetsearchError):
    """A call to the gallery server failed; ``code`` is the gRPC status name, the message the server's."""

    def __init__(self, message: str, code: str = "UNKNOWN", method: str = ""):
        self.code = code
        self.method = method
        self.details = message
        Exception.__init__(self, f"{method}: {message} ({code})" if method else f"{message} ({code})")


class InvalidRequestError(GalleryClientError):
    """INVALID_ARGUMENT: wrong dim, NaN/Inf, bad k, empty request, bad name..."""


class IncompatibleSpaceError(GalleryClientError, SpaceMismatchError):
    """FAILED_PRECONDITION: the query's embedding space is not the gallery's."""

    def __init__(self, message: str, code: str = "FAILED_PRECONDITION", method: str = "",
                 expected: str = "", got: str = ""):
        GalleryClientError.__init__(self, message, code, method)
        self.expected = expected
        self.got = got


class GalleryNotFoundError(GalleryClientError):
    """NOT_FOUND: no gallery of that name."""


class GalleryExistsError(GalleryClientError):
    """ALREADY_EXISTS: a gallery of that name exists."""


class RequestTooLargeError(GalleryClientError):
    """RESOURCE_EXHAUSTED: the request (or response) is larger than the server allows."""


class AuthenticationError(GalleryClientError):
    """UNAUTHENTICATED: missing or wrong token."""


class PermissionDeniedError(GalleryClientError):
    """PERMISSION_DENIED: the token may not do this (e.g. a read token writing)."""


class DeadlineExceededError(GalleryClientError):
    """DEADLINE_EXCEEDED: the call took longer than its timeout."""


class ServerUnavailableError(GalleryClientError):
    """UNAVAILABLE after all retries: server down, starting, draining or unreachable."""


class GalleryUnavailableError(GalleryClientError):
    """DATA_LOSS: the gallery's files could not be loaded on the server."""


class ServerError(GalleryClientError):
    """INTERNAL, UNKNOWN or another unexpected status."""


_BY_CODE = {
    "INVALID_ARGUMENT": InvalidRequestError, "OUT_OF_RANGE": InvalidRequestError,
    "FAILED_PRECONDITION": IncompatibleSpaceError, "NOT_FOUND": GalleryNotFoundError,
    "ALREADY_EXISTS": GalleryExistsError, "RESOURCE_EXHAUSTED": RequestTooLargeError,
    "UNAUTHENTICATED": AuthenticationError, "PERMISSION_DENIED": PermissionDeniedError,
    "DEADLINE_EXCEEDED": DeadlineExceededError, "UNAVAILABLE": ServerUnavailableError,
    "DATA_LOSS": GalleryUnavailableError,
}


def error_from_rpc(exc: grpc.RpcError, method: str = "") -> GalleryClientError:
    """The specific exception for a failed call."""
    code = exc.code().name if callable(getattr(exc, "code", None)) and exc.code() else "UNKNOWN"
    message = (exc.details() if callable(getattr(exc, "details", None)) else None) or str(exc)
    trailing = {}
    try:
        trailing = dict(exc.trailing_metadata() or ())
    except Exception:  # noqa: BLE001 - not every RpcError carries metadata
        pass
    cls = _BY_CODE.get(code, ServerError)
    if cls is IncompatibleSpaceError:
        return cls(message, code, method, expected=trailing.get("hetsearch-expected-space", ""),
                   got=trailing.get("hetsearch-got-space", ""))
    return cls(message, code, method)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class GalleryInfo:
    name: str
    space_id: str
    dim: int
    metric: str
    index_factory: str
    state: str
    status_message: str
    vector_count: int
    deleted_count: int
    trained: bool
    last_seq: int
    snapshot_seq: int
    wal_records: int
    wal_bytes: int
    ef_search: int
    nprobe: int

    @classmethod
    def from_proto(cls, g: pb.Gallery) -> "GalleryInfo":
        state = pb.GalleryState.Name(g.state).replace("GALLERY_STATE_", "")
        return cls(name=g.name, space_id=g.space_id, dim=g.dim, metric=g.metric, index_factory=g.index_factory,
                   state=state, status_message=g.status_message, vector_count=g.vector_count,
                   deleted_count=g.deleted_count, trained=g.trained, last_seq=g.last_seq,
                   snapshot_seq=g.snapshot_seq, wal_records=g.wal_records, wal_bytes=g.wal_bytes,
                   ef_search=g.default_params.hnsw_ef_search, nprobe=g.default_params.ivf_nprobe)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class UpsertResult:
    upserted: int
    vector_count: int
    seq: int


@dataclass(frozen=True)
class DeleteResult:
    deleted: int
    not_found: int
    vector_count: int
    seq: int


def _hits(r: pb.SearchResult) -> list[Hit]:
    meta = list(r.metadata) or [""] * len(r.ids)
    return [Hit(int(i), float(s), m) for i, s, m in zip(r.ids, r.scores, meta)]


# grpc.health.v1 by hand (two tiny messages) so the SDK needs no grpcio-health-checking.
_HEALTH_STATES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _health_request(service: str) -> bytes:
    raw = service.encode()
    if not raw:
        return b""
    return b"\x0a" + _varint(len(raw)) + raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _health_status(data: bytes) -> str:
    # HealthCheckResponse { ServingStatus status = 1; } -> b"\x08" + varint, or empty for 0
    if len(data) >= 2 and data[0] == 0x08:
        return _HEALTH_STATES.get(data[1], f"STATUS_{data[1]}")
    return "UNKNOWN"


# --------------------------------------------------------------------------- the client
class GalleryClient:
    """A connection to a gallery server.

    ``tls``: None/False plaintext, True system root certificates, or a path to
    a PEM CA certificate. ``token``: bearer token (read or admin). ``timeout``:
    seconds per attempt. ``retries``: extra attempts on UNAVAILABLE, with
    exponential backoff from ``backoff`` seconds (capped at ``max_backoff``).
    ``gallery`` / ``space_id``: defaults for calls that do not name them.
    """

    def __init__(self, address: str, token: str | None = None, tls: bool | str | Path | None = None,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 0.1, max_backoff: float = 2.0,
                 gallery: str | None = None, space_id: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, batch_size: int = 1024):
        self.address = address
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.gallery = gallery
        self.space_id = space_id
        self.batch_size = batch_size
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls:
            roots = None
            if tls is not True:
                try:
                    roots = Path(tls).read_bytes()
                except OSError as exc:
                    raise GalleryClientError(f"cannot read CA certificate {tls}: {exc.strerror}", "INVALID") from None
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots),
                                                options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.GalleryServiceStub(self._channel)
        self._health = self._channel.unary_unary("/grpc.health.v1.Health/Check",
                                                 request_serializer=None, response_deserializer=None)
        self.attempts = 0  # total attempts made (for tests and diagnostics)

    # ------------------------------------------------------------------ plumbing
    def _call(self, method: str, request, timeout: float | None = None, fn=None):
        fn = fn or getattr(self._stub, method)
        timeout = self.timeout if timeout is None else timeout
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                return fn(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    delay = min(self.max_backoff, self.backoff * (2 ** attempt))
                    time.sleep(delay * (0.5 + random.random() / 2))
                    continue
                raise error_from_rpc(exc, method) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _gallery(self, gallery: str | None) -> str:
        name = gallery or self.gallery
        if not name:
            raise InvalidRequestError("no gallery named: pass gallery= here or to GalleryClient", "INVALID_ARGUMENT")
        return name

    def _space(self, space_id: str | None) -> str:
        space = space_id or self.space_id
        if not space:
            raise InvalidRequestError("no space_id: pass the query model's space_id (or use search_images)",
                                      "INVALID_ARGUMENT")
        return space

    # ------------------------------------------------------------------ search
    def search(self, embedding_or_batch, k: int = 10, gallery: str | None = None, space_id: str | None = None,
               ef_search: int = 0, nprobe: int = 0, timeout: float | None = None):
        """Top-k hits: a list of :class:`Hit` for one embedding, a list of lists for a 2-D batch."""
        x = np.asarray(embedding_or_batch, dtype=np.float32)
        name, space = self._gallery(gallery), self._space(space_id)
        params = pb.SearchParams(hnsw_ef_search=ef_search, ivf_nprobe=nprobe)
        if x.ndim == 1:
            req = pb.SearchRequest(gallery=name, space_id=space, k=int(k), params=params)
            req.embedding.extend(x.tolist())
            return _hits(self._call("Search", req, timeout).result)
        if x.ndim != 2:
            raise InvalidRequestError(f"expected one embedding [dim] or a batch [n, dim], got shape {x.shape}",
                                      "INVALID_ARGUMENT")
        if len(x) == 0:
            raise InvalidRequestError("the batch is empty", "INVALID_ARGUMENT")
        out: list[list[Hit]] = []
        for start in range(0, len(x), self.batch_size):
            part = x[start: start + self.batch_size]
            req = pb.BatchSearchRequest(gallery=name, space_id=space, dim=x.shape[1], k=int(k), params=params)
            req.embeddings.extend(part.reshape(-1).tolist())
            out.extend(_hits(r) for r in self._call("BatchSearch", req, timeout).results)
        return out

    def search_images(self, model: Any, images, k: int = 10, gallery: str | None = None, **kw):
        """Embed ``images`` with ``model`` (anything with ``embed()`` and ``space_id``) and search.

        One image (a path, bytes, a PIL image or one HWC array) gives a list of
        hits; a list of images gives a list of lists.
        """
        emb = np.asarray(model.embed(images), dtype=np.float32)
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, np.ndarray) and images.ndim == 4)
        if single and emb.ndim == 2 and len(emb) == 1:
            emb = emb[0]
        return self.search(emb, k, gallery=gallery, space_id=model.space_id, **kw)

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: Sequence[int], vectors, metadata: Sequence[str] | None = None, gallery: str | None = None,
               space_id: str | None = None, batch_size: int = 2048, timeout: float | None = None) -> UpsertResult:
        """Insert or replace vectors [n, dim] under ``ids`` (sent in batches); durable when it returns."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vec = np.asarray(vectors, dtype=np.float32)
        if vec.ndim == 1:
            vec = vec.reshape(1, -1)
        if vec.ndim != 2 or len(vec) != len(ids):
            raise InvalidRequestError(f"{len(ids)} ids but vectors of shape {vec.shape}", "INVALID_ARGUMENT")
        if metadata is not None and len(metadata) != len(ids):
            raise InvalidRequestError(f"{len(ids)} ids but {len(metadata)} metadata strings", "INVALID_ARGUMENT")
        name, space = self._gallery(gallery), self._space(space_id)
        resp = None
        for start in range(0, max(len(ids), 1), batch_size):
            end = start + batch_size
            req = pb.UpsertRequest(gallery=name, space_id=space)
            req.ids.extend(ids[start:end].tolist())
            req.vectors.extend(vec[start:end].reshape(-1).tolist())
            if metadata is not None:
                req.metadata.extend(str(m) for m in metadata[start:end])
            resp = self._call("Upsert", req, timeout)
        return UpsertResult(upserted=len(ids), vector_count=resp.vector_count, seq=resp.seq)

    def delete(self, ids: Sequence[int], gallery: str | None = None, timeout: float | None = None) -> DeleteResult:
        req = pb.DeleteRequest(gallery=self._gallery(gallery))
        req.ids.extend(np.asarray(ids, dtype=np.int64).reshape(-1).tolist())
        r = self._call("Delete", req, timeout)
        return DeleteResult(deleted=r.deleted, not_found=r.not_found, vector_count=r.vector_count, seq=r.seq)

    # ------------------------------------------------------------------ galleries
    def create_gallery(self, name: str, space_id: str, index_factory: str = "Flat", metric: str = "cosine",
                       dim: int = 0, ef_search: int = 0, nprobe: int = 0) -> GalleryInfo:
        req = pb.CreateGalleryRequest(name=name, space_id=space_id, dim=dim, metric=metric,
                                      index_factory=index_factory,
                                      default_params=pb.SearchParams(hnsw_ef_search=ef_search, ivf_nprobe=nprobe))
        return GalleryInfo.from_proto(self._call("CreateGallery", req))

    def list_galleries(self) -> list[GalleryInfo]:
        return [GalleryInfo.from_proto(g) for g in self._call("ListGalleries", pb.ListGalleriesRequest()).galleries]

    def describe(self, name: str | None = None) -> GalleryInfo:
        return GalleryInfo.from_proto(self._call("DescribeGallery", pb.DescribeGalleryRequest(name=self._gallery(name))))

    def drop(self, name: str) -> None:
        self._call("DropGallery", pb.DropGalleryRequest(name=name))

    def snapshot(self, gallery: str | None = None, compact: bool = False, timeout: float | None = None) -> list[dict]:
        """Snapshot one gallery (or all when None); with ``compact``, drop deleted vectors first."""
        r = self._call("Snapshot", pb.SnapshotRequest(gallery=gallery or "", compact=compact),
                       timeout if timeout is not None else max(self.timeout, 600.0))
        return [{"gallery": s.gallery, "seq": s.seq, "vector_count": s.vector_count, "bytes": s.bytes,
                 "compacted": s.compacted, "seconds": s.seconds} for s in r.snapshots]

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The server's health: "SERVING", "NOT_SERVING", ... (standard grpc.health.v1)."""
        return _health_status(self._call("Health.Check", _health_request(service), timeout, fn=self._health))

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "GalleryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "GalleryClient", "Hit", "GalleryInfo", "UpsertResult", "DeleteResult", "GalleryClientError",
    "InvalidRequestError", "IncompatibleSpaceError", "GalleryNotFoundError", "GalleryExistsError",
    "RequestTooLargeError", "AuthenticationError", "PermissionDeniedError", "DeadlineExceededError",
    "ServerUnavailableError", "GalleryUnavailableError", "ServerError", "error_from_rpc",
]
