"""Export toolchain: ONNX / TFLite / Core ML round trips, parity, the compatibility gate, integrity, manifest."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from hetsearch import manifest as mf
from hetsearch.errors import BundleError, CheckFailed, IntegrityError, SpaceMismatchError

torch.set_num_threads(1)

ALL = ("fp32", "fp16", "int8")


# ----------------------------------------------------------------------------- fixtures (session: seconds)


@pytest.fixture(scope="session")
def data():
    from hetsearch.cmpnas.data import load_data, train_val_split

    ds = load_data("fashion-mnist", split="train")
    train, val = train_val_split(ds, 0.1, 0, max_train_samples=1500, max_val_samples=300)
    return train, val


@pytest.fixture(scope="session")
def pair(tiny_runs):
    """A gallery model (resnet-tiny) and a query model (mbv3-tiny, the default compatibility loss) from the real
    trainer (conftest's tiny_runs: 3 epochs on 3,000 Fashion-MNIST images), so the int8 tests prove the real recipe."""
    return tiny_runs["gallery"], tiny_runs["query"]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, data, pair):
    """Every format and precision, exported once (TFLite conversion is slow) with all checks."""
    from hetsearch.export.exporter import export_bundle

    train, val = data
    gallery, query = pair
    out = tmp_path_factory.mktemp("bundle") / "query"
    manifest = export_bundle(query.path, out, formats=("onnx", "tflite", "coreml"), precisions=ALL,
                             calib_data=train.subset(np.arange(0, 1500, 10)), gallery=gallery.path, check_data=val,
                             progress=False)
    return out, manifest


def _copy(bundle_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle_dir, dst)
    return dst


# ----------------------------------------------------------------------------- the bundle


def test_manifest_is_valid_and_matches_the_json_schema(bundle, pair):
    from hetsearch.export.manifest_schema import schema_problems

    out, manifest = bundle
    _, query = pair
    assert mf.load(out) == json.loads(json.dumps(manifest))
    assert schema_problems(manifest) == []
    assert manifest["space_id"] == query.space_id
    assert manifest["architecture"] == query.spec
    assert manifest["input"] == {**manifest["input"], "height": 28, "width": 28, "channels": 1, "layout": "NCHW",
                                 "dtype": "float32", "value_range": [0, 255], "color": "grayscale"}
    assert manifest["output"]["dim"] == 128 and manifest["output"]["l2_normalized"] is True
    for tool in ("torch", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert", "coremltools"):
        assert manifest["tools"][tool], tool
    assert manifest["latency"] == {}


def test_every_format_and_precision_is_exported_self_contained(bundle):
    out, manifest = bundle
    got = {(e["format"], e["precision"]) for e in manifest["files"]}
    assert got == {(f, p) for f in ("onnx", "tflite", "coreml") for p in ALL}, manifest["failures"]
    assert manifest["failures"] == []
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["manifest.json"] + [e["path"] for e in manifest["files"]])  # no external data files
    for e in manifest["files"]:
        mf.verify_file(out, e)
        if e["format"] == "onnx":
            assert isinstance(e["opset"], int) and e["opset"] >= 17


def test_onnx_and_tflite_io_contract(bundle):
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    out, manifest = bundle
    for prec in ALL:
        s = ort.InferenceSession(str(out / f"model-{prec}.onnx"), providers=["CPUExecutionProvider"])
        (i,), (o,) = s.get_inputs(), s.get_outputs()
        assert (i.name, i.shape, i.type) == ("pixels", [1, 1, 28, 28], "tensor(float)")
        assert (o.name, o.shape, o.type) == ("embedding", [1, 128], "tensor(float)")
        it = Interpreter(model_path=str(out / f"model-{prec}.tflite"))
        runner = it.get_signature_runner("serving_default")
        ins, outs = runner.get_input_details(), runner.get_output_details()
        assert list(ins) == ["pixels"] and list(outs) == ["embedding"]
        assert ins["pixels"]["dtype"] == np.float32 and list(ins["pixels"]["shape"]) == [1, 1, 28, 28]
        assert outs["embedding"]["dtype"] == np.float32 and list(outs["embedding"]["shape"]) == [1, 128]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
@pytest.mark.parametrize("prec", ALL)
def test_round_trip_parity_with_the_real_runtime(bundle, pair, data, fmt, prec):
    from hetsearch.cmpnas.embed import embed
    from hetsearch.export.runners import open_runner

    out, manifest = bundle
    _, query = pair
    _, val = data
    x = val.as_model_input(28, 28, 1)[:64]
    ref = embed(query.model, x)
    got = open_runner(out, mf.file_entry(manifest, f"model-{prec}.{fmt}")).embed(x)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=2e-2 if prec == "int8" else 1e-3)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= {"fp32": 0.9999, "fp16": 0.999, "int8": 0.9}[prec]
    if prec == "fp32":
        assert np.abs(got - ref).max() < 1e-4
    rec = manifest["checks"][f"model-{prec}.{fmt}"]
    assert rec["status"] == "passed", rec
    assert rec["parity"]["status"] == "passed" and rec["parity"]["n"] == 300
    assert rec["compat"]["status"] == "passed"
    assert abs(rec["compat"]["delta"]) <= {"fp32": 0.2, "fp16": 0.5, "int8": 1.5}[prec]


