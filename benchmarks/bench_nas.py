"""CMP-NAS benchmark: the paper-style table on Fashion-MNIST with error bars, evaluated on the TEST split.

Rows, at three budgets (the MMACs of the three query presets: about 17x, 56x and 180x below the paragon), each
over ``--seeds`` seeds (mean ± std): the paragon (gallery model on both sides); hand-designed compact models
trained alone (homogeneous); the same models trained with the default compatibility loss against the gallery
(heterogeneous); CMP-NAS (evolutionary search of the compatibility-trained supernet, then finetuning of the
winner); random search with the same number of evaluations, finetuned alike. Hand-designed models and searched
models get the same number of training/finetuning epochs (``--epochs``). The seed drives the training of the
compact models and the search (evolution and random baseline); one supernet (``--supernet``, or trained here
with seed 0) serves every seed — its own training noise is not part of the spread, and the report says so.

    python -m benchmarks.bench_nas --gallery runs/gallery --supernet runs/supernet --seeds 0,1,2
    python -m benchmarks.bench_nas --gallery runs/gallery --supernet runs/supernet --seeds 1 --only-seeds   # one worker
    python -m benchmarks.bench_nas --quick --gallery runs/gallery --out runs/bench-quick

Every trained model and every per-seed result lands in OUT/nas-work/ and is reused by a rerun (stage reuse),
so seeds can run in parallel processes (``--only-seeds``) and a final run aggregates them.
Writes OUT/nas.json, OUT/nas.md and OUT/nas.png (R@1 vs MMACs with error bars).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path


from hetsearch.errors import HetsearchError

from . import cli_main

FULL = {"max_train_samples": None, "epochs": 8, "supernet_epochs": 10, "population": 16, "generations": 5,
        "num_random": 1, "test_samples": None, "max_val_samples": None}
QUICK = {"max_train_samples": 1500, "epochs": 1, "supernet_epochs": 1, "population": 6, "generations": 1,
         "num_random": 1, "test_samples": 2000, "max_val_samples": 400}


def parse_args(argv=None):
    from hetsearch.cmpnas.nas.rerank import add_rerank_args
    from hetsearch.cmpnas.nas.search import FINETUNE_LR

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_nas", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", required=True, help="trained gallery checkpoint (the paragon)")
    p.add_argument("--supernet", default=None, help="a trained supernet (default: train one in OUT/nas-work)")
    p.add_argument("--budget-supernet", action="append", default=[], metavar="B1,B2=DIR",
                   help="search these budgets (main or extra) in another supernet, e.g. one of another layout "
                        "(repeatable; the other budgets use --supernet)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--quick", action="store_true", help="tiny settings: a few minutes, numbers not meaningful")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--budgets", default=None, help="MMACs budgets (default: the MMACs of the compact presets)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--only-seeds", action="store_true", help="train and evaluate these seeds, write no report")
    p.add_argument("--hand-only", action="store_true",
                   help="only train the hand-designed models of these seeds (e.g. while the supernet trains)")
    p.add_argument("--nas-only", action="store_true", help="only search and finetune for these seeds")
    p.add_argument("--extra-budgets", default="1.124",
                   help="budgets searched separately (evolution only) for the cost-reduction targets, e.g. 1.124 "
                        "MMACs = 20x below the paragon; '' for none")
    p.add_argument("--extra-only", action="store_true", help="only the extra budgets' searches and finetunes")
    for key, val in FULL.items():
        flag = "--" + key.replace("_", "-")
        p.add_argument(flag, type=int, default=None, help=f"default {val} ({QUICK[key]} with --quick)")
    p.add_argument("--compat", default=None, help="compatibility loss (default: the foundation's)")
    p.add_argument("--reward", default="heterogeneous")
    p.add_argument("--tie-tolerance", type=float, default=0.3, help="see `hetsearch nas search --help`")
    add_rerank_args(p)  # evolution and random search alike here
    p.add_argument("--finetune-lr", type=float, default=FINETUNE_LR,
                   help=f"learning rate of the searched models' finetune (default {FINETUNE_LR}, cmpnas.nas.search)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key, val in base.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


METHODS = ("homogeneous compact (alone)", "hand-designed + compat", "CMP-NAS, inherited weights", "CMP-NAS + finetune",
           "random search + finetune", "CMP-NAS + finetune (extra budget)")


def _het_homo(model, test, g_test):
    from hetsearch.cmpnas.embed import embed
    from hetsearch.cmpnas.metrics import recall_at_1

    q = embed(model, test)
    return recall_at_1(q, g_test, test.labels), recall_at_1(q, q, test.labels)


def _cached_rows(path: Path, key: dict, fn) -> list[dict]:
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            print(f"reusing {path}", flush=True)
            return saved["rows"]
    rows = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "rows": rows}, indent=2) + "\n")
    return rows


def _done(d: Path, key: dict) -> bool:
    """Whether stage ``d`` finished under exactly ``key`` (its ``.done`` holds the key it was made with)."""
    try:
        return json.loads((d / ".done").read_text()) == key
    except (OSError, ValueError):
        return False


def _mark_done(d: Path, key: dict) -> None:
    (d / ".done").write_text(json.dumps(key, sort_keys=True) + "\n")


def _trained(d: Path, key: dict, fn):
    """A stage that writes a checkpoint: reused only when it finished under the same key (a changed supernet,
    gallery or setting retrains it instead of silently reusing a model made for another configuration)."""
    from hetsearch.cmpnas.checkpoint import load_checkpoint

    if (d / "checkpoint.pt").exists() and _done(d, key):
        return load_checkpoint(d)
    ck = fn()
    _mark_done(d, key)
    return ck


def _cfg(args, seed, compat_name, lr=0.1, warmup=0.5):
    from hetsearch.cmpnas.train import TrainConfig

    return TrainConfig(epochs=args.epochs, max_train_samples=args.max_train_samples, max_val_samples=args.max_val_samples,
                       seed=seed, threads=args.threads, compat=compat_name, lr=lr, warmup_epochs=warmup)


def _ft_cfg(args, seed, ctx):
    return _cfg(args, seed, ctx["compat"], lr=args.finetune_lr, warmup=0.2)


def _finalist(args, seed: int, ctx: dict, sn: Path, pool: list[dict], budget: float, sub_dir: Path, rr_dir: Path):
    """The subnet to finetune for one budget: the search's winner, or (``--rerank K``) the best of its K
    finalists after a short finetune each (validation split only). Returns (subnet, row fields)."""
    if not args.rerank:
        return sub_dir, {}
    from hetsearch.cmpnas.nas.rerank import finalists, rerank, rerank_config

    res = rerank(ctx["train"], sn, ctx["gallery"], finalists(pool, budget, args.rerank, args.rerank_floor),
                 rr_dir,
                 rerank_config(epochs=args.rerank_epochs, max_train_samples=args.max_train_samples,
                               max_val_samples=args.max_val_samples, seed=seed, threads=args.threads,
                               compat=ctx["compat"]), progress=not args.no_progress)
    w = res["winner"]
    return ({"arch": w["arch"], "budget": budget, "budget_unit": "MMACs", "search": "rerank",
             "reward": "heterogeneous R@1 after a short finetune", "val_het_r1": w["short_r1"]},
            {"rerank_short_r1": w["short_r1"], "rerank_rank_inherited": res["finalists"].index(w) + 1,
             "rerank_finalists": len(res["finalists"])})


def run_hand(args, seed: int, ctx: dict) -> list[dict]:
    """The hand-designed presets of one seed: trained alone, and with the compatibility loss (reused when done)."""
    from hetsearch.cmpnas.train import train_query

    work = ctx["work"] / f"seed-{seed}"
    key = {k: ctx["key"][k] for k in ("gallery", "compat", "epochs", "max_train_samples", "max_val_samples",
                                      "test_samples")} | {"seed": seed}

    def go():
        rows = []
        for name, mm in ctx["presets"].items():
            for method, compat, metric in ((METHODS[0], "independent", "homo"), (METHODS[1], ctx["compat"], "het")):
                d = work / f"{name}-{compat}"
                ck = _trained(d, key, lambda: train_query(ctx["train"], ctx["gallery"], name, d, _cfg(args, seed, compat),
                                                     progress=not args.no_progress))
                het, homo = _het_homo(ck.model, ctx["test"], ctx["g_test"])
                rows.append({"method": method, "arch": name, "budget": ctx["budget_of"][name], "mmacs": mm,
                             "r1": het if metric == "het" else homo, "het_r1": het, "homo_r1": homo, "seed": seed})
        return rows

    return _cached_rows(work / "rows-hand.json", key, go)


def _search(args, seed: int, ctx: dict, g: dict, se: Path, skey: dict, budgets: list[float], **kw) -> dict:
    """Group ``g``'s search of ``budgets`` into ``se``: reused when it finished under ``skey``, else run."""
    from hetsearch.cmpnas.nas.search import SearchConfig, run_search

    if (se / "search.json").exists() and _done(se, skey):
        return json.loads((se / "search.json").read_text())
    search = run_search(g["sn"], ctx["train"], ctx["gallery"], se, budgets, reward=args.reward,
                        scfg=SearchConfig(population=args.population, generations=args.generations, seed=seed,
                                          tie_tolerance=args.tie_tolerance),
                        max_val_samples=args.max_val_samples, progress=not args.no_progress, **kw)
    _mark_done(se, skey)
    return search


