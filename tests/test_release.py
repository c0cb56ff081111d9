"""`hetsearch release`: a tiny supernet released end to end for two "devices" on this machine — the local target
(MMACs budget) and the ssh target over loopback (ms budget, latency model built over ssh) — plus a device whose
budget is impossible; a re-run reuses the finished devices; bad devices.toml files are refused with exit 2."""

import json
import sys

import numpy as np
import pytest

from hetsearch import manifest as mf
from hetsearch.cli import main
from hetsearch.cmpnas.nas import SupernetConfig, largest_arch, smallest_arch
from hetsearch.cmpnas.nas.space import arch_macs, arch_to_spec
from hetsearch.sdk.model import QueryModel
from test_nas_search import TINY
from test_profile import sshd  # noqa: F401  (fixture: the project's sshd on loopback, skipped with a reason)

@pytest.fixture(scope="module")
def trained(tiny_runs, tmp_path_factory):
    """conftest's tiny gallery model (3 epochs on 3,000 images) and a TINY-space supernet trained against it."""
    root = tmp_path_factory.mktemp("release")
    (root / "space.json").write_text(json.dumps(TINY))
    gallery = tiny_runs["root"] / "gallery"
    assert main(["nas", "supernet", "--gallery", str(gallery), "--out", str(root / "sn"), "--space",
                 str(root / "space.json"), "--epochs", "1", "--max-train-samples", "1000", "--max-val-samples", "100",
                 "--batch-size", "64", "--num-random", "1", "--threads", "1", "--no-progress"]) == 0
    (root / "gallery").symlink_to(gallery)
    return root


TINY_RELEASE = """\
[release]
finetune_epochs = 2
finetune_lr = 0.1
batch_size = 64
max_train_samples = 2000
population = 4
generations = 1
max_val_samples = 100
calib_images = 64
check_samples = 200
test_samples = 300
latency_samples = 6
warmup = 1
runs = 5
min_seconds = 0
torch_threads = 1
"""


def _toml(value) -> str:
    return json.dumps(value)  # TOML strings, numbers and lists of strings read like JSON


def _devices(tmp_path, sshd, mmacs: float) -> str:
    return TINY_RELEASE + f"""
[devices.here]
target = "local"
budget_mmacs = {mmacs}
formats = ["onnx", "tflite"]
precisions = ["fp32"]

[devices.loop]
target = {_toml(sshd["target"])}
identity = {_toml(sshd["identity"])}
known_hosts = {_toml(sshd["known_hosts"])}
remote_python = {_toml(sys.executable)}
budget_ms = 50
formats = ["onnx"]
precisions = ["fp32"]
threads = 1

[devices.impossible]
target = "local"
budget_mmacs = 0.00001
formats = ["onnx"]
precisions = ["fp32"]
"""


