"""The on-device profiler: latency and memory of model files with their real runtimes.

    python -m hetsearch.sdk.profile model-fp32.onnx model-fp32.tflite \\
        [--threads N] [--warmup W] [--runs R] [--min-seconds S] [--json OUT]

Per file: load time, first inference, then ``W`` warm-up runs and at least ``R``
timed runs lasting at least ``S`` seconds in all; reports p50/p90/p99, mean, std,
min and max (milliseconds), peak resident memory, threads, the runtime's name and
version, and a description of the host. The input is synthetic (uniform pixel values
in 0..255, fixed seed) of the shape and type the file declares. The JSON goes to
stdout, or to ``--json OUT`` (then a short table is printed instead).

This is what ``hetsearch profile BUNDLE --target ssh://…`` runs on the device; it
needs only ``hetsearch[sdk]`` there (no torch). Exit status: 0 when every file was
profiled, 1 when some failed (the JSON still says which and why), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from hetsearch.errors import HetsearchError
from hetsearch.manifest import sha256_path, size_path

from .runtime import BACKEND_OF_FORMAT, BackendUnavailable, format_of, open_runtime, preload

SCHEMA = "hetsearch.profile/1"
_MAX_RUNS = 1_000_000


# ----------------------------------------------------------------------------- host and memory


def _read_proc_status() -> dict[str, str]:
    try:
        with open("/proc/self/status") as fh:
            return dict(line.split(":", 1) for line in fh if ":" in line)
    except OSError:
        return {}


def _kb(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value.split()[0])
    except (ValueError, IndexError):
        return None


def rss_mb() -> float | None:
    """Current resident set size (Linux /proc), in MiB."""
    kb = _kb(_read_proc_status().get("VmRSS"))
    return None if kb is None else kb / 1024.0


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (since the last :func:`reset_peak_rss`)."""
    kb = _kb(_read_proc_status().get("VmHWM"))
    if kb is not None:
        return kb / 1024.0
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        return None
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def os_threads() -> int | None:
    value = _read_proc_status().get("Threads")
    return int(value) if value and value.strip().isdigit() else None


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        for line in text.splitlines():
            if line.split(":", 1)[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        import subprocess

        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def _memory_total_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(float(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20, 1)
    except (ValueError, OSError, AttributeError):
        return None


def describe_host() -> dict:
    """Platform, CPU model, core counts, memory and Python of this machine."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "memory_mb": _memory_total_mb(),
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------- profiling


def synthetic_input(shape: Sequence[int | None], seed: int = 0) -> np.ndarray:
    """Uniform float32 pixel values in 0..255 of ``shape`` (a dynamic batch becomes 1)."""
    dims = list(shape)
    if dims and dims[0] is None:
        dims[0] = 1
    if any(d is None for d in dims):
        raise HetsearchError(f"the model's input shape {list(shape)} has unknown dimensions besides the batch; "
                             "the profiler needs a static input shape")
    return np.random.default_rng(seed).uniform(0.0, 255.0, size=dims).astype(np.float32)


def summarize_ms(samples_ms: Sequence[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(a.mean()),
            "std_ms": float(a.std()), "min_ms": float(a.min()), "max_ms": float(a.max()), "runs": int(a.size)}


def profile_file(path: str | os.PathLike, *, threads: int | None = None, warmup: int = 5, runs: int = 50,
                 min_seconds: float = 1.0, backend: str | None = None, with_sha256: bool = True) -> dict:
    """Profile one model file. Never raises for a model problem: the result says ``status`` and ``error``."""
    p = Path(path)
    result: dict = {"file": str(path), "name": p.name, "status": "failed", "error": None}
    try:
        fmt = format_of(p)
        result.update(format=fmt, backend=backend or BACKEND_OF_FORMAT[fmt])
        if not p.exists():
            raise HetsearchError(f"{p} does not exist")
        result["bytes"] = size_path(p)
        if with_sha256:
            result["sha256"] = sha256_path(p)
        if result["backend"] != "coreml" or sys.platform == "darwin":
            preload(result["backend"])
        peak_scope = "file" if reset_peak_rss() else "process"
        rss_before = rss_mb()
        t0 = time.perf_counter()
        rt = open_runtime(p, result["backend"], threads)
        load_ms = (time.perf_counter() - t0) * 1e3
        x = rt.prepare(synthetic_input(rt.input_shape))  # converted once, outside the timed runs
        t0 = time.perf_counter()
        y = rt.run(x)
        first_ms = (time.perf_counter() - t0) * 1e3
        for _ in range(max(0, int(warmup))):
            rt.run(x)
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < _MAX_RUNS:
            t0 = time.perf_counter()
            rt.run(x)
            t1 = time.perf_counter()
            samples.append((t1 - t0) * 1e3)
            if len(samples) >= max(1, int(runs)) and t1 - start >= float(min_seconds):
                break
        peak = peak_rss_mb()
        result.update(rt.describe())
        result.update(
            status="ok",
            load_ms=load_ms,
            first_inference_ms=first_ms,
            warmup_runs=max(0, int(warmup)),
            timed_seconds=time.perf_counter() - start,
            **summarize_ms(samples),
            threads_requested=threads,
            threads_os=os_threads(),
            rss_before_load_mb=rss_before,
            peak_rss_mb=peak,
            peak_rss_delta_mb=None if peak is None or rss_before is None or peak_scope != "file" else peak - rss_before,
            peak_rss_scope=peak_scope,
            output_finite=bool(np.isfinite(np.asarray(y, dtype=np.float64)).all()),
        )
        if not result["output_finite"]:
            result.update(status="failed", error="the model produced NaN or infinite outputs on the synthetic input")
    except BackendUnavailable as exc:
        result.update(status="skipped", error=str(exc))
    except HetsearchError as exc:
        result.update(status="failed", error=str(exc))
    except Exception as exc:  # a runtime crash must not lose the other files' results
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    return result


def profile_files(paths: Sequence[str | os.PathLike], *, threads: int | None = None, warmup: int = 5,
                  runs: int = 50, min_seconds: float = 1.0) -> dict:
    """Profile each file in turn; one report with the host description and settings."""
    if threads is not None and int(threads) < 1:
        raise HetsearchError(f"--threads must be at least 1, got {threads}")
    if runs < 1 or warmup < 0 or min_seconds < 0:
        raise HetsearchError("--runs must be at least 1, --warmup and --min-seconds at least 0")
    results = [profile_file(p, threads=threads, warmup=warmup, runs=runs, min_seconds=min_seconds) for p in paths]
    return {
        "schema": SCHEMA,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": describe_host(),
        "settings": {"threads": threads, "warmup": warmup, "runs": runs, "min_seconds": min_seconds},
        "results": results,
    }


def delegate_label(delegate: str | None, partitions: int | None) -> str | None:
    """The delegate that ran a file and, when it took the graph in several pieces (nodes it cannot run stay on the
    runtime's own kernels between them), how many; None without a delegate."""
    if not delegate:
        return None
    return delegate + (f" ({partitions} partitions)" if partitions and partitions > 1 else "")


def runtime_label(r: dict) -> str | None:
    """A result's runtime, with :func:`delegate_label` when a delegate ran it."""
    rt, d = r.get("runtime", r.get("backend")), delegate_label(r.get("delegate"), r.get("delegate_partitions"))
    return f"{rt} + {d}" if d else rt


def summary_rows(report: dict) -> list[dict]:
    return [{"file": r["name"], "runtime": runtime_label(r), "status": r["status"],
             "load_ms": r.get("load_ms"), "p50_ms": r.get("p50_ms"), "p90_ms": r.get("p90_ms"),
             "p99_ms": r.get("p99_ms"), "peak_rss_mb": r.get("peak_rss_mb"), "error": r.get("error")}
            for r in report["results"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hetsearch.sdk.profile",
                                     description="Profile model files (.onnx, .tflite, .mlpackage) on this device.")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--threads", type=int, default=None, help="runtime CPU threads (default: runtime's choice)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs after the first (default 5)")
    parser.add_argument("--runs", type=int, default=50, help="at least this many timed runs (default 50)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="and at least this long (default 1.0)")
    parser.add_argument("--json", metavar="OUT", help="write the JSON here instead of stdout")
    args = parser.parse_args(argv)
    try:
        report = profile_files(args.files, threads=args.threads, warmup=args.warmup, runs=args.runs,
                               min_seconds=args.min_seconds)
    except HetsearchError as exc:
        print(f"profile: error: {exc}", file=sys.stderr)
        return exc.exit_code
    failed = [r for r in report["results"] if r["status"] == "failed"]
    if failed and len(failed) == len(report["results"]) and not args.json:
        for r in failed:  # nothing ran: the errors, not a page of JSON
            print(f"profile: error: {r['file']}: {r.get('error')}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.json:
        out = Path(args.json)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, out)
        from hetsearch.report import format_table

        print(format_table(summary_rows(report), digits=3))
    else:
        print(text)
    return 0 if all(r["status"] != "failed" for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