def _stage_dir(work: Path, stem: str, budget: float, g: dict) -> Path:
    """A per-budget stage folder of supernet group ``g``: another supernet's stages get their own folders, so a
    budget moved between supernets keeps the checkpoints of both (the default supernet keeps the old names)."""
    return work / f"{stem}{budget:g}{g['suffix']}"


def run_nas(args, seed: int, ctx: dict) -> list[dict]:
    """The searches of one seed (evolution + its random baseline, one per supernet) and the finetuning of both
    winners per budget."""
    # each row names the supernet it was searched in (its group: the cache key proves which one it was)
    return [{"supernet": g["name"], **r} for g in ctx["groups"] if g["budgets"] for r in _run_nas_group(args, seed, ctx, g)]


def _run_nas_group(args, seed: int, ctx: dict, g: dict) -> list[dict]:
    from hetsearch.cmpnas.checkpoint import load_checkpoint
    from hetsearch.cmpnas.nas.search import budget_dirname, finetune_subnet

    work = ctx["work"] / f"seed-{seed}"
    key = dict(g["key"]) | {"seed": seed}
    skey = dict(g["search_key"]) | {"seed": seed}
    gck, train_data, test, g_test = ctx["gallery"], ctx["train"], ctx["test"], ctx["g_test"]
    progress = not args.no_progress

    def go():
        rows = []
        se = work / f"search{g['suffix']}"
        search = _search(args, seed, ctx, g, se, skey, g["budgets"])
        for tag, method in (("", METHODS[3]), ("random/", METHODS[4])):
            for b in search["budgets"]:
                sub_dir = se / tag / budget_dirname(b)
                if tag == "":
                    ck = load_checkpoint(sub_dir)
                    het, homo = _het_homo(ck.model, test, g_test)
                    rows.append({"method": METHODS[2], "arch": ck.name, "budget": b, "mmacs": ck.macs / 1e6, "r1": het,
                                 "het_r1": het, "homo_r1": homo, "seed": seed,
                                 "val_het_r1": search["best"][f"{b:g}"]["het_r1"]})
                ft_dir = _stage_dir(work, f"finetune-{'random-' if tag else ''}", b, g)
                pool = search["random"]["evaluated"] if tag else search["evaluated"]
                subnet, rr = _finalist(args, seed, ctx, g["sn"], pool, b, sub_dir,
                                       _stage_dir(work, f"rerank-{'random-' if tag else ''}", b, g))
                ck = _trained(ft_dir, key, lambda: finetune_subnet(train_data, g["sn"], subnet, gck, ft_dir,
                                                              _ft_cfg(args, seed, ctx), progress=progress))
                het, homo = _het_homo(ck.model, test, g_test)
                rows.append({"method": method, "arch": json.dumps(ck.meta["nas"]["arch"]), "budget": b,
                             "mmacs": ck.macs / 1e6, "r1": het, "het_r1": het, "homo_r1": homo, "seed": seed,
                             "evaluations": search["evaluations"] if not tag else search["random"]["evaluations"],
                             **rr})
        return rows

    return _cached_rows(work / f"rows-nas{g['suffix']}.json", key, go)


