import os

import pytest

# Tests share a 2-core machine: one torch thread avoids OpenMP oversubscription stalls.
os.environ.setdefault("HETSEARCH_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

FMNIST = "/usr/share/datasets/fashion-mnist"


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def fmnist_train():
    from hetsearch.cmpnas.data import load_data

    return load_data("fashion-mnist", "train")


@pytest.fixture(scope="session")
def fmnist_test():
    from hetsearch.cmpnas.data import load_data

    return load_data("fashion-mnist", "test")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, fmnist_train):
    """A tiny gallery model and a compatible query model trained on a real Fashion-MNIST subset."""
    from hetsearch.cmpnas.train import TrainConfig, train_gallery, train_query

    root = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(epochs=3, max_train_samples=3000, max_val_samples=300, threads=1)
    g = train_gallery(fmnist_train, "resnet-tiny", root / "gallery", cfg, progress=False)
    q = train_query(fmnist_train, root / "gallery", "mbv3-tiny", root / "query", cfg, progress=False)
    return {"root": root, "gallery": g, "query": q}
