"""Search: the constraint always holds, determinism, cost models, rewards; and a tiny end-to-end run via the CLI."""

import json

import pytest
import torch

from hetsearch.cli import main
from hetsearch.cmpnas.checkpoint import load_checkpoint
from hetsearch.cmpnas.data import load_data
from hetsearch.cmpnas.nas.search import (LatencyTable, MacsCost, SearchConfig, SearchError, evolutionary_search,
                                     layer_key, parse_reward, pareto_front, random_search)
from hetsearch.cmpnas.nas import SupernetConfig, arch_layers, arch_macs, largest_arch, smallest_arch
from hetsearch.cmpnas.train import TrainConfig, train_gallery

TINY = {"stages": [{"out": 16, "stride": 1, "se": False, "act": "relu"},
                   {"out": 24, "stride": 2, "se": True, "act": "hswish"}],
        "head": {"channels": 64, "act": "hswish"}, "depths": [1, 2], "kernels": [3, 5], "expands": [2, 3],
        "widths": [0.5, 1.0]}


def fake_reward(arch):
    """Cheap and deterministic, preferring bigger nets, so the constraint is what binds."""
    size = sum(e * k for ks, es in zip(arch["kernels"], arch["expands"]) for k, e in zip(ks, es))
    het = float(size * arch["width"]) + 0.1 * arch["depths"][0]
    return {"het_r1": het, "homo_r1": het / 2, "reward": het}


def test_constraint_always_holds():
    cfg = SupernetConfig()
    cost = MacsCost(cfg)
    floor = cost.cost(smallest_arch(cfg))
    budgets = [floor * 1.2, 0.4, 1.3]  # the first is so tight that rejection sampling falls back to repair
    res = evolutionary_search(cfg, fake_reward, cost, budgets, SearchConfig(population=8, generations=3, seed=1,
                                                                            max_tries=50), progress=False)
    assert res["records"] and all(r["cost"] <= 1.3 for r in res["records"])
    for b, best in res["best"].items():
        assert best["cost"] <= float(b)
        assert arch_macs(cfg, best["arch"]) / 1e6 <= float(b)
    rnd = random_search(cfg, fake_reward, cost, budgets, res["evaluations"], seed=1, progress=False, max_tries=50)
    assert rnd["evaluations"] <= res["evaluations"]
    assert all(r["cost"] <= 1.3 for r in rnd["records"])
    assert all(best["cost"] <= float(b) for b, best in rnd["best"].items())


def test_search_is_deterministic_under_a_seed():
    cfg = SupernetConfig()
    run = lambda seed: evolutionary_search(cfg, fake_reward, MacsCost(cfg), [0.3, 0.8],  # noqa: E731
                                           SearchConfig(population=6, generations=2, seed=seed), progress=False)
    a, b, c = run(3), run(3), run(4)
    assert [r["key"] for r in a["records"]] == [r["key"] for r in b["records"]]
    assert a["history"] == b["history"]
    assert [r["key"] for r in a["records"]] != [r["key"] for r in c["records"]]


def test_budget_errors():
    cfg = SupernetConfig()
    with pytest.raises(SearchError, match="below the smallest subnet"):
        evolutionary_search(cfg, fake_reward, MacsCost(cfg), [0.01], progress=False)
    with pytest.raises(SearchError, match="population"):
        evolutionary_search(cfg, fake_reward, MacsCost(cfg), [0.5], SearchConfig(population=1), progress=False)


def test_rewards_and_pareto():
    assert parse_reward("heterogeneous") == 1.0 and parse_reward("homogeneous") == 0.0
    assert parse_reward("mix:0.7") == pytest.approx(0.7)
    for bad in ("mix:2", "accuracy", "mix:x"):
        with pytest.raises(SearchError, match="--reward"):
            parse_reward(bad)
    recs = [{"mmacs": 1, "het_r1": 50}, {"mmacs": 2, "het_r1": 40}, {"mmacs": 3, "het_r1": 60}, {"mmacs": 0.5, "het_r1": 10}]
    assert [r["mmacs"] for r in pareto_front(recs)] == [0.5, 1, 3]


