import json
import subprocess
import sys

import pytest

from hetsearch.cli import main


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "hetsearch", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("train", "eval"):
        assert cmd in out
    for args in (["train", "gallery", "--help"], ["train", "query", "--help"], ["eval", "--help"],
                 ["train", "import-gallery", "--help"]):
        h = subprocess.run([sys.executable, "-m", "hetsearch", *args], capture_output=True, text=True, check=True).stdout
        assert "examples:" in h


def test_cli_end_to_end_on_a_subset(tmp_path, capsys):
    g, q = tmp_path / "g", tmp_path / "q"
    common = ["--data", "fashion-mnist", "--epochs", "1", "--max-train-samples", "600", "--max-val-samples", "100",
              "--quiet", "--threads", "1"]
    assert main(["train", "gallery", "--arch", "resnet-tiny", "--out", str(g), *common]) == 0
    assert main(["train", "query", "--gallery", str(g), "--arch", "mbv3-tiny", "--compat", "bct-l2",
                 "--out", str(q), *common]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "--query", str(q), "--gallery", str(g), "--max-samples", "500", "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    for key in ("recall_at_1", "recall_at_5", "map_at_r", "query_mmacs", "gallery_mmacs", "cost_reduction", "n_queries"):
        assert key in res
    assert res["n_queries"] == 500 and res["cost_reduction"] == pytest.approx(res["gallery_mmacs"] / res["query_mmacs"])
    assert "tar_at_far_0.01" in res["verification"]
    mat = tmp_path / "m.json"
    png = tmp_path / "m.png"
    assert main(["eval", "--matrix", str(g), str(q), "--max-samples", "300", "--json", str(mat), "--plot", str(png), "--quiet"]) == 0
    m = json.loads(mat.read_text())
    assert len(m["recall_at_1"]) == 2 and png.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "R@1" in printed


def test_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    rc = main(["train", "gallery", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "no such file or folder" in err and "Traceback" not in err
    rc = main(["eval", "--query", str(tmp_path), "--quiet"])
    assert rc == 2 and "no hetsearch checkpoint" in capsys.readouterr().err
    rc = main(["train", "query", "--gallery", str(tmp_path), "--out", str(tmp_path / "q"), "--quiet"])
    assert rc == 2


def test_cli_without_torch_lists_commands_and_names_the_extra(tmp_path):
    """An SDK-only install (no torch, no faiss) still has a working CLI that says what to install."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['faiss'] = None\n"
            "from hetsearch.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    h = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "query" in h.stdout and "train" in h.stdout
    r = subprocess.run([sys.executable, "-c", code, "train", "gallery", "--out", str(tmp_path / "g")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "hetsearch[train]" in r.stderr and "Traceback" not in r.stderr