def test_release_end_to_end_and_rerun(trained, sshd, tmp_path, capsys):  # noqa: F811
    cfg = SupernetConfig.load(trained / "sn")
    lo, hi = (arch_macs(cfg, a) / 1e6 for a in (smallest_arch(cfg), largest_arch(cfg)))
    (tmp_path / "devices.toml").write_text(_devices(tmp_path, sshd, round((lo + hi) / 2, 4)))
    out = tmp_path / "release"
    argv = ["release", "--supernet", str(trained / "sn"), "--gallery", str(trained / "gallery"),
            "--devices", str(tmp_path / "devices.toml"), "--out", str(out), "--quiet"]
    assert main(argv) == 1  # the impossible device fails; the others are released
    first = capsys.readouterr()
    assert "2 of 3 device(s) released" in first.out and "FAILED: impossible" in first.out, first.out[-3000:]
    assert "device 2/3 loop" in first.err  # progress

    index = json.loads((out / "index.json").read_text())
    assert index["kind"] == "hetsearch-release" and [d["device"] for d in index["devices"]] == ["here", "loop",
                                                                                                 "impossible"]
    here, loop, bad = index["devices"]
    assert bad["status"] == "failed" and "below the smallest subnet" in bad["reason"]
    assert index["paragon"]["test_images"] == 300 and 0 < index["paragon"]["r1"] <= 100
    for d, target in ((here, "local"), (loop, sshd["target"])):
        assert d["status"] == "ok", d.get("reason")
        bundle = out / d["bundle"]
        man = mf.load(bundle)
        # index.json agrees with the bundle's manifest
        assert (d["model_id"], d["space_id"]) == (man["model_id"], man["space_id"])
        assert d["mmacs"] == pytest.approx(man["macs"] / 1e6)
        assert d["files"] == [e["path"] for e in man["files"]]
        assert set(d["checks"]) == set(d["files"]) and all(c["status"] == "passed" for c in d["checks"].values())
        assert {p: c["status"] for p, c in man["checks"].items()} == {p: c["status"] for p, c in d["checks"].items()}
        lat = man["latency"][target]
        assert d["latency"]["target"] == target and set(lat) == set(d["files"])
        assert d["measured_ms"] == pytest.approx(lat[d["headline_file"]]["p50_ms"])
        ev = d["eval"]
        assert ev["test_images"] == 300 and ev["gap_to_paragon"] == pytest.approx(ev["paragon_r1"] - ev["het_r1"])
        # the bundle runs on the SDK
        model = QueryModel.load(bundle)
        emb = model.embed(np.zeros((28, 28), dtype=np.uint8) + 100)
        assert emb.shape == (1, man["output"]["dim"]) and model.space_id == man["space_id"]
    assert here["mmacs"] <= here["budget"] and here["predicted_ms"] is None
    assert [f["format"] for f in here["latency"]["files"].values()] == ["onnx", "tflite"]
    # the ms device: a latency model measured over ssh, the winner predicted and measured within the budget
    assert loop["latency_model"]["built"] and loop["latency_model"]["subnets"] == 6
    lm = json.loads((out / loop["latency_model"]["file"]).read_text())
    assert lm["target"] == sshd["target"] and lm["status"] == "fitted"
    assert loop["predicted_ms"] <= 50 and loop["within_budget"] and loop["measured_ms"] <= 50
    readme = (out / "README.md").read_text()
    assert "| device |" in readme and "measured p50 ms" in readme and "gap to paragon" in readme
    for d in (here, loop):
        assert f"| {d['device']} | ok |" in readme and d["model_id"] in readme
    assert "**impossible failed**: " in readme and f"{index['paragon']['test_images']} images" in readme

    # a re-run reuses both finished devices (their digests are unchanged) and retries the failed one
    assert main(argv) == 1
    again = capsys.readouterr()
    for name in ("here", "loop"):
        assert f"{name}: reusing the finished release" in again.err
    assert "device 3/3 impossible (local, budget 1e-05 MMACs): releasing (the last attempt failed)" in again.err
    index2 = json.loads((out / "index.json").read_text())
    for old, new in zip(index["devices"][:2], index2["devices"][:2]):
        assert new["reused"] and new["released_at"] == old["released_at"] and new["digest"] == old["digest"]
    assert "ok (reused)" in (out / "README.md").read_text()


