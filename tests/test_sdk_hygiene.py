"""The SDK stays small: importing it (and embedding with it) loads neither torch nor faiss."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from sdk_bundle import cached_bundle

HEAVY = ("torch", "faiss", "tensorflow", "jax")


def _modules_after(code: str) -> list[str]:
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY]


def test_importing_the_sdk_loads_no_torch_or_faiss():
    names = ["hetsearch.sdk", "hetsearch.sdk.model", "hetsearch.sdk.profile", "hetsearch.sdk.runtime",
             "hetsearch.sdk.image", "hetsearch.export.profile"]
    if importlib.util.find_spec("hetsearch.sdk.client") is not None:
        names.append("hetsearch.sdk.client")
    modules = _modules_after("\n".join(f"import {n}" for n in names))
    assert set(names) <= set(modules)
    assert _heavy(modules) == []


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_embedding_and_profiling_load_no_torch_or_faiss(tmp_path_factory, backend):
    bundle = cached_bundle(tmp_path_factory)
    modules = _modules_after(
        "import numpy as np\n"
        "from hetsearch.sdk.model import QueryModel\n"
        "from hetsearch.sdk.profile import profile_file\n"
        f"m = QueryModel.load({str(bundle)!r}, backend={backend!r})\n"
        "assert m.embed(np.zeros((28, 28), np.uint8)).shape == (1, m.dim)\n"
        "assert profile_file(m.path, runs=2, warmup=0, min_seconds=0)['status'] == 'ok'\n"
    )
    assert _heavy(modules) == []


def test_public_names_come_from_the_package():
    modules = _modules_after("from hetsearch.sdk import QueryModel, GalleryClient, Hit, ImageError\n"
                             "assert QueryModel.__module__ == 'hetsearch.sdk.model'")
    assert _heavy(modules) == []
    only_model = _modules_after("from hetsearch.sdk import QueryModel")
    assert "grpc" not in only_model  # the client's gRPC is loaded only when GalleryClient is asked for
