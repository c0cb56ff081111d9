"""Latency models measured on the device (`hetsearch nas latency-model`) and search under millisecond budgets
whose winners are measured: a tiny supernet trained here, real export and profiling on the local target."""

import json
import math

import numpy as np
import pytest
import torch

from hetsearch.cli import main
from hetsearch.cmpnas.data import load_data
from hetsearch.cmpnas.nas import ElasticMobileNetV3, SupernetConfig, largest_arch, save_supernet, smallest_arch
from hetsearch.cmpnas.nas.cost import LatencyTable, space_digest
from hetsearch.cmpnas.nas.latency import design_sample, holdout_split, kendall_tau, nnls
from hetsearch.cmpnas.nas.space import arch_key, arch_macs
from hetsearch.cmpnas.train import TrainConfig, train_gallery
from test_nas_search import TINY

FAST = ["--warmup", "1", "--runs", "5", "--min-seconds", "0"]
COMMON = ["--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lat")
    train_gallery(load_data("fashion-mnist"), "resnet-tiny", root / "gallery",
                  TrainConfig(epochs=1, max_train_samples=1000, max_val_samples=200, threads=1), progress=False)
    (root / "space.json").write_text(json.dumps(TINY))
    assert main(["nas", "supernet", "--gallery", str(root / "gallery"), "--out", str(root / "sn"), "--space",
                 str(root / "space.json"), "--epochs", "1", "--max-train-samples", "384", "--max-val-samples", "100",
                 "--batch-size", "64", "--num-random", "1", *COMMON]) == 0
    return root


@pytest.fixture(scope="module")
def lat(trained):
    out = trained / "lat.json"
    assert main(["nas", "latency-model", "--supernet", str(trained / "sn"), "--format", "onnx", "--samples", "8",
                 "--threads", "1", *FAST, "--out", str(out), "--quiet"]) == 0
    return out


def _latency_model(*extra):
    return main(["nas", "latency-model", "--format", "onnx", "--samples", "8", *FAST, "--quiet", *extra])


def test_latency_model_file(trained, lat):
    m = json.loads(lat.read_text())
    assert m["kind"] == "hetsearch-latency-model" and m["status"] == "fitted"
    assert (m["target"], m["format"], m["precision"], m["threads"]) == ("local", "onnx", "fp32", 1)
    assert m["device"]["cpu"] and m["device"]["cores"] >= 1
    assert m["runtime"][0]["name"] == "onnxruntime" and m["runtime"][0]["version"]
    assert m["tools"]["onnxruntime"] and m["load_average"]["start"] is not None
    ms = m["measurements"]
    assert len(ms) == 8 and all(x["status"] == "ok" and x["latency_ms"] > 0 for x in ms)
    assert all(x["parity"]["status"] == "passed" for x in ms)  # the exported files compute the subnets
    cfg = SupernetConfig.load(trained / "sn")
    mmacs = sorted(x["mmacs"] for x in ms)
    assert mmacs[0] == pytest.approx(arch_macs(cfg, smallest_arch(cfg)) / 1e6)
    assert mmacs[-1] == pytest.approx(arch_macs(cfg, largest_arch(cfg)) / 1e6)
    roles = [x["role"] for x in ms]
    assert roles.count("held_out") == 2 and roles.count("fit") == 6
    sel = m["selection"]
    assert sel["fitting_subnets"] == 6 and {c["name"] for c in sel["candidates"]} == {"macs-linear", "op-linear"}
    assert all(math.isfinite(c["cv_mape"]) for c in sel["candidates"])
    assert sel["chosen"] == min(sel["candidates"], key=lambda c: c["cv_mape"])["candidate"]
    held = m["held_out"]
    assert held["subnets"] == 2 and -1 <= held["kendall_tau"] <= 1
    apes = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] * 100 for r in held["rows"]]
    assert held["mape_pct"] == pytest.approx(np.mean(apes))
    # the search's cost model prices subnets with the chosen predictor
    table = LatencyTable(cfg, lat)
    by_key = {x["key"]: x for x in ms if x["role"] == "held_out"}
    for row in held["rows"]:
        x = next(v for v in by_key.values() if v["mmacs"] == row["mmacs"])
        assert table.cost(x["arch"]) == pytest.approx(row["predicted_ms"])
    assert table.describe()["predictor"] == m["predictor"]["name"]


def test_resume_reuses_measurements_and_refuses_changed_settings(trained, lat, tmp_path, capsys):
    sn = str(trained / "sn")
    out = tmp_path / "lat.json"
    m = json.loads(lat.read_text())
    kept = m["measurements"][:6]  # as if interrupted after six subnets
    out.write_text(json.dumps({**m, "measurements": kept, "status": "measuring", "predictor": None}))
    capsys.readouterr()
    assert _latency_model("--supernet", sn, "--threads", "1", "--out", str(out), "--resume") == 0
    err = capsys.readouterr().err
    assert "reusing 6 measurement(s)" in err and "measuring 2" in err
    again = json.loads(out.read_text())
    assert again["status"] == "fitted" and len(again["measurements"]) == 8
    reused = {x["key"]: x["measured_at"] for x in kept}
    assert all(x["measured_at"] == reused[x["key"]] for x in again["measurements"] if x["key"] in reused)

    # changed settings: refused, saying what changed; no --resume: refused, saying how to proceed
    assert _latency_model("--supernet", sn, "--threads", "2", "--out", str(out), "--resume") == 2
    err = capsys.readouterr().err
    assert "threads: 1 -> 2" in err and "--fresh" in err
    assert _latency_model("--supernet", sn, "--threads", "1", "--out", str(out)) == 2
    assert "--resume" in capsys.readouterr().err
    assert json.loads(out.read_text()) == again  # nothing was overwritten