def test_release_quantization_aware_int8(trained, tmp_path, capsys):
    """qat_epochs: a device that ships int8 gets its winner finetuned quantization-aware, and its bundle (with the
    learned activation ranges) from that checkpoint; a float-only device in the same release is not touched."""
    cfg = SupernetConfig.load(trained / "sn")
    lo, hi = (arch_macs(cfg, a) / 1e6 for a in (smallest_arch(cfg), largest_arch(cfg)))
    mid = round((lo + hi) / 2, 4)
    (tmp_path / "devices.toml").write_text(TINY_RELEASE + f"""qat_epochs = 1

[devices.phone]
target = "local"
budget_mmacs = {mid}
formats = ["tflite"]
precisions = ["int8"]
""")
    out = tmp_path / "release"
    assert main(["release", "--supernet", str(trained / "sn"), "--gallery", str(trained / "gallery"),
                 "--devices", str(tmp_path / "devices.toml"), "--out", str(out), "--quiet"]) == 0
    assert "quantization-aware int8 finetune for 1 epoch(s)" in capsys.readouterr().err
    (d,) = json.loads((out / "index.json").read_text())["devices"]
    assert d["status"] == "ok", d.get("reason")
    assert d["qat"]["epochs"] == 1 and 0 < d["qat"]["val_het_r1"] <= 100 and "qat" in d["stages"]
    man = mf.load(out / d["bundle"])
    assert man["source"]["qat"]["scheme"] == "int8"
    (e,) = man["files"]
    assert (e["format"], e["precision"], e["int8_training"]) == ("tflite", "int8", "qat")
    assert e["qat_ranges"]["matched_points"] == e["qat_ranges"]["points"] > 0
    assert d["model_id"].endswith("-qat") and man["checks"][e["path"]]["status"] == "passed"


def _supernet(gallery, out, space: dict, *extra):
    (out.parent / f"{out.name}.json").write_text(json.dumps(space))
    assert main(["nas", "supernet", "--gallery", str(gallery), "--out", str(out), "--space",
                 str(out.parent / f"{out.name}.json"), "--epochs", "1", "--max-train-samples", "1000",
                 "--max-val-samples", "100", "--batch-size", "64", "--num-random", "1", "--threads", "1",
                 "--no-progress", *extra]) == 0
    return out


