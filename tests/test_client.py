"""The SDK's GalleryClient against a real gallery server on loopback."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hetsearch.errors import HetsearchError, SpaceMismatchError
from hetsearch.gallery_server.auth import Tokens
from hetsearch.sdk.client import (AuthenticationError, DeadlineExceededError, GalleryClient, GalleryExistsError,
                                  GalleryNotFoundError, Hit, IncompatibleSpaceError, InvalidRequestError,
                                  PermissionDeniedError, RequestTooLargeError, ServerUnavailableError)
from test_gallery_server_fixtures import (DIM, OTHER_SPACE, REPO, SPACE, client, running_server,  # noqa: F401
                                          self_signed_cert, server, unit)


@pytest.fixture
def filled(client):
    x = unit(200, seed=21)
    client.create_gallery("g", SPACE)
    client.upsert(range(200), x, metadata=[f"label-{i % 10}" for i in range(200)], batch_size=64)
    return client, x


def test_gallery_lifecycle(client):
    info = client.create_gallery("g", SPACE, index_factory="HNSW32", ef_search=48)
    assert (info.name, info.space_id, info.dim, info.index_factory, info.state, info.ef_search) == (
        "g", SPACE, DIM, "HNSW32", "READY", 48)
    assert [g.name for g in client.list_galleries()] == ["g"]
    up = client.upsert([1, 2, 3], unit(3))
    assert (up.upserted, up.vector_count) == (3, 3)
    d = client.delete([3, 4])
    assert (d.deleted, d.not_found, d.vector_count) == (1, 1, 2)
    assert client.describe("g").deleted_count == 1
    [snap] = client.snapshot("g", compact=True)
    assert snap["compacted"] == 1 and snap["vector_count"] == 2
    client.drop("g")
    assert client.list_galleries() == []
    assert client.health() == "SERVING"


def test_search_single_and_batch_agree(filled):
    client, x = filled
    single = [client.search(v, k=5) for v in x[:30]]
    batch = client.search(x[:30], k=5)
    assert all(isinstance(h, Hit) for h in single[0])
    assert [[h.id for h in r] for r in single] == [[h.id for h in r] for r in batch]
    np.testing.assert_allclose([[h.score for h in r] for r in single], [[h.score for h in r] for r in batch],
                               rtol=1e-6)
    assert single[7][0] == Hit(7, pytest.approx(1.0, abs=1e-5), "label-7")
    # batches larger than the client's batch size are split transparently
    small = GalleryClient(client.address, gallery="g", space_id=SPACE, batch_size=7)
    assert [[h.id for h in r] for r in small.search(x[:30], k=5)] == [[h.id for h in r] for r in batch]
    small.close()


def test_search_images_uses_the_models_space(filled):
    client, x = filled

    class FakeModel:  # duck-types the SDK's QueryModel
        space_id = SPACE

        def embed(self, images):
            rows = [int(i) for i in (images if isinstance(images, list) else [images])]
            return x[rows]

    hits = client.search_images(FakeModel(), 12, k=3)
    assert hits[0].id == 12
    many = client.search_images(FakeModel(), [1, 2], k=3)
    assert [h[0].id for h in many] == [1, 2]

    class OtherModel(FakeModel):
        space_id = OTHER_SPACE

    with pytest.raises(IncompatibleSpaceError) as info:
        client.search_images(OtherModel(), 12, k=3)
    assert info.value.expected == SPACE and info.value.got == OTHER_SPACE


@pytest.mark.parametrize("call,exc,text", [
    (lambda c, x: c.search(x[0], k=3, gallery="nope"), GalleryNotFoundError, "not found"),
    (lambda c, x: c.search(x[0], k=3, space_id=OTHER_SPACE), IncompatibleSpaceError, OTHER_SPACE),
    (lambda c, x: c.search(x[0][:4], k=3), InvalidRequestError, "dim 4"),
    (lambda c, x: c.search(np.full(DIM, np.nan), k=3), InvalidRequestError, "NaN"),
    (lambda c, x: c.search(x[0], k=0), InvalidRequestError, "k must be"),
    (lambda c, x: c.search(np.zeros((2, 2, 2)), k=3), InvalidRequestError, "shape"),
    (lambda c, x: c.search(np.zeros((0, DIM)), k=3), InvalidRequestError, "empty"),
    (lambda c, x: c.create_gallery("g", SPACE), GalleryExistsError, "already exists"),
    (lambda c, x: c.upsert([1, 2], x[:1]), InvalidRequestError, "2 ids"),
    (lambda c, x: c.search(x[0], k=100_000), InvalidRequestError, "maximum"),
    (lambda c, x: c.drop("nope"), GalleryNotFoundError, "nope"),
])
def test_errors_map_to_specific_exceptions(filled, call, exc, text):
    client, x = filled
    with pytest.raises(exc, match=text) as info:
        call(client, x)
    assert isinstance(info.value, HetsearchError)


def test_incompatible_space_is_a_space_mismatch(filled):
    client, x = filled
    with pytest.raises(SpaceMismatchError) as info:
        client.search(x[0], k=3, space_id=OTHER_SPACE)
    assert info.value.code == "FAILED_PRECONDITION" and info.value.expected == SPACE


def test_request_too_large_for_the_server(tmp_path):
    with running_server(tmp_path / "d", max_upsert_vectors=10) as s:
        with GalleryClient(f"127.0.0.1:{s.port}", gallery="g", space_id=SPACE) as c:
            c.create_gallery("g", SPACE)
            with pytest.raises(RequestTooLargeError):
                c.upsert(range(11), unit(11))
            assert c.upsert(range(11), unit(11), batch_size=10).vector_count == 11


def test_deadline_exceeded(server, client):
    client.create_gallery("g", SPACE)
    with server.store.get("g").write_mutex:
        with pytest.raises(DeadlineExceededError):
            client.upsert([1], unit(1), timeout=0.2)


def test_auth_errors(tmp_path):
    tokens = Tokens(read=b"read-token-1", admin=b"admin-token-1")
    with running_server(tmp_path / "d", tokens=tokens) as s:
        addr = f"127.0.0.1:{s.port}"
        with GalleryClient(addr, token="admin-token-1", gallery="g", space_id=SPACE) as admin:
            admin.create_gallery("g", SPACE)
            admin.upsert([1], unit(1))
        with GalleryClient(addr, gallery="g", space_id=SPACE) as anon:
            with pytest.raises(AuthenticationError, match="missing credentials"):
                anon.list_galleries()
            assert anon.health() == "SERVING"
        with GalleryClient(addr, token="nope-nope-nope", gallery="g", space_id=SPACE) as bad:
            with pytest.raises(AuthenticationError, match="invalid token"):
                bad.search(unit(1)[0], k=1)
        with GalleryClient(addr, token="read-token-1", gallery="g", space_id=SPACE) as reader:
            assert reader.search(unit(1)[0], k=1)[0].id == 1
            with pytest.raises(PermissionDeniedError, match="admin token"):
                reader.upsert([2], unit(1))


def test_tls_with_a_ca_file(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    with running_server(tmp_path / "d", tls_cert=str(cert), tls_key=str(key),
                        tokens=Tokens(admin=b"admin-token-1")) as s:
        with GalleryClient(f"localhost:{s.port}", token="admin-token-1", tls=str(cert), gallery="g",
                           space_id=SPACE) as c:
            c.create_gallery("g", SPACE)
            c.upsert([5], unit(1, seed=3))
            assert c.search(unit(1, seed=3)[0], k=1)[0].id == 5
        with GalleryClient(f"localhost:{s.port}", retries=0, timeout=3) as plain:
            with pytest.raises(ServerUnavailableError):
                plain.list_galleries()


def test_retries_unavailable_with_backoff_until_the_server_is_up(tmp_path):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    # nobody listens: every attempt fails, then a clear error
    c = GalleryClient(f"127.0.0.1:{port}", retries=2, backoff=0.05, timeout=1)
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailableError):
        c.list_galleries()
    assert c.attempts == 3 and time.monotonic() - t0 >= 0.05
    c.close()
    # the server comes up while the client is backing off: the call succeeds
    from hetsearch.gallery_server.server import GalleryServer, ServerConfig

    srv = GalleryServer(ServerConfig(data_dir=tmp_path / "d", port=port))
    starter = threading.Timer(0.4, srv.start)
    starter.start()
    try:
        with GalleryClient(f"127.0.0.1:{port}", retries=8, backoff=0.1, timeout=2) as c2:
            assert c2.list_galleries() == []
            assert c2.attempts >= 2
    finally:
        starter.join()
        srv.stop(grace=0.5)


def test_missing_gallery_or_space_is_a_local_error():
    c = GalleryClient("127.0.0.1:1")
    with pytest.raises(InvalidRequestError, match="gallery"):
        c.search(np.ones(DIM), k=1, space_id=SPACE)
    with pytest.raises(InvalidRequestError, match="space_id"):
        c.search(np.ones(DIM), k=1, gallery="g")
    c.close()


def test_client_imports_neither_torch_nor_faiss():
    code = ("import sys, hetsearch.sdk.client; "
            "bad = [m for m in ('torch', 'faiss') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