def test_latency_cost_models(tmp_path):
    cfg = SupernetConfig()
    big, small = largest_arch(cfg), smallest_arch(cfg)
    prof = {"device": "toy", "measurements": [{"mmacs": 1.0, "latency_ms": 3.0}, {"mmacs": 3.0, "latency_ms": 7.0}]}
    (tmp_path / "p.json").write_text(json.dumps(prof))
    lin = LatencyTable(cfg, tmp_path / "p.json")
    assert lin.slope == pytest.approx(2.0) and lin.intercept == pytest.approx(1.0)
    assert lin.cost(big) == pytest.approx(2.0 * arch_macs(cfg, big) / 1e6 + 1.0)
    # a per-layer table: listed layers cost their entry, the rest their MACs at the linear rate
    layers = arch_layers(cfg, small)
    table = LatencyTable(cfg, {"layers": {layer_key(layers[0]): 5.0}, "linear": {"ms_per_mmac": 1.0}})
    assert table.cost(small) == pytest.approx(5.0 + sum(l["macs"] for l in layers[1:]) / 1e6)
    # the search honours a latency budget
    res = evolutionary_search(cfg, fake_reward, lin, [1.6], SearchConfig(population=6, generations=1), progress=False)
    assert all(r["cost"] <= 1.6 for r in res["records"])
    from hetsearch.errors import DataError
    with pytest.raises(DataError, match="needs 'linear'"):
        LatencyTable(cfg, {"device": "x"})


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("nas") / "gallery"
    train_gallery(load_data("fashion-mnist"), "resnet-tiny", d,
                  TrainConfig(epochs=1, max_train_samples=1000, max_val_samples=200, threads=1), progress=False)
    return d


def test_end_to_end_supernet_search_finetune(gallery_dir, tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY))
    sn, se, ft = tmp_path / "sn", tmp_path / "search", tmp_path / "ft"
    common = ["--threads", "1", "--no-progress"]
    assert main(["nas", "supernet", "--gallery", str(gallery_dir), "--out", str(sn), "--space", str(space),
                 "--epochs", "1", "--max-train-samples", "384", "--max-val-samples", "100", "--batch-size", "64",
                 "--num-random", "1", *common]) == 0
    meta = json.loads((sn / "meta.json").read_text())
    gck = load_checkpoint(gallery_dir)
    assert meta["space_id"] == gck.space_id and meta["epochs_done"] == 1
    assert {"supernet.pt", "config.json", "meta.json"} <= {p.name for p in sn.iterdir()}

    assert main(["nas", "search", "--supernet", str(sn), "--out", str(se), "--max-mmacs", "0.3", "--budgets", "0.1",
                 "--population", "4", "--generations", "1", "--max-val-samples", "100", "--calib-images", "64",
                 *common]) == 0
    res = json.loads((se / "search.json").read_text())
    assert res["budgets"] == [0.1, 0.3] and (se / "pareto.png").stat().st_size > 0
    assert res["random"]["evaluations"] <= res["evaluations"]
    for b in ("0.1", "0.3"):
        assert res["best"][b]["mmacs"] <= float(b)
        d = se / f"subnet-{b}"
        assert json.loads((d / "spec.json").read_text())["family"] == "mobilenetv3"
        ck = load_checkpoint(d)
        assert ck.kind == "query" and ck.space_id == gck.space_id and ck.meta["mmacs"] <= float(b)

    # --rerank: the winner is the best of its finalists after a short finetune, recorded as such
    sr = tmp_path / "search-rerank"
    assert main(["nas", "search", "--supernet", str(sn), "--out", str(sr), "--max-mmacs", "0.3",
                 "--population", "4", "--generations", "1", "--max-val-samples", "100", "--calib-images", "64",
                 "--no-random-baseline", "--rerank", "2", "--rerank-max-train-samples", "256", *common]) == 0
    rr = json.loads((sr / "search.json").read_text())["rerank"]["0.3"]
    assert len(rr["finalists"]) == 2 and rr["short_r1"] == max(f["short_r1"] for f in rr["finalists"])
    info = json.loads((sr / "subnet-0.3" / "arch.json").read_text())
    assert info["search"] == "evolution + re-rank" and info["val_het_r1_short_finetune"] == rr["short_r1"]
    assert info["arch"] in [f["arch"] for f in rr["finalists"] if f["short_r1"] == rr["short_r1"]]

    assert main(["nas", "finetune", "--subnet", str(se / "subnet-0.3"), "--supernet", str(sn), "--out", str(ft),
                 "--epochs", "1", "--max-train-samples", "256", "--max-val-samples", "100", *common]) == 0
    ck = load_checkpoint(ft, expect_kind="query")
    assert ck.space_id == gck.space_id
    assert ck.meta["nas"]["budget"] == 0.3 and ck.meta["nas"]["arch"] == res["best"]["0.3"]["arch"]
    assert ck.meta["mmacs"] <= 0.3

    # bad input: a precise message and exit code 2, no traceback
    capsys.readouterr()
    assert main(["nas", "search", "--supernet", str(sn), "--out", str(se), "--max-mmacs", "0.001", *common]) == 2
    assert "below the smallest subnet" in capsys.readouterr().err
    assert main(["nas", "finetune", "--subnet", str(tmp_path), "--supernet", str(sn), "--out", str(ft), *common]) == 2
    assert "no arch.json" in capsys.readouterr().err
    assert main(["nas", "search", "--supernet", str(tmp_path / "nope"), "--out", str(se), "--max-mmacs", "1"]) == 2
    assert "no supernet" in capsys.readouterr().err


