"""Quantization-aware compatibility training (--qat int8) and int8 export from the QAT model, with real components:
the real trainer on a few hundred Fashion-MNIST images, the real exporters, the checks through the SDK."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hetsearch.cli import main
from hetsearch.cmpnas.checkpoint import load_checkpoint
from hetsearch.cmpnas.embed import embed
from hetsearch.cmpnas.qat import prepare_qat, simulated
from hetsearch.cmpnas.train import TrainConfig, train_query
from hetsearch.export.checks import parity_stats

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def qat_run(tiny_runs, fmnist_train, tmp_path_factory):
    """conftest's tiny float query model (mbv3-tiny against resnet-tiny), finetuned one epoch with --qat int8."""
    out = tmp_path_factory.mktemp("qat") / "query-qat"
    cfg = TrainConfig(epochs=1, lr=0.005, max_train_samples=600, max_val_samples=300, threads=1, qat="int8")
    ck = train_query(fmnist_train, tiny_runs["gallery"], None, out, cfg, progress=False, init=tiny_runs["query"])
    return ck


def test_folding_and_fake_quant_keep_the_float_model_exact(tiny_runs, fmnist_train):
    """Folding BN and adding fake quantization change nothing in float mode, and to_plain() gives back an ordinary
    model of the same architecture and state-dict keys; with fake quantization on, the output moves (int8)."""
    model = tiny_runs["query"].model
    x = fmnist_train.as_model_input(28, 28, 1)[:200]
    ref = embed(model, x)
    q = prepare_qat(model)
    assert q.folded >= 5 and len(q.act) >= 8
    with q.float_mode():
        assert parity_stats(ref, embed(q, x))["cos_min"] > 0.99999
    plain = q.to_plain()
    assert list(plain.state_dict()) == list(model.state_dict())
    assert parity_stats(ref, embed(plain, x))["cos_min"] > 0.99999
    q.train()
    with torch.no_grad():
        q(torch.from_numpy(x[:128]).float())  # the observers see one batch
    q.eval()
    sim = parity_stats(ref, embed(q, x))
    assert 0.9 < sim["cos_mean"] < 0.99999


def test_qat_checkpoint_records_what_it_trained(qat_run, tiny_runs):
    meta = qat_run.meta
    assert meta["qat"]["scheme"] == "int8" and meta["qat"]["batchnorms_folded"] >= 5
    assert meta["train_config"]["qat"] == "int8" and meta["init"]["model_id"] == tiny_runs["query"].name
    assert qat_run.space_id == tiny_runs["query"].space_id
    hist = meta["metrics"]["history"][-1]
    assert {"val_heterogeneous_r1", "val_float_heterogeneous_r1", "val_float_cos_min"} <= set(hist)
    # the fake-quantized (int8) model kept the float model's compatibility (same validation images; ~1.3 points a
    # flipped image at 300, so a 3-point margin)
    assert meta["metrics"]["val_heterogeneous_r1"] >= meta["init"]["val_heterogeneous_r1"] - 3.0
    # the checkpoint holds an ordinary float model: same architecture as the float model it started from
    assert qat_run.model.spec == tiny_runs["query"].model.spec


def test_qat_export_int8_onnx_and_tflite_through_the_sdk(qat_run, tiny_runs, fmnist_train, tmp_path):
    """int8 ONNX and TFLite from the QAT checkpoint: checked through the SDK, recorded as QAT, TFLite under XNNPACK,
    close to the float weights (the gate's parity) and to the fake-quantized model that QAT trained."""
    from hetsearch.cmpnas.data import train_val_split
    from hetsearch.export.checks import DEFAULT_QAT_PARITY
    from hetsearch.export.exporter import export_bundle
    from hetsearch.export.runners import SdkRunner

    train, val = train_val_split(fmnist_train, 0.1, 0, max_train_samples=1000, max_val_samples=300)
    man = export_bundle(qat_run, tmp_path / "b", formats=("onnx", "tflite"), precisions=("fp32", "int8"),
                        calib_data=train.subset(np.arange(0, 1000, 10)), gallery=tiny_runs["gallery"].path,
                        check_data=val, progress=False)
    files = {(e["format"], e["precision"]): e for e in man["files"]}
    assert set(files) == {(f, p) for f in ("onnx", "tflite") for p in ("fp32", "int8")}
    assert man["source"]["qat"]["scheme"] == "int8"
    x = val.as_model_input(28, 28, 1)
    sim = embed(simulated(qat_run), x)
    for fmt in ("onnx", "tflite"):
        e = files[(fmt, "int8")]
        assert e["int8_training"] == "qat" and e["quantization"].startswith("quantization-aware")
        rec = man["checks"][e["path"]]
        assert rec["status"] == "passed" and rec["parity"]["cos_mean"] >= 0.98
        # judged by the quantization-aware floors, stricter than post-training int8's
        assert rec["parity"]["floor"] == "qat" and rec["parity"]["thresholds"] == DEFAULT_QAT_PARITY["int8"]
        runner = SdkRunner(tmp_path / "b" / e["path"], e)
        got = runner.embed(x)
        assert np.allclose(got, embed(qat_run.model, x), atol=0.5)  # sanity: same model
        if fmt == "tflite":
            assert runner.delegate == "xnnpack"
        # the int8 file stays close to the float weights it came from and to the fake-quantized model QAT trained
        assert rec["parity"]["cos_min"] >= 0.97 and rec["parity"]["cos_mean"] >= 0.998, (fmt, rec["parity"])
        assert parity_stats(sim, got)["cos_mean"] >= 0.99
        # every fake-quantization point QAT trained was found in the exported graph
        qr = e["qat_ranges"]
        assert qr["matched_points"] == qr["points"] == len(qat_run.meta["qat"]["activation_ranges"]), (fmt, qr)
        assert qr["unmatched_points"] == [] and qr["tensors"] >= qr["points"] - 2
    assert "int8_training" not in files[("onnx", "fp32")]
    assert "floor" not in man["checks"][files[("onnx", "fp32")]["path"]]["parity"]
    assert "qat_ranges" not in files[("onnx", "fp32")]


