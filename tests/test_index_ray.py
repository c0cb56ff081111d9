"""``hetsearch index --engine ray`` with real parts: a tiny trained gallery model, a gallery server on loopback and a
local Ray (2 CPUs, token authentication disabled, its files in a temporary folder) shared by the whole module, since
Ray takes seconds to start. The Ray engine's gallery must equal the in-process engine's, re-runs must not duplicate,
a partial gallery must complete, and every refusal must say what is wrong."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hetsearch.cli import main
from hetsearch.sdk.client import GalleryClient
from hetsearch.space import space_id_from_digest
from test_gallery_server_fixtures import REPO, running_server

RAY_ENV = {"RAY_AUTH_MODE": "disabled",  # else ray.init writes a token to ~/.ray/auth_token
           "RAY_gcs_server_port_wait_time_s": "120"}  # Ray's 30 s wait is short on a busy 2-core machine


@pytest.fixture(scope="module")
def ray_local():
    """One Ray cluster for the module: 2 CPUs, no dashboard, a small object store, files under a temp folder. It
    runs in its own process (``ray start --head --block``) and this process joins it by address: a local
    ``ray.init`` here would fork Ray's raylet from the test process, which earlier tests have made multithreaded
    (JAX), and such a fork can deadlock before the raylet starts (CI saw "The current node timed out during
    startup" with no raylet log at all)."""
    token = Path.home() / ".ray" / "auth_token"
    had_token = token.exists()
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    tmp = tempfile.mkdtemp(prefix="hs-ray-")  # short: Ray's socket paths live under it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                             "--include-dashboard=false", f"--object-store-memory={100 * 2**20}",
                             f"--temp-dir={tmp}", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "head.log", "wb"))
    import ray

    try:
        deadline = time.monotonic() + 120
        while True:  # the head takes seconds to come up; connecting before that fails
            try:
                ray.init(address=f"127.0.0.1:{port}", logging_level="warning")
                break
            except (ConnectionError, RuntimeError) as exc:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the module's Ray head did not come up: {exc}\n"
                                       + (Path(tmp) / "head.log").read_text(errors="replace")[-3000:]) from exc
                time.sleep(1)
        yield ray
    finally:
        ray.shutdown()
        head.terminate()  # --block: stopping the command stops the cluster it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert had_token or not token.exists(), "Ray wrote an auth token under the home directory"


@pytest.fixture(scope="module")
def gallery_model(tiny_runs):
    return tiny_runs["gallery"]


@pytest.fixture(scope="module")
def npz(tmp_path_factory, fmnist_test):
    """240 Fashion-MNIST test images as an .npz (ids 0..239)."""
    path = tmp_path_factory.mktemp("npz") / "catalog.npz"
    np.savez(path, images=fmnist_test.images[:240], labels=fmnist_test.labels[:240])
    return path


def _index(gallery_model, data, *extra):
    return main(["index", "--gallery", str(gallery_model.path), "--data", str(data), "--quiet", *extra])


def _ray(gallery_model, data, addr, *extra):
    return _index(gallery_model, data, "--server", addr, "--engine", "ray", "--workers", "2", "--batch-size", "64",
                  *extra)


def _scores(client, gallery, queries, k) -> list[dict]:
    """Per query: {id: (score, metadata)} of the top k."""
    return [{h.id: (h.score, h.metadata) for h in hits} for hits in client.search(queries, k=k, gallery=gallery)]


def _assert_same_gallery(client, a, b, queries, n):
    assert client.describe(a).vector_count == client.describe(b).vector_count == n
    for ra, rb in zip(_scores(client, a, queries, n), _scores(client, b, queries, n)):
        assert ra.keys() == rb.keys() and len(ra) == n
        assert [ra[i][1] for i in ra] == [rb[i][1] for i in ra]  # metadata
        np.testing.assert_allclose([ra[i][0] for i in ra], [rb[i][0] for i in ra], atol=1e-5)


def _queries(gallery_model, fmnist_test):
    from hetsearch.cmpnas.embed import embed

    return embed(gallery_model.model, fmnist_test.subset(np.arange(5000, 5004)))