def test_search_under_ms_budgets_measures_the_winners(trained, lat, tmp_path, capsys):
    sn, se = trained / "sn", tmp_path / "search"
    cfg = SupernetConfig.load(sn)
    table = LatencyTable(cfg, lat)
    floor, top = table.cost(smallest_arch(cfg)), table.cost(largest_arch(cfg))
    budgets = [round(floor * 1.2, 5), round(top * 3, 5)]  # tight (rechecks likely), loose (the largest fits)
    assert main(["nas", "search", "--supernet", str(sn), "--out", str(se), "--latency-model", str(lat),
                 "--max-ms", ",".join(map(str, budgets)), "--population", "4", "--generations", "1",
                 "--max-val-samples", "100", "--calib-images", "64", "--max-rechecks", "2",
                 *COMMON]) == 0
    printed = capsys.readouterr().out
    assert "measured ms" in printed and "measured on local" in printed
    res = json.loads((se / "search.json").read_text())
    assert res["cost_model"]["predictor"] and res["cost_model"]["unit"] == "ms"
    assert res["random"]["device_check"].startswith("not measured")  # the baseline's winners are predicted only
    for b in budgets:
        best, check = res["best"][f"{b:g}"], res["device_check"][f"{b:g}"]
        assert best["cost"] <= b and best["predicted_ms"] == best["cost"]
        assert best["measured_ms"] > 0 and best["measured_on"] == "local"
        assert check["tries"] and all(t["measured_ms"] for t in check["tries"])
        assert len(check["tries"]) <= 3
        if check["within_budget"]:
            assert best["measured_ms"] <= b and best["measured_within_budget"]
        else:
            assert "NO finalist measured within" in check["note"]
        info = json.loads((se / f"subnet-{b:g}" / "arch.json").read_text())
        assert info["measured_ms"] == best["measured_ms"] and info["predicted_ms"] == best["predicted_ms"]
    assert res["device_check"][f"{budgets[1]:g}"]["within_budget"]  # three times the largest subnet's prediction


def test_bad_inputs(trained, lat, tmp_path, capsys):
    sn, se = str(trained / "sn"), str(tmp_path / "s")
    search = ["nas", "search", "--supernet", sn, "--out", se, *COMMON]
    capsys.readouterr()
    assert main([*search, "--latency-model", str(tmp_path / "nope.json"), "--max-ms", "1"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([*search, "--max-ms", "1"]) == 2
    assert "--latency-model" in capsys.readouterr().err
    assert main([*search, "--latency-model", str(lat), "--max-ms", "0.000001"]) == 2
    assert "below the smallest subnet" in capsys.readouterr().err
    assert main([*search, "--latency-model", str(lat), "--latency-profile", str(lat), "--max-ms", "1"]) == 2
    assert "not both" in capsys.readouterr().err

    # a latency model of another space
    other = SupernetConfig.from_dict({**TINY, "kernels": [3]})
    assert space_digest(other) != space_digest(SupernetConfig.load(sn))
    save_supernet(tmp_path / "other-sn", ElasticMobileNetV3(other), {"space_id": "x"})
    assert main(["nas", "search", "--supernet", str(tmp_path / "other-sn"), "--out", se, "--latency-model", str(lat),
                 "--max-ms", "1", *COMMON]) == 2
    assert "another supernet search space" in capsys.readouterr().err
    # an unfinished one
    unfinished = tmp_path / "unfinished.json"
    unfinished.write_text(json.dumps({**json.loads(lat.read_text()), "predictor": None, "status": "measuring"}))
    assert main([*search, "--latency-model", str(unfinished), "--max-ms", "1"]) == 2
    assert "no fitted predictor" in capsys.readouterr().err
    # latency-model's own checks
    assert _latency_model("--supernet", sn, "--samples", "3", "--out", str(tmp_path / "l.json")) == 2
    assert "at least 6" in capsys.readouterr().err
    assert _latency_model("--supernet", str(tmp_path / "nope"), "--out", str(tmp_path / "l.json")) == 2
    assert "no supernet" in capsys.readouterr().err
    assert _latency_model("--supernet", sn, "--target", "tcp://x", "--out", str(tmp_path / "l.json")) == 2
    assert "unknown target" in capsys.readouterr().err


def test_design_fit_and_rank_statistics():
    cfg = SupernetConfig.from_dict(TINY)
    d = design_sample(cfg, 10, seed=1)
    macs = [arch_macs(cfg, a) for a in d]
    assert len({arch_key(a) for a in d}) == 10 and macs == sorted(macs)
    assert macs[0] == arch_macs(cfg, smallest_arch(cfg)) and macs[-1] == arch_macs(cfg, largest_arch(cfg))
    assert design_sample(cfg, 10, seed=1) == d
    fit, held = holdout_split([{"mmacs": float(i), "key": str(i)} for i in range(12)], 0.25)
    assert [h["mmacs"] for h in held] == [2.0, 6.0, 10.0] and len(fit) == 9
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    A, x = rng.standard_normal((30, 6)), np.array([0.5, 0.0, 1.2, 0.0, 0.3, 2.0])
    assert np.allclose(nnls(A, A @ x), x, atol=1e-8)
    got = nnls(A, A @ np.array([1.0, -1.0, 0, 0, 0, 0]))
    assert (got >= 0).all()