def test_a_device_is_searched_in_the_supernet_it_names(trained, tmp_path, capsys):
    """devices.toml `supernet = DIR` (relative to the file): that device is searched and finetuned in its own
    supernet; a device whose supernet was trained on other data fails with the reason, the others go on."""
    other = {**TINY, "head": {"channels": 32, "act": "hswish"}, "widths": [0.25, 0.5]}
    own = _supernet(trained / "gallery", tmp_path / "sn-own", other)
    held = _supernet(trained / "gallery", tmp_path / "sn-open", TINY, "--open-set-classes", "9", "--compat", "l2")
    cfg = SupernetConfig.load(own)
    lo, hi = (arch_macs(cfg, a) / 1e6 for a in (smallest_arch(cfg), largest_arch(cfg)))
    dev = '[devices.{name}]\ntarget = "local"\nbudget_mmacs = {b}\nformats = ["onnx"]\nprecisions = ["fp32"]\n'
    (tmp_path / "devices.toml").write_text(
        TINY_RELEASE + "\n" + dev.format(name="own", b=round((lo + hi) / 2, 4)) + 'supernet = "sn-own"\n\n'
        + dev.format(name="open", b=round((lo + hi) / 2, 4)) + 'supernet = "sn-open"\n')
    out = tmp_path / "release"
    assert main(["release", "--supernet", str(trained / "sn"), "--gallery", str(trained / "gallery"),
                 "--devices", str(tmp_path / "devices.toml"), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"own: searching {own} under" in err
    index = json.loads((out / "index.json").read_text())
    d, bad = index["devices"]
    assert d["status"] == "ok", d.get("reason")
    assert d["supernet"] == str(own) and d["mmacs"] <= d["budget"]
    assert d["search"]["arch"]["width"] in (0.25, 0.5)
    meta = json.loads((out / "own" / "work" / "cmpnas-own" / "meta.json").read_text())
    assert (out / "own" / "work" / "cmpnas-own" / meta["nas"]["supernet"]).resolve() == own.resolve()
    arch = d["search"]["arch"]
    assert meta["spec"]["head"] == arch_to_spec(cfg, arch)["head"]  # the own supernet's head (32 wide at width 1)
    assert meta["spec"]["head"] != arch_to_spec(SupernetConfig.load(trained / "sn"), arch)["head"]  # not --supernet's
    assert bad["status"] == "failed" and bad["supernet"] == str(held)
    assert bad["reason"] == (
        f"the device's supernet {held} was trained on fashion-mnist (held-out classes ['Ankle boot']), --supernet "
        f"{trained / 'sn'} on fashion-mnist (held-out classes none): one release evaluates every device on one test "
        "split, so train both supernets on the same data")
    readme = (out / "README.md").read_text()
    assert "devices naming their own" in readme and "| sn-own |" in readme


BAD = {
    "unknown key": ('[devices.a]\ntarget = "local"\nbudget_ms = 1\nformats = ["onnx"]\nprecisions = ["fp32"]\n'
                    'speed = 3\n', "[devices.a]: unknown key speed"),
    "missing budget": ('[devices.a]\ntarget = "local"\nformats = ["onnx"]\nprecisions = ["fp32"]\n',
                       "give exactly one budget"),
    "two budgets": ('[devices.a]\ntarget = "local"\nbudget_ms = 1\nbudget_mmacs = 1\nformats = ["onnx"]\n'
                    'precisions = ["fp32"]\n', "(it has budget_ms and budget_mmacs)"),
    "bad target": ('[devices.a]\ntarget = "tcp://board"\nbudget_ms = 1\nformats = ["onnx"]\nprecisions = ["fp32"]\n',
                   "[devices.a].target: unknown target 'tcp://board'"),
    "bad ssh target": ('[devices.a]\ntarget = "ssh://pi@board/x"\nbudget_ms = 1\nformats = ["onnx"]\n'
                       'precisions = ["fp32"]\n', "expected ssh://user@host[:port]"),
    "unknown format": ('[devices.a]\ntarget = "local"\nbudget_mmacs = 1\nformats = ["onnx", "pt"]\n'
                       'precisions = ["fp32"]\n', "[devices.a].formats: unknown 'pt'; choose from onnx, tflite"),
    "unknown precision": ('[devices.a]\ntarget = "local"\nbudget_mmacs = 1\nformats = ["onnx"]\n'
                          'precisions = ["fp8"]\n', "unknown 'fp8'; choose from fp32, fp16, int8"),
    "ms on coreml only": ('[devices.a]\ntarget = "local"\nbudget_ms = 1\nformats = ["coreml"]\n'
                          'precisions = ["fp32"]\n', "a ms budget is measured on a tflite or onnx file"),
    "negative budget": ('[devices.a]\ntarget = "local"\nbudget_ms = -1\nformats = ["onnx"]\nprecisions = ["fp32"]\n',
                        "budget_ms must be a positive number"),
    "unknown setting": ('[release]\nepochs = 3\n[devices.a]\ntarget = "local"\nbudget_ms = 1\nformats = ["onnx"]\n'
                        'precisions = ["fp32"]\n', "[release]: unknown key epochs; allowed: batch_size"),
    "bad setting type": ('[release]\nfinetune_epochs = "3"\n', "[release] finetune_epochs must be int, got '3'"),
    "no devices": ('[release]\nfinetune_epochs = 3\n', "no devices"),
    "supernet not there": ('[devices.a]\ntarget = "local"\nbudget_mmacs = 1\nformats = ["onnx"]\nprecisions = ["fp32"]\n'
                           'supernet = "nowhere"\n', "[devices.a].supernet: "),
    "unknown table": ('[device.a]\ntarget = "local"\n', "unknown key device; allowed: devices, release"),
    "not toml": ('[devices.a\ntarget = "local"\n', "is not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_devices_toml(case, tmp_path, capsys):
    text, message = BAD[case]
    (tmp_path / "d.toml").write_text(text)
    rc = main(["release", "--supernet", str(tmp_path / "sn"), "--gallery", str(tmp_path / "g"), "--devices",
               str(tmp_path / "d.toml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
