"""CMP-NAS search: the best compatible subnet of a trained supernet under a cost budget, and its finetuning.

* **Cost.** A :class:`CostModel` prices an arch: :class:`MacsCost` (MMACs, analytic, the default) or
  :class:`LatencyTable` (milliseconds on one device, from a profile JSON: a per-layer lookup and/or a
  linear model in MACs fitted to measured models, or a latency model measured on the device by
  ``hetsearch nas latency-model``). Budgets and the constraint are in the cost model's unit. With a measured
  latency model each budget's winner is also measured on its device (:mod:`.latency`).
* **Reward.** ``heterogeneous`` — R@1 of the subnet's query embeddings against the frozen gallery model's
  embeddings of a validation split carved from the *training* data (never the evaluation split);
  ``homogeneous`` — the subnet on both sides; ``mix:A`` — A·heterogeneous + (1−A)·homogeneous.
  Each candidate is extracted, BatchNorm-recalibrated on a few hundred training images and evaluated;
  evaluations are cached by arch.
* **Evolution** (after OFA's finder): per budget a population, the top ``parents`` fraction breeds children
  by mutation (each gene resampled with ``mutation_prob``) and uniform crossover; infeasible children are
  rejected and redrawn, so the constraint always holds. All budgets share one pool of evaluations, so one
  search serves several budgets. A random search with the same number of evaluations is the baseline.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from hetsearch.errors import DataError, HetsearchError, ModelError, SpaceMismatchError

from .cost import CostModel, LatencyTable, MacsCost, layer_key  # noqa: F401  (re-exported)
from .space import (SupernetConfig, _num, arch_key, arch_macs, arch_to_spec, canonical_arch, random_genome,
                    smallest_arch)
from .supernet import ElasticMobileNetV3, calib_subset, evaluate_subnet, load_supernet, recalibrate_bn

log = logging.getLogger("hetsearch.nas")

# Finetuning a searched subnet from its inherited weights: lr 0.1, as the hand-designed presets train from scratch.
# Chosen on the validation split (never the test split): against lr 0.03, +0.53 / +0.32 / +0.17 points at the
# 1.3-MMAC budget (seeds 0-2) and -0.07 / -0.06 / -0.04 at 0.4 and 0.13 MMACs (8 epochs, 6,000 validation images).
FINETUNE_LR = 0.1


class SearchError(HetsearchError):
    """A search setting is impossible (a budget below the smallest subnet, a bad reward, …)."""


# ----------------------------------------------------------------------------- rewards & evaluation


def parse_reward(text: str) -> float:
    """'heterogeneous' -> 1.0, 'homogeneous' -> 0.0, 'mix:A' -> A (the weight of heterogeneous R@1)."""
    t = (text or "").strip().lower()
    if t in ("heterogeneous", "het"):
        return 1.0
    if t in ("homogeneous", "homo"):
        return 0.0
    if t.startswith("mix:"):
        try:
            a = float(t[4:])
        except ValueError:
            a = -1.0
        if 0.0 <= a <= 1.0:
            return a
    raise SearchError(f"unknown --reward {text!r}: use heterogeneous, homogeneous or mix:A with 0 <= A <= 1 "
                      "(the weight of heterogeneous R@1)")


class SubnetEvaluator:
    """Evaluates archs on a supernet: extract, recalibrate BN on ``calib``, embed ``val``, R@1. Cached by arch."""

    def __init__(self, net: ElasticMobileNetV3, calib, val, gallery_val_emb: np.ndarray, reward: str = "heterogeneous",
                 calib_images: int = 500):
        if len(val) < 2:
            raise DataError("the search's validation split needs at least 2 images")
        self.net, self.calib, self.val, self.g_val = net, calib, val, gallery_val_emb
        self.reward_name, self.alpha = reward, parse_reward(reward)
        self.calib_images = calib_images
        self.cache: dict[str, dict] = {}
        self.seconds = 0.0

    def __call__(self, arch: dict) -> dict:
        a = canonical_arch(self.net.config, arch)
        key = arch_key(a)
        if key not in self.cache:
            t = time.time()
            r = evaluate_subnet(self.net, a, self.calib, self.val, self.g_val, self.calib_images)
            self.cache[key] = {**r, "reward": self.alpha * r["het_r1"] + (1 - self.alpha) * r["homo_r1"]}
            self.seconds += time.time() - t
        return dict(self.cache[key])


# ----------------------------------------------------------------------------- evolution


@dataclass
class SearchConfig:
    population: int = 24
    generations: int = 6
    parents: float = 0.25
    mutation_prob: float = 0.1
    mutation_ratio: float = 0.5
    seed: int = 0
    max_tries: int = 2000
    tie_tolerance: float = 0.0  # reward points within which the costliest subnet wins (0: the highest reward)

    def validate(self) -> None:
        if self.population < 2:
            raise SearchError(f"--population must be >= 2, got {self.population}")
        if self.generations < 0:
            raise SearchError(f"--generations must be >= 0, got {self.generations}")
        if self.tie_tolerance < 0:
            raise SearchError(f"--tie-tolerance must be >= 0, got {self.tie_tolerance}")
        if not 0 < self.parents <= 1:
            raise SearchError(f"--parents must be a fraction in (0, 1], got {self.parents}")
        for name in ("mutation_prob", "mutation_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise SearchError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")


class _Space:
    """Genome operations under a cost constraint."""

    def __init__(self, cfg: SupernetConfig, cost_model: CostModel, rng: random.Random, max_tries: int):
        self.cfg, self.cost_model, self.rng, self.max_tries = cfg, cost_model, rng, max_tries
        self._costs: dict[str, float] = {}

    def cost(self, genome: dict) -> float:
        a = canonical_arch(self.cfg, genome)
        key = arch_key(a)
        if key not in self._costs:
            self._costs[key] = float(self.cost_model.cost(a))
        return self._costs[key]

    def pad(self, arch: dict) -> dict:
        """A full genome from a (possibly trimmed) arch: inactive blocks get random genes."""
        g = copy.deepcopy(arch)
        D = self.cfg.max_depth
        for key, choices in (("kernels", self.cfg.kernels), ("expands", self.cfg.expands)):
            g[key] = [list(v) + [_num(self.rng.choice(choices)) for _ in range(D - len(v))] for v in g[key]]
        return g

    def mutate(self, genome: dict, p: float) -> dict:
        c, r = self.cfg, self.rng
        g = copy.deepcopy(genome)
        if r.random() < p:
            g["resolution"] = r.choice(c.resolutions)
        if r.random() < p:
            g["width"] = _num(r.choice(c.widths))
        if r.random() < p:
            g["hires"] = r.choice(c.hires)
        for i in range(c.num_stages):
            if r.random() < p:
                g["depths"][i] = r.choice(c.depths)
            for j in range(c.max_depth):
                if r.random() < p:
                    g["kernels"][i][j] = r.choice(c.kernels)
                if r.random() < p:
                    g["expands"][i][j] = _num(r.choice(c.expands))
        return g

    def crossover(self, a: dict, b: dict) -> dict:
        r = self.rng
        pick = lambda x, y: copy.deepcopy(x if r.random() < 0.5 else y)  # noqa: E731
        g = {"resolution": pick(a["resolution"], b["resolution"]), "width": pick(a["width"], b["width"]),
             "hires": pick(a.get("hires", 0), b.get("hires", 0)),
             "depths": [pick(x, y) for x, y in zip(a["depths"], b["depths"])],
             "kernels": [[pick(x, y) for x, y in zip(ka, kb)] for ka, kb in zip(a["kernels"], b["kernels"])],
             "expands": [[pick(x, y) for x, y in zip(ea, eb)] for ea, eb in zip(a["expands"], b["expands"])]}
        return g

    def repair(self, genome: dict, budget: float) -> dict:
        """Shrink random genes one choice at a time until the genome fits the budget."""
        c, g = self.cfg, copy.deepcopy(genome)
        while self.cost(g) > budget:
            options = []
            g.setdefault("hires", 0)
            for key, choices in (("resolution", c.resolutions), ("width", c.widths), ("hires", c.hires)):
                if choices.index(_match(choices, g[key])) > 0:
                    options.append((key, None, None))
            for i in range(c.num_stages):
                if c.depths.index(g["depths"][i]) > 0:
                    options.append(("depths", i, None))
                for j in range(g["depths"][i]):
                    for key, choices in (("kernels", c.kernels), ("expands", c.expands)):
                        if choices.index(_match(choices, g[key][i][j])) > 0:
                            options.append((key, i, j))
            if not options:
                raise SearchError(f"no subnet fits the budget {budget:g} {self.cost_model.unit}")
            key, i, j = self.rng.choice(options)
            choices = {"resolution": c.resolutions, "width": c.widths, "hires": c.hires, "depths": c.depths, "kernels": c.kernels,
                       "expands": c.expands}[key]
            if i is None:
                g[key] = _num(choices[choices.index(_match(choices, g[key])) - 1])
            elif j is None:
                g[key][i] = choices[choices.index(g[key][i]) - 1]
            else:
                g[key][i][j] = _num(choices[choices.index(_match(choices, g[key][i][j])) - 1])
        return g

    def feasible(self, make: Callable[[], dict], budget: float) -> dict:
        """Draw from ``make`` until the result fits (rejection); after max_tries repair the last draw."""
        g = make()
        for _ in range(self.max_tries):
            if self.cost(g) <= budget:
                return g
            g = make()
        return self.repair(g, budget)

    def random_feasible(self, budget: float) -> dict:
        return self.feasible(lambda: random_genome(self.cfg, self.rng), budget)


def _match(choices, v):
    for c in choices:
        if abs(float(c) - float(v)) < 1e-9:
            return c
    return v


def _record(space: _Space, evaluate, genome: dict, origin: str, generation: int) -> dict:
    a = canonical_arch(space.cfg, genome)
    res = evaluate(a)
    return {"arch": a, "key": arch_key(a), "cost": space.cost(a), "mmacs": arch_macs(space.cfg, a) / 1e6,
            **res, "origin": origin, "generation": generation}


def _rank(records) -> list[dict]:
    return sorted(records, key=lambda r: (-r["reward"], r["cost"], r["key"]))


def best_under(records, budget: float, tie_tolerance: float = 0.0) -> dict | None:
    """The winner under a budget: the highest reward; with ``tie_tolerance`` > 0, the costliest subnet (most
    capacity for finetuning) among those whose reward is within ``tie_tolerance`` points of the best — rewards
    closer than the validation noise do not rank, and finetuned accuracy grows with capacity."""
    pool = _rank([r for r in records if r["cost"] <= budget + 1e-12])
    if not pool:
        return None
    if tie_tolerance <= 0:
        return pool[0]
    tied = [r for r in pool if r["reward"] >= pool[0]["reward"] - tie_tolerance]
    return max(tied, key=lambda r: (r["cost"], r["reward"]))


def pareto_front(records, x: str = "mmacs", y: str = "het_r1") -> list[dict]:
    """Non-dominated records: no other has lower-or-equal ``x`` and higher ``y`` (ties broken by x)."""
    front, best_y = [], -np.inf
    for r in sorted(records, key=lambda r: (r[x], -r[y])):
        if r[y] > best_y:
            front.append(r)
            best_y = r[y]
    return front


def check_budgets(cfg: SupernetConfig, cost_model: CostModel, budgets) -> list[float]:
    budgets = sorted({float(b) for b in budgets})
    if not budgets:
        raise SearchError("give a budget: --max-mmacs X (and/or --budgets a,b,c)")
    floor = cost_model.cost(smallest_arch(cfg))
    too_small = [b for b in budgets if b < floor]
    if too_small:
        raise SearchError(f"budget {too_small[0]:g} {cost_model.unit} is below the smallest subnet of this supernet "
                          f"({floor:.4g} {cost_model.unit})")
    return budgets


def evolutionary_search(cfg: SupernetConfig, evaluate: Callable[[dict], dict], cost_model: CostModel, budgets,
                        scfg: SearchConfig | None = None, progress: bool = True) -> dict:
    """Evolution for every budget over one shared pool of evaluations. Returns records, history, best."""
    scfg = scfg or SearchConfig()
    scfg.validate()
    budgets = check_budgets(cfg, cost_model, budgets)
    rng = random.Random(scfg.seed)
    space = _Space(cfg, cost_model, rng, scfg.max_tries)
    records: dict[str, dict] = {}
    genomes: dict[str, dict] = {}
    history = []
    P = scfg.population
    n_parents = max(2, int(round(scfg.parents * P)))
    n_mut = int(round(scfg.mutation_ratio * P))
    total = len(budgets) * P * (scfg.generations + 1)
    bar = tqdm(total=total, desc="evolution", unit="cand", disable=not progress, leave=False)

    def add(genome, origin, gen):
        key = arch_key(canonical_arch(cfg, genome))
        if key not in records:
            records[key] = _record(space, evaluate, genome, origin, gen)
            genomes[key] = genome
        bar.update(1)

    for b in budgets:
        for _ in range(P):
            add(space.random_feasible(b), f"init@{b:g}", 0)
    for gen in range(scfg.generations + 1):
        if gen > 0:
            for b in budgets:
                parents = _rank([r for r in records.values() if r["cost"] <= b])[:n_parents]
                pg = [space.pad(genomes[r["key"]]) for r in parents]
                for c in range(P):
                    if c < n_mut:
                        child = space.feasible(lambda: space.mutate(rng.choice(pg), scfg.mutation_prob), b)
                    else:
                        child = space.feasible(lambda: space.crossover(rng.choice(pg), rng.choice(pg)), b)
                    add(child, f"gen{gen}@{b:g}", gen)
        for b in budgets:
            top = _rank([r for r in records.values() if r["cost"] <= b])
            history.append({"generation": gen, "budget": b, "evaluations": len(records),
                            "best_reward": top[0]["reward"], "best_het_r1": top[0]["het_r1"],
                            "best_cost": top[0]["cost"], "best_key": top[0]["key"],
                            "parents_mean_reward": float(np.mean([r["reward"] for r in top[:n_parents]]))})
        if progress:
            bar.set_postfix({f"{b:g}": f"{best_under(records.values(), b)['reward']:.2f}" for b in budgets})
    bar.close()
    recs = list(records.values())
    return {"records": recs, "history": history, "budgets": budgets,
            "best": {f"{b:g}": best_under(recs, b, scfg.tie_tolerance) for b in budgets}, "evaluations": len(recs)}


def random_search(cfg: SupernetConfig, evaluate: Callable[[dict], dict], cost_model: CostModel, budgets,
                  evaluations: int, seed: int = 0, progress: bool = True, max_tries: int = 2000,
                  tie_tolerance: float = 0.0) -> dict:
    """The baseline: ``evaluations`` distinct random feasible subnets, split evenly across the budgets."""
    budgets = check_budgets(cfg, cost_model, budgets)
    rng = random.Random(seed + 7919)
    space = _Space(cfg, cost_model, rng, max_tries)
    records: dict[str, dict] = {}
    bar = tqdm(total=evaluations, desc="random search", unit="cand", disable=not progress, leave=False)
    for bi, b in enumerate(budgets):
        quota = evaluations // len(budgets) + (1 if bi < evaluations % len(budgets) else 0)
        got, draws = 0, 0
        while got < quota and draws < 10 * quota + 20:  # small budgets may hold fewer distinct subnets
            draws += 1
            g = space.random_feasible(b)
            key = arch_key(canonical_arch(cfg, g))
            if key in records:
                continue
            records[key] = _record(space, evaluate, g, f"random@{b:g}", 0)
            got += 1
            bar.update(1)
    bar.close()
    recs = list(records.values())
    return {"records": recs, "budgets": budgets,
            "best": {f"{b:g}": best_under(recs, b, tie_tolerance) for b in budgets}, "evaluations": len(recs)}


# ----------------------------------------------------------------------------- plots


def plot_pareto(path: str | os.PathLike, evo: dict, rnd: dict | None, budgets, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    recs = evo["records"]
    ax.scatter([r["mmacs"] for r in recs], [r["het_r1"] for r in recs], s=10, alpha=0.35, color="tab:blue",
               label=f"evolution ({len(recs)} evaluated)")
    front = pareto_front(recs)
    ax.plot([r["mmacs"] for r in front], [r["het_r1"] for r in front], "-o", color="tab:blue", ms=4, label="Pareto front")
    if rnd:
        rr = rnd["records"]
        ax.scatter([r["mmacs"] for r in rr], [r["het_r1"] for r in rr], s=10, alpha=0.35, marker="x", color="tab:orange",
                   label=f"random search ({len(rr)} evaluated)")
    winners: dict[str, tuple[dict, list]] = {}
    for b, best in evo["best"].items():
        if best:
            winners.setdefault(best["key"], (best, []))[1].append(b)
    for best, bs in winners.values():
        ax.scatter([best["mmacs"]], [best["het_r1"]], s=70, marker="*", color="tab:red", zorder=5)
        ax.annotate("best ≤ " + ", ".join(bs), (best["mmacs"], best["het_r1"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("query model MMACs")
    ax.set_ylabel("heterogeneous R@1 on validation (%)")
    ax.set_title(title or "CMP-NAS: subnets vs the gallery model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


# ----------------------------------------------------------------------------- the whole search


def _slim(r: dict | None) -> dict | None:
    if r is None:
        return None
    return {k: r[k] for k in ("arch", "cost", "mmacs", "het_r1", "homo_r1", "reward", "origin", "generation")}


def _latency_fields(check: dict | None, best: dict) -> dict:
    """Predicted and measured ms of a budget's chosen subnet (empty without a device check)."""
    if not check:
        return {}
    row = next((t for t in check["tries"] if t["key"] == best["key"]), {})
    return {"predicted_ms": best["cost"], "measured_ms": row.get("measured_ms"),
            "measured_within_budget": bool(row.get("within_budget")), "measured_on": check["target"]}