def test_supernet_paths_move_with_it_and_missing_data_is_an_error(gallery_dir, tmp_path, monkeypatch, capsys):
    """The supernet records its gallery and data relative to its own folder: the tree can move and be used from
    any working directory; data that is gone is an error, never a silent fallback to Fashion-MNIST."""
    import shutil

    import numpy as np

    from hetsearch.cmpnas.data import stratified_sample

    tree = tmp_path / "project"
    tree.mkdir()
    shutil.copytree(gallery_dir, tree / "gallery", ignore=shutil.ignore_patterns("targets"))
    fm = load_data("fashion-mnist")
    sub = fm.subset(stratified_sample(fm.labels, 600, 0))
    np.savez(tree / "data.npz", images=sub.images, labels=sub.labels)
    (tree / "space.json").write_text(json.dumps(TINY))
    monkeypatch.chdir(tree)
    common = ["--threads", "1", "--quiet"]
    assert main(["nas", "supernet", "--gallery", "gallery", "--data", "data.npz", "--out", "sn", "--space", "space.json",
                 "--epochs", "1", "--batch-size", "64", "--num-random", "1", *common]) == 0
    meta = json.loads((tree / "sn" / "meta.json").read_text())
    assert meta["gallery"] == "../gallery" and meta["data"] == "../data.npz"
    moved = tmp_path / "elsewhere" / "project"
    shutil.move(str(tree), str(moved))
    monkeypatch.chdir(tmp_path)
    search = ["nas", "search", "--supernet", str(moved / "sn"), "--out", str(tmp_path / "se"), "--max-mmacs", "0.3",
              "--population", "2", "--generations", "0", "--no-random-baseline", "--calib-images", "32", *common]
    assert main(search) == 0
    (moved / "data.npz").unlink()
    capsys.readouterr()
    assert main(search) == 2
    err = capsys.readouterr().err
    assert "was trained on '../data.npz'" in err and "not there" in err and "--data" in err


def test_tie_tolerance_prefers_capacity_only_within_the_noise():
    from hetsearch.cmpnas.nas.search import best_under

    recs = [{"cost": 0.20, "reward": 86.8, "key": "a"}, {"cost": 0.36, "reward": 86.6, "key": "b"},
            {"cost": 0.40, "reward": 86.3, "key": "c"}, {"cost": 0.45, "reward": 99.0, "key": "over budget"}]
    assert best_under(recs, 0.401)["key"] == "a"  # no tolerance: the highest reward
    assert best_under(recs, 0.401, 0.3)["key"] == "b"  # within 0.3 of the best: the costliest
    assert best_under(recs, 0.401, 0.6)["key"] == "c"
    assert best_under(recs, 0.1, 0.3) is None
    with pytest.raises(SearchError, match="tie-tolerance"):
        SearchConfig(tie_tolerance=-1).validate()