def test_qat_int8_onnx_quantizes_with_the_ranges_qat_learned(qat_run, tiny_runs, fmnist_train, tmp_path):
    """The int8 ONNX file's activation scales at the QAT model's fake-quantization points are the learned ranges
    (scale = (hi - lo) / 255), not ranges re-calibrated on the calibration images; a float model's int8 file,
    calibrated, has other scales at the same tensors."""
    import onnx
    from onnx import numpy_helper

    from hetsearch.cmpnas.qat import activation_points
    from hetsearch.export.exporter import export_bundle, match_qat_ranges, onnx_intermediates

    calib = fmnist_train.subset(np.arange(0, 1000, 10))
    pixels = calib.as_model_input(28, 28, 1).astype(np.float32)
    scales = {}
    for label, ck in (("qat", qat_run), ("float", tiny_runs["query"])):
        man = export_bundle(ck, tmp_path / label, formats=("onnx",), precisions=("fp32", "int8"), calib_data=calib,
                            progress=False)
        m = onnx.load(str(tmp_path / label / "model-int8.onnx"))
        init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        scales[label] = {n.input[0]: float(init[n.input[1]]) for n in m.graph.node
                         if n.op_type == "QuantizeLinear" and n.input[1] in init and init[n.input[1]].size == 1}
        if label == "qat":
            learned, info = match_qat_ranges(activation_points(qat_run, pixels[:2]),
                                             onnx_intermediates(tmp_path / label / "model-fp32.onnx", pixels[:2]))
            assert info["matched_points"] == info["points"] and not man.get("failures")
    checked = [t for t in learned if t in scales["qat"]]
    # most are quantized there (some stay float: e.g. a HardSwish feeding only a float global pool)
    assert len(checked) >= 0.75 * len(learned), (sorted(set(learned) - set(checked)), sorted(scales["qat"]))
    for t in checked:
        lo, hi = learned[t]
        assert scales["qat"][t] == pytest.approx((hi - lo) / 255.0, rel=1e-5), t
    differ = [t for t in checked if t in scales["float"] and scales["float"][t] != pytest.approx(scales["qat"][t], rel=1e-3)]
    assert len(differ) >= len(checked) // 2, "the learned ranges should differ from re-calibrated ones"


def test_qat_cli_needs_a_trained_model_to_start_from(tiny_runs, tmp_path, capsys):
    g = str(tiny_runs["gallery"].path)
    assert main(["train", "query", "--gallery", g, "--qat", "int8", "--epochs", "1", "--out", str(tmp_path / "a"),
                 "--max-train-samples", "200", "--threads", "1", "--quiet"]) == 2
    assert "--init" in capsys.readouterr().err
    assert main(["train", "query", "--gallery", g, "--init", str(tiny_runs["query"].path), "--arch", "mbv3-small",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--arch" in capsys.readouterr().err
    assert main(["train", "query", "--gallery", g, "--init", str(tiny_runs["query"].path), "--qat", "int8",
                 "--qat-consistency", "1", "--epochs", "1", "--lr", "0.005", "--max-train-samples", "300",
                 "--max-val-samples", "100", "--threads", "1", "--quiet", "--out", str(tmp_path / "c")]) == 0
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["qat"]["scheme"] == "int8" and meta["train_config"]["qat_consistency"] == 1.0
    assert "loss_qat_consistency" in meta["metrics"]["history"][0]
    ck = load_checkpoint(tmp_path / "c")
    assert ck.kind == "query" and ck.meta["qat"]


def test_gallery_training_refuses_qat(fmnist_train, tmp_path):
    from hetsearch.cmpnas.train import train_gallery
    from hetsearch.errors import ModelError

    with pytest.raises(ModelError, match="query models"):
        train_gallery(fmnist_train, "resnet-tiny", tmp_path / "g", TrainConfig(epochs=1, max_train_samples=100,
                                                                               qat="int8"), progress=False)



def test_nas_finetune_qat(tiny_runs, tmp_path):
    """nas finetune --qat int8: the extracted subnet (BN recalibrated) is folded and finetuned quantization-aware."""
    from hetsearch.cmpnas.nas import largest_arch, load_supernet

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"stages": [{"out": 16, "stride": 2, "se": True, "act": "relu"}],
                                 "head": {"channels": 32, "act": "hswish"}, "depths": [1], "kernels": [3],
                                 "expands": [2], "widths": [1.0]}))
    sn, ft = tmp_path / "sn", tmp_path / "ft"
    common = ["--threads", "1", "--no-progress", "--max-train-samples", "256", "--max-val-samples", "100"]
    assert main(["nas", "supernet", "--gallery", str(tiny_runs["gallery"].path), "--out", str(sn), "--space",
                 str(space), "--epochs", "1", "--batch-size", "64", "--num-random", "0", *common]) == 0
    net, _ = load_supernet(sn)
    assert main(["nas", "finetune", "--subnet", json.dumps(largest_arch(net.config)), "--supernet", str(sn),
                 "--out", str(ft), "--epochs", "1", "--lr", "0.005", "--qat", "int8", "--calib-images", "64",
                 *common]) == 0
    ck = load_checkpoint(ft, expect_kind="query")
    assert ck.meta["qat"]["scheme"] == "int8" and ck.meta["qat"]["batchnorms_folded"] >= 3 and ck.meta["nas"]
    assert "val_float_heterogeneous_r1" in ck.meta["metrics"]["history"][0]