def budget_dirname(budget: float) -> str:
    return f"subnet-{budget:g}"


def prepare_search_data(net_meta: dict, data, gallery, val_fraction: float | None, seed: int | None,
                        max_val_samples: int | None, calib_images: int):
    """The validation split (carved from training data exactly as the supernet's trainer did, so the
    supernet never trained on it; the whole split unless ``max_val_samples``), calibration images from the
    training part, and the gallery's embeddings of the validation split (cached with the gallery targets)."""
    from ..data import train_val_split
    from ..targets import val_embeddings

    tc = net_meta.get("train_config") or {}
    vf = float(val_fraction if val_fraction is not None else tc.get("val_fraction", 0.1))
    sd = int(seed if seed is not None else tc.get("seed", 0))
    train, val = train_val_split(data, vf, sd, None, max_val_samples, tc.get("val_mode", "stratified"))
    if len(val) < 2:
        raise DataError(f"the validation split has {len(val)} images; search needs at least 2")
    calib = calib_subset(train, calib_images, sd)
    gm = gallery.model
    x_val = val.as_model_input(gm.input_size[0], gm.input_size[1], gm.in_channels)
    g_val = val_embeddings(gm, gallery.space_id, x_val, cache_dir=tc.get("targets_cache"), gallery_path=gallery.path)
    return calib, val, g_val


