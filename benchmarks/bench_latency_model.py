"""How well a latency model measured on this machine predicts held-out subnets, per format.

    python -m benchmarks.bench_latency_model --supernet runs/sn-new --samples 40 --threads 1 --formats tflite,onnx

For each format it builds (or, with ``--resume``, finishes) a latency model with
:func:`hetsearch.cmpnas.nas.latency.build_latency_model` on the local target — exactly what
``hetsearch nas latency-model --target local --format F --precision fp32`` does — into
``OUT/latency-models/lat-F-fp32.json``, then writes ``OUT/latency-model.json``, ``.md`` and ``.png``: the held-out
MAPE and Kendall τ of the chosen predictor (and, for information, of the MACs-only model), predicted vs measured
latency of every held-out subnet, and the machine's load average while measuring.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from hetsearch.report import markdown_table, write_json

TARGET = {"mape_pct": 10.0, "kendall_tau": 0.9}


def summarize(model: dict) -> dict:
    held, sel = model["held_out"], model["selection"]
    macs = model["held_out_other_candidates"].get("macs-linear") or {"mape_pct": held["mape_pct"],
                                                                      "kendall_tau": held["kendall_tau"]}
    dev = model.get("device") or {}
    return {"format": model["format"], "precision": model["precision"], "threads": model["threads"],
            "target": model["target"], "device": {k: dev.get(k) for k in ("cpu", "cores", "platform", "python")},
            "runtime": model.get("runtime"), "measured": len([m for m in model["measurements"] if m["status"] == "ok"]),
            "fitted": sel["fitting_subnets"], "held_out": held["subnets"], "chosen": sel["chosen"],
            "cv": sel["candidates"], "mape_pct": held["mape_pct"], "max_ape_pct": held["max_ape_pct"],
            "kendall_tau": held["kendall_tau"], "macs_only": macs, "rows": held["rows"],
            "load_average": model["load_average"], "profiler": model["profiler"],
            "parity": {st: sum(1 for m in model["measurements"] if (m.get("parity") or {}).get("status") == st)
                       for st in ("passed", "failed", "error")},
            "target_met": held["mape_pct"] <= TARGET["mape_pct"] and held["kendall_tau"] >= TARGET["kendall_tau"]}


def _load_note(res: dict) -> str:
    """What the measured load average says about the measurements (the benchmark itself keeps about one core busy)."""
    peak = max(((f["load_average"].get("during_measurements") or {}).get("one_minute_max") or 0.0)
               for f in res["formats"])
    cores = os.cpu_count() or 1
    if peak > 1.5:
        return (f"**Load.** Other jobs shared this {cores}-core machine while these were measured (one-minute load "
                f"average up to {peak:g}, in the table). Latency measured under that load is noisy (the predictor is "
                "fitted to, and judged against, noisy measurements); rerun the command below on a quiet machine.")
    return (f"**Load.** Measured on a quiet {cores}-core machine: the one-minute load average (in the table) stayed at "
            f"or below {peak:g}, about what the benchmark itself adds.")


def markdown(res: dict) -> str:
    out = ["# Latency models measured on this machine", "",
           f"Supernet `{res['supernet']}`, {res['samples']} designed subnets per format (smallest, largest, one per "
           f"equal-width log-MMACs bin), {res['threads']} runtime thread(s), local target, fp32. Every subnet is "
           "extracted, exported with the exporter, parity-checked against PyTorch on 4 synthetic images and "
           "profiled with the profiler (p50). A quarter is held out (every 4th by MMACs, never the smallest or the "
           "largest); the predictor is chosen by cross-validation on the rest, and its error is reported on the "
           "held-out subnets only — few of them (see the table), so one more or less mispredicted subnet moves "
           "MAPE by a point or more and τ by 0.04 or more.", "",
           f"Issue target: held-out MAPE <= {TARGET['mape_pct']:g}% and Kendall tau >= {TARGET['kendall_tau']:g}.", "",
           _load_note(res), ""]
    rows = []
    for f in res["formats"]:
        la = f["load_average"].get("during_measurements") or {}
        rows.append({"format": f"{f['format']} {f['precision']}", "runtime": ", ".join(
            f"{r['name']} {r['version']}" for r in f["runtime"]), "chosen predictor": f["chosen"],
            "held out": f["held_out"], "MAPE %": f["mape_pct"], "max APE %": f["max_ape_pct"],
            "Kendall tau": f["kendall_tau"], "MACs-only MAPE %": f["macs_only"]["mape_pct"],
            "MACs-only tau": f["macs_only"]["kendall_tau"],
            "load (1 min) mean/max": f"{la.get('one_minute_mean')}/{la.get('one_minute_max')}",
            "parity passed": f"{f['parity']['passed']}/{f['measured']}",
            "target met": "yes" if f["target_met"] else "no"})
    out += [markdown_table(rows, digits=3), ""]
    dev = res["formats"][0]["device"] if res["formats"] else {}
    out += [f"Device: {dev.get('cpu')}, {dev.get('cores')} cores, {dev.get('platform')}.", "",
            "The MACs-only columns are the old proxy (latency = a·MMACs + b) fitted on the same subnets, for "
            "information; it was not chosen by cross-validation.", ""]
    for f in res["formats"]:
        out += [f"## {f['format']} {f['precision']}: held-out subnets, predicted vs measured", "",
                markdown_table([{"MMACs": r["mmacs"], "measured ms": r["measured_ms"], "predicted ms": r["predicted_ms"],
                                 "error %": r["ape_pct"]} for r in f["rows"]], digits=4), "",
                "Cross-validation on the fitting part:", "",
                markdown_table([{"candidate": c["candidate"], "CV MAPE %": c["cv_mape"], "CV tau": c["cv_kendall_tau"]}
                                for c in f["cv"]], digits=3), ""]
    out += ["## Rerun", "", "```", res["command"], "```", ""]
    if res.get("resumed"):
        out += ["(These tables were refitted with `--resume` from the measurements of an earlier run of the same "
                "command; nothing was measured again.)", ""]
    out += [
            "The per-format latency models (every measurement, the device, the tool versions) are in "
            "`latency-models/` beside this file; `--resume` reuses their measurements when nothing changed.", ""]
    return "\n".join(out)
    return "\n".join(out)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res["formats"]), figsize=(5 * len(res["formats"]), 4.2), squeeze=False)
    for ax, f in zip(axes[0], res["formats"]):
        meas = [r["measured_ms"] for r in f["rows"]]
        pred = [r["predicted_ms"] for r in f["rows"]]
        ax.scatter(meas, pred, s=18)
        lo, hi = min(meas + pred), max(meas + pred)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel("measured p50 (ms)")
        ax.set_ylabel("predicted (ms)")
        ax.set_title(f"{f['format']} {f['precision']}: MAPE {f['mape_pct']:.1f}%, tau {f['kendall_tau']:.2f}",
                     fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", default="runs/sn-new")
    ap.add_argument("--formats", default="tflite,onnx")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="reuse the measurements of an earlier run")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="8 subnets, ONNX only, short profiling (a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.formats, args.runs, args.min_seconds = 8, "onnx", 20, 0.2
    from hetsearch.cmpnas.nas.latency import TargetSettings, build_latency_model
    from hetsearch.cmpnas.train import set_threads

    set_threads(1)
    out = Path(args.out)
    formats = []
    for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
        settings = TargetSettings(target="local", format=fmt, precision="fp32", threads=args.threads,
                                  warmup=args.warmup, runs=args.runs, min_seconds=args.min_seconds)
        path = out / ("latency-models-quick" if args.quick else "latency-models") / f"lat-{fmt}-fp32.json"
        model = build_latency_model(args.supernet, path, settings, samples=args.samples, seed=args.seed,
                                    resume=args.resume and path.exists(), fresh=not args.resume)
        formats.append(summarize(model))
        print(f"{fmt}: held-out MAPE {formats[-1]['mape_pct']:.2f}%, tau {formats[-1]['kendall_tau']:.3f} "
              f"({formats[-1]['chosen']})", flush=True)
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
    command = "python -m benchmarks.bench_latency_model " + " ".join(shlex.quote(a) for a in given)
    res = {"supernet": args.supernet, "samples": args.samples, "threads": args.threads, "target": TARGET,
           "command": command.strip(), "resumed": args.resume, "formats": formats}
    name = "latency-model-quick" if args.quick else "latency-model"
    write_json(out / f"{name}.json", res)
    (out / f"{name}.md").write_text(markdown(res))
    plot(res, out / f"{name}.png")
    print(f"written to {out / name}.json, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