@pytest.mark.parametrize("prec", ALL)
def test_tflite_runs_as_one_xnnpack_partition(bundle, prec):
    """XNNPACK runs every TFLite file whole: no node left to LiteRT's own kernels between delegated pieces (an int8
    HARD_SWISH, which XNNPACK does not have, used to cut the int8 graph into 4-5 pieces); the profile says so."""
    from hetsearch.sdk.profile import profile_file

    out, _ = bundle
    rep = profile_file(out / f"model-{prec}.tflite", threads=1, warmup=1, runs=3, min_seconds=0)
    assert (rep["delegate"], rep["delegate_partitions"]) == ("xnnpack", 1), rep


def test_compatibility_numbers_are_meaningful(bundle):
    _, manifest = bundle
    rec = manifest["checks"]["model-fp32.onnx"]["compat"]
    # the query model lives in the gallery's space: far above chance (10%) and near the paragon
    assert rec["reference_r1"] > 30 and rec["gallery_r1"] > 40
    assert rec["r1"] >= 0.5 * rec["gallery_r1"]


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_is_converted_spec_checked_and_skipped_off_macos(bundle):
    from hetsearch.export.runners import coreml_spec_problems

    out, manifest = bundle
    for prec in ALL:
        name = f"model-{prec}.mlpackage"
        assert (out / name).is_dir()
        assert coreml_spec_problems(out / name, (1, 1, 28, 28), 128) == []
        rec = manifest["checks"][name]
        assert rec["status"] == "skipped" and rec["reason"] == "needs macOS"
        assert rec["parity"] == {"status": "skipped", "reason": "needs macOS"}
        assert rec["compat"]["status"] == "skipped"
        assert rec["spec"]["status"] == "passed"
    assert "passed" not in json.dumps({k: v for k, v in manifest["checks"].items() if k.endswith(".mlpackage")}
                                      ).replace('"spec": {"status": "passed"}', "")


def test_summary_table_has_one_row_per_file(bundle):
    from hetsearch.export.exporter import format_summary, summary_rows

    _, manifest = bundle
    rows = summary_rows(manifest)
    assert len(rows) == 9
    text = format_summary(manifest)
    for col in ("format", "precision", "status", "size", "parity", "compat", "latency"):
        assert col in text.splitlines()[0]
    assert "skipped: needs macOS" in text
    assert all(r["latency"] is None for r in rows)  # filled by profiling


# ----------------------------------------------------------------------------- integrity and corruption


def test_tampered_file_is_refused(bundle, tmp_path, data):
    from hetsearch.export.checks import check_bundle

    out, manifest = bundle
    copy = _copy(out, tmp_path)
    f = copy / "model-fp32.onnx"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        mf.verify_file(copy, mf.file_entry(manifest, "model-fp32.onnx"))
    with pytest.raises(IntegrityError):
        check_bundle(copy, data[1], gallery=None)
    (copy / "model-fp16.mlpackage" / "Manifest.json").write_text("{}")
    with pytest.raises(IntegrityError):
        mf.verify_file(copy, mf.file_entry(manifest, "model-fp16.mlpackage"))


@pytest.mark.parametrize("fmt,runtime", [("onnx", "ONNX Runtime"), ("tflite", "LiteRT interpreter")])
def test_corrupted_bytes_give_a_clear_error(bundle, tmp_path, fmt, runtime):
    from hetsearch.export.runners import open_runner

    out, manifest = bundle
    copy = _copy(out, tmp_path)
    name = f"model-fp32.{fmt}"
    (copy / name).write_bytes(b"\x00garbage" * 64)
    entry = dict(mf.file_entry(manifest, name), sha256=mf.sha256_path(copy / name))  # re-vouched: bytes are bad
    with pytest.raises(BundleError, match=f"{runtime} cannot"):
        open_runner(copy, entry)
    truncated = (out / name).read_bytes()[:200]
    (copy / name).write_bytes(truncated)
    entry = dict(entry, sha256=mf.sha256_path(copy / name))
    with pytest.raises(BundleError, match="cannot"):
        open_runner(copy, entry)


def test_missing_file_is_a_bundle_error(bundle, tmp_path):
    out, manifest = bundle
    copy = _copy(out, tmp_path)
    (copy / "model-int8.tflite").unlink()
    with pytest.raises(BundleError, match="missing"):
        mf.verify_file(copy, mf.file_entry(manifest, "model-int8.tflite"))


# ----------------------------------------------------------------------------- manifest validation


def test_validation_problems_catch_broken_manifests(bundle):
    from hetsearch.export.manifest_schema import schema_problems

    _, manifest = bundle
    good = json.loads(json.dumps(manifest))
    assert mf.validation_problems(good) == []

    def broken(edit):
        m = json.loads(json.dumps(good))
        edit(m)
        return m

    cases = {
        "missing key 'space_id'": broken(lambda m: m.pop("space_id")),
        "sha256 must be 64": broken(lambda m: m["files"][0].update(sha256="abc")),
        "must be relative": broken(lambda m: m["files"][1].update(path="../../etc/passwd")),
        "listed twice": broken(lambda m: m["files"].append(dict(m["files"][0]))),
        "format must be one of": broken(lambda m: m["files"][0].update(format="pb")),
        "layout must be one of": broken(lambda m: m["input"].update(layout="CHWN")),
        "not a hetsearch space id": broken(lambda m: m.update(space_id="gallery-v1")),
        "schema_version": broken(lambda m: m.update(schema_version=2)),
    }
    for needle, m in cases.items():
        problems = mf.validation_problems(m)
        assert any(needle in p for p in problems), (needle, problems)
        assert schema_problems(m), needle
        with pytest.raises(BundleError, match="not a valid hetsearch manifest"):
            mf.validate(m)
    # stricter than the reader: the exporter's schema also wants tools, failures, float32 I/O
    assert schema_problems(broken(lambda m: m.pop("tools")))
    assert schema_problems(broken(lambda m: m["input"].update(dtype="uint8")))
    assert schema_problems(broken(lambda m: m["failures"].append({"format": "onnx", "precision": "int8"})))


