"""Latency models measured on the device, and the search's on-device check of its winners.

``hetsearch nas latency-model`` (:func:`build_latency_model`):

1. **Design.** A sample of subnets spread over the space's cost range: the smallest and the largest subnet plus
   one subnet from each of ``samples - 2`` equal-width bins of log-MMACs, drawn from a pool of random subnets
   whose genes are skewed towards small, uniform and large choices (uniform draws alone rarely reach the ends).
2. **Measurement.** Each subnet is extracted from the supernet, exported with the exporter
   (:func:`hetsearch.export.exporter.export_bundle`, one format and precision), checked lightly (parity of the
   exported file against PyTorch on a few images, through the SDK runtime) and profiled on the target with the
   profiler (:func:`hetsearch.export.profile.profile_bundle`). The p50 is the measured latency. Every
   measurement is written to the output file as it comes, so an interrupted run resumes (``--resume``) where it
   stopped when the supernet, space, target, format, precision, threads and profiler settings are unchanged.
3. **Fit.** The measured subnets are sorted by MMACs; every k-th one (k = 1/holdout, never the smallest or the
   largest) is held out. On the rest, candidates are compared by k-fold cross-validation (MAPE): ``macs-linear``
   (latency = a·MMACs + b, the old proxy) and ``op-linear`` (an intercept plus non-negative coefficients on
   :func:`~.cost.op_features`: MMACs per op kind with depthwise split by kernel, layer counts, output elements)
   with a few ridge strengths. Both minimise the squared *relative* error (rows weighted by 1/latency), the
   error MAPE measures. The chosen candidate, fitted on the fitting part, is the predictor; its mean absolute
   percentage error and Kendall τ on the held-out part are reported. Nothing is chosen on the held-out part.

The search (:func:`check_under_budget`): with a latency model, each budget's winner is exported and measured on
the model's target; when it measures over the budget, the next subnets by the search's own selection rule
(predicted under the budget, predicted cheaper than the one that missed) are measured until one is within it,
or the search says loudly that none was.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from hetsearch.errors import HetsearchError

from .cost import (FEATURES_VERSION, LATENCY_MODEL_KIND, feature_names, op_features, predictor_ms,
                   space_digest)
from .space import (SupernetConfig, _num, arch_key, arch_macs, canonical_arch, largest_arch, smallest_arch)

log = logging.getLogger("hetsearch.nas")

SCHEMA_VERSION = 1
MIN_SAMPLES = 6
RIDGE_ALPHAS = (0.0, 0.01, 0.1, 1.0)
LATENCY_FORMATS = ("onnx", "tflite")


class LatencyModelError(HetsearchError):
    """A latency model cannot be built, resumed or used as asked."""


# ----------------------------------------------------------------------------- target settings


@dataclass
class TargetSettings:
    """Where and how subnets are measured: the profiler's target and settings, one format and precision."""

    target: str = "local"
    format: str = "tflite"
    precision: str = "fp32"
    threads: int | None = 1
    warmup: int = 5
    runs: int = 50
    min_seconds: float = 1.0
    identity: str | None = None
    known_hosts: str | None = None
    remote_python: str = "python3"
    benchmark_model: str | None = None
    adb: str = "adb"
    timeout: float = 600.0

    def validate(self) -> "TargetSettings":
        from hetsearch.export.profile import parse_target
        from hetsearch.manifest import PRECISIONS

        if self.format not in LATENCY_FORMATS:
            raise LatencyModelError(f"--format {self.format!r}: latency models are measured on onnx or tflite files")
        if self.precision not in PRECISIONS:
            raise LatencyModelError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.threads is not None and int(self.threads) < 1:
            raise LatencyModelError(f"--threads must be at least 1, got {self.threads}")
        if int(self.runs) < 1 or int(self.warmup) < 0 or float(self.min_seconds) < 0:
            raise LatencyModelError("--runs must be at least 1, --warmup and --min-seconds at least 0")
        tgt = parse_target(self.target)
        if tgt.kind == "adb" and self.format != "tflite":
            raise LatencyModelError("adb:// targets run .tflite files only (LiteRT benchmark_model): use --format tflite")
        self.target = tgt.name
        return self

    def signature(self) -> dict:
        """What a measurement depends on (besides the supernet and its space)."""
        return {"target": self.target, "format": self.format, "precision": self.precision, "threads": self.threads,
                "warmup": int(self.warmup), "runs": int(self.runs), "min_seconds": float(self.min_seconds)}

    def options(self) -> dict:
        """How to reach the target (not part of the signature: another key file reaches the same device)."""
        return {"identity": self.identity, "known_hosts": self.known_hosts, "remote_python": self.remote_python,
                "benchmark_model": self.benchmark_model, "adb": self.adb, "timeout": self.timeout}

    @classmethod
    def from_model(cls, model: dict) -> "TargetSettings":
        sig, opts = model.get("signature") or {}, model.get("target_options") or {}
        try:
            return cls(**{k: sig[k] for k in ("target", "format", "precision", "threads", "warmup", "runs",
                                             "min_seconds")}, **opts).validate()
        except (KeyError, TypeError) as exc:
            raise LatencyModelError(f"the latency model's target settings are incomplete ({exc})") from None