def test_ray_gallery_equals_the_in_process_one(ray_local, gallery_model, fmnist_test, tmp_path):
    from hetsearch.cmpnas.data import stratified_sample

    summary = tmp_path / "ray.json"
    with running_server(tmp_path / "served") as s:
        addr = f"127.0.0.1:{s.port}"
        assert _index(gallery_model, "fashion-mnist", "--max-samples", "300", "--server", addr, "--name", "plain") == 0
        assert _ray(gallery_model, "fashion-mnist", addr, "--max-samples", "300", "--name", "ray",
                    "--json", str(summary)) == 0
        res = json.loads(summary.read_text())
        assert (res["engine"], res["workers"], res["vectors"]) == ("ray", 2, 300)
        assert res["space_id"] == gallery_model.space_id and res["images_per_second"] > 0
        with GalleryClient(addr, space_id=gallery_model.space_id) as c:
            _assert_same_gallery(c, "plain", "ray", _queries(gallery_model, fmnist_test), 300)
            # ids are the images' positions in the test split, as with the in-process engine
            ids = {h.id for h in c.search(_queries(gallery_model, fmnist_test)[0], k=300, gallery="ray")}
    assert ids == set(stratified_sample(fmnist_test.labels, 300, 0).tolist())


def test_images_of_different_sizes_and_colour(ray_local, gallery_model, fmnist_test, tmp_path):
    """An ImageFolder of RGB photos of several sizes: a variable-shaped Ray column, converted in the actors."""
    folder = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for i in range(24):
        cls = folder / ("shirt" if i % 2 else "shoe")
        cls.mkdir(parents=True, exist_ok=True)
        size = (20 + 3 * (i % 5), 28 + 2 * (i % 3))
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(cls / f"p{i}.png")
    with running_server(tmp_path / "served") as s:
        addr = f"127.0.0.1:{s.port}"
        assert _index(gallery_model, folder, "--server", addr, "--name", "plain") == 0
        assert _ray(gallery_model, folder, addr, "--name", "ray", "--batch-size", "5") == 0
        with GalleryClient(addr, space_id=gallery_model.space_id) as c:
            _assert_same_gallery(c, "plain", "ray", _queries(gallery_model, fmnist_test), 24)


def test_partial_gallery_completes_and_reruns_do_not_duplicate(ray_local, gallery_model, npz, fmnist_test, tmp_path):
    with running_server(tmp_path / "served") as s:
        addr = f"127.0.0.1:{s.port}"
        q = _queries(gallery_model, fmnist_test)
        with GalleryClient(addr, space_id=gallery_model.space_id) as c:
            # what a run that died half-way leaves: the first 120 images
            assert _ray(gallery_model, npz, addr, "--exclude", ",".join(map(str, range(120, 240)))) == 0
            assert c.describe("default").vector_count == 120
            assert {h.id for h in c.search(q[0], k=240, gallery="default")} == set(range(120))
            assert _ray(gallery_model, npz, addr) == 0  # the same command again, over everything
            assert c.describe("default").vector_count == 240
            assert _ray(gallery_model, npz, addr) == 0  # and once more: replaced by id, nothing added
            assert c.describe("default").vector_count == 240
            assert _index(gallery_model, npz, "--server", addr, "--name", "plain") == 0
            _assert_same_gallery(c, "plain", "default", q, 240)


def test_refusals_say_what_is_wrong(ray_local, gallery_model, npz, tmp_path, capsys):
    with running_server(tmp_path / "served") as s:
        addr = f"127.0.0.1:{s.port}"
        dim = gallery_model.model.embed_dim
        other = space_id_from_digest("b" * 64, dim)
        with GalleryClient(addr) as c:
            c.create_gallery("shoes", other)
        # a gallery of another embedding space: refused before any image is embedded
        assert _ray(gallery_model, npz, addr, "--name", "shoes") == 2
        err = capsys.readouterr().err
        assert f"holds embedding space {other!r}" in err and gallery_model.space_id in err and "Traceback" not in err
        with GalleryClient(addr) as c:
            assert c.describe("shoes").vector_count == 0
        # a Ray address where nothing listens
        with socket.socket() as probe:  # a port that is certainly closed: bound, never listening
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
            assert _ray(gallery_model, npz, addr, "--ray-address", f"127.0.0.1:{closed}") == 2
        assert f"no Ray cluster reachable at 127.0.0.1:{closed}" in capsys.readouterr().err
    # the server is gone now
    assert _ray(gallery_model, npz, addr) == 2
    err = capsys.readouterr().err
    assert f"the gallery server at {addr} is not reachable" in err and "Traceback" not in err
    # an offline data directory is the in-process engine's
    assert _index(gallery_model, npz, "--engine", "ray", "--out", str(tmp_path / "d")) == 2
    assert "--engine ray writes through a running gallery server: give --server" in capsys.readouterr().err
    assert _index(gallery_model, npz, "--out", str(tmp_path / "d"), "--workers", "2") == 2
    assert "--workers and --ray-address apply to --engine ray" in capsys.readouterr().err