def test_json_schema_and_validation_come_from_the_same_declarations(bundle):
    """One declaration (hetsearch.manifest's parts) gives the reader's checks, the exporter's strict checks and the
    JSON Schema: they agree on a real bundle, on every required key and enum, and on broken manifests."""
    import dataclasses

    from hetsearch.export.manifest_schema import MANIFEST_SCHEMA, schema_problems

    out, manifest = bundle
    good = json.loads((out / mf.MANIFEST_NAME).read_text())
    assert MANIFEST_SCHEMA == mf.json_schema()
    assert mf.validation_problems(good) == mf.validation_problems(good, strict=True) == schema_problems(good) == []
    typed = mf.Manifest.from_dict(good)
    assert list(typed.to_dict().items()) == list(good.items())  # exact, key order included
    assert json.dumps(typed.to_dict(), indent=2) + "\n" == (out / mf.MANIFEST_NAME).read_text()
    assert (typed.input.height, typed.output.dim, typed.file("model-int8.onnx").precision) == (28, 128, "int8")
    assert typed.checks["model-fp32.onnx"].parity.status == "passed"

    def broken(edit):
        m = json.loads(json.dumps(good))
        edit(m)
        return m

    def walk(cls, schema, at, where):
        """Every declared field against its schema node; dropping each required key fails where it should."""
        assert schema["required"] == [f.name for f in dataclasses.fields(cls) if f.metadata.get("need")]
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if meta.get("extra"):
                continue
            node = schema["properties"][f.name]
            enum = {**meta["common"], **meta["strict"]}.get("enum")
            if enum:
                assert node == {"enum": list(enum)}, f.name
            if meta["need"] and where is not None and f.name in at(good):
                m = broken(lambda m: at(m).pop(f.name))
                reader, strict = mf.validation_problems(m), mf.validation_problems(m, strict=True)
                assert f"{where}: missing key {f.name!r}" in strict, (f.name, strict)
                assert (f"{where}: missing key {f.name!r}" in reader) == (meta["need"] == mf.READ), (f.name, reader)
                assert any(f"'{f.name}' is a required property" in p for p in schema_problems(m)), f.name

    walk(mf.Manifest, MANIFEST_SCHEMA, lambda m: m, "manifest")
    walk(mf.InputSpec, MANIFEST_SCHEMA["properties"]["input"], lambda m: m["input"], "manifest.input")
    walk(mf.OutputSpec, MANIFEST_SCHEMA["properties"]["output"], lambda m: m["output"], "manifest.output")
    walk(mf.FileEntry, MANIFEST_SCHEMA["properties"]["files"]["items"], lambda m: m["files"][0], "manifest.files[0]")
    walk(mf.CheckEntry, MANIFEST_SCHEMA["properties"]["checks"]["additionalProperties"],
         lambda m: m["checks"]["model-fp32.onnx"], "manifest.checks['model-fp32.onnx']")
    walk(mf.Architecture, MANIFEST_SCHEMA["properties"]["architecture"], lambda m: m["architecture"],
         "manifest.architecture")
    assert {r["if"]["properties"]["format"]["const"] for r in MANIFEST_SCHEMA["properties"]["files"]["items"]["allOf"]
            } == set(mf.FORMATS)

    # broken manifests: (edit, where the reader / strict check says it, where the JSON Schema says it);
    # a None reader location: readers do not need it, the exporter's contract (strict, schema) does
    cases = [
        (lambda m: m["files"][0].update(sha256="abc"), "manifest.files[0].sha256", "files/0/sha256"),
        (lambda m: m["files"][0].update(format="pb"), "manifest.files[0].format", "files/0/format"),
        (lambda m: m["input"].update(height=0), "manifest.input.height", "input/height"),
        (lambda m: m["input"].update(channels=2), "manifest.input.channels", "input/channels"),
        (lambda m: m["output"].update(dim="128"), "manifest.output.dim", "output/dim"),
        (lambda m: m.update(space_id="gallery-v1"), "manifest.space_id", "space_id"),
        (lambda m: m.update(schema_version=2), "manifest.schema_version", "schema_version"),
        (lambda m: m.update(architecture=[]), "manifest.architecture", "architecture"),
        (lambda m: m["input"].update(dtype="uint8"), None, "input/dtype"),
        (lambda m: m["output"].update(l2_normalized=False), None, "output/l2_normalized"),
        (lambda m: m["files"][0].update(path="weights.onnx"), None, "files/0/path"),
        (lambda m: m["files"][0].update(runtime="litert"), None, "files/0/runtime"),
        (lambda m: m["files"][0].pop("opset"), None, "files/0"),
        (lambda m: m["files"][0].update(int8_training="later"), None, "files/0/int8_training"),
        (lambda m: m["checks"]["model-fp32.onnx"].update(status="meh"), None, "checks/model-fp32.onnx/status"),
        (lambda m: m["checks"]["model-fp32.onnx"]["parity"].update(cos_min="high"), None,
         "checks/model-fp32.onnx/parity/cos_min"),
        (lambda m: m["tools"].pop("onnx"), None, "tools"),
        (lambda m: m["failures"].append({"format": "onnx", "precision": "int8"}), None, "failures/0"),
        (lambda m: m["source"].update(weights_sha256="xyz"), None, "source/weights_sha256"),
    ]
    for edit, where, schema_where in cases:
        m = broken(edit)
        reader, strict, schema = mf.validation_problems(m), mf.validation_problems(m, strict=True), schema_problems(m)
        assert any(p.startswith(schema_where + ":") for p in schema), (schema_where, schema)
        expected = where or "manifest." + schema_where.replace("/", ".").replace(".0", "[0]").replace(
            ".model-fp32.onnx", "['model-fp32.onnx']")
        assert any(p.startswith(expected) for p in strict), (expected, strict)
        assert any(p.startswith(expected) for p in reader) if where else reader == [], (where, reader)


