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


# --- hetsearch eval: degenerate splits, --plot for a pair, usage and output-path errors ---------------------


def test_eval_one_image_per_class_reports_retrieval_and_says_why_tar_is_missing(tiny_runs, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["eval", "--query", str(tiny_runs["root"] / "query"), "--max-samples", "10", "--json", str(out),
               "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err
    assert "R@1" in captured.out and "mAP@R" in captured.out
    assert ("note: TAR@FAR not computed: the evaluation split has no genuine (same-class) pairs: every class has "
            "a single image (use a larger --max-samples)") in captured.out
    assert "note: R@k and mAP@R are 0 by construction" in captured.out
    res = json.loads(out.read_text())
    assert res["n_queries"] == 10 and res["recall_at_1"] == 0.0 and res["n_queries_with_a_match"] == 0
    v = res["verification"]
    assert v["tar_at_far_0.01"] is None and v["tar_at_far_0.001"] is None and v["n_genuine"] == 0
    assert "no genuine (same-class) pairs" in v["not_computed"]


def test_eval_single_class_split_says_there_are_no_impostor_pairs(tiny_runs, fmnist_test, tmp_path, capsys):
    import numpy as np

    idx = np.flatnonzero(fmnist_test.labels == 3)[:20]
    npz = tmp_path / "dresses.npz"
    np.savez(npz, images=fmnist_test.images[idx], labels=fmnist_test.labels[idx])
    out = tmp_path / "eval.json"
    rc = main(["eval", "--query", str(tiny_runs["root"] / "query"), "--gallery", str(tiny_runs["root"] / "gallery"),
               "--data", str(npz), "--json", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert ("note: TAR@FAR not computed: the evaluation split has no impostor (different-class) pairs: all its "
            "images are of one class") in captured.out
    res = json.loads(out.read_text())
    assert res["recall_at_1"] == 100.0 and res["verification"]["tar_at_far_0.001"] is None
    assert "no impostor" in res["verification"]["not_computed"]


def test_eval_needs_at_least_two_images(tiny_runs, fmnist_test, tmp_path, capsys):
    import numpy as np

    npz = tmp_path / "one.npz"
    np.savez(npz, images=fmnist_test.images[:1], labels=fmnist_test.labels[:1])
    for args in (["--query", str(tiny_runs["root"] / "query")],
                 ["--matrix", str(tiny_runs["root"] / "gallery"), str(tiny_runs["root"] / "query")]):
        rc = main(["eval", *args, "--data", str(npz), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2
        assert ("hetsearch eval: error: npz:one.npz has 1 image; leave-one-out retrieval needs at least 2 "
                "(every image is searched against all the others)") in err
        assert "Traceback" not in err


def test_eval_plot_for_a_pair_is_a_bar_chart_with_homogeneous_baselines(tiny_runs, tmp_path, capsys):
    png, out = tmp_path / "plots" / "pair.png", tmp_path / "pair.json"
    rc = main(["eval", "--query", str(tiny_runs["root"] / "query"), "--gallery", str(tiny_runs["root"] / "gallery"),
               "--max-samples", "200", "--plot", str(png), "--json", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"plot: {png}" in captured.out and "TAR@FAR not computed" not in captured.out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[0] > 200
    res = json.loads(out.read_text())
    assert res["verification"]["tar_at_far_0.01"] is not None and "not_computed" not in res["verification"]
    base = res["baselines"]
    for name in ("query_homogeneous", "paragon"):
        for key in ("recall_at_1", "recall_at_5", "map_at_r"):
            assert 0.0 <= base[name][key] <= 100.0
    assert base["paragon"]["query_model"] == base["paragon"]["gallery_model"] == res["gallery_model"]
    # homogeneous: the pair alone; a file name without a suffix gets a PNG at exactly that path
    bare = tmp_path / "homogeneous"
    assert main(["eval", "--query", str(tiny_runs["root"] / "gallery"), "--max-samples", "100", "--plot", str(bare),
                 "--quiet"]) == 0
    assert bare.read_bytes()[:4] == b"\x89PNG" and f"plot: {bare}" in capsys.readouterr().out


def test_eval_matrix_refuses_query_and_gallery(tiny_runs, capsys):
    g, q = str(tiny_runs["root"] / "gallery"), str(tiny_runs["root"] / "query")
    rc = main(["eval", "--matrix", g, "--query", q, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("usage: hetsearch eval")
    assert ("hetsearch eval: error: --query cannot be combined with --matrix: --matrix takes all the models as its "
            f"arguments (each one embeds both the queries and the gallery), e.g. --matrix {g} {q}") in err
    rc = main(["eval", "--matrix", g, q, "--gallery", g, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("usage: hetsearch eval")
    assert "hetsearch eval: error: --gallery cannot be combined with --matrix" in err
    assert f"e.g. --matrix {g} {q}\n" in err


def test_eval_without_arguments_is_a_usage_error(capsys):
    rc = main(["eval"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("usage: hetsearch eval")
    assert err.rstrip().endswith(
        "hetsearch eval: error: --query CKPT is required (or --matrix CKPT [CKPT ...] for a compatibility matrix)")
    rc = main(["eval", "--query", "x", "--max-samples", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: --max-samples must be a positive number of images, got 0" in err
    r = subprocess.run([sys.executable, "-m", "hetsearch", "eval"], capture_output=True, text=True)
    assert r.returncode == 2 and "error: --query CKPT is required" in r.stderr and "Traceback" not in r.stderr


def test_eval_unwritable_output_paths_are_refused_before_evaluating(tiny_runs, tmp_path, capsys):
    q = str(tiny_runs["root"] / "query")
    for flag, example in (("--json", "eval.json"), ("--plot", "eval.png")):
        rc = main(["eval", "--query", q, flag, str(tmp_path), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err
        assert f"hetsearch eval: error: {flag} {tmp_path} is a folder; give a file name, e.g. {flag} {tmp_path / example}" in err
    rc = main(["eval", "--matrix", q, "--json", str(tmp_path), "--quiet"])
    assert rc == 2 and f"e.g. --json {tmp_path / 'matrix.json'}" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for flag in ("--json", "--plot"):
        target = blocker / "sub" / "out.png"
        rc = main(["eval", "--query", q, flag, str(target), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err
        assert (f"hetsearch eval: error: {flag} {target}: cannot create the folder {blocker / 'sub'}: "
                f"{blocker} is a file, not a folder") in err
    rc = main(["eval", "--query", q, "--plot", str(tmp_path / "x.foo"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--plot {tmp_path / 'x.foo'}: cannot write .foo images" in err and ".png" in err
    assert not (tmp_path / "x.foo").exists()
