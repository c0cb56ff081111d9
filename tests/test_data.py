import gzip

import numpy as np
import pytest
from PIL import Image

from hetsearch.cmpnas.data import (convert_images, load_data, stratified_split, train_val_split)
from hetsearch.errors import DataError


def test_fashion_mnist_splits(fmnist_train, fmnist_test):
    assert len(fmnist_train) == 60000 and len(fmnist_test) == 10000
    assert fmnist_train.images.shape[1:] == (28, 28, 1)
    assert fmnist_train.images.dtype == np.uint8
    assert sorted(np.unique(fmnist_test.labels)) == list(range(10))
    assert fmnist_train.classes[9] == "Ankle boot"


def test_fashion_mnist_missing_dir(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_data("fashion-mnist", "train", data_dir=str(tmp_path))


def test_fashion_mnist_corrupt_file(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08\x01\x00\x00\x00\x01\x03")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_data("fashion-mnist", "test", data_dir=str(tmp_path))


def test_image_folder_rgb_and_gray(tmp_path, fmnist_test):
    for cls in ("boots", "shirts"):
        (tmp_path / cls).mkdir()
    for i in range(3):
        Image.fromarray(fmnist_test.images[i, :, :, 0]).save(tmp_path / "boots" / f"{i}.png")
        rgb = np.repeat(fmnist_test.images[10 + i], 3, axis=2)
        rgb[..., 0] = 255 - rgb[..., 0]
        Image.fromarray(rgb).resize((40, 32)).save(tmp_path / "shirts" / f"{i}.jpg")
    ds = load_data(str(tmp_path))
    assert ds.classes == ["boots", "shirts"]
    assert list(ds.labels) == [0, 0, 0, 1, 1, 1]
    assert ds.names[0] == "boots/0.png"
    x = ds.as_model_input(28, 28, 1)
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.uint8
    # a grayscale image converted to RGB and back keeps its pixels
    assert np.array_equal(x[0, 0], fmnist_test.images[0, :, :, 0])
    x3 = ds.as_model_input(16, 16, 3)
    assert x3.shape == (6, 3, 16, 16)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no class subfolders"):
        load_data(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_data(str(tmp_path))
    (tmp_path / "empty" / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="bad.png"):
        load_data(str(tmp_path))
    with pytest.raises(DataError, match="no such file"):
        load_data(str(tmp_path / "nope"))


def test_npz_formats_and_errors(tmp_path, fmnist_test):
    good = tmp_path / "good.npz"
    np.savez(good, images=fmnist_test.images[:20, :, :, 0], labels=fmnist_test.labels[:20])
    ds = load_data(str(good))
    assert ds.images.shape == (20, 28, 28, 1) and len(ds) == 20
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.array([0, 1, 0, 1]))
    assert load_data(str(rgb)).as_model_input(28, 28, 1).shape == (4, 1, 28, 28)
    cases = {
        "nolabels.npz": (dict(images=np.zeros((2, 4, 4), np.uint8)), "missing key 'labels'"),
        "float.npz": (dict(images=np.zeros((2, 4, 4), np.float32), labels=np.zeros(2, int)), "must be uint8"),
        "len.npz": (dict(images=np.zeros((3, 4, 4), np.uint8), labels=np.zeros(2, int)), "3 images but 2 labels"),
        "shape.npz": (dict(images=np.zeros((3, 4, 4, 2), np.uint8), labels=np.zeros(3, int)), "C in \\(1, 3\\)"),
        "flabels.npz": (dict(images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2, np.float32)), "integer"),
    }
    for name, (arrays, msg) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DataError, match=msg):
            load_data(str(tmp_path / name))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="broken.npz"):
        load_data(str(tmp_path / "broken.npz"))


def test_splits_are_deterministic_stratified_and_disjoint(fmnist_train):
    a_rest, a_held = stratified_split(fmnist_train.labels, 0.1, seed=3)
    b_rest, b_held = stratified_split(fmnist_train.labels, 0.1, seed=3)
    assert np.array_equal(a_held, b_held) and np.array_equal(a_rest, b_rest)
    assert len(np.intersect1d(a_rest, a_held)) == 0 and len(a_rest) + len(a_held) == len(fmnist_train)
    assert np.all(np.bincount(fmnist_train.labels[a_held]) == 600)
    _, c_held = stratified_split(fmnist_train.labels, 0.1, seed=4)
    assert not np.array_equal(a_held, c_held)
    train, val = train_val_split(fmnist_train, 0.1, 0, max_train_samples=1000, max_val_samples=200)
    assert len(train) == 1000 and len(val) == 200
    assert np.all(np.bincount(train.labels) == 100)


def test_convert_images_resizes_bilinear():
    img = np.zeros((1, 4, 4, 1), np.uint8)
    img[0, :, 2:] = 200
    out = convert_images(img, 8, 8, 1)
    assert out.shape == (1, 1, 8, 8)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 0, -1] == 200