# ----------------------------------------------------------------------------- the compatibility gate


@pytest.fixture(scope="session")
def untrained_bundle(tmp_path_factory, data, pair):
    """An untrained query model that *claims* the gallery's space: the gate must fail it.
    int8 without calibration images fails to export — recorded, the rest continue."""
    from hetsearch.cmpnas.checkpoint import save_checkpoint
    from hetsearch.cmpnas.models import build_model
    from hetsearch.export.exporter import export_bundle

    gallery, _ = pair
    root = tmp_path_factory.mktemp("untrained")
    torch.manual_seed(3)
    save_checkpoint(root / "query", build_model("mbv3-tiny"), kind="query", space_id=gallery.space_id)
    manifest = export_bundle(root / "query", root / "bundle", formats=("onnx",), precisions=("fp32", "int8"),
                             gallery=gallery.path, check_data=data[1], progress=False, keep_failed=True)
    return root, manifest


def test_gate_fails_an_incompatible_model(untrained_bundle):
    _, manifest = untrained_bundle
    rec = manifest["checks"]["model-fp32.onnx"]
    assert rec["parity"]["status"] == "passed"  # the file is a faithful copy ...
    assert rec["compat"]["status"] == "failed"  # ... of a model that is not in the gallery's space
    assert "not compatible with this gallery" in rec["compat"]["reason"]
    assert rec["status"] == "failed"


def test_conversion_failure_is_recorded_and_the_rest_continue(untrained_bundle):
    _, manifest = untrained_bundle
    assert [e["path"] for e in manifest["files"]] == ["model-fp32.onnx"]
    (failure,) = manifest["failures"]
    assert (failure["format"], failure["precision"]) == ("onnx", "int8")
    assert "calibration" in failure["reason"]
    from hetsearch.export.exporter import format_summary

    assert "export failed" in format_summary(manifest)


