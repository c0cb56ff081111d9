"""Shared helpers for the gallery server and client tests (imported by them; holds no tests)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from hetsearch.gallery_server.server import GalleryServer, ServerConfig
from hetsearch.sdk.client import GalleryClient
from hetsearch.space import space_id_from_digest
from hetsearch.v1 import gallery_pb2 as pb
from hetsearch.v1 import gallery_pb2_grpc as pb_grpc

DIM = 16
SPACE = space_id_from_digest("a" * 64, DIM)
OTHER_SPACE = space_id_from_digest("b" * 64, DIM)
REPO = Path(__file__).resolve().parent.parent


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@contextlib.contextmanager
def running_server(data_dir, **config):
    server = GalleryServer(ServerConfig(data_dir=data_dir, port=0, **config))
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=0.5)


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path / "data", metrics_port=0) as s:
        yield s


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.GalleryServiceStub(channel)
    channel.close()


@pytest.fixture
def client(server):
    with GalleryClient(f"127.0.0.1:{server.port}", gallery="g", space_id=SPACE, retries=0) as c:
        yield c


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    """The status code a stub call ends with (OK when it succeeds)."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def make_gallery(stub, name="g", index_factory="Flat", space=SPACE, **kw):
    return stub.CreateGallery(pb.CreateGalleryRequest(name=name, space_id=space, index_factory=index_factory, **kw))


def upsert_req(ids, vectors, gallery="g", space=SPACE, metadata=None) -> pb.UpsertRequest:
    req = pb.UpsertRequest(gallery=gallery, space_id=space)
    req.ids.extend(int(i) for i in ids)
    req.vectors.extend(np.asarray(vectors, dtype=np.float32).reshape(-1).tolist())
    if metadata is not None:
        req.metadata.extend(metadata)
    return req


def search_req(vector, k=5, gallery="g", space=SPACE) -> pb.SearchRequest:
    req = pb.SearchRequest(gallery=gallery, space_id=space, k=k)
    req.embedding.extend(np.asarray(vector, dtype=np.float32).reshape(-1).tolist())
    return req


def batch_req(vectors, k=5, gallery="g", space=SPACE, dim=DIM) -> pb.BatchSearchRequest:
    req = pb.BatchSearchRequest(gallery=gallery, space_id=space, k=k, dim=dim)
    req.embeddings.extend(np.asarray(vectors, dtype=np.float32).reshape(-1).tolist())
    return req


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 / localhost and its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hetsearch-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def spawn_server(data_dir: Path, *extra: str, timeout: float = 30.0,
                 store_args: list[str] | None = None) -> tuple[subprocess.Popen, int]:
    """``python -m hetsearch.gallery_server serve`` in a subprocess; returns it and its port once serving.
    Its port file and log go beside ``data_dir``; ``store_args`` replace ``--data-dir DATA_DIR`` (another backend)."""
    port_file = Path(data_dir).parent / f"port-{time.time_ns()}"
    log = open(Path(data_dir).parent / "server.log", "ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    store_args = ["--data-dir", str(data_dir)] if store_args is None else store_args
    proc = subprocess.Popen(
        [sys.executable, "-m", "hetsearch.gallery_server", "serve", *store_args, "--port", "0",
         "--port-file", str(port_file), "--grace", "2", *extra],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError("server did not start:\n" + (Path(data_dir).parent / "server.log").read_text()[-3000:])
        time.sleep(0.05)
    return proc, int(port_file.read_text())