# ----------------------------------------------------------------------------- the design


def _skewed_arch(cfg: SupernetConfig, rng: random.Random, gamma: float) -> dict:
    """A random subnet whose every gene picks choice index floor(m·u^gamma): gamma > 1 leans small, < 1 large."""

    def pick(choices):
        return choices[min(len(choices) - 1, int(len(choices) * rng.random() ** gamma))]

    D = cfg.max_depth
    depths = [pick(cfg.depths) for _ in cfg.stages]
    return canonical_arch(cfg, {
        "resolution": pick(cfg.resolutions), "width": _num(pick(cfg.widths)), "hires": pick(cfg.hires),
        "depths": depths, "kernels": [[pick(cfg.kernels) for _ in range(D)] for _ in cfg.stages],
        "expands": [[_num(pick(cfg.expands)) for _ in range(D)] for _ in cfg.stages]})


def design_sample(cfg: SupernetConfig, samples: int, seed: int = 0, pool: int = 3000) -> list[dict]:
    """``samples`` distinct subnets spread over the cost range (see the module doc), sorted by MMACs."""
    if samples < MIN_SAMPLES:
        raise LatencyModelError(f"--samples must be at least {MIN_SAMPLES} (fit, cross-validate and hold out), "
                                f"got {samples}")
    rng = random.Random(seed)
    ends = [canonical_arch(cfg, smallest_arch(cfg)), canonical_arch(cfg, largest_arch(cfg))]
    cands: dict[str, dict] = {}
    gammas = (0.25, 0.5, 1.0, 2.0, 4.0)
    for i in range(pool):
        a = _skewed_arch(cfg, rng, gammas[i % len(gammas)])
        cands.setdefault(arch_key(a), a)
    for a in ends:
        cands.pop(arch_key(a), None)
    if len(cands) < samples - 2:
        raise LatencyModelError(f"this space holds too few distinct subnets for {samples} samples "
                                f"(found {len(cands) + 2}); use fewer --samples")
    lo, hi = (math.log(arch_macs(cfg, a)) for a in ends)
    logm = {k: math.log(arch_macs(cfg, a)) for k, a in cands.items()}
    bins = samples - 2
    edges = np.linspace(lo, hi, bins + 1)
    chosen: list[dict] = list(ends)
    used: set[str] = set()
    keys = sorted(cands)
    for i in range(bins):
        inside = [k for k in keys if k not in used and edges[i] <= logm[k] <= edges[i + 1]]
        if inside:
            k = rng.choice(inside)
        else:  # an empty bin: the unused subnet nearest its centre
            centre = (edges[i] + edges[i + 1]) / 2
            k = min((k for k in keys if k not in used), key=lambda k: (abs(logm[k] - centre), k))
        used.add(k)
        chosen.append(cands[k])
    return sorted(chosen, key=lambda a: (arch_macs(cfg, a), arch_key(a)))


