"""Errors of the gallery store, each carrying the gRPC status code it maps to.

The store does not import grpc (``open_offline`` works without a server); the
service turns ``code`` (a ``grpc.StatusCode`` name) into the status it returns.
"""

from __future__ import annotations

from hetsearch.errors import HetsearchError, SpaceMismatchError, shown


class StoreError(HetsearchError):
    code = "INTERNAL"
    kind = "internal"


class InvalidArgument(StoreError):
    code = "INVALID_ARGUMENT"
    kind = "invalid_argument"


class NotFound(StoreError):
    code = "NOT_FOUND"
    kind = "not_found"


class AlreadyExists(StoreError):
    code = "ALREADY_EXISTS"
    kind = "already_exists"


class ResourceExhausted(StoreError):
    code = "RESOURCE_EXHAUSTED"
    kind = "resource_exhausted"


class Unavailable(StoreError):
    """Transient: the gallery is loading or the server is draining. Retry."""

    code = "UNAVAILABLE"
    kind = "unavailable"


class GalleryCorrupt(StoreError):
    """The gallery's files could not be loaded; it stays unavailable until repaired or dropped."""

    code = "DATA_LOSS"
    kind = "gallery_unavailable"


class DeadlineExceeded(StoreError):
    code = "DEADLINE_EXCEEDED"
    kind = "deadline_exceeded"


class ReadOnly(StoreError):
    """A write to a server that serves a read-only copy of its galleries (``serve --processes N``)."""

    code = "FAILED_PRECONDITION"
    kind = "read_only"


class DataDirInUse(StoreError):
    code = "UNAVAILABLE"
    kind = "data_dir_in_use"


class SpaceMismatch(StoreError, SpaceMismatchError):
    """A vector or query from another embedding space than the gallery's."""

    code = "FAILED_PRECONDITION"
    kind = "space_mismatch"

    def __init__(self, gallery: str, expected: str, got: str, what: str = "query"):
        self.gallery = gallery
        self.expected = expected
        self.got = got
        Exception.__init__(
            self,
            f"{what} is from embedding space {shown(got)} but gallery {gallery!r} holds space {expected!r}; "
            "a query model is compatible only with the gallery model it was trained against",
        )