def run_extra(args, seed: int, ctx: dict) -> list[dict]:
    """A separate evolutionary search for the extra budgets (the cost-reduction targets), winners finetuned."""
    return [{"supernet": g["name"], **r} for g in ctx["groups"] if g["extra"] for r in _run_extra_group(args, seed, ctx, g)]


def _run_extra_group(args, seed: int, ctx: dict, g: dict) -> list[dict]:
    from hetsearch.cmpnas.nas.search import budget_dirname, finetune_subnet

    budgets = g["extra"]
    work = ctx["work"] / f"seed-{seed}"
    key = dict(g["key"]) | {"seed": seed, "extra_budgets": budgets}
    skey = dict(g["search_key"]) | {"seed": seed, "extra_budgets": budgets}

    def go():
        se = work / f"search-extra{g['suffix']}"
        search = _search(args, seed, ctx, g, se, skey, budgets, random_baseline=False)
        rows = []
        for b in search["budgets"]:
            ft_dir = _stage_dir(work, "finetune-extra-", b, g)
            subnet, rr = _finalist(args, seed, ctx, g["sn"], search["evaluated"], b, se / budget_dirname(b),
                                   _stage_dir(work, "rerank-extra-", b, g))
            ck = _trained(ft_dir, key, lambda: finetune_subnet(ctx["train"], g["sn"], subnet, ctx["gallery"],
                                                          ft_dir, _ft_cfg(args, seed, ctx),
                                                          progress=not args.no_progress))
            het, homo = _het_homo(ck.model, ctx["test"], ctx["g_test"])
            rows.append({"method": METHODS[5], "arch": json.dumps(ck.meta["nas"]["arch"]), "budget": b,
                         "mmacs": ck.macs / 1e6, "r1": het, "het_r1": het, "homo_r1": homo, "seed": seed, **rr})
        return rows

    return _cached_rows(work / f"rows-extra{g['suffix']}.json", key, go)