def run_search(supernet_dir: str | os.PathLike, data, gallery, out: str | os.PathLike, budgets, *,
               reward: str = "heterogeneous", scfg: SearchConfig | None = None, random_baseline: bool = True,
               cost_model: CostModel | None = None, max_val_samples: int | None = None, calib_images: int = 500,
               val_fraction: float | None = None, split_seed: int | None = None, save_models: bool = True,
               progress: bool = True, device_check=None, max_rechecks: int = 5, rerank_k: int = 0,
               rerank_cfg=None, rerank_floor: float = 0.8) -> dict:
    """Search a supernet for every budget; write search.json, pareto.png and subnet-<budget>/ folders.

    ``rerank_k`` > 0: each budget's ``rerank_k`` finalists by inherited reward (at least ``rerank_floor`` of the
    budget while there are enough) are finetuned for ``rerank_cfg.epochs`` and the best on the validation split
    wins (:mod:`.rerank`); the random baseline keeps its inherited-reward winners.

    ``device_check`` (a :class:`~.latency.DeviceCheck`, with a latency cost model): each budget's winner is
    measured on the latency model's target and, when over budget, replaced by the next finalist that measures
    within it (:func:`~.latency.check_under_budget`); predicted and measured ms go into search.json."""
    from hetsearch.report import write_json

    from ..checkpoint import Checkpoint, load_checkpoint, relative_ref, save_checkpoint

    t0 = time.time()
    scfg = scfg or SearchConfig()
    scfg.validate()
    parse_reward(reward)
    net, meta = load_supernet(supernet_dir)
    gck = gallery if isinstance(gallery, Checkpoint) else load_checkpoint(gallery, expect_kind="gallery")
    if meta.get("space_id") and meta["space_id"] != gck.space_id:
        raise SpaceMismatchError(meta["space_id"], gck.space_id, what="the gallery model given to the search")
    cfg = net.config
    cost_model = cost_model or MacsCost(cfg)
    budgets = check_budgets(cfg, cost_model, budgets)
    calib, val, g_val = prepare_search_data(meta, data, gck, val_fraction, split_seed, max_val_samples,
                                            calib_images)
    evaluator = SubnetEvaluator(net, calib, val, g_val, reward, calib_images)
    evo = evolutionary_search(cfg, evaluator, cost_model, budgets, scfg, progress)
    reranked = _rerank_winners(evo, budgets, rerank_k, rerank_cfg, rerank_floor, data, supernet_dir, gck, out,
                               calib_images, progress, device_check) if rerank_k else {}
    measured: dict[str, dict] = {}
    if device_check is not None:
        from .latency import check_under_budget

        say = lambda msg: print(f"[search] {msg}", file=sys.stderr, flush=True)  # noqa: E731
        for b in budgets:
            chosen, measured[f"{b:g}"] = check_under_budget(evo["records"], b, scfg.tie_tolerance, device_check,
                                                            max_rechecks, calib, say)
            evo["best"][f"{b:g}"] = chosen
    rnd = None
    if random_baseline:
        rnd = random_search(cfg, evaluator, cost_model, budgets, evo["evaluations"], scfg.seed, progress, scfg.max_tries,
                            scfg.tie_tolerance)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nas_info = {"supernet": relative_ref(supernet_dir, out), "space_id": gck.space_id, "reward": reward,
                "cost_model": cost_model.describe()}
    result = {
        "kind": "cmpnas-search", "supernet": relative_ref(supernet_dir, out), "space_id": gck.space_id,
        "gallery_model_id": gck.name, "gallery_mmacs": gck.macs / 1e6, "reward": reward,
        "cost_model": cost_model.describe(), "budgets": budgets, "settings": asdict(scfg),
        "validation": {"images": len(val), "calib_images": len(calib), "source": val.source},
        "evaluations": evo["evaluations"],
        "best": {b: {**_slim(r), **_latency_fields(measured.get(b), r)} for b, r in evo["best"].items()},
        "device_check": measured or None,
        "rerank": reranked or None,
        "pareto": [_slim(r) for r in pareto_front(evo["records"])],
        "history": evo["history"],
        "evaluated": [_slim(r) for r in sorted(evo["records"], key=lambda r: r["mmacs"])],
        "random": None if rnd is None else {
            "evaluations": rnd["evaluations"], "best": {b: _slim(r) for b, r in rnd["best"].items()},
            "pareto": [_slim(r) for r in pareto_front(rnd["records"])],
            "evaluated": [_slim(r) for r in sorted(rnd["records"], key=lambda r: r["mmacs"])]},
    }
    if reranked and result["random"] is not None:
        result["random"]["rerank"] = "not re-ranked: the random baseline keeps its inherited-reward winners"
    if measured and result["random"] is not None:
        result["random"]["device_check"] = "not measured: only the evolution's winners are measured on the device"
    for tag, res in (("", evo), ("random/", rnd)):
        if res is None:
            continue
        for b, best in res["best"].items():
            d = out / tag / budget_dirname(float(b))
            info = {**nas_info, "budget": float(b), "budget_unit": cost_model.unit, "arch": best["arch"],
                    "search": "random" if tag else "evolution", "cost": best["cost"], "mmacs": best["mmacs"],
                    "val_het_r1": best["het_r1"], "val_homo_r1": best["homo_r1"], "reward_value": best["reward"]}
            if not tag:
                info.update(_latency_fields(measured.get(b), best))
                if b in reranked:
                    info.update(search="evolution + re-rank", val_het_r1_short_finetune=reranked[b]["short_r1"],
                                rerank_epochs=reranked[b]["settings"]["epochs"])
            write_json(d / "arch.json", info)
            write_json(d / "spec.json", arch_to_spec(cfg, best["arch"], name=f"cmpnas-{b}"))
            if save_models:
                net.set_active_subnet(best["arch"])
                sub = net.extract_subnet(name=f"cmpnas-{b}")
                recalibrate_bn(sub, calib, max_images=calib_images)
                save_checkpoint(d, sub, kind="query", space_id=gck.space_id,
                                train_config={"inherited_from_supernet": True},
                                metrics={"val_heterogeneous_r1": best["het_r1"], "val_homogeneous_r1": best["homo_r1"]},
                                extra={"model_id": f"cmpnas-{b}", "nas": info, "gallery_space_id": gck.space_id})
    result["seconds"] = round(time.time() - t0, 1)
    result["evaluation_seconds"] = round(evaluator.seconds, 1)
    write_json(out / "search.json", result)
    plot_pareto(out / "pareto.png", evo, rnd, budgets,
                title=f"CMP-NAS search ({reward}, {evo['evaluations']} evaluations)")
    return result


