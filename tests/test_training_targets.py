"""Gallery targets computed once (views, cache keys, reuse), the one trainer, validation that measures something,
the open-set protocol and the many-small-classes instance set — all on real Fashion-MNIST images."""

import json

import numpy as np
import pytest
import torch

from hetsearch.cmpnas.checkpoint import load_checkpoint, save_checkpoint
from hetsearch.cmpnas.data import (choose_val_mode, open_set, parse_class_list, stratified_sample, train_val_split)
from hetsearch.cmpnas.instances import make_instance_set, save_npz
from hetsearch.cmpnas.models import build_head, build_model
from hetsearch.cmpnas.targets import (ViewSpec, apply_views, load_or_build, random_view_params, val_embeddings,
                                      view_params)
from hetsearch.cmpnas.train import TrainConfig, augment_batch, train_gallery, train_query
from hetsearch.errors import DataError


@pytest.fixture(scope="module")
def small(fmnist_train):
    return fmnist_train.subset(stratified_sample(fmnist_train.labels, 600, 3), "600")


@pytest.fixture(scope="module")
def gallery_model():
    torch.manual_seed(0)
    return build_model("resnet-tiny").eval()


def test_views_identity_flip_and_shift():
    p = view_params(5, ViewSpec(views=4, pad=2, seed=1))
    assert p.shape == (5, 4, 3)
    assert (p[:, 0] == [0, 2, 2]).all() and (p[:, 1] == [1, 2, 2]).all()
    assert p[:, 2:, 1:].min() >= 0 and p[:, 2:, 1:].max() <= 4
    x = torch.arange(5 * 1 * 6 * 6, dtype=torch.float32).reshape(5, 1, 6, 6)
    assert torch.equal(apply_views(x, torch.from_numpy(p[:, 0]), 2), x)
    assert torch.equal(apply_views(x, torch.from_numpy(p[:, 1]), 2), x.flip(3))
    # a shift by one row down: the first row is zero fill, the rest is the image moved
    shifted = apply_views(x, torch.tensor([[0, 1, 2]] * 5), 2)
    assert torch.equal(shifted[:, :, 1:], x[:, :, :-1]) and (shifted[:, :, 0] == 0).all()
    # the live augmentation is the same transform with fresh random parameters
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(augment_batch(x, g1), apply_views(x, random_view_params(5, g2, 2), 2))


def test_cached_targets_are_the_gallery_embeddings_of_the_same_views(small, gallery_model, tmp_path):
    x = small.as_model_input(28, 28, 1)[:40]
    xv = small.as_model_input(28, 28, 1)[40:60]
    spec = ViewSpec(views=3, pad=2, seed=0)
    t = load_or_build(gallery_model, "sp-test", x, xv, spec, cache_dir=tmp_path, progress=False)
    assert t.built and t.train.shape == (40, 3, 128) and t.val.shape == (20, 128)
    idx = torch.arange(40)
    params, emb = t.sample(idx, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = gallery_model(apply_views(torch.from_numpy(x).float(), params, 2))
    assert torch.allclose(emb, ref, atol=1e-5)
    with torch.no_grad():
        assert np.allclose(t.val, gallery_model(torch.from_numpy(xv).float()).numpy(), atol=1e-5)
    # same pixels, gallery and views: reused; anything else is another key
    again = load_or_build(gallery_model, "sp-test", x, xv, spec, cache_dir=tmp_path, progress=False)
    assert not again.built and again.key == t.key and torch.equal(again.train, t.train)
    assert load_or_build(gallery_model, "sp-other", x, xv, spec, cache_dir=tmp_path, progress=False).key != t.key
    assert load_or_build(gallery_model, "sp-test", x[:39], xv, spec, cache_dir=tmp_path, progress=False).key != t.key
    assert load_or_build(gallery_model, "sp-test", x, xv, ViewSpec(views=2), cache_dir=tmp_path,
                         progress=False).key != t.key
    # a damaged entry is rebuilt, not trusted
    (tmp_path / t.key / "train.npy").write_bytes(b"garbage")
    fixed = load_or_build(gallery_model, "sp-test", x, xv, spec, cache_dir=tmp_path, progress=False)
    assert fixed.built and torch.allclose(fixed.train, t.train)
    v = val_embeddings(gallery_model, "sp-test", xv, cache_dir=tmp_path)
    assert np.allclose(v, t.val, atol=1e-6) and np.array_equal(val_embeddings(gallery_model, "sp-test", xv,
                                                                               cache_dir=tmp_path), v)


def _gallery_ckpt(tmp_path, classes=10):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "g", build_model("resnet-tiny"), kind="gallery",
                    head=build_head({"embed_dim": 128, "num_classes": classes}))
    return load_checkpoint(tmp_path / "g")


@pytest.mark.parametrize("mode", ["cached", "live"])
def test_query_training_in_both_modes_records_its_targets(small, tmp_path, mode, monkeypatch):
    monkeypatch.delenv("HETSEARCH_TARGETS_CACHE", raising=False)
    g = _gallery_ckpt(tmp_path)
    cfg = TrainConfig(epochs=1, batch_size=64, threads=1, gallery_targets=mode, target_views=2)
    ck = train_query(small, g, "mbv3-tiny", tmp_path / "q", cfg, progress=False)
    info = ck.meta["gallery_targets"]
    assert info["mode"] == mode
    h = ck.meta["metrics"]["history"][0]
    assert h["steps"] == len(train_val_split(small, 0.1, 0)[0]) // 64 and h["train_seconds"] > 0
    assert "val_heterogeneous_r1" in h
    if mode == "cached":
        assert (tmp_path / "g" / "targets" / info["key"] / "meta.json").exists()  # next to the gallery
        ck2 = train_query(small, g, "mbv3-tiny", tmp_path / "q2", cfg, progress=False)
        assert ck2.meta["gallery_targets"]["key"] == info["key"] and not ck2.meta["gallery_targets"]["built"]


