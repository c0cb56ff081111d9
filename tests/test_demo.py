"""The quick demo, end to end: train, NAS, export, profile, index, serve, query, report."""

import json

from hetsearch.cli import main


def test_quick_demo_end_to_end(tmp_path, capsys):
    work, report = tmp_path / "work", tmp_path / "report"
    assert main(["demo", "--quick", "--work", str(work), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "Paper-style table" in out and "Export table" in out and "gallery server stopped" in out
    summary = json.loads((report / "summary.json").read_text())
    labels = [r["row"] for r in summary["paper_table"]]
    assert labels[0].startswith("paragon")
    assert sum(label.startswith("CMP-NAS") for label in labels) == 2
    assert sum(label.startswith("homogeneous compact") for label in labels) == 3
    for r in summary["paper_table"]:
        assert 0.0 < r["R@1"] <= 100.0 and r["MMACs"] > 0
    formats = {(r["model"], r["format"], r["precision"]) for r in summary["export_table"] if r.get("format")}
    assert ("query-bct", "onnx", "fp32") in formats and ("query-bct", "tflite", "int8") in formats
    assert all("passed" != r["status"] for r in summary["export_table"] if r.get("format") == "coreml")
    # the quantization-aware version of the hand-designed model ships as int8 only, next to its post-training files
    qat = {(r["format"], r["precision"]) for r in summary["export_table"] if r["model"] == "query-bct-qat"}
    assert {("onnx", "int8"), ("tflite", "int8")} <= qat and not any(p == "fp32" for _, p in qat), qat
    assert "quantization-aware (query-bct-qat)" in (report / "README.md").read_text()
    # the SDK queried the real server: every query image got k hits with metadata from the gallery
    assert len(summary["hits"]) == 3 and all(len(q["hits"]) == 5 for q in summary["hits"])
    assert all(h["metadata"] for q in summary["hits"] for h in q["hits"])
    # the query images were held out of the gallery: none finds itself
    held = [int(x) for x in (work / "held-out.txt").read_text().split()]
    assert len(held) == 3 and not any(h["id"] == j for q, j in zip(summary["hits"], held) for h in q["hits"])
    for png in ("accuracy_vs_mmacs.png", "latency.png", "queries.png"):
        assert (report / png).stat().st_size > 5000
    # a rerun reuses every finished stage
    assert main(["demo", "--quick", "--work", str(work), "--report", str(report)]) == 0
    assert capsys.readouterr().out.count("reusing the finished stage") >= 10
    again = json.loads((report / "summary.json").read_text())
    assert len(again["reused_stage_seconds"]) >= 10 and "reusing" in (report / "README.md").read_text()
