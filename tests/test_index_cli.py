"""``hetsearch index`` and ``serve`` as a new user meets them: real gallery model, real data directory, real
server on loopback."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from hetsearch.cli import main
from test_gallery_server_fixtures import running_server


@pytest.fixture(scope="module")
def gallery_model(tiny_runs):
    return tiny_runs["gallery"]


def _index(gallery_model, *extra):
    return main(["index", "--gallery", str(gallery_model.path), "--split", "test", "--max-samples", "200",
                 "--quiet", *extra])


def test_existing_files_are_not_directories(gallery_model, tmp_path, capsys):
    shoe = tmp_path / "shoe.png"
    shoe.write_bytes(b"\x89PNG not really")
    assert _index(gallery_model, "--out", str(shoe)) == 2
    err = capsys.readouterr().err
    assert "exists and is not a directory" in err and "Traceback" not in err
    assert main(["serve", "--data-dir", str(shoe), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a directory" in err and "Traceback" not in err
    assert _index(gallery_model, "--out", str(shoe / "inside")) == 2
    assert "cannot use data directory" in capsys.readouterr().err


def test_reindexing_keeps_and_reports_the_galleries_own_index(gallery_model, tmp_path, capsys):
    data = tmp_path / "data"
    out = tmp_path / "summary.json"
    assert _index(gallery_model, "--out", str(data), "--index", "HNSW32") == 0
    capsys.readouterr()
    # a re-run without --index adds to the gallery as it is, and says which index that is
    assert _index(gallery_model, "--out", str(data), "--json", str(out)) == 0
    assert json.loads(out.read_text())["index_factory"] == "HNSW32"
    assert "HNSW32" in capsys.readouterr().out
    assert _index(gallery_model, "--out", str(data), "--index", "Flat") == 2
    assert "already exists with index 'HNSW32', not 'Flat'" in capsys.readouterr().err
    assert _index(gallery_model, "--out", str(data), "--index", "Flat", "--replace", "--json", str(out)) == 0
    assert json.loads(out.read_text())["index_factory"] == "Flat"
    # through a running server too
    with running_server(tmp_path / "served") as s:
        addr = f"127.0.0.1:{s.port}"
        assert _index(gallery_model, "--server", addr, "--index", "HNSW16") == 0
        assert _index(gallery_model, "--server", addr, "--json", str(out)) == 0
        assert json.loads(out.read_text())["index_factory"] == "HNSW16"
        assert _index(gallery_model, "--server", addr, "--index", "Flat") == 2
        assert "already exists with index 'HNSW16'" in capsys.readouterr().err
        assert main(["gallery", "describe", "nope", "--server", addr]) == 2
        assert "'nope' not found; existing galleries: 'default'" in capsys.readouterr().err


def test_logging_is_quiet_where_asked(gallery_model, tmp_path, capsys):
    from hetsearch.logsetup import configure_logging

    configure_logging()
    assert logging.getLogger("faiss").getEffectiveLevel() == logging.WARNING  # no "Could not load AVX512 …"
    assert _index(gallery_model, "--out", str(tmp_path / "d")) == 0
    assert logging.getLogger("hetsearch").getEffectiveLevel() == logging.WARNING
    logging.getLogger("hetsearch").setLevel(logging.NOTSET)


def test_offline_store_answers_like_the_client(gallery_model, tmp_path, fmnist_test):
    from hetsearch.cmpnas.embed import embed
    from hetsearch.gallery_server.store import open_offline
    from hetsearch.hit import Hit
    from hetsearch.sdk.client import GalleryClient

    data = tmp_path / "data"
    assert _index(gallery_model, "--out", str(data), "--index", "HNSW32") == 0
    q = embed(gallery_model.model, fmnist_test.subset(np.arange(5000, 5003)))
    with open_offline(data) as store:
        offline = store.search_hits("default", q, 5, space_id=gallery_model.space_id)
        one = store.search_hits("default", q[0], 5, space_id=gallery_model.space_id)
    assert len(offline) == 3 and all(len(h) == 5 and isinstance(h[0], Hit) for h in offline)
    assert one == offline[:1] and offline[0][0].metadata
    with running_server(data) as s, GalleryClient(f"127.0.0.1:{s.port}", gallery="default",
                                                  space_id=gallery_model.space_id) as c:
        served = c.search(q, k=5)
    assert [[h.id for h in r] for r in served] == [[h.id for h in r] for r in offline]
    assert [[h.metadata for h in r] for r in served] == [[h.metadata for h in r] for r in offline]
    np.testing.assert_allclose([[h.score for h in r] for r in served], [[h.score for h in r] for r in offline],
                               atol=1e-6)