def _rerank_winners(evo, budgets, k, cfg, floor, data, supernet_dir, gck, out, calib_images, progress,
                    device_check) -> dict:
    """Replace each budget's evolution winner by the best of its finalists after a short finetune."""
    from .rerank import finalists, rerank, rerank_config

    if device_check is not None:
        raise SearchError("--rerank with a measured latency model (--latency-model) is not supported: the device "
                          "check re-picks winners by inherited reward; search under MACs or --latency-profile")
    cfg = cfg or rerank_config()
    done = {}
    for b in budgets:
        rr = rerank(data, supernet_dir, gck, finalists([_slim(r) for r in evo["records"]], b, k, floor),
                    Path(out) / "rerank" / budget_dirname(b), cfg, calib_images=calib_images, progress=progress)
        w = rr["winner"]
        rec = next(r for r in evo["records"] if r["key"] == arch_key(w["arch"]))
        evo["best"][f"{b:g}"] = rec
        done[f"{b:g}"] = {"short_r1": w["short_r1"], "settings": rr["settings"], "floor": floor,
                          "finalists": [{k2: f[k2] for k2 in ("arch", "mmacs", "reward", "short_r1")}
                                        for f in rr["finalists"]]}
        print(f"[search] budget {b:g}: re-ranked {len(rr['finalists'])} finalists by a {cfg.epochs}-epoch finetune; "
              f"winner {w['mmacs']:.3f} MMACs, validation R@1 {w['short_r1']:.2f} (inherited {w['reward']:.2f})",
              file=sys.stderr, flush=True)
    return done