def test_check_cli_exit_codes(untrained_bundle, bundle, pair, tmp_path, capsys):
    from hetsearch.cli import main

    root, _ = untrained_bundle
    gallery, query = pair
    args = ["check", str(root / "bundle"), "--gallery", str(gallery.path), "--check-samples", "200"]
    assert main(args) == CheckFailed.exit_code == 3
    err = capsys.readouterr().err
    assert "failed the checks" in err and "Traceback" not in err
    # accepting another embedding space never accepts a failed check; --report-only reports it
    assert main(args + ["--allow-space-mismatch"]) == 3
    assert "failed the checks" in capsys.readouterr().err
    assert main(args + ["--report-only"]) == 0
    assert "warning: 1 of 1 files failed the checks" in capsys.readouterr().err
    out_json = tmp_path / "check.json"
    rc = main(["check", str(bundle[0]), "--gallery", str(gallery.path), "--query", str(query.path),
               "--files", "model-fp32.onnx,model-int8.tflite", "--json", str(out_json)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out_json.read_text())
    assert res["passed"] is True and set(res["results"]) == {"model-fp32.onnx", "model-int8.tflite"}
    assert res["results"]["model-fp32.onnx"]["parity"]["cos_min"] > 0.9999
    # --query from another model is refused with a clear message
    assert main(["check", str(bundle[0]), "--query", str(root / "query")]) == 2
    assert "weights differ" in capsys.readouterr().err


@pytest.fixture(scope="session")
def other_gallery(tmp_path_factory):
    from hetsearch.cmpnas.checkpoint import load_checkpoint, save_checkpoint
    from hetsearch.cmpnas.models import build_model

    d = tmp_path_factory.mktemp("other") / "gallery"
    torch.manual_seed(7)
    save_checkpoint(d, build_model("resnet-tiny"), kind="gallery")
    return load_checkpoint(d)


def test_space_mismatch_is_refused_unless_allowed(bundle, pair, data, other_gallery, tmp_path, capsys):
    from hetsearch.cli import main
    from hetsearch.export.checks import check_bundle
    from hetsearch.export.exporter import export_bundle

    _, query = pair
    assert other_gallery.space_id != query.space_id
    with pytest.raises(SpaceMismatchError):
        export_bundle(query.path, tmp_path / "b", formats=("onnx",), gallery=other_gallery.path,
                      check_data=data[1], progress=False)
    assert not (tmp_path / "b").exists()  # refused before converting anything
    with pytest.raises(SpaceMismatchError):
        check_bundle(bundle[0], data[1], gallery=other_gallery.path, files=["model-fp32.onnx"])
    rc = main(["check", str(bundle[0]), "--gallery", str(other_gallery.path), "--files", "model-fp32.onnx"])
    assert rc == 2 and "embedding space" in capsys.readouterr().err
    res = check_bundle(bundle[0], data[1], gallery=other_gallery.path, files=["model-fp32.onnx"],
                       allow_mismatch=True)
    assert "space_mismatch" in res["model-fp32.onnx"]


# ----------------------------------------------------------------------------- CLI and thresholds


def test_export_cli_end_to_end(pair, tmp_path, capsys):
    from hetsearch.cli import main

    gallery, query = pair
    out = tmp_path / "bundle"
    rc = main(["export", str(query.path), "--formats", "onnx", "--precision", "fp32", "--out", str(out),
               "--gallery", str(gallery.path), "--check-samples", "120", "--json", str(tmp_path / "e.json"),
               "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "parity (cos min)" in captured.out and "onnx" in captured.out
    m = mf.load(out)
    assert m["checks"]["model-fp32.onnx"]["status"] == "passed"
    assert m["checks"]["model-fp32.onnx"]["data"] == "fashion-mnist:train[val:stratified][check-samples]"
    assert json.loads((tmp_path / "e.json").read_text())["rows"][0]["format"] == "onnx"
    assert main(["export", str(query.path), "--formats", "onnx,pb", "--out", str(out)]) == 2
    assert "unknown format 'pb'" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--out", str(out), "--no-check"]) == 2
    assert "no hetsearch checkpoint" in capsys.readouterr().err


def test_files_that_fail_their_checks_leave_the_bundle(untrained_bundle, pair, data, tmp_path, capsys):
    from hetsearch.cli import main
    from hetsearch.sdk.model import QueryModel

    root, _ = untrained_bundle
    gallery, _ = pair
    args = ["export", str(root / "query"), "--formats", "onnx,tflite", "--precision", "fp32", "--gallery",
            str(gallery.path), "--check-samples", "300", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "gated")]) == CheckFailed.exit_code
    err = capsys.readouterr().err
    assert "no file could be exported and checked" in err and "removed from the bundle" in err
    assert not list((tmp_path / "gated").glob("model-*"))  # nothing unvouched-for is left behind
    assert main(args + ["--out", str(tmp_path / "kept"), "--report-only"]) == 0
    assert "kept, marked failed: --report-only" in capsys.readouterr().err
    kept = mf.load(tmp_path / "kept")
    assert {e["path"] for e in kept["files"]} == {"model-fp32.onnx", "model-fp32.tflite"}
    assert all(kept["checks"][p]["status"] == "failed" for p in ("model-fp32.onnx", "model-fp32.tflite"))
    with pytest.raises(BundleError, match="failed its checks at export"):
        QueryModel.load(tmp_path / "kept")


def test_a_failed_file_is_removed_and_the_rest_stay(bundle, pair, data, tmp_path):
    from hetsearch.export.exporter import export_bundle

    gallery, query = pair
    strict = {"parity": {"fp32": {"cos_min": 1.01}}}  # an fp32 parity floor no file can reach
    m = export_bundle(query.path, tmp_path / "b", formats=("onnx",), precisions=("fp32", "fp16"),
                      gallery=gallery.path, check_data=data[1], thresholds=strict, progress=False)
    assert [e["path"] for e in m["files"]] == ["model-fp16.onnx"] and (tmp_path / "b" / "model-fp16.onnx").exists()
    assert not (tmp_path / "b" / "model-fp32.onnx").exists()
    (failure,) = m["failures"]
    assert failure["stage"] == "checks" and failure["precision"] == "fp32" and "cos_min" in failure["reason"]
    from hetsearch.export.exporter import format_summary

    assert "failed checks (removed)" in format_summary(m)


@pytest.mark.parametrize("command", ["export", "check"])
def test_help_has_examples(command, capsys):
    from hetsearch.cli import main

    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"hetsearch {command} " in text


def test_profile_is_not_registered_here():
    import argparse

    from hetsearch.export.cli import register

    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    register(sub)
    assert set(sub.choices) == {"export", "check", "show"}


def test_thresholds_and_parity_math():
    from hetsearch.errors import HetsearchError
    from hetsearch.export.checks import judge_parity, merge_thresholds, parity_stats, parse_threshold_args

    t = merge_thresholds(parse_threshold_args("int8=3,fp16=0.1", 0.7))
    assert t["compat_drop"] == {"fp32": 0.2, "fp16": 0.1, "int8": 3.0} and t["min_compat_ratio"] == 0.7
    with pytest.raises(HetsearchError):
        parse_threshold_args("int4=1")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 16)).astype(np.float32)
    s = parity_stats(a, a)
    assert s["cos_min"] == pytest.approx(1.0) and s["max_abs_diff"] == 0
    assert judge_parity(s, "fp32", t)["status"] == "passed"
    noisy = parity_stats(a, a + rng.normal(scale=0.3, size=a.shape))
    j = judge_parity(noisy, "fp32", t)
    assert j["status"] == "failed" and "cos_min" in j["reason"]
    nan = parity_stats(a, np.full_like(a, np.nan))
    assert judge_parity(nan, "int8", t)["status"] == "failed"
    # an int8 file from a quantization-aware checkpoint is held to the stricter qat_parity floors
    mid = {"cos_min": 0.96, "cos_mean": 0.9975, "max_abs_diff": 0.1, "n": 50}
    assert judge_parity(mid, "int8", t)["status"] == "passed"
    assert judge_parity({**mid, "cos_min": 0.93}, "int8", t)["status"] == "failed"  # the whole-body-int8 tail
    j = judge_parity(mid, "int8", t, qat=True)
    assert j["status"] == "failed" and j["floor"] == "qat" and "cos_min 0.96000 < 0.97" in j["reason"]
    assert "quantization-aware" in j["reason"] and "floor" not in judge_parity(mid, "int8", t)
    assert judge_parity(s, "fp32", t, qat=True)["thresholds"] == t["parity"]["fp32"]  # no QAT floor for fp32
    loose = merge_thresholds({"qat_parity": {"int8": {"cos_min": 0.9, "cos_mean": 0.99}}})
    assert judge_parity(mid, "int8", loose, qat=True)["status"] == "passed"
    with pytest.raises(ValueError):
        merge_thresholds({"qat": {}})


