"""bench_nas --budget-supernet: which supernet searches which budget, and the cache keys each search gets."""

import pytest

from benchmarks import bench_nas
from hetsearch.cmpnas.nas import SupernetConfig
from hetsearch.cmpnas.nas.supernet import ElasticMobileNetV3, save_supernet
from hetsearch.errors import HetsearchError

BUDGETS = [0.126, 0.401, 1.299]
COMMON = {"gallery": "g", "compat": "bct-l2"}


def _supernet(path, hires, epochs_done=2, planned=2):
    net = ElasticMobileNetV3(SupernetConfig(hires=[hires]))
    save_supernet(path, net, {"epochs_done": epochs_done, "schedule": "progressive",
                              "train_config": {"epochs": planned, "seed": 0}})
    return path


def _groups(tmp_path, *extra_args, extra=(1.124,)):
    args = bench_nas.parse_args(["--gallery", "unused", "--rerank", "4", *extra_args])
    return bench_nas.supernet_groups(args, tmp_path / "sn", BUDGETS, list(extra), COMMON)


def test_without_budget_supernets_one_supernet_keeps_the_earlier_stage_names_and_keys(tmp_path):
    _supernet(tmp_path / "sn", 0)
    [g] = _groups(tmp_path)
    assert g["budgets"] == BUDGETS and g["extra"] == [1.124] and g["suffix"] == ""
    # the key of the earlier single-supernet code: every budget, the supernet's name, epochs and space digest
    assert g["key"]["budgets"] == BUDGETS and g["key"]["supernet"] == "sn" and g["key"]["supernet_epochs"] == 2
    assert g["key"]["rerank"] == 4 and "rerank" not in g["search_key"]
    assert len(g["key"]["supernet_space"]) == 16


def test_budgets_go_to_the_supernet_named_for_them_and_the_rest_to_the_default(tmp_path):
    _supernet(tmp_path / "sn", 0)
    _supernet(tmp_path / "sn-h1", 1)
    default, other = _groups(tmp_path, "--budget-supernet", f"1.299,0.401,1.124={tmp_path / 'sn-h1'}")
    assert (default["budgets"], default["extra"], default["suffix"]) == ([0.126], [], "")
    assert (other["budgets"], other["extra"], other["suffix"]) == ([0.401, 1.299], [1.124], "-sn-h1")
    assert other["key"]["budgets"] == [0.401, 1.299] and other["key"]["supernet"] == "sn-h1"
    # two spaces, two digests: a search of one is never reused for the other
    assert default["key"]["supernet_space"] != other["key"]["supernet_space"]
    assert other["space"]["hires"] == [1]
    sentence = bench_nas._supernets_sentence([{"name": g["name"], "budgets": g["budgets"], "extra_budgets": g["extra"],
                                               "schedule": "progressive", "epochs": 2, "hires": g["space"]["hires"]}
                                              for g in (default, other)])
    assert "2 supernets" in sentence and "sn-h1: progressive, 2 epochs, seed 0, 14x14 layout (hires 1) for 0.401, " \
                                          "1.299, 1.124 MMACs" in sentence


def test_a_supernet_that_serves_no_budget_is_left_out(tmp_path):
    _supernet(tmp_path / "sn", 0)
    _supernet(tmp_path / "sn-h1", 1)
    [g] = _groups(tmp_path, "--budget-supernet", f"0.126,0.401,1.299={tmp_path / 'sn-h1'}", extra=())
    assert g["name"] == "sn-h1" and g["budgets"] == BUDGETS


@pytest.mark.parametrize("entry, message", [
    ("1.299", "expected B1,B2=DIR"),
    ("=x", "expected B1,B2=DIR"),
    ("a,b=x", "expected B1,B2=DIR"),
    ("0.7=x", "neither --budgets"),
])
def test_bad_budget_supernet_entries_are_refused(tmp_path, entry, message):
    _supernet(tmp_path / "sn", 0)
    with pytest.raises(HetsearchError, match=message):
        _groups(tmp_path, "--budget-supernet", entry)


def test_a_budget_given_twice_a_missing_or_an_unfinished_supernet_is_refused(tmp_path):
    _supernet(tmp_path / "sn", 0)
    _supernet(tmp_path / "half", 1, epochs_done=1, planned=2)
    with pytest.raises(HetsearchError, match="budget 1.299 is given twice"):
        _groups(tmp_path, "--budget-supernet", "1.299=a", "--budget-supernet", "1.299=b")
    with pytest.raises(HetsearchError, match="no supernet.pt"):
        _groups(tmp_path, "--budget-supernet", f"1.299={tmp_path / 'nowhere'}")
    with pytest.raises(HetsearchError, match="trained 1 of 2 epochs"):
        _groups(tmp_path, "--budget-supernet", f"1.299={tmp_path / 'half'}")