def test_out_that_is_a_file_is_a_clear_error(small, tmp_path):
    from hetsearch.errors import ModelError

    f = tmp_path / "shoe.png"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match="exists and is not a folder"):
        train_gallery(small, "resnet-tiny", f, TrainConfig(epochs=1, threads=1), progress=False)


# ----------------------------------------------------------------------------- many small classes


@pytest.fixture(scope="module")
def instances(fmnist_train):
    return make_instance_set(fmnist_train, 60, 5, size=28, rgb=True, seed=0)


def test_instance_set_is_rgb_products_with_few_views(instances, tmp_path):
    assert instances.images.shape == (300, 28, 28, 3) and instances.num_classes == 60
    assert np.bincount(instances.labels).tolist() == [5] * 60
    # colourised: the channels differ
    assert np.abs(instances.images[..., 0].astype(int) - instances.images[..., 2]).mean() > 5
    p = save_npz(instances, tmp_path / "inst.npz")
    from hetsearch.cmpnas.data import load_data

    back = load_data(str(p))
    assert np.array_equal(back.images, instances.images) and back.classes == instances.classes


def test_validation_holds_out_whole_classes_when_classes_are_small(instances, tmp_path):
    assert choose_val_mode(instances.labels, 0.1) == "classes"
    tr, va = train_val_split(instances, 0.1, 0)
    assert va.source.endswith("[val:classes]")
    assert not set(np.unique(va.labels)) & set(np.unique(tr.labels))
    assert np.bincount(va.labels)[np.unique(va.labels)].min() == 5  # whole classes
    cfg = TrainConfig(epochs=2, batch_size=32, threads=1)
    ck = train_gallery(instances, "resnet-tiny", tmp_path / "g", cfg, progress=False, in_channels=3)
    m = ck.meta["metrics"]
    assert m["selection"] == "best validation R@1"
    assert all(h["val_homogeneous_r1"] > 0 for h in m["history"])  # it measures something


def test_validation_that_cannot_measure_says_so_and_keeps_the_last_epoch(instances, tmp_path, capsys):
    cfg = TrainConfig(epochs=2, batch_size=32, threads=1, val_mode="stratified")
    ck = train_gallery(instances, "resnet-tiny", tmp_path / "g", cfg, progress=False, in_channels=3)
    assert "cannot measure anything" in capsys.readouterr().out
    m = ck.meta["metrics"]
    assert m["best_epoch"] == 2 and m["selection"].startswith("last epoch")
    assert "val_homogeneous_r1" not in m["history"][-1]


# ----------------------------------------------------------------------------- open set


def test_open_set_protocol(fmnist_train, fmnist_test):
    held = parse_class_list("7,Bag,9", fmnist_train)
    assert held == [7, 8, 9]
    tr = open_set(fmnist_train, held, "train")
    assert tr.num_classes == 7 and tr.classes == list(fmnist_train.classes[:7]) and tr.labels.max() == 6
    assert len(tr) == 42000
    ev = open_set(fmnist_test, held, "eval")
    assert set(np.unique(ev.labels)) == {7, 8, 9} and len(ev) == 3000
    with pytest.raises(DataError, match="out of range"):
        parse_class_list("12", fmnist_train)
    with pytest.raises(DataError, match="neither a class index nor a class name"):
        parse_class_list("Hat", fmnist_train)
    with pytest.raises(DataError, match="every class"):
        parse_class_list(",".join(str(i) for i in range(10)), fmnist_train)


def test_open_set_on_the_command_line(tmp_path, capsys):
    from hetsearch.cli import main

    g = tmp_path / "g"
    assert main(["train", "gallery", "--arch", "resnet-tiny", "--epochs", "1", "--max-train-samples", "700",
                 "--open-set-classes", "7,8,9", "--threads", "1", "--quiet", "--out", str(g)]) == 0
    meta = json.loads((g / "meta.json").read_text())
    assert meta["classes"] == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt"]
    assert meta["open_set_classes"] == ["Sneaker", "Bag", "Ankle boot"] and meta["head"]["num_classes"] == 7
    capsys.readouterr()
    assert main(["eval", "--query", str(g), "--open-set-classes", "Sneaker,Bag,Ankle boot", "--max-samples", "300",
                 "--quiet", "--json", str(tmp_path / "e.json")]) == 0
    assert "form the evaluation set" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["n_queries"] == 300
    assert main(["train", "gallery", "--open-set-classes", "11", "--out", str(tmp_path / "x")]) == 2
    assert "out of range" in capsys.readouterr().err


def test_training_help_shows_the_defaults(capsys):
    from hetsearch.cli import main

    for argv in (["train", "query", "--help"], ["nas", "supernet", "--help"], ["nas", "finetune", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "--epochs EPOCHS training epochs (default:" in out and "(default: 128)" in out
        assert "--gallery-targets {cached,live}" in out and "(default: cached)" in out
        assert "(default: None)" not in out