def test_int8_keeps_working_when_a_layer_never_fires(data, tmp_path, monkeypatch):
    """A block whose ReLU never fires has a constant (zero-width) calibrated range; ai-edge-quantizer turns it
    into a ~1e-12 scale, the next bias overflows and the file computes garbage (the demo's query-bct had this in
    a squeeze-excitation branch). Widening such ranges fixes it: shown here with and without the fix."""
    from hetsearch.cmpnas.checkpoint import save_checkpoint
    from hetsearch.cmpnas.models import build_model
    from hetsearch.cmpnas.nas.supernet import recalibrate_bn
    from hetsearch.export import exporter
    from hetsearch.export.exporter import export_bundle

    train, val = data
    spec = {"family": "mobilenetv3", "input_size": [28, 28], "in_channels": 1, "embed_dim": 32,
            "stem": {"out": 8, "stride": 2, "act": "hswish"},
            "stages": [{"out": 16, "stride": 2, "se": False, "act": "relu",
                        "blocks": [{"kernel": 3, "expand": 2}, {"kernel": 3, "expand": 2}]}],
            "head": {"channels": 32, "act": "hswish"}}
    torch.manual_seed(0)
    model = build_model(spec)
    recalibrate_bn(model, train.subset(np.arange(0, 1500, 5)))  # realistic BN statistics, eval mode
    dead = model.blocks[1].dw[1]  # the residual block's depthwise BatchNorm, then ReLU: never fires
    with torch.no_grad():
        dead.weight.fill_(1e-3)  # not zero, or the converter folds the block into constants
        dead.bias.fill_(-8.0)
    ck = save_checkpoint(tmp_path / "dead", model, kind="query", space_id="sp1-d32-n-" + "0" * 20)
    calib = train.subset(np.arange(0, 1500, 10))

    def export(out):
        return export_bundle(ck, out, formats=("tflite",), precisions=("int8",), calib_data=calib, check_data=val,
                             progress=False)

    manifest = export(tmp_path / "fixed")
    entry = mf.file_entry(manifest, "model-int8.tflite")
    assert entry["widened_ranges"] >= 1
    rec = manifest["checks"]["model-int8.tflite"]
    assert rec["status"] == "passed" and rec["parity"]["cos_min"] >= 0.9, rec.get("reason")
    body = entry["int8_recipe"]["parity_on_probe_images"][0]  # with the whole body int8 the file computes
    assert body["float"] == "int8 body" and body["cos_min"] >= 0.9, entry["int8_recipe"]
    monkeypatch.setattr(exporter, "widen_zero_ranges", lambda calibration: [])
    unfixed = mf.file_entry(export(tmp_path / "unfixed"), "model-int8.tflite")["int8_recipe"]
    # without widening the int8 body computes garbage on the held-out calibration images, and only keeping the
    # dead block's stage float (the escalation) rescues the file
    tried = unfixed["parity_on_probe_images"]
    assert not tried[0]["cos_mean"] >= 0.9 and len(tried) > 1, tried  # NaN: the SDK refused the degenerate file
    # such a file (here: the whole body int8, kept although its checks fail) is refused by the SDK with the reason,
    # before LiteRT's XNNPACK delegate sees it (on some it aborts the process: "double free or corruption")
    monkeypatch.setattr(exporter._Converter, "MAX_FLOAT_SIZES", 0)
    broken = export_bundle(ck, tmp_path / "broken", formats=("tflite",), precisions=("int8",), calib_data=calib,
                           check_data=val, progress=False, keep_failed=True)
    rec = broken["checks"]["model-int8.tflite"]
    assert rec["status"] != "passed" and "quantization scale" in rec["reason"], rec
    from hetsearch.errors import ModelError
    from hetsearch.sdk import QueryModel

    with pytest.raises(ModelError, match=r"quantization scale \d.*e-1\d.*width ~0"):
        QueryModel.load(tmp_path / "broken", backend="litert", precision="int8", allow_failed=True)


