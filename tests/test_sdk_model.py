"""QueryModel on real exported ONNX and TFLite files: inputs, preprocessing, backends, integrity, errors."""

from __future__ import annotations

import io
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from hetsearch import manifest as manifest_mod
from hetsearch.errors import BundleError, DataError, HetsearchError, IntegrityError, ModelError
from hetsearch.sdk.model import BackendUnavailable, ImageError, QueryModel
from sdk_bundle import cached_bundle, reference_embedding

BACKENDS = ["onnxruntime", "litert"]


@pytest.fixture(scope="module")
def gray_bundle(tmp_path_factory):
    return cached_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def rgb_bundle(tmp_path_factory):
    return cached_bundle(tmp_path_factory, channels=3, size=32, formats=("onnx",), seed=1, exporter=False)


@pytest.fixture(scope="module", params=BACKENDS)
def model(request, gray_bundle):
    return QueryModel.load(gray_bundle, backend=request.param, threads=1)


def _images(n=4, size=28, channels=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_load_attributes(model, gray_bundle):
    m = manifest_mod.load(gray_bundle)
    assert model.space_id == m["space_id"]
    assert model.manifest["model_id"] == m["model_id"]
    assert model.dim == m["output"]["dim"] == 128
    assert model.path.parent == gray_bundle
    assert model.path.suffix == {"onnxruntime": ".onnx", "litert": ".tflite"}[model.backend]
    assert model.precision == "fp32"
    assert model.space_id in repr(model)


def test_embeddings_match_pytorch(model):
    imgs = _images()
    emb = model.embed(imgs)
    assert emb.dtype == np.float32 and emb.shape == (4, 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ref = reference_embedding("mbv3-tiny", 1, 28, 0, imgs.transpose(0, 3, 1, 2).astype(np.float32))
    assert np.abs(emb - ref).max() < 1e-4


def test_batch_equals_single(model):
    imgs = _images(5, seed=3)
    batch = model.embed(imgs)
    as_list = model.embed(list(imgs))
    singles = np.concatenate([model.embed(img) for img in imgs])
    np.testing.assert_array_equal(batch, as_list)
    np.testing.assert_array_equal(batch, singles)
    assert model.embed([]).shape == (0, 128)


def test_every_input_kind_gives_the_same_embedding(model, tmp_path):
    gray = _images(1, seed=5)[0, :, :, 0]
    png = tmp_path / "img.png"
    Image.fromarray(gray).save(png)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG")
    kinds = [gray, gray[:, :, None], str(png), png, png.read_bytes(), bytearray(buf.getvalue()),
             Image.fromarray(gray), gray.astype(np.float32), gray.astype(np.int64)]
    embs = model.embed(kinds)
    assert embs.shape == (len(kinds), 128)
    for row in embs[1:]:
        np.testing.assert_array_equal(row, embs[0])


def test_rgb_and_rgba_images_are_converted_to_grayscale(model):
    rgb = _images(1, channels=3, seed=7)[0]
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    got = model.embed([rgb, Image.fromarray(rgb), np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])])
    want = model.embed(expected)
    for row in got:
        np.testing.assert_array_equal(row, want[0])