# ----------------------------------------------------------------------------- finetuning


def load_subnet_arch(subnet: Any) -> tuple[dict, dict]:
    """(arch, info) from an arch dict, JSON text, an arch.json file or a subnet-<budget>/ folder."""
    if isinstance(subnet, dict):
        info = subnet
    elif isinstance(subnet, str) and subnet.lstrip().startswith("{"):
        try:
            info = json.loads(subnet)
        except json.JSONDecodeError as exc:
            raise ModelError(f"--subnet is not valid JSON: {exc}") from exc
    else:
        p = Path(subnet)
        if p.is_dir():
            p = p / "arch.json"
        if not p.is_file():
            raise ModelError(f"--subnet {subnet}: no arch.json there (give a subnet-<budget>/ folder from "
                             "`hetsearch nas search`, an arch.json file or arch JSON)")
        try:
            info = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise ModelError("--subnet must hold a JSON object")
    arch = info.get("arch", info)
    return arch, (info if "arch" in info else {})


def finetune_subnet(data, supernet_dir: str | os.PathLike, subnet: Any, gallery, out: str | os.PathLike, cfg=None, *,
                    calib_images: int = 500, progress: bool = True, resume: bool = False):
    """Extract a subnet with its inherited weights and finetune it against the gallery with ``train_query``;
    the result is an ordinary query checkpoint with ``nas`` info (supernet, arch, budget) in its meta."""
    from ..checkpoint import Checkpoint, load_checkpoint, relative_ref
    from ..data import train_val_split
    from ..train import TrainConfig, train_query

    cfg = cfg or TrainConfig()
    net, meta = load_supernet(supernet_dir)
    arch, info = load_subnet_arch(subnet)
    arch = net.set_active_subnet(arch)
    gck = gallery if isinstance(gallery, Checkpoint) else load_checkpoint(gallery, expect_kind="gallery")
    if meta.get("space_id") and meta["space_id"] != gck.space_id:
        raise SpaceMismatchError(meta["space_id"], gck.space_id, what="the supernet's embedding space")
    sub = net.extract_subnet(name=Path(out).name)
    train, _ = train_val_split(data, cfg.val_fraction, cfg.seed, cfg.max_train_samples, None, cfg.val_mode)
    recalibrate_bn(sub, train.subset(np.arange(min(len(train), calib_images)), "calib"), max_images=calib_images)
    nas = {"supernet": relative_ref(supernet_dir, out), "supernet_space_id": meta.get("space_id"), "arch": arch,
           "mmacs": arch_macs(net.config, arch) / 1e6, "budget": info.get("budget"),
           "budget_unit": info.get("budget_unit"), "search": info.get("search"), "reward": info.get("reward"),
           "val_het_r1_inherited": info.get("val_het_r1")}
    return train_query(data, gck, sub, out, cfg, resume=resume, progress=progress,
                       extra_meta={"nas": nas, "open_set_classes": meta.get("open_set_classes") or []})
