"""Re-ranking a search's finalists by a short finetune: which candidates are finalists, that each is really
finetuned and scored on the validation split, that the best short-finetune score wins, and that a re-run reuses."""

import json

import pytest
import torch

from hetsearch.cmpnas.data import load_data
from hetsearch.cmpnas.nas import SupernetConfig, arch_macs, random_arch
from hetsearch.cmpnas.nas.rerank import RERANK_FILE, finalists, rerank
from hetsearch.cmpnas.nas.space import arch_key
from hetsearch.cmpnas.nas.train import train_supernet
from hetsearch.cmpnas.train import TrainConfig, train_gallery
from hetsearch.errors import DataError

TINY = {"stages": [{"out": 16, "stride": 1, "se": False, "act": "relu"},
                   {"out": 24, "stride": 2, "se": True, "act": "hswish"}],
        "head": {"channels": 64, "act": "hswish"}, "depths": [1, 2], "kernels": [3, 5], "expands": [2, 3],
        "widths": [0.5, 1.0]}


def _pool(cfg, n=12, seed=0):
    import random

    rng = random.Random(seed)
    pool, seen = [], set()
    while len(pool) < n:
        a = random_arch(cfg, rng)
        if arch_key(a) in seen:
            continue
        seen.add(arch_key(a))
        mm = arch_macs(cfg, a) / 1e6
        pool.append({"arch": a, "cost": mm, "mmacs": mm, "reward": float(len(pool) % 5), "het_r1": 0.0})
    return pool


def test_finalists_are_the_best_feasible_distinct_candidates():
    cfg = SupernetConfig.from_dict(TINY)
    pool = _pool(cfg)
    budget = sorted(c["cost"] for c in pool)[8]
    got = finalists(pool + [dict(pool[0])], budget, 3)  # a duplicate arch is one candidate
    assert len(got) == 3 and len({arch_key(c["arch"]) for c in got}) == 3
    assert all(c["cost"] <= budget for c in got)
    feasible = sorted((c["reward"] for c in pool if c["cost"] <= budget), reverse=True)
    assert [c["reward"] for c in got] == feasible[:3]
    # a floor keeps finalists near the budget while there are enough of them
    floor = sorted(c["cost"] for c in pool if c["cost"] <= budget)[-2] / budget * (1 - 1e-9)
    near = finalists(pool, budget, 3, floor=floor)
    assert [c["cost"] >= floor * budget for c in near] == [True, True, False]
    assert {arch_key(c["arch"]) for c in near[:2]} == {arch_key(c["arch"]) for c in pool
                                                       if floor * budget <= c["cost"] <= budget}
    with pytest.raises(DataError, match="no evaluated candidate fits"):
        finalists(pool, min(c["cost"] for c in pool) / 2, 3)


def test_rerank_finetunes_each_finalist_and_keeps_the_best(tmp_path):
    torch.set_num_threads(1)
    data = load_data("fashion-mnist")
    gd, sn = tmp_path / "gallery", tmp_path / "sn"
    small = dict(max_train_samples=384, max_val_samples=100, threads=1, batch_size=64)
    train_gallery(data, "resnet-tiny", gd, TrainConfig(epochs=1, **small), progress=False)
    train_supernet(data, gd, sn, TrainConfig(epochs=1, num_random=1, **small), space=SupernetConfig.from_dict(TINY),
                   progress=False)
    cfg = SupernetConfig.load(sn)
    pool = _pool(cfg, n=6, seed=1)
    cands = finalists(pool, max(c["cost"] for c in pool), 3)
    tc = TrainConfig(epochs=1, lr=0.03, warmup_epochs=0.2, **small)
    res = rerank(data, sn, gd, cands, tmp_path / "rr", tc, progress=False)
    rows = res["finalists"]
    assert [arch_key(r["arch"]) for r in rows] == [arch_key(c["arch"]) for c in cands]
    for r in rows:
        # each finalist was really finetuned: its checkpoint exists and its score is the checkpoint's own
        meta = json.loads((tmp_path / "rr" / r["dir"] / "meta.json").read_text())
        assert meta["nas"]["arch"] == r["arch"]
        assert r["short_r1"] == pytest.approx(meta["metrics"]["history"][-1]["val_heterogeneous_r1"])
        assert 0.0 <= r["short_r1"] <= 100.0
    assert res["winner"]["short_r1"] == max(r["short_r1"] for r in rows)
    saved = json.loads((tmp_path / "rr" / RERANK_FILE).read_text())
    assert saved["winner"] == res["winner"]

    # a re-run with the same settings reuses every finalist (no new training: checkpoints untouched)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "rr").glob("finalist-*/checkpoint.pt")}
    again = rerank(data, sn, gd, cands, tmp_path / "rr", tc, progress=False)
    assert again["winner"] == res["winner"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
