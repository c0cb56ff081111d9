"""Re-ranking a search's finalists by a short finetune.

The search ranks candidates by their accuracy with inherited supernet weights. That ranking is weak where the
candidates are close in cost (``benchmarks/results/rank.md``: Kendall τ 0.45 over 12 subnets), and the winner is
finetuned anyway. So the ``k`` best candidates under a budget by inherited reward (the finalists) are each
finetuned briefly (``epochs``, a schedule of their own) against the frozen gallery, scored by heterogeneous R@1 on
the validation split carved from the training data, and the best of them wins. The evaluation split is never
touched. Random search gets the same treatment in benchmarks, so both spend the same number of evaluations and
finetune epochs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from hetsearch.errors import DataError

from .space import arch_key

log = logging.getLogger("hetsearch.nas")

RERANK_FILE = "rerank.json"
RERANK_LR = 0.03  # the finalists' short finetune: gentle, it only has to rank them


def rerank_config(**overrides):
    """The finalists' short finetune: 1 epoch at RERANK_LR with a 0.2-epoch warm-up, unless overridden."""
    from ..train import TrainConfig

    return TrainConfig(**{"epochs": 1, "lr": RERANK_LR, "warmup_epochs": 0.2, **overrides})


def add_rerank_args(p) -> None:
    """--rerank K, --rerank-epochs, --rerank-floor (``nas search`` and ``benchmarks/bench_nas.py``)."""
    p.add_argument("--rerank", type=int, default=0, metavar="K",
                   help="finetune each budget's K finalists briefly and keep the best on the validation split "
                        "(0: the best inherited reward wins); measured in benchmarks/results/nas.md")
    p.add_argument("--rerank-epochs", type=int, default=1, help="finetune epochs per finalist (default 1)")
    p.add_argument("--rerank-floor", type=float, default=0.8,
                   help="finalists cost at least this fraction of the budget while there are enough (default 0.8)")


def finalists(evaluated: list[dict], budget: float, k: int, floor: float = 0.0) -> list[dict]:
    """The ``k`` distinct feasible candidates (cost <= budget) with the highest inherited reward, best first.

    ``floor`` (a fraction of the budget): candidates costing less than ``floor * budget`` are taken only when
    fewer than ``k`` cost more (and a log line says so). Inherited reward is nearly flat in cost while the
    finetuned accuracy is not, so without a floor the finalists can all sit far below the budget."""
    feasible = sorted((c for c in evaluated if c["cost"] <= budget), key=lambda c: (-c["reward"], -c["cost"]))
    if not feasible:
        raise DataError(f"no evaluated candidate fits the budget {budget:g}: nothing to re-rank")
    seen, out = set(), []
    for above in (True, False):
        for c in feasible:
            key = arch_key(c["arch"])
            if len(out) < k and key not in seen and (c["cost"] >= floor * budget) == above:
                seen.add(key)
                out.append(c)
        if above and len(out) < k and floor > 0:
            log.info("re-rank at budget %g: %d candidate(s) cost at least %g of it; the rest of the %d finalists "
                     "are cheaper", budget, len(out), floor, k)
    return out


def finalist_dir(arch: dict) -> str:
    """The folder a finalist's finetune goes to, named by its architecture."""
    return f"finalist-{hashlib.sha1(arch_key(arch).encode()).hexdigest()[:10]}"


def rerank(data, supernet_dir: str | os.PathLike, gallery, candidates: list[dict], out: str | os.PathLike, cfg, *,
           calib_images: int = 500, progress: bool = True) -> dict:
    """Finetune each candidate for ``cfg.epochs`` and keep the best by validation heterogeneous R@1.

    Writes ``out/rerank.json`` as each candidate finishes (a re-run reuses finished candidates with the same
    settings). Returns ``{"winner": candidate + short_r1, "finalists": [...], "settings": ...}``."""
    from .search import finetune_subnet

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"epochs": cfg.epochs, "lr": cfg.lr, "warmup_epochs": cfg.warmup_epochs, "seed": cfg.seed,
                "max_train_samples": cfg.max_train_samples, "max_val_samples": cfg.max_val_samples,
                "compat": cfg.compat}
    path = out / RERANK_FILE
    done = {}
    if path.exists():
        prev = json.loads(path.read_text())
        if prev.get("settings") == settings:
            done = {arch_key(f["arch"]): f for f in prev.get("finalists", [])}
    rows = []
    for i, c in enumerate(candidates):
        key = arch_key(c["arch"])
        if key in done:
            rows.append(done[key])
            continue
        t = time.time()
        d = finalist_dir(c["arch"])  # by arch: a re-run may reorder them
        ck = finetune_subnet(data, supernet_dir, {"arch": c["arch"]}, gallery, out / d, cfg,
                             calib_images=calib_images, progress=progress)
        last = ck.meta["metrics"]["history"][-1]
        rows.append({**c, "dir": d, "short_r1": float(last["val_heterogeneous_r1"]),
                     "short_homo_r1": float(last["val_homogeneous_r1"]), "short_seconds": round(time.time() - t, 1)})
        log.info("finalist %d/%d: %.3f MMACs inherited %.2f, after %d epoch(s) %.2f", i + 1, len(candidates),
                 c.get("mmacs", c["cost"]), c["reward"], cfg.epochs, rows[-1]["short_r1"])
        path.write_text(json.dumps({"settings": settings, "finalists": rows}, indent=1))
    winner = max(rows, key=lambda r: (r["short_r1"], r["cost"]))
    result = {"settings": settings, "finalists": rows, "winner": winner}
    path.write_text(json.dumps(result, indent=1))
    return result