def test_int8_onnx_keeps_the_gate_and_the_norm_in_float(bundle):
    import onnx

    out, manifest = bundle
    entry = mf.file_entry(manifest, "model-int8.onnx")
    keep = entry["float_nodes"]
    graph = onnx.load(str(out / "model-int8.onnx")).graph
    by_name = {n.name: n for n in graph.node}
    # mbv3-tiny has one squeeze-excitation block (its gating Mul) and the L2 normalisation after the Gemm
    assert sum(by_name[k].op_type == "Mul" for k in keep) >= 2 and any(by_name[k].op_type == "Div" for k in keep)
    producer = {o: n for n in graph.node for o in n.output}
    assert producer["embedding"].op_type == "Div"  # not a DequantizeLinear: the output is computed in float
    assert "gating multiplies and the L2 normalisation" in entry["quantization"]


def test_mediapipe_image_embedder_runs_the_exported_file(pair, data, fmnist_test, tmp_path):
    """The real MediaPipe Tasks ImageEmbedder loads the file and its embeddings match the SDK's on the same RGB
    images (the grayscale conversion and normalisation live in the graph)."""
    pytest.importorskip("mediapipe")
    import mediapipe as mp
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision

    from hetsearch.export.exporter import export_bundle
    from hetsearch.sdk.model import QueryModel

    gallery, query = pair
    m = export_bundle(query.path, tmp_path / "b", formats=("tflite", "mediapipe"), precisions=("fp32", "int8"),
                      calib_data=data[0].subset(np.arange(0, 1500, 10)), gallery=gallery.path, check_data=data[1],
                      progress=False)
    entry = mf.file_entry(m, "model-fp32-mediapipe.tflite")
    assert (entry["format"], entry["layout"], entry["input_dtype"], entry["runtime"]) == (
        "mediapipe", "NHWC", "uint8", "mediapipe")
    rec = m["checks"]["model-fp32-mediapipe.tflite"]  # checked through ImageEmbedder itself
    assert rec["status"] == "passed" and rec["parity"]["cos_min"] >= 0.999, rec
    (fail,) = [f for f in m["failures"] if f["format"] == "mediapipe"]
    assert fail["precision"] == "int8" and "fp32 only" in fail["reason"]
    # colour images: the same photo through MediaPipe and through the SDK (PIL's luma, then the .tflite)
    gray = fmnist_test.images[:8, :, :, 0].astype(np.float32)
    tint = np.array([1.0, 0.8, 0.55], np.float32)
    rgb = np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)
    opts = vision.ImageEmbedderOptions(base_options=mp_tasks.BaseOptions(
        model_asset_path=str(tmp_path / "b" / entry["path"])), l2_normalize=False)
    with vision.ImageEmbedder.create_from_options(opts) as embedder:
        got = np.stack([np.asarray(embedder.embed(mp.Image(image_format=mp.ImageFormat.SRGB, data=img))
                                   .embeddings[0].embedding, np.float32) for img in rgb])
    sdk = QueryModel.load(tmp_path / "b", backend="litert").embed(list(rgb))
    cos = (got * sdk).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(sdk, axis=1)
    assert cos.min() >= 0.999, cos
    with pytest.raises(BundleError, match="is a mediapipe file"):
        QueryModel.load(tmp_path / "b" / entry["path"])


def test_show_tells_what_a_bundle_holds(bundle, tmp_path, capsys):
    from hetsearch.cli import main

    out, manifest = bundle
    assert main(["show", str(out), "--json", str(tmp_path / "s.json")]) == 0
    text = capsys.readouterr().out
    assert manifest["space_id"] in text and "model-int8.tflite" in text and "passed" in text
    assert "skipped: needs macOS" in text  # Core ML off macOS
    for name in ("model-int8.onnx", "model-int8.tflite"):  # what the int8 escalation kept float, and on what
        recipe = mf.file_entry(manifest, name)["int8_recipe"]
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{name}: "))
        assert f"on {recipe['probe_images']} training images" in line, line
        assert (recipe["kept"] == "int8 body") == ("whole body int8" in line), line
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert {r["path"] for r in rows} == {e["path"] for e in manifest["files"]}
    for cmd in ("show", "check"):  # a model file instead of the bundle: named as such, not "invalid JSON"
        assert main([cmd, str(out / "model-fp32.onnx"), *(["--gallery", "x"] if cmd == "check" else [])]) == 2
        err = capsys.readouterr().err
        assert "is not a bundle manifest but a .onnx file; give the bundle directory" in err