def aggregate(rows: list[dict], paragon_r1: float, paragon_mmacs: float) -> list[dict]:
    """mean ± std over seeds per (method, budget)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for (method, budget), rs in sorted(groups.items(), key=lambda kv: (-kv[0][1], METHODS.index(kv[0][0]))):
        r1 = [r["r1"] for r in rs]
        mm = [r["mmacs"] for r in rs]
        out.append({"method": method, "budget": budget, "seeds": len(rs), "mmacs": statistics.mean(mm),
                    "mmacs_range": [min(mm), max(mm)], "cost_reduction": paragon_mmacs / statistics.mean(mm),
                    "r1_mean": statistics.mean(r1), "r1_std": statistics.stdev(r1) if len(r1) > 1 else float("nan"),
                    "gap_mean": paragon_r1 - statistics.mean(r1), "per_seed": r1,
                    "homo_r1_mean": statistics.mean(r["homo_r1"] for r in rs),
                    "arch": rs[0]["arch"] if method.startswith(("homogeneous", "hand")) else None,
                    "supernet": rs[0].get("supernet")})
    return out


def preset_budgets() -> tuple[dict, dict]:
    """The hand-designed query presets' MMACs, and the default budget matched to each: its MMACs rounded up to
    3 decimals (a subnet within it is "matched")."""
    from hetsearch.cmpnas.flops import count_macs
    from hetsearch.cmpnas.models import QUERY_PRESETS, build_model

    presets = {name: count_macs(build_model(name)) / 1e6 for name in QUERY_PRESETS}
    return presets, {n: math.ceil(m * 1000) / 1000 for n, m in presets.items()}


def _parse_budget_supernets(entries: list[str]) -> dict[float, Path]:
    out: dict[float, Path] = {}
    for e in entries:
        bs, sep, path = e.partition("=")
        try:
            vals = [float(b) for b in bs.split(",") if b.strip()]
        except ValueError:
            vals = []
        if not sep or not path or not vals:
            raise HetsearchError(f"--budget-supernet {e!r}: expected B1,B2=DIR (MMACs budgets, then a supernet folder)")
        for b in vals:
            if b in out:
                raise HetsearchError(f"--budget-supernet: budget {b:g} is given twice")
            out[b] = Path(path)
    return out


def supernet_groups(args, default: Path, budgets: list[float], extra: list[float], common: dict) -> list[dict]:
    """The supernets to search and the budgets each serves (``--supernet`` for every budget that
    ``--budget-supernet`` does not give another one), each with the cache keys of its stages."""
    mapping = _parse_budget_supernets(args.budget_supernet)
    unknown = sorted(b for b in mapping if b not in budgets + extra)
    if unknown:
        raise HetsearchError(f"--budget-supernet names budget(s) {unknown} that are neither --budgets {budgets} nor "
                             f"--extra-budgets {extra}")
    groups = []
    for sn in dict.fromkeys([default, *mapping.values()]):
        gb = [b for b in budgets if mapping.get(b, default) == sn]
        ge = [b for b in extra if mapping.get(b, default) == sn]
        if not (gb or ge):
            continue
        if not (sn / "supernet.pt").exists():
            raise HetsearchError(f"supernet {sn}: no supernet.pt there")
        meta = json.loads((sn / "meta.json").read_text()) if (sn / "meta.json").exists() else {}
        planned = (meta.get("train_config") or {}).get("epochs")
        if planned and meta.get("epochs_done", 0) < planned:
            raise HetsearchError(f"the supernet {sn} has trained {meta.get('epochs_done')} of {planned} epochs (still "
                                 "training, or stopped): finish it (nas supernet --resume) before searching it")
        space_file = sn / "config.json"
        space_raw = space_file.read_bytes() if space_file.exists() else None
        digest = hashlib.sha256(space_raw).hexdigest()[:16] if space_raw is not None else None
        # the default supernet's stages keep their names and keys (earlier runs stay reusable)
        key = {"gallery": common["gallery"], "supernet_epochs": meta.get("epochs_done"), "supernet": sn.name,
               "supernet_space": digest, "budgets": gb, **{k: v for k, v in common.items() if k != "gallery"}}
        search_key = dict(key)  # a search does not depend on what happens to its winners afterwards
        if args.rerank:
            key |= {"rerank": args.rerank, "rerank_epochs": args.rerank_epochs, "rerank_floor": args.rerank_floor}
        if args.finetune_lr != 0.03:  # runs before lr 0.1 became the default recorded no lr in their key
            key |= {"finetune_lr": args.finetune_lr}
        groups.append({"sn": sn, "name": sn.name, "suffix": "" if sn == default else f"-{sn.name}", "budgets": gb,
                       "extra": ge, "key": key, "search_key": search_key, "meta": meta,
                       "space": json.loads(space_raw) if space_raw is not None else {}})
    return groups


def run(args) -> dict:
    import torch

    from hetsearch.cmpnas.checkpoint import load_checkpoint
    from hetsearch.cmpnas.data import load_data, stratified_sample
    from hetsearch.cmpnas.embed import embed
    from hetsearch.cmpnas.losses import DEFAULT_COMPAT
    from hetsearch.cmpnas.metrics import recall_at_1
    from hetsearch.cmpnas.nas.train import train_supernet
    from hetsearch.cmpnas.train import TrainConfig, set_threads
    from hetsearch.report import format_table, markdown_table, write_json

    t_start = time.time()
    set_threads(args.threads)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = out / "nas-work"
    work.mkdir(parents=True, exist_ok=True)
    compat = args.compat or DEFAULT_COMPAT
    gck = load_checkpoint(args.gallery, expect_kind="gallery")
    train_data = load_data(args.data, "train", args.data_dir)
    test = load_data(args.data, "test", args.data_dir)
    if args.test_samples:
        test = test.subset(stratified_sample(test.labels, args.test_samples, 0), "bench")
    g_test = embed(gck.model, test, progress="embed test (gallery)" if not args.no_progress else False)
    paragon_r1 = recall_at_1(g_test, g_test, test.labels)
    paragon_mmacs = gck.macs / 1e6
    presets, budget_of = preset_budgets()
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else sorted(budget_of.values())
    sn = Path(args.supernet) if args.supernet else work / "supernet"
    if args.hand_only:
        pass
    elif not (sn / "supernet.pt").exists():
        if args.supernet:
            raise HetsearchError(f"--supernet {sn}: no supernet.pt there")
        train_supernet(train_data, gck, sn, TrainConfig(epochs=args.supernet_epochs, max_train_samples=args.max_train_samples,
                                                        seed=0, threads=args.threads, compat=compat,
                                                        num_random=args.num_random),
                       progress=not args.no_progress, data_name=args.data)
    common = {"gallery": gck.space_id, "compat": compat, **{k: getattr(args, k) for k in FULL}, "reward": args.reward,
              "tie_tolerance": args.tie_tolerance}
    extra = [float(b) for b in (args.extra_budgets or "").split(",") if b.strip()]
    groups = [] if args.hand_only else supernet_groups(args, sn, budgets, extra, common)
    ctx = {"work": work, "key": common, "gallery": gck, "train": train_data, "test": test, "g_test": g_test,
           "presets": presets, "budget_of": budget_of, "budgets": budgets, "groups": groups, "compat": compat}
    all_rows = []
    for seed in args.seed_list:
        t = time.time()
        if not (args.nas_only or args.extra_only):
            all_rows += run_hand(args, seed, ctx)
        if not (args.hand_only or args.extra_only):
            all_rows += run_nas(args, seed, ctx)
        if not (args.hand_only or args.nas_only):
            all_rows += run_extra(args, seed, ctx)
        print(f"seed {seed} done in {time.time() - t:.0f} s", flush=True)
    if args.only_seeds or args.hand_only or args.nas_only or args.extra_only:
        return {"rows": all_rows}
    table = aggregate(all_rows, paragon_r1, paragon_mmacs)
    result = {
        "benchmark": "cmpnas", "data": f"{args.data} (test split, {len(test)} images)", "quick": bool(args.quick),
        "paragon": {"model": gck.name, "mmacs": paragon_mmacs, "r1": paragon_r1},
        "seeds": args.seed_list, "compat": compat, "budgets": budgets,
        "supernets": [{"name": g["name"], "budgets": g["budgets"], "extra_budgets": g["extra"],
                       "schedule": g["meta"].get("schedule", "sandwich"), "epochs": g["meta"].get("epochs_done"),
                       "hires": g["space"].get("hires", [0]),
                       "train_config": {k: (g["meta"].get("train_config") or {}).get(k)
                                        for k in ("epochs", "max_train_samples", "num_random", "schedule", "seed")}}
                      for g in groups],
        "settings": {k: getattr(args, k) for k in FULL} | {"reward": args.reward, "threads": args.threads,
                                                            "tie_tolerance": args.tie_tolerance,
                                                            "finetune_lr": args.finetune_lr, "rerank": args.rerank,
                                                            "rerank_epochs": args.rerank_epochs,
                                                            "rerank_floor": args.rerank_floor},
        "table": table, "rows": all_rows, "targets": targets(table, paragon_r1),
        "seconds": round(time.time() - t_start, 1),
    }
    write_json(out / "nas.json", result)
    cols = ["method", "budget", "mmacs", "cost_reduction", "r1", "gap", "seeds", "homo"]
    md_rows = [{"method": "paragon (gallery both sides)", "budget": "-", "mmacs": paragon_mmacs, "cost_reduction": 1.0,
                "r1": f"{paragon_r1:.2f}", "gap": "0.00", "seeds": 1, "homo": f"{paragon_r1:.2f}"}]
    for r in table:
        sn_tag = f" [{r['supernet']}]" if r.get("supernet") and len(groups) > 1 else ""
        md_rows.append({"method": r["method"] + (f" ({r['arch']})" if r["arch"] else "") + sn_tag, "budget": r["budget"],
                        "mmacs": r["mmacs"], "cost_reduction": r["cost_reduction"],
                        "r1": f"{r['r1_mean']:.2f} ± {r['r1_std']:.2f}", "gap": f"{r['gap_mean']:.2f}",
                        "seeds": r["seeds"], "homo": f"{r['homo_r1_mean']:.2f}"})
    hdr = {"budget": "budget (MMACs)", "mmacs": "MMACs (mean)", "cost_reduction": "cost reduction (x)",
           "r1": "R@1 mean ± std", "gap": "points behind the paragon", "homo": "homogeneous R@1"}
    md = [f"# CMP-NAS on {result['data']}\n\n",
          f"Paragon: {gck.name}, {paragon_mmacs:.2f} MMACs, R@1 {paragon_r1:.2f}. Compatibility loss: {compat}. "
          f"Seeds {args.seed_list} (mean ± sample std over seeds; one R@1 on {len(test)} test images has a binomial "
          f"standard error of about {100 * math.sqrt(0.88 * 0.12 / len(test)):.2f} points). Every compact model gets "
          f"{args.epochs} training (hand-designed, from scratch, lr 0.1) or finetuning (searched, from inherited "
          f"weights, lr {args.finetune_lr:g}) epochs. "
          + (f"Searched rows (evolution and random search alike): each budget's {args.rerank} best candidates by "
             f"inherited reward costing at least {args.rerank_floor:g} of the budget are finetuned for "
             f"{args.rerank_epochs} epoch(s) and the best on the validation split is finetuned in full; the "
             f"'inherited weights' row is the search's own winner before that. " if args.rerank else "")
          + _supernets_sentence(result["supernets"]) + " R@1 is heterogeneous (query model vs gallery embeddings) "
          "except for the 'alone' rows (homogeneous).\n\n",
          markdown_table(md_rows, cols, headers=hdr), "\n\n## Targets\n\n",
          *[f"- {t['target']}: **{'met' if t['met'] else 'not met'}** — {t['detail']}\n" for t in result["targets"]],
          f"\nSettings: {json.dumps(result['settings'])}; wall time of this (aggregating) run {result['seconds']:.0f} s.\n"]
    (out / "nas.md").write_text("".join(md))
    plot(out / "nas.png", table, paragon_r1, result["data"])
    print(format_table(md_rows, cols, headers=hdr))
    for t in result["targets"]:
        print(f"{t['target']}: {'met' if t['met'] else 'not met'} ({t['detail']})")
    print(f"written {out / 'nas.json'}, {out / 'nas.md'}, {out / 'nas.png'}")
    return result


def _supernets_sentence(sns: list[dict]) -> str:
    def one(s):
        layout = {(0,): "", (1,): ", 14x14 layout (hires 1)", (0, 1): ", hires 0 and 1"}.get(tuple(s["hires"]), "")
        return f"{s['name']}: {s['schedule']}, {s['epochs']} epochs, seed 0{layout}"

    if len(sns) == 1:
        return (f"One supernet ({one(sns[0])}) serves all seeds: the seed drives the compact models' training and the "
                "search, not the supernet's training.")
    parts = [f"{one(s)} for {', '.join(f'{b:g}' for b in s['budgets'] + s['extra_budgets'])} MMACs" for s in sns]
    return (f"{len(sns)} supernets ({'; '.join(parts)}), each serving all seeds: the seed drives the compact models' "
            "training and the search, not the supernets' training.")


def diff_se(std_a: float, n_a: int, std_b: float, n_b: int) -> float:
    """Standard error of the difference of two unpaired means (sample stds; nan when a side has one value)."""
    if n_a < 2 or n_b < 2:
        return float("nan")
    return math.sqrt(std_a ** 2 / n_a + std_b ** 2 / n_b)


def _diff_se(a: dict, b: dict) -> float:
    """:func:`diff_se` of two table rows (means over seeds)."""
    return diff_se(a["r1_std"], a["seeds"], b["r1_std"], b["seeds"])


def targets(table, paragon_r1) -> list[dict]:
    """The issue's targets on means over seeds."""
    by = {(r["method"], r["budget"]): r for r in table}
    budgets = sorted({r["budget"] for r in table}, reverse=True)
    nas = [by[(METHODS[3], b)] for b in budgets if (METHODS[3], b) in by]
    searched = nas + [by[(METHODS[5], b)] for b in budgets if (METHODS[5], b) in by]
    out = []
    for factor, pts in ((20, 1.0), (50, 2.0)):
        ok = [r for r in searched if r["cost_reduction"] >= factor and r["gap_mean"] <= pts]
        best = max(ok, key=lambda r: r["cost_reduction"], default=None)
        out.append({"target": f">= {factor}x query-cost reduction within {pts:.1f} point(s) of the paragon's R@1",
                    "met": bool(ok),
                    "detail": (f"{best['cost_reduction']:.0f}x at {best['gap_mean']:.2f} points behind" if best else
                               "; ".join(f"{r['cost_reduction']:.1f}x is {r['gap_mean']:.2f} points behind"
                                         for r in sorted(searched, key=lambda r: -r["cost_reduction"])))})
    for other, label in ((METHODS[1], "hand-designed + compat loss at matched MACs"),
                         (METHODS[4], "random search + finetune (same evaluations)")):
        pairs = [(by[(METHODS[3], b)], by[(other, b)]) for b in budgets if (METHODS[3], b) in by and (other, b) in by]
        strict = other == METHODS[4]
        met = bool(pairs) and all((n["r1_mean"] > o["r1_mean"]) if strict else (n["r1_mean"] >= o["r1_mean"])
                                  for n, o in pairs)
        diffs = [(n["r1_mean"] - o["r1_mean"], _diff_se(n, o)) for n, o in pairs]
        within = [f"{n['budget']:g}" for (n, _), (d, se) in zip(pairs, diffs) if not math.isnan(se) and abs(d) < 2 * se]
        out.append({"target": f"CMP-NAS + finetune {'>' if strict else '>='} {label}, at every budget", "met": met,
                    "detail": "; ".join(f"<= {n['budget']:g} MMACs: {n['r1_mean']:.2f} ± {n['r1_std']:.2f} vs "
                                        f"{o['r1_mean']:.2f} ± {o['r1_std']:.2f} ({d:+.2f} ± {se:.2f} s.e.)"
                                        for (n, o), (d, se) in zip(pairs, diffs))
                              + (f"; within the noise (|difference| < 2 s.e.) at {', '.join(within)} MMACs: means "
                                 "over these seeds, not a significant difference" if within else ""),
                    "within_noise": within})
    return out


def plot(path, table, paragon_r1, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    styles = {METHODS[0]: ("s", "tab:gray", ":"), METHODS[1]: ("o", "tab:orange", ":"), METHODS[2]: ("^", "tab:cyan", ":"),
              METHODS[3]: ("*", "tab:red", "-"), METHODS[4]: ("x", "tab:green", ":"),
              METHODS[5]: ("P", "tab:purple", "none")}
    for method, (marker, color, ls) in styles.items():
        sel = sorted([r for r in table if r["method"] == method], key=lambda r: r["mmacs"])
        if sel:
            ax.errorbar([r["mmacs"] for r in sel], [r["r1_mean"] for r in sel],
                        yerr=[0 if math.isnan(r["r1_std"]) else r["r1_std"] for r in sel], marker=marker, color=color,
                        ls=ls, ms=9 if marker == "*" else 6, capsize=3, label=method)
    ax.axhline(paragon_r1, color="k", lw=1, ls="--", label=f"paragon {paragon_r1:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("query model MMACs (log)")
    ax.set_ylabel("R@1 on the test split (%), mean ± std over seeds")
    ax.set_title(f"CMP-NAS vs baselines — {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    return cli_main("bench_nas", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