def test_other_sizes_are_resized_bilinear(model):
    big = _images(1, size=56, seed=9)[0, :, :, 0]
    small = np.asarray(Image.fromarray(big).resize((28, 28), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(model.embed(big), model.embed(small))
    wide = np.random.default_rng(1).integers(0, 256, (20, 40), dtype=np.uint8)
    assert model.embed(wide).shape == (1, 128)


def test_rgb_model_takes_grayscale_and_rgb(rgb_bundle):
    model = QueryModel.load(rgb_bundle)
    assert model.backend == "onnxruntime" and model.input_spec["color"] == "rgb"
    gray = _images(1, size=32, seed=2)[0, :, :, 0]
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(model.embed(gray), model.embed(rgb))
    colour = _images(2, size=32, channels=3, seed=4)
    emb = model.embed(colour)
    ref = reference_embedding("mbv3-tiny", 3, 32, 1, colour.transpose(0, 3, 1, 2).astype(np.float32))
    assert np.abs(emb - ref).max() < 1e-4


def test_channels_last_file(gray_bundle, tmp_path_factory):
    nhwc = cached_bundle(tmp_path_factory, formats=("onnx",), layout="NHWC")
    model = QueryModel.load(nhwc)
    assert model.input_spec["layout"] == "NHWC" and model.manifest["input"]["layout"] == "NCHW"
    imgs = _images(3, seed=11)
    assert model.preprocess(imgs).shape == (3, 28, 28, 1)
    np.testing.assert_allclose(model.embed(imgs), QueryModel.load(gray_bundle).embed(imgs), atol=1e-5)


def test_auto_backend_and_precision_choice(gray_bundle):
    model = QueryModel.load(gray_bundle)
    assert model.backend == "onnxruntime" and model.precision == "fp32"
    by_file = QueryModel.load(gray_bundle / "model-fp32.tflite")
    assert by_file.backend == "litert"
    via_manifest = QueryModel.load(gray_bundle / "manifest.json", backend="litert", precision="fp32")
    assert via_manifest.path.name == "model-fp32.tflite"
    with pytest.raises(BundleError, match="fp16"):
        QueryModel.load(gray_bundle, precision="fp16")
    with pytest.raises(HetsearchError, match="unknown backend"):
        QueryModel.load(gray_bundle, backend="tensorrt")
    with pytest.raises(BundleError, match="in onnx format"):
        QueryModel.load(gray_bundle / "model-fp32.onnx", backend="litert")


def test_files_outside_a_bundle_are_refused(gray_bundle, tmp_path):
    loose = tmp_path / "model.onnx"
    shutil.copy(gray_bundle / "model-fp32.onnx", loose)
    with pytest.raises(BundleError, match="not inside a bundle"):
        QueryModel.load(loose)
    with pytest.raises(BundleError, match="does not exist"):
        QueryModel.load(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["model-fp32.onnx", "model-fp32.tflite"])
def test_tampered_file_is_refused(gray_bundle, tmp_path, name):
    copy = tmp_path / "bundle"
    shutil.copytree(gray_bundle, copy)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        QueryModel.load(copy / name)


def test_unreadable_and_unsupported_images(model, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    truncated = io.BytesIO()
    Image.fromarray(_images(1)[0, :, :, 0]).save(truncated, format="PNG")
    cases = [
        (tmp_path / "missing.png", "does not exist"),
        (text, "not a readable image"),
        (b"\x89PNG garbage", "not a readable image"),
        (truncated.getvalue()[:60], "image"),
        (b"", "empty bytes"),
        (tmp_path, "directory"),
        (42, "unsupported image type"),
        (np.zeros((3, 28, 28), np.uint8), "channels-first"),
        (np.zeros((28,), np.uint8), "not an image"),
        (np.full((28, 28), 300, np.int32), "0..255"),
        (np.full((28, 28), np.nan, np.float32), "NaN"),
        (np.zeros((28, 28), np.complex64), "dtype"),
    ]
    for image, message in cases:
        with pytest.raises(ImageError, match=message):
            model.embed(image)
    assert issubclass(ImageError, DataError)
    with pytest.raises(ImageError, match="missing.png"):
        model.embed([_images(1)[0], tmp_path / "missing.png"])


def test_nan_output_is_an_error(gray_bundle, monkeypatch):
    model = QueryModel.load(gray_bundle)
    monkeypatch.setattr(model.runtime, "run", lambda x: np.full((1, 128), np.nan, np.float32))
    with pytest.raises(ModelError, match="NaN"):
        model.embed(_images(1))


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_off_macos_is_a_clear_error(gray_bundle):
    with pytest.raises(BackendUnavailable, match="Core ML runs only on macOS"):
        QueryModel.load(gray_bundle, backend="coreml")


def test_integer_inputs_are_quantized_once():
    from hetsearch.sdk.runtime import Runtime

    rt = Runtime()
    rt.input_dtype, rt._in_quant = np.dtype(np.int8), (1.0, -128)  # a fully-quantized file's input
    np.testing.assert_array_equal(rt.prepare(np.array([0.0, 127.6, 255.0, 300.0])), [-128, 0, 127, 127])
    rt.input_dtype, rt._in_quant = np.dtype(np.uint8), (0.0, 0)
    np.testing.assert_array_equal(rt.prepare(np.array([-3.0, 17.4, 254.6])), [0, 17, 255])
    rt.input_dtype = np.dtype(np.float32)
    x = np.ones((1, 1, 2, 2), np.float32)
    assert rt.prepare(x) is x


def test_files_that_failed_their_checks_are_refused(gray_bundle, tmp_path):
    import json

    copy = tmp_path / "bundle"
    shutil.copytree(gray_bundle, copy)
    man = json.loads((copy / "manifest.json").read_text())
    why = "compatibility: R@1 dropped 9.00 points"
    man["checks"]["model-fp32.onnx"] = {"status": "failed", "reason": why}
    (copy / "manifest.json").write_text(json.dumps(man))
    # auto skips the failed file and takes the next runnable one
    assert QueryModel.load(copy).path.name == "model-fp32.tflite"
    with pytest.raises(BundleError, match="failed its checks at export .*R@1 dropped 9.00"):
        QueryModel.load(copy / "model-fp32.onnx")
    with pytest.raises(BundleError, match="model-fp32.onnx failed its checks at export"):
        QueryModel.load(copy, backend="onnxruntime")
    assert QueryModel.load(copy / "model-fp32.onnx", allow_failed=True).backend == "onnxruntime"
    man["checks"]["model-fp32.tflite"] = {"status": "error", "reason": "runtime refused"}
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="can run here.*onnx failed its checks.*tflite failed its checks"):
        QueryModel.load(copy)


def test_float_arrays_in_0_1_are_taken_by_their_declared_range_never_silently(model):
    img = _images(1)[0]
    ref = model.embed(img)
    scaled = img.astype(np.float32) / 255.0
    with pytest.raises(ImageError, match="all lie in 0..1.*float_range='0-1'"):
        model.embed(scaled)
    np.testing.assert_allclose(model.embed(scaled, float_range="0-1"), ref, atol=1e-6)
    np.testing.assert_allclose(model.embed(img.astype(np.float32)), ref, atol=1e-6)  # 0..255 floats as before
    with pytest.raises(ImageError, match="must lie in 0..1"):
        model.embed(img.astype(np.float32), float_range="0-1")
    black = np.zeros_like(scaled)
    assert np.isfinite(model.embed(black)).all()  # all zero is black in either range


def test_training_and_the_sdk_feed_the_model_the_same_input(model):
    """One preprocessing module: an RGB photo of another size becomes the same model input in training (ImageSet)
    and on the device (SDK), so the deployed model sees what it was trained on."""
    from hetsearch.cmpnas.data import ImageSet

    rng = np.random.default_rng(5)
    photos = rng.integers(0, 256, (3, 41, 37, 3), dtype=np.uint8)
    photos[..., 0] //= 3  # colour casts: a channel mean and a luma differ here
    trained = ImageSet(photos, np.zeros(3, np.int64), ["x"], "photos").as_model_input(28, 28, 1)
    device = model.preprocess(list(photos))
    if model.input_spec["layout"] == "NHWC":
        device = device.transpose(0, 3, 1, 2)
    assert np.array_equal(trained.astype(np.float32), device)
    # the conversion training used before (a channel mean) would have fed the model something else
    from PIL import Image

    mean = [np.asarray(Image.fromarray(p.mean(axis=2).round().astype(np.uint8)).resize((28, 28), Image.BILINEAR))
            for p in photos]
    assert not np.array_equal(np.stack(mean).astype(np.float32), device[:, 0])
