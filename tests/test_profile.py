"""Profiling: the on-device profiler, `hetsearch profile` locally, over a real sshd on loopback, and adb."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hetsearch import manifest as manifest_mod
from hetsearch.cli import main as cli_main
from hetsearch.errors import HetsearchError, IntegrityError
from hetsearch.export.profile import (
    RemoteSDKMissing,
    TargetError,
    parse_benchmark_model_output,
    parse_target,
    profile_bundle,
)
from sdk_bundle import cached_bundle

FAST = {"warmup": 1, "runs": 5, "min_seconds": 0.0}
PROFILE_FIELDS = ("load_ms", "first_inference_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "peak_rss_mb",
                  "runtime", "runtime_version", "threads_requested", "threads_os")


@pytest.fixture()
def bundle(tmp_path_factory, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(cached_bundle(tmp_path_factory), copy)
    return copy


def _check_ok(result):
    assert result["status"] == "ok", result.get("error")
    for field in PROFILE_FIELDS:
        assert field in result, field
    assert result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
    assert result["runs"] >= FAST["runs"]


def test_sdk_profiler_command(bundle, tmp_path):
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, "-m", "hetsearch.sdk.profile", str(bundle / "model-fp32.onnx"),
                           str(bundle / "model-fp32.tflite"), "--threads", "1", "--warmup", "1", "--runs", "7",
                           "--min-seconds", "0", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["host"]["cores"] >= 1 and report["host"]["platform"]
    assert [r["runtime"] for r in report["results"]] == ["onnxruntime", "litert"]
    for r in report["results"]:
        _check_ok(r)
        assert r["runs"] >= 7 and r["threads_requested"] == 1 and r["input_shape"] == [1, 1, 28, 28]
    missing = subprocess.run([sys.executable, "-m", "hetsearch.sdk.profile", str(tmp_path / "nope.onnx")],
                             capture_output=True, text=True, timeout=60)
    # nothing could run: an error, not a page of JSON
    assert missing.returncode == 2 and not missing.stdout.strip()
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    with_json = subprocess.run([sys.executable, "-m", "hetsearch.sdk.profile", str(tmp_path / "nope.onnx"),
                                "--json", str(tmp_path / "p.json")], capture_output=True, text=True, timeout=60)
    assert with_json.returncode == 1  # asked for the report: it is written, and says why
    assert "does not exist" in json.loads((tmp_path / "p.json").read_text())["results"][0]["error"]


def test_profile_local_updates_manifest_and_reports(bundle, tmp_path):
    paragon = tmp_path / "paragon"
    shutil.copytree(bundle, paragon)
    report = profile_bundle(bundle, "local", threads=1, paragon=paragon, **FAST)
    assert report["target"] == "local" and report["mmacs"] == pytest.approx(report["macs"] / 1e6)
    assert {r["format"] for r in report["results"]} == {"onnx", "tflite"}
    for r in report["results"]:
        _check_ok(r)
    for row in report["rows"]:
        assert row["vs_paragon"] is not None and row["vs_paragon"] > 0
    stored = manifest_mod.load(bundle)["latency"]["local"]
    assert set(stored) == {"model-fp32.onnx", "model-fp32.tflite"}
    assert stored["model-fp32.onnx"]["runtime"] == "onnxruntime" and stored["model-fp32.onnx"]["host"]["cpu"]
    assert not manifest_mod.load(paragon).get("latency")  # the paragon was measured, not written to

    only = profile_bundle(bundle, "local", formats="tflite", update_manifest=False, **FAST)
    assert [r["format"] for r in only["results"]] == ["tflite"]
    with pytest.raises(HetsearchError, match="unknown format"):
        profile_bundle(bundle, formats="onnx,pt", **FAST)


def test_profile_cli(bundle, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = cli_main(["profile", str(bundle), "--runs", "3", "--warmup", "0", "--min-seconds", "0", "--json", str(out),
                   "--formats", "onnx"])
    assert rc == 0
    assert "model-fp32.onnx" in capsys.readouterr().out
    assert json.loads(out.read_text())["results"][0]["status"] == "ok"
    assert "| model-fp32.onnx | ok |" in out.with_suffix(".md").read_text()
    assert cli_main(["profile", str(bundle), "--target", "ftp://x"]) == 2
    assert "unknown target" in capsys.readouterr().err
    assert cli_main(["profile", str(tmp_path / "none")]) == 2
    assert "not a hetsearch bundle" in capsys.readouterr().err


def test_tampered_file_is_not_profiled(bundle):
    with open(bundle / "model-fp32.tflite", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(IntegrityError):
        profile_bundle(bundle, formats="tflite", **FAST)


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_file_is_skipped_off_macos(bundle):
    package = bundle / "model-fp32.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Data" / "model.mlmodel").write_bytes(b"stand-in: never loaded off macOS")
    manifest = manifest_mod.load(bundle)
    manifest["files"].append({"path": package.name, "format": "coreml", "precision": "fp32",
                              "sha256": manifest_mod.sha256_path(package), "bytes": manifest_mod.size_path(package)})
    manifest_mod.save(bundle, manifest)
    report = profile_bundle(bundle, formats="coreml,tflite", **FAST)
    status = {r["format"]: (r["status"], r["error"]) for r in report["results"]}
    assert status["tflite"][0] == "ok"
    assert status["coreml"][0] == "skipped" and "macOS" in status["coreml"][1]


def test_parse_target():
    assert parse_target("local").kind == "local"
    t = parse_target("ssh://pi@raspberrypi.local:2222")
    assert (t.kind, t.user, t.host, t.port, t.name) == ("ssh", "pi", "raspberrypi.local", 2222, t.name)
    assert parse_target("ssh://pi@10.0.0.2").name == "ssh://pi@10.0.0.2"
    assert parse_target("ssh://[::1]:22").name == "ssh://[::1]"
    a = parse_target("adb://R58M12345")
    assert (a.kind, a.serial, a.slug) == ("adb", "R58M12345", "adb-R58M12345")
    for bad in ("ssh://", "ssh://host:notaport", "adb://", "tcp://x", "ssh://h/path"):
        with pytest.raises(HetsearchError):
            parse_target(bad)


# ----------------------------------------------------------------------------- a real sshd on loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not Path("/usr/sbin/sshd").exists() or shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        pytest.skip("OpenSSH server not installed (/usr/sbin/sshd); `make system` installs it")
    d = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                             "/usr/libexec/sftp-server") if Path(p).exists()), "internal-sftp")
    (d / "sshd_config").write_text(textwrap.dedent(f"""\
        ListenAddress 127.0.0.1
        Port {port}
        HostKey {d / 'host_key'}
        PidFile {d / 'sshd.pid'}
        AuthorizedKeysFile {d / 'authorized_keys'}
        PubkeyAuthentication yes
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PermitRootLogin prohibit-password
        UsePAM no
        StrictModes no
        Subsystem sftp {sftp}
        """))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege-separation directory sshd insists on
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")], stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield {"target": f"ssh://{getpass.getuser()}@127.0.0.1:{port}", "identity": str(d / "client_key"),
           "known_hosts": str(d / "known_hosts"), "log": d / "sshd.log"}
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _leftovers():
    return set(Path(os.environ.get("TMPDIR", "/tmp")).glob("hetsearch-profile.*"))


def test_profile_over_ssh_end_to_end(bundle, sshd):
    before = _leftovers()
    report = profile_bundle(bundle, sshd["target"], threads=1, identity=sshd["identity"],
                            known_hosts=sshd["known_hosts"], remote_python=sys.executable, **FAST)
    assert report["target"] == sshd["target"]
    assert report["host"]["cores"] >= 1
    for r in report["results"]:
        _check_ok(r)
        assert r["sha256"] == manifest_mod.file_entry(manifest_mod.load(bundle), r["file"])["sha256"]
    assert set(manifest_mod.load(bundle)["latency"][sshd["target"]]) == {"model-fp32.onnx", "model-fp32.tflite"}
    assert _leftovers() == before  # the device's temporary directory was removed
    host_key = (Path(sshd["identity"]).parent / "host_key.pub").read_text().split()[1]
    assert host_key in Path(sshd["known_hosts"]).read_text()  # accept-new recorded the device's key


def test_ssh_device_without_the_sdk(bundle, sshd):
    bare = f"{sys.executable} -I -S"  # a Python that cannot import hetsearch
    with pytest.raises(RemoteSDKMissing, match=r"pip install 'hetsearch\[sdk\]'"):
        profile_bundle(bundle, sshd["target"], identity=sshd["identity"], known_hosts=sshd["known_hosts"],
                       remote_python=bare, formats="onnx", update_manifest=False, **FAST)
    with pytest.raises(TargetError, match="not found"):
        profile_bundle(bundle, sshd["target"], identity=sshd["identity"], known_hosts=sshd["known_hosts"],
                       remote_python="/nonexistent/python3", formats="onnx", update_manifest=False, **FAST)


def test_ssh_unreachable_or_refused(bundle, sshd, tmp_path):
    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    with pytest.raises(TargetError, match="cannot reach"):
        profile_bundle(bundle, sshd["target"], identity=str(other_key), known_hosts=sshd["known_hosts"],
                       formats="onnx", update_manifest=False, **FAST)
    with pytest.raises(TargetError, match="cannot reach"):
        profile_bundle(bundle, f"ssh://nobody@127.0.0.1:{_free_port()}", identity=sshd["identity"],
                       known_hosts=sshd["known_hosts"], formats="onnx", update_manifest=False, **FAST)


# ----------------------------------------------------------------------------- adb and benchmark_model

BENCHMARK_MODEL_OUTPUT = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [2]
INFO: Graph: [/data/local/tmp/hetsearch-profile-1a2b3c4d/model-fp32.tflite]
INFO: #threads used for CPU inference: [2]
INFO: Loaded model /data/local/tmp/hetsearch-profile-1a2b3c4d/model-fp32.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 0.0614
INFO: Initialized session in 3.337ms.
INFO: Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=4032 first=812 curr=118 min=101 max=2210 avg=123.9 std=41

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=8011 first=121 curr=119 min=99 max=1480 avg=120.6 std=22

INFO: Inference timings in us: Init: 3337, First inference: 812, Warmup (avg): 123.9, Inference (avg): 120.6
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=2.43359 overall=3.01172
INFO: Overall peak memory footprint (MB) via periodic monitoring: 13.1797
INFO: Memory status at the end of exeution:
INFO: - VmRSS              : 13 MB
"""