def test_without_ray_installed_the_extra_is_named(gallery_model, npz, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    assert _index(gallery_model, npz, "--engine", "ray", "--server", "127.0.0.1:1") == 2
    assert "pip install 'hetsearch[ray]'" in capsys.readouterr().err


def _ray_processes(marker: str) -> list[str]:
    """Command lines of running processes that mention ``marker`` (a Ray temp folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(cmd)
    return found


def _cli(args, env_extra) -> subprocess.CompletedProcess:
    env = {**os.environ, **RAY_ENV, **env_extra}
    return subprocess.run([sys.executable, "-m", "hetsearch", "index", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_command_line_starts_and_stops_its_own_ray_or_joins_a_cluster(ray_local, gallery_model, npz, tmp_path):
    """As a user runs it: a fresh process starts a local Ray with --workers CPUs and leaves nothing running;
    with --ray-address it joins a running cluster (the module's) instead."""
    ray_tmp = tempfile.mkdtemp(prefix="hs-rayc-")
    common = ["--gallery", str(gallery_model.path), "--data", str(npz), "--engine", "ray", "--batch-size", "60",
              "--quiet"]
    try:
        with running_server(tmp_path / "served") as s:
            addr = f"127.0.0.1:{s.port}"
            r = _cli([*common, "--server", addr, "--workers", "1", "--name", "local"], {"RAY_TMPDIR": ray_tmp})
            assert r.returncode == 0, r.stderr[-3000:]
            assert "local, 1 CPUs" in r.stdout
            assert not _ray_processes(ray_tmp), "the local Ray outlived the command"
            cluster = ray_local.get_runtime_context().gcs_address
            r = _cli([*common, "--server", addr, "--workers", "2", "--name", "joined", "--ray-address", cluster], {})
            assert r.returncode == 0, r.stderr[-3000:]
            assert f"cluster {cluster}" in r.stdout
            assert ray_local.cluster_resources()["CPU"] == 2  # still up after the command disconnected
            with GalleryClient(addr) as c:
                assert c.describe("local").vector_count == c.describe("joined").vector_count == 240
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


class _SlowStartingRay:
    """Stands in for the ``ray`` module at start-up only: its first ``fail`` inits raise the bare Exception Ray
    raises when its raylet misses the 30 s registration wait (a real Ray start is what the tests above run)."""

    def __init__(self, fail: int):
        self.fail, self.inits, self.shutdowns = fail, 0, 0

    def init(self, **kwargs):
        self.inits += 1
        if self.inits <= self.fail:
            raise Exception("The current node timed out during startup.")

    def shutdown(self):
        self.shutdowns += 1


def test_a_local_ray_that_misses_its_start_up_wait_is_started_again_and_says_so(caplog):
    from gallery_server.ray_index import _start_local
    from hetsearch.errors import HetsearchError

    slow = _SlowStartingRay(fail=1)
    with caplog.at_level("WARNING", logger="hetsearch.index"):
        _start_local(slow, 1, {}, attempts=3)
    assert (slow.inits, slow.shutdowns) == (2, 1)  # what the failed start left running was shut down
    assert "did not start (attempt 1 of 3)" in caplog.text
    never = _SlowStartingRay(fail=5)
    with pytest.raises(HetsearchError, match=r"did not start \(3 attempts\).*timed out during startup"):
        _start_local(never, 1, {}, attempts=3)
    assert (never.inits, never.shutdowns) == (3, 3)