def test_check_images_come_from_the_checkpoints_own_validation_split(pair, tmp_path, capsys):
    from hetsearch.cli import main

    _, query = pair
    ck = tmp_path / "q"
    shutil.copytree(query.path, ck)
    meta = json.loads((ck / "meta.json").read_text())
    meta["train_config"].update(seed=3, val_fraction=0.2, val_mode="stratified")
    (ck / "meta.json").write_text(json.dumps(meta))
    args = ["export", str(ck), "--formats", "onnx", "--check-samples", "50", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "fraction 0.2, seed 3, mode stratified): the checkpoint's own training split" in err
    assert main(args + ["--out", str(tmp_path / "b"), "--seed", "7", "--val-fraction", "0.3"]) == 0
    assert "fraction 0.3, seed 7" in capsys.readouterr().err


def test_reexport_leaves_no_files_of_the_previous_model(pair, tmp_path):
    from hetsearch.export.exporter import export_bundle

    _, query = pair
    out = tmp_path / "b"
    out.mkdir()
    for stale in ("model-int8.tflite", "profile-local.json", "profile-local.md"):
        (out / stale).write_text("from the previous model")
    (out / "notes.txt").write_text("the user's own file")
    export_bundle(query.path, out, formats=("onnx",), precisions=("fp32",), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model-fp32.onnx", "notes.txt"]


def test_a_drop_fails_the_gate_only_when_it_is_over_the_limit_and_significant(bundle, pair, data):
    from hetsearch.export.checks import check_bundle, paired_se

    out, _ = bundle
    gallery, query = pair
    # demand that R@1 rises half a point: the file's change (0 +- 0) is over that limit but not significant
    res = check_bundle(out, data[1], gallery=gallery.path, query=query.path, files=["model-fp32.onnx"],
                       thresholds={"compat_drop": {"fp32": -0.5}})["model-fp32.onnx"]
    assert res["status"] == "passed" and "not significant" in res["compat"]["note"]
    a = np.array([True] * 90 + [False] * 10)
    b = a.copy()
    b[:3] = False  # three queries lost, none gained: 3 points on 100, standard error 1.71
    assert abs(paired_se(a, b) - 100 * np.sqrt(3 - 9 / 100) / 100) < 1e-9


def test_int8_escalation_keeps_float_only_what_its_probe_needs(pair, data, tmp_path, monkeypatch, capsys):
    """ONNX int8: a reachable probe target keeps the whole body int8; an unreachable one tries every feature-map
    size greedily, keeps the best recipe (said loudly: met is false), and the nodes it names are float in the
    file (their weights are float initializers, not DequantizeLinear outputs)."""
    import onnx

    from hetsearch.export import exporter
    from hetsearch.export.exporter import export_bundle

    train, _ = data
    gallery, query = pair
    calib, probe = train.subset(np.arange(0, 1500, 10)), train.subset(np.arange(5, 1500, 5))

    def export(out):
        man = export_bundle(query.path, out, formats=("onnx",), precisions=("fp32", "int8"), calib_data=calib,
                            probe_data=probe, progress=True)
        return mf.file_entry(man, "model-int8.onnx")

    monkeypatch.setattr(exporter._Converter, "PROBE_TARGET", {"cos_min": 0.0, "cos_mean": 0.0})
    easy = export(tmp_path / "easy")
    recipe = easy["int8_recipe"]
    assert [t["float"] for t in recipe["parity_on_probe_images"]] == ["int8 body"] and recipe["kept"] == "int8 body"
    assert recipe["probe_images"] == len(probe) and recipe["probe"].startswith("training images apart")
    fixed = easy["float_nodes"]  # the gating multiplies and the normalisation only

    monkeypatch.setattr(exporter._Converter, "PROBE_TARGET", {"cos_min": 1.01, "cos_mean": 0.0})
    monkeypatch.setattr(exporter._Converter, "MAX_FLOAT_SIZES", 1)  # one round: the body, then each size alone
    hard = export(tmp_path / "hard")
    recipe = hard["int8_recipe"]
    tried = recipe["parity_on_probe_images"]
    sizes = exporter.onnx_feature_maps(tmp_path / "hard" / "model-fp32.onnx")  # (h, w) -> nodes
    assert not recipe["met"] and "WARNING: no int8 recipe reached cos min 1.01" in capsys.readouterr().err
    assert len(tried) == 1 + len(sizes) and len({t["float"] for t in tried}) == len(tried)
    best = max(tried, key=lambda t: (t["cos_min"], t["cos_mean"]))
    assert recipe["kept"] == best["float"], tried
    extra = [n for n in hard["float_nodes"] if n not in fixed]
    assert len(extra) == best["float_tensors"]
    graph = onnx.load(str(tmp_path / "hard" / "model-int8.onnx")).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    init = {i.name for i in graph.initializer}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    assert all(c.input[1] in init for name, c in convs.items() if name in extra)  # kept float: float weights
    assert all(producer.get(c.input[1]) == "DequantizeLinear" for name, c in convs.items() if name not in extra)
    if best["float"] != "int8 body":  # (measured here: the 7x7 maps float beat the int8 body on the probe)
        assert any(name in extra for name in convs)


def test_int8_probe_images_are_training_images_that_do_not_calibrate(data, capsys):
    from hetsearch.export.cli import _calib_and_probe

    train, _ = data
    calib, probe = _calib_and_probe(train, 200, 600, 1)
    assert len(calib) == 200 and len(probe) == 600
    key = lambda ds: {bytes(np.ascontiguousarray(im)) for im in ds.images}  # noqa: E731
    assert not key(calib) & key(probe)
    assert _calib_and_probe(train, 200, 0, 1)[1] is None
    small = train.subset(np.arange(40))
    calib, probe = _calib_and_probe(small, 100, 600, 1)  # every image calibrates: none is left to probe
    assert len(calib) == 40 and probe is None
    assert "a quarter of them is held out" in capsys.readouterr().err