def test_parse_benchmark_model_output():
    r = parse_benchmark_model_output(BENCHMARK_MODEL_OUTPUT)
    assert r["load_ms"] == pytest.approx(3.337)
    assert r["first_inference_ms"] == pytest.approx(0.812)
    assert r["warmup_mean_ms"] == pytest.approx(0.1239)
    assert r["mean_ms"] == pytest.approx(0.1206)
    assert (r["runs"], r["min_ms"], r["max_ms"], r["std_ms"]) == (8011, pytest.approx(0.099), pytest.approx(1.48),
                                                                  pytest.approx(0.022))
    assert r["p50_ms"] is None and r["p99_ms"] is None  # benchmark_model prints no percentiles
    assert r["memory_delta_init_mb"] == pytest.approx(2.43359)
    assert r["memory_delta_overall_mb"] == pytest.approx(3.01172)
    assert r["peak_rss_mb"] == pytest.approx(13.1797)
    assert r["model_size_mb"] == pytest.approx(0.0614)
    with_median = parse_benchmark_model_output(BENCHMARK_MODEL_OUTPUT.replace("std=22", "std=22 median=118"))
    assert with_median["p50_ms"] == pytest.approx(0.118)
    minimal = parse_benchmark_model_output(
        "Inference timings in us: Init: 5388, First inference: 101726, Warmup (avg): 92755.2, Inference (avg): 90865.9")
    assert minimal["mean_ms"] == pytest.approx(90.8659) and "runs" not in minimal
    with pytest.raises(TargetError, match="no timings"):
        parse_benchmark_model_output("ERROR: Failed to apply GPU delegate.\nBenchmarking failed.\n")


