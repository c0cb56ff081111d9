from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GalleryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GALLERY_STATE_UNSPECIFIED: _ClassVar[GalleryState]
    GALLERY_STATE_READY: _ClassVar[GalleryState]
    GALLERY_STATE_LOADING: _ClassVar[GalleryState]
    GALLERY_STATE_UNAVAILABLE: _ClassVar[GalleryState]
GALLERY_STATE_UNSPECIFIED: GalleryState
GALLERY_STATE_READY: GalleryState
GALLERY_STATE_LOADING: GalleryState
GALLERY_STATE_UNAVAILABLE: GalleryState

class SearchParams(_message.Message):
    __slots__ = ("hnsw_ef_search", "ivf_nprobe")
    HNSW_EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    IVF_NPROBE_FIELD_NUMBER: _ClassVar[int]
    hnsw_ef_search: int
    ivf_nprobe: int
    def __init__(self, hnsw_ef_search: _Optional[int] = ..., ivf_nprobe: _Optional[int] = ...) -> None: ...

class Gallery(_message.Message):
    __slots__ = ("name", "space_id", "dim", "metric", "index_factory", "default_params", "state", "status_message", "vector_count", "deleted_count", "trained", "last_seq", "snapshot_seq", "wal_records", "wal_bytes", "created_unix_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_FACTORY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_SEQ_FIELD_NUMBER: _ClassVar[int]
    WAL_RECORDS_FIELD_NUMBER: _ClassVar[int]
    WAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    space_id: str
    dim: int
    metric: str
    index_factory: str
    default_params: SearchParams
    state: GalleryState
    status_message: str
    vector_count: int
    deleted_count: int
    trained: bool
    last_seq: int
    snapshot_seq: int
    wal_records: int
    wal_bytes: int
    created_unix_ms: int
    def __init__(self, name: _Optional[str] = ..., space_id: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., index_factory: _Optional[str] = ..., default_params: _Optional[_Union[SearchParams, _Mapping]] = ..., state: _Optional[_Union[GalleryState, str]] = ..., status_message: _Optional[str] = ..., vector_count: _Optional[int] = ..., deleted_count: _Optional[int] = ..., trained: _Optional[bool] = ..., last_seq: _Optional[int] = ..., snapshot_seq: _Optional[int] = ..., wal_records: _Optional[int] = ..., wal_bytes: _Optional[int] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class CreateGalleryRequest(_message.Message):
    __slots__ = ("name", "space_id", "dim", "metric", "index_factory", "default_params")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_FACTORY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    space_id: str
    dim: int
    metric: str
    index_factory: str
    default_params: SearchParams
    def __init__(self, name: _Optional[str] = ..., space_id: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., index_factory: _Optional[str] = ..., default_params: _Optional[_Union[SearchParams, _Mapping]] = ...) -> None: ...

class ListGalleriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListGalleriesResponse(_message.Message):
    __slots__ = ("galleries",)
    GALLERIES_FIELD_NUMBER: _ClassVar[int]
    galleries: _containers.RepeatedCompositeFieldContainer[Gallery]
    def __init__(self, galleries: _Optional[_Iterable[_Union[Gallery, _Mapping]]] = ...) -> None: ...

class DescribeGalleryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropGalleryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropGalleryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("gallery", "space_id", "ids", "vectors", "metadata")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    space_id: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: _containers.RepeatedScalarFieldContainer[float]
    metadata: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, gallery: _Optional[str] = ..., space_id: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[_Iterable[float]] = ..., metadata: _Optional[_Iterable[str]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted", "vector_count", "seq")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    VECTOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    vector_count: int
    seq: int
    def __init__(self, upserted: _Optional[int] = ..., vector_count: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("gallery", "ids")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, gallery: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "not_found", "vector_count", "seq")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    VECTOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    not_found: int
    vector_count: int
    seq: int
    def __init__(self, deleted: _Optional[int] = ..., not_found: _Optional[int] = ..., vector_count: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("gallery", "space_id", "embedding", "k", "params")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    space_id: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    k: int
    params: SearchParams
    def __init__(self, gallery: _Optional[str] = ..., space_id: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., params: _Optional[_Union[SearchParams, _Mapping]] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("ids", "scores", "metadata")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    metadata: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., metadata: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: SearchResult
    def __init__(self, result: _Optional[_Union[SearchResult, _Mapping]] = ...) -> None: ...

class BatchSearchRequest(_message.Message):
    __slots__ = ("gallery", "space_id", "dim", "embeddings", "k", "params")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    space_id: str
    dim: int
    embeddings: _containers.RepeatedScalarFieldContainer[float]
    k: int
    params: SearchParams
    def __init__(self, gallery: _Optional[str] = ..., space_id: _Optional[str] = ..., dim: _Optional[int] = ..., embeddings: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., params: _Optional[_Union[SearchParams, _Mapping]] = ...) -> None: ...

class BatchSearchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("gallery", "compact")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    COMPACT_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    compact: bool
    def __init__(self, gallery: _Optional[str] = ..., compact: _Optional[bool] = ...) -> None: ...

class SnapshotInfo(_message.Message):
    __slots__ = ("gallery", "seq", "vector_count", "bytes", "compacted", "seconds")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    VECTOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPACTED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    seq: int
    vector_count: int
    bytes: int
    compacted: int
    seconds: float
    def __init__(self, gallery: _Optional[str] = ..., seq: _Optional[int] = ..., vector_count: _Optional[int] = ..., bytes: _Optional[int] = ..., compacted: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("snapshots",)
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[SnapshotInfo]
    def __init__(self, snapshots: _Optional[_Iterable[_Union[SnapshotInfo, _Mapping]]] = ...) -> None: ...