def holdout_split(measurements: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(fit, held out): sorted by MMACs, every k-th (k = round(1/fraction)) is held out, never the two ends."""
    if not 0 < fraction < 0.5:
        raise LatencyModelError(f"--holdout must be a fraction in (0, 0.5), got {fraction}")
    ms = sorted(measurements, key=lambda m: (m["mmacs"], m["key"]))
    k = max(2, int(round(1 / fraction)))
    held_idx = {i for i in range(1, len(ms) - 1) if i % k == k // 2}
    return [m for i, m in enumerate(ms) if i not in held_idx], [m for i, m in enumerate(ms) if i in held_idx]


# ----------------------------------------------------------------------------- fitting


def nnls(A: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares, min ||Ax - b|| subject to x >= 0 (Lawson and Hanson's active-set method)."""
    m, n = A.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * np.abs(A).sum(axis=0).max(initial=1.0) * max(m, n)
    max_iter = max_iter or 30 * n
    w = A.T @ (b - A @ x)
    it = 0
    while (~passive).any() and w[~passive].max() > tol:
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            it += 1
            if it > max_iter:
                raise LatencyModelError("non-negative least squares did not converge")
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if s[passive].min() > 0:
                break
            neg = passive & (s <= 0)
            step = np.min(x[neg] / (x[neg] - s[neg]))
            x = x + step * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
        x = s
        w = A.T @ (b - A @ x)
    return x


def _design_matrix(space: SupernetConfig, ms: list[dict], kind: str) -> tuple[np.ndarray, list[str]]:
    if kind == "macs-linear":
        names = ["mmacs"]
        X = np.array([[m["mmacs"]] for m in ms], dtype=float)
    else:
        names = feature_names(space)
        feats = [op_features(space, m["arch"]) for m in ms]
        X = np.array([[f.get(n, 0.0) for n in names] for f in feats], dtype=float)
    return np.hstack([np.ones((len(ms), 1)), X]), names


def fit_candidate(space: SupernetConfig, ms: list[dict], kind: str, alpha: float = 0.0) -> dict:
    """Fit one candidate predictor on measurements: non-negative coefficients minimising the squared relative
    error, with a ridge penalty ``alpha`` (on features scaled to unit RMS; the intercept is not penalised)."""
    X, names = _design_matrix(space, ms, kind)
    y = np.array([m["latency_ms"] for m in ms], dtype=float)
    A = X / y[:, None]
    scale = np.sqrt((A ** 2).mean(axis=0))
    scale[scale == 0] = 1.0
    As = A / scale
    b = np.ones(len(y))
    if alpha > 0:
        pen = np.sqrt(alpha * len(y)) * np.eye(As.shape[1])[1:]
        As, b = np.vstack([As, pen]), np.concatenate([b, np.zeros(len(pen))])
    beta = nnls(As, b) / scale
    if kind == "macs-linear":
        return {"name": kind, "ms_per_mmac": float(beta[1]), "intercept_ms": float(beta[0])}
    return {"name": kind, "alpha": alpha, "intercept_ms": float(beta[0]),
            "coef": {n: float(c) for n, c in zip(names, beta[1:])}}


def predict(space: SupernetConfig, predictor: dict, arch: dict) -> float:
    return predictor_ms(predictor, op_features(space, arch))


def mape(pred, meas) -> float:
    p, m = np.asarray(pred, float), np.asarray(meas, float)
    return float(np.mean(np.abs(p - m) / m) * 100)


def kendall_tau(a, b) -> float:
    """Kendall's τ-b between two sequences (ties counted as neither concordant nor discordant)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2:
        return float("nan")
    da, db = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    den = math.sqrt(float(np.count_nonzero(da)) * float(np.count_nonzero(db)))
    return float((da * db).sum() / den) if den else float("nan")


def candidates() -> list[tuple[str, float]]:
    return [("macs-linear", 0.0)] + [("op-linear", a) for a in RIDGE_ALPHAS]


def _label(kind: str, alpha: float) -> str:
    return kind if kind == "macs-linear" else f"{kind} (ridge {alpha:g})"


def select_predictor(space: SupernetConfig, fit: list[dict], folds: int = 5) -> dict:
    """Cross-validate every candidate on the fitting part; the lowest CV MAPE wins (ties: the earlier, simpler
    one). Returns the selection table and the winner fitted on the whole fitting part."""
    ms = sorted(fit, key=lambda m: (m["mmacs"], m["key"]))
    k = max(2, min(folds, len(ms)))
    fold = np.arange(len(ms)) % k
    table = []
    for kind, alpha in candidates():
        pred = np.zeros(len(ms))
        for f in range(k):
            train = [m for m, g in zip(ms, fold) if g != f]
            p = fit_candidate(space, train, kind, alpha)
            for i in np.flatnonzero(fold == f):
                pred[i] = predict(space, p, ms[i]["arch"])
        meas = [m["latency_ms"] for m in ms]
        table.append({"candidate": _label(kind, alpha), "name": kind, "alpha": alpha, "cv_mape": mape(pred, meas),
                      "cv_kendall_tau": kendall_tau(pred, meas)})
    best = min(range(len(table)), key=lambda i: (round(table[i]["cv_mape"], 9), i))
    chosen = table[best]
    return {"cv_folds": k, "fitting_subnets": len(ms), "candidates": table, "chosen": chosen["candidate"],
            "predictor": fit_candidate(space, ms, chosen["name"], chosen["alpha"])}


def held_out_report(space: SupernetConfig, predictor: dict, held: list[dict]) -> dict:
    pred = [predict(space, predictor, m["arch"]) for m in held]
    meas = [m["latency_ms"] for m in held]
    rows = [{"mmacs": m["mmacs"], "measured_ms": y, "predicted_ms": p, "ape_pct": abs(p - y) / y * 100}
            for m, p, y in zip(held, pred, meas)]
    return {"subnets": len(held), "mape_pct": mape(pred, meas) if held else float("nan"),
            "max_ape_pct": max((r["ape_pct"] for r in rows), default=float("nan")),
            "kendall_tau": kendall_tau(pred, meas), "rows": rows}


# ----------------------------------------------------------------------------- measuring one subnet


def _parity(sub, path: Path, fmt: str, precision: str, images: np.ndarray) -> dict:
    """The exported file against the PyTorch subnet on a few images, through the SDK runtime (a light check)."""
    import torch

    from hetsearch.export import checks as ck
    from hetsearch.export.runners import SdkRunner

    with torch.no_grad():
        ref = sub(torch.from_numpy(images)).numpy()
    got = SdkRunner(path, {"format": fmt}).embed(images)
    return ck.judge_parity(ck.parity_stats(ref, got), precision, ck.merge_thresholds(None))


def _check_images(sub, calib, n: int = 4) -> np.ndarray:
    h, w = sub.input_size
    if calib is not None and len(calib):
        return np.ascontiguousarray(calib.as_model_input(h, w, sub.in_channels)[:n], dtype=np.float32)
    return np.random.default_rng(0).uniform(0, 255, size=(n, sub.in_channels, h, w)).astype(np.float32)


def measure_arch(net, space_id: str, arch: dict, settings: TargetSettings, calib=None) -> dict:
    """Extract, export (one file), check parity lightly and profile one subnet on the target. Export and check
    failures are recorded in the result (``status`` failed); a target that cannot be reached raises."""
    from hetsearch.export.exporter import export_bundle
    from hetsearch.export.profile import headline_ms, profile_bundle

    from ..checkpoint import Checkpoint

    a = net.set_active_subnet(arch)
    key = arch_key(a)
    macs = arch_macs(net.config, a)
    sub = net.extract_subnet(name=f"latency-{hashlib.sha256(key.encode()).hexdigest()[:10]}").eval()
    ck = Checkpoint(sub, None, "query", space_id or "unknown", {"model_id": sub.spec.get("name"), "macs": macs})
    out: dict[str, Any] = {"key": key, "arch": a, "mmacs": macs / 1e6, "status": "failed", "latency_ms": None,
                           "error": None}
    with tempfile.TemporaryDirectory(prefix="hetsearch-latency-") as tmp:
        t0 = time.perf_counter()
        try:
            man = export_bundle(ck, tmp, formats=(settings.format,), precisions=(settings.precision,),
                                calib_data=calib, progress=False, threads=1)
        except HetsearchError as exc:
            out["error"] = f"export failed: {exc}"
            return out
        out["export_seconds"] = round(time.perf_counter() - t0, 2)
        entry = man["files"][0]
        try:
            par = _parity(sub, Path(tmp) / entry["path"], settings.format, settings.precision, _check_images(sub, calib))
            out["parity"] = {k: par[k] for k in ("cos_min", "cos_mean", "status", "n")}
        except HetsearchError as exc:
            out["parity"] = {"status": "error", "reason": str(exc)}
        report = profile_bundle(tmp, settings.target, threads=settings.threads, warmup=settings.warmup,
                                runs=settings.runs, min_seconds=settings.min_seconds, formats=settings.format,
                                precisions=settings.precision, update_manifest=False, identity=settings.identity,
                                known_hosts=settings.known_hosts, remote_python=settings.remote_python,
                                benchmark_model=settings.benchmark_model, adb=settings.adb, timeout=settings.timeout)
    r = report["results"][0]
    ms, stat = headline_ms(r)
    out.update({k: r.get(k) for k in ("p50_ms", "mean_ms", "std_ms", "min_ms", "runs", "runtime", "runtime_version")},
               statistic=stat, host=report.get("host") or {}, measured_at=report.get("measured_at"),
               load_average=_loadavg())
    if r.get("status") != "ok" or ms is None:
        out["error"] = f"profiling failed: {r.get('error') or r.get('status')}"
        return out
    out.update(status="ok", latency_ms=float(ms), bytes=entry.get("bytes"))
    return out


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ----------------------------------------------------------------------------- the file


def _identity(supernet_dir, cfg: SupernetConfig, settings: TargetSettings) -> dict:
    from hetsearch.manifest import sha256_path

    from .supernet import SUPERNET_FILE

    p = Path(supernet_dir)
    f = p / SUPERNET_FILE if p.is_dir() else p
    return {"supernet_sha256": sha256_path(f), "space_digest": space_digest(cfg), **settings.signature()}


def _changes(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]


def load_previous(out: Path, identity: dict, resume: bool, fresh: bool, say: Callable[[str], None]) -> list[dict]:
    """The measurements of an earlier run that this one may reuse (see ``--resume`` / ``--fresh``)."""
    if not out.exists():
        if resume:
            say(f"--resume: {out} does not exist yet; starting a new latency model")
        return []
    if fresh:
        say(f"--fresh: discarding {out} and measuring again")
        return []
    import json

    try:
        old = json.loads(out.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LatencyModelError(f"{out} exists but is not readable JSON ({exc}); pass --fresh to replace it") from exc
    if not isinstance(old, dict) or old.get("kind") != LATENCY_MODEL_KIND:
        raise LatencyModelError(f"{out} exists and is not a hetsearch latency model; choose another --out or pass "
                                "--fresh to replace it")
    ok = [m for m in old.get("measurements") or [] if m.get("status") == "ok"]
    if not resume:
        raise LatencyModelError(f"{out} already holds a latency model ({len(ok)} measurements); pass --resume to "
                                "reuse its measurements or --fresh to measure again")
    changed = _changes(old.get("signature") or {}, identity)
    if changed:
        raise LatencyModelError(
            f"--resume: {out} was measured under other settings, so its {len(ok)} measurements do not apply:\n  "
            + "\n  ".join(changed) + "\npass --fresh to rebuild it with the new settings, or another --out")
    return ok


def build_latency_model(supernet_dir, out, settings: TargetSettings, *, samples: int = 40, seed: int = 0,
                        holdout: float = 0.25, folds: int = 5, resume: bool = False, fresh: bool = False,
                        calib=None, progress: bool = True) -> dict:
    """Measure a designed sample of subnets on the target and fit the search's latency predictor (module doc).
    Writes ``out`` after every measurement and at the end; returns the model."""
    from hetsearch import __version__ as HETSEARCH_VERSION
    from hetsearch.export.exporter import tool_versions
    from hetsearch.report import write_json

    from .supernet import load_supernet

    settings.validate()
    if not 0 < holdout < 0.5:
        raise LatencyModelError(f"--holdout must be a fraction in (0, 0.5), got {holdout}")
    if settings.precision == "int8" and calib is None:
        raise LatencyModelError("int8 needs calibration images from the supernet's training data")
    out = Path(out)
    net, meta = load_supernet(supernet_dir)
    cfg = net.config
    say = (lambda msg: print(f"[latency-model] {msg}", file=sys.stderr, flush=True))
    identity = _identity(supernet_dir, cfg, settings)
    previous = {m["key"]: m for m in load_previous(out, identity, resume, fresh, say)}
    design = design_sample(cfg, samples, seed)
    keys = [arch_key(a) for a in design]
    todo = [a for a, k in zip(design, keys) if k not in previous]
    reused = [previous[k] for k in keys if k in previous]
    if previous:
        unused = len(previous) - len(reused)
        say(f"reusing {len(reused)} measurement(s) from {out}" + (f" ({unused} not in this design are kept aside)"
                                                                  if unused else "") + f"; measuring {len(todo)}")
    model: dict[str, Any] = {
        "kind": LATENCY_MODEL_KIND, "schema_version": SCHEMA_VERSION, "status": "measuring",
        "supernet": str(supernet_dir), "space_id": meta.get("space_id"), "space_digest": identity["space_digest"],
        "signature": identity, "target": settings.target, "format": settings.format, "precision": settings.precision,
        "threads": settings.threads, "profiler": {k: identity[k] for k in ("warmup", "runs", "min_seconds")},
        "target_options": settings.options(),
        "design": {"samples": samples, "seed": seed, "rule": "smallest + largest + one per equal-width log-MMACs bin",
                   "mmacs_range": [arch_macs(cfg, design[0]) / 1e6, arch_macs(cfg, design[-1]) / 1e6],
                   "holdout_fraction": holdout, "cv_folds": folds},
        "features_version": FEATURES_VERSION, "features": feature_names(cfg),
        "tools": {**tool_versions(), "hetsearch": HETSEARCH_VERSION},
        "load_average": {"start": _loadavg(), "note": "os.getloadavg() of the machine running hetsearch (the device "
                         "itself for --target local)"},
        "measurements": list(previous.values()), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out, model)
    bar = tqdm(total=len(design), initial=len(reused), desc=f"latency {settings.format} {settings.precision}",
               unit="subnet", disable=not progress)
    failed = 0
    for a in todo:
        m = measure_arch(net, meta.get("space_id"), a, settings, calib)
        if m["status"] != "ok":
            failed += 1
            say(f"WARNING: subnet of {m['mmacs']:.3f} MMACs not measured: {m['error']}")
        par = m.get("parity") or {}
        if par.get("status") not in (None, "passed"):
            say(f"WARNING: subnet of {m['mmacs']:.3f} MMACs: the exported file's parity check "
                f"{par.get('status')} ({par.get('reason') or par.get('cos_min')}); its latency is recorded anyway")
        model["measurements"] = [x for x in model["measurements"] if x["key"] != m["key"]] + [m]
        model["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(out, model)
        bar.update(1)
        if m["status"] == "ok":
            bar.set_postfix_str(f"{m['mmacs']:.2f} MMACs {m['latency_ms']:.4f} ms")
    bar.close()
    by_key = {m["key"]: m for m in model["measurements"]}
    ok = [by_key[k] for k in keys if k in by_key and by_key[k]["status"] == "ok"]
    hosts = [m.get("host") for m in ok if m.get("host")]
    model["device"] = hosts[-1] if hosts else {}
    runtimes = {(m.get("runtime"), m.get("runtime_version")) for m in ok}
    model["runtime"] = [{"name": n, "version": v} for n, v in sorted(runtimes, key=str)]
    model["load_average"]["end"] = _loadavg()
    model["load_average"]["during_measurements"] = _load_summary(ok)
    if len(ok) < MIN_SAMPLES:
        model["status"] = f"too few measurements ({len(ok)} of {len(design)} succeeded; {failed} failed)"
        write_json(out, model)
        raise LatencyModelError(f"only {len(ok)} of {len(design)} subnets could be measured ({failed} failed; "
                                f"reasons in {out}); at least {MIN_SAMPLES} are needed to fit and hold out")
    fit, held = holdout_split(ok, holdout)
    roles = {**{m["key"]: "fit" for m in fit}, **{m["key"]: "held_out" for m in held}}
    for m in model["measurements"]:
        m["role"] = roles.get(m["key"], "unused")
    sel = select_predictor(cfg, fit, folds)
    pred = sel.pop("predictor")
    model.update(selection=sel, predictor=pred, held_out=held_out_report(cfg, pred, held), status="fitted")
    others = {}
    for kind, alpha in candidates():  # for information only: the choice above never saw the held-out part
        label = _label(kind, alpha)
        if label != sel["chosen"]:
            rep = held_out_report(cfg, fit_candidate(cfg, fit, kind, alpha), held)
            others[label] = {"mape_pct": rep["mape_pct"], "kendall_tau": rep["kendall_tau"]}
    model["held_out_other_candidates"] = {"note": "for information only; the predictor was chosen by "
                                                  "cross-validation on the fitting part", **others}
    model["failed"] = failed
    model["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(out, model)
    return model


def _load_summary(ms: list[dict]) -> dict | None:
    loads = [m["load_average"][0] for m in ms if m.get("load_average")]
    if not loads:
        return None
    return {"one_minute_min": min(loads), "one_minute_mean": round(float(np.mean(loads)), 2),
            "one_minute_max": max(loads)}


# ----------------------------------------------------------------------------- the search's device check


class DeviceCheck:
    """Measures subnets on a latency model's target (export + profile, as the model was measured), cached by arch."""

    def __init__(self, model: dict, net, space_id: str | None, **overrides):
        self.settings = TargetSettings.from_model(model)
        for k, v in overrides.items():
            if v is not None:
                setattr(self.settings, k, v)
        self.net, self.space_id = net, space_id
        self.cache: dict[str, dict] = {}

    def describe(self) -> dict:
        return {**self.settings.signature(), "statistic": "p50 (mean where the target reports no p50)"}

    def measure(self, arch: dict, calib=None) -> dict:
        key = arch_key(canonical_arch(self.net.config, arch))
        if key not in self.cache:
            self.cache[key] = measure_arch(self.net, self.space_id, arch, self.settings, calib)
        return self.cache[key]


def check_under_budget(records: list[dict], budget: float, tie_tolerance: float, check: DeviceCheck,
                       max_rechecks: int = 5, calib=None, say: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Measure the winner under ``budget``; on a miss, the next by the selection rule among those predicted under
    the budget and cheaper than every miss, up to ``max_rechecks`` more. Returns (chosen record, report)."""
    from .search import best_under

    pool = [r for r in records if r["cost"] <= budget + 1e-12]
    tries: list[dict] = []
    tried: set[str] = set()
    ceiling = math.inf
    chosen = None
    first = best_under(pool, budget, tie_tolerance)
    for _ in range(1 + max(0, int(max_rechecks))):
        r = best_under([x for x in pool if x["key"] not in tried and x["cost"] < ceiling], budget, tie_tolerance)
        if r is None:
            break
        tried.add(r["key"])
        m = check.measure(r["arch"], calib)
        row = {"key": r["key"], "mmacs": r["mmacs"], "reward": r["reward"], "predicted_ms": r["cost"],
               "measured_ms": m["latency_ms"], "status": m["status"], "error": m.get("error"),
               "parity": (m.get("parity") or {}).get("status")}
        row["within_budget"] = m["status"] == "ok" and m["latency_ms"] <= budget
        tries.append(row)
        if row["within_budget"]:
            chosen = r
            break
        if m["status"] == "ok":
            ceiling = min(ceiling, r["cost"])
            say(f"budget {budget:g} ms: the subnet predicted at {r['cost']:.4f} ms measured {m['latency_ms']:.4f} ms "
                "(over budget); checking the next finalist on the device")
        else:
            say(f"budget {budget:g} ms: could not measure a finalist ({m['error']}); trying the next")
    report = {"budget_ms": budget, **check.describe(), "tries": tries, "within_budget": chosen is not None}
    if chosen is None:
        chosen = first
        report["note"] = (f"NO finalist measured within {budget:g} ms ({len(tries)} measured); the search's winner "
                          "is kept and is over budget on the device")
        say(f"WARNING: budget {budget:g} ms: {report['note']}")
    elif chosen is not first:
        report["note"] = (f"the search's winner measured over budget; the finalist chosen instead measured "
                          f"{tries[-1]['measured_ms']:.4f} ms")
    return chosen, report