def test_profile_over_adb_with_benchmark_model(bundle, tmp_path):
    """The adb:// plumbing against a stand-in adb that records its calls and answers like a device."""
    calls = tmp_path / "calls.jsonl"
    sample = tmp_path / "sample.txt"
    sample.write_text(BENCHMARK_MODEL_OUTPUT)
    fake = tmp_path / "adb"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        args = sys.argv[1:]
        with open({str(calls)!r}, "a") as fh:
            fh.write(json.dumps(args) + "\\n")
        assert args[:2] == ["-s", "EMU123"], args
        cmd = args[2:]
        if cmd[0] == "shell" and "--graph=" in cmd[1]:
            print(open({str(sample)!r}).read())
        elif cmd[0] == "shell" and cmd[1].startswith("getprop"):
            print("Google\\nPixel 7\\narm64-v8a\\n14\\ngs201")
        elif cmd[0] == "shell" and "echo ok" in cmd[1]:
            print("ok")
        """))
    fake.chmod(0o755)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF stand-in")
    report = profile_bundle(bundle, "adb://EMU123", threads=2, benchmark_model=str(binary), adb=str(fake), **FAST)
    tflite, = [r for r in report["results"] if r["format"] == "tflite"]
    assert tflite["status"] == "ok" and tflite["mean_ms"] == pytest.approx(0.1206)
    assert report["host"]["device"] == "Google Pixel 7"
    assert [r["format"] for r in report["results"]] == ["tflite"]
    seen = [json.loads(line)[2:] for line in calls.read_text().splitlines()]
    run = next(c for c in seen if c[0] == "shell" and "--graph=" in c[1])
    assert "--num_threads=2" in run[1] and "--num_runs=5" in run[1] and "--graph=/data/local/tmp/" in run[1]
    assert any(c[0] == "push" and c[1].endswith("benchmark_model") for c in seen)
    assert seen[-1][0] == "shell" and seen[-1][1].startswith("rm -rf /data/local/tmp/hetsearch-profile-")
    assert manifest_mod.load(bundle)["latency"]["adb://EMU123"]["model-fp32.tflite"]["runtime"] == \
        "litert benchmark_model"
    with pytest.raises(HetsearchError, match="--benchmark-model"):
        profile_bundle(bundle, "adb://EMU123", adb=str(fake), **FAST)
    everything = profile_bundle(bundle, "adb://EMU123", formats="onnx,tflite", benchmark_model="/data/bm",
                                adb=str(fake), update_manifest=False, **FAST)
    onnx, = [r for r in everything["results"] if r["format"] == "onnx"]
    assert onnx["status"] == "skipped" and ".tflite files only" in onnx["error"]
