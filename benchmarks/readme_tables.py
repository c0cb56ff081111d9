"""The README's measured tables, generated from ``benchmarks/results/`` so that they cannot drift from the numbers.

    python -m benchmarks.readme_tables           # rewrite every generated block of README.md
    python -m benchmarks.readme_tables --check   # exit 1 when a block differs from the results (a test runs this)

A generated block sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` lines; everything else in
the README is prose and stays as written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _mm(v: float) -> str:
    return f"{v:.3f}" if v < 0.2 else f"{v:.2f}"


def nas_table() -> str:
    """The paper-style table (nas.json): mean ± std over seeds, the best R@1 of each budget in bold."""
    d = _load("nas.json")
    par_mm, compat = d["paragon"]["mmacs"], d["compat"]
    label = {"homogeneous compact (alone)": "`{arch}` alone (homogeneous)", "hand-designed + compat": "`{arch}` + " + compat,
             "CMP-NAS + finetune": "CMP-NAS + finetune", "random search + finetune": "random search + finetune",
             "CMP-NAS + finetune (extra budget)": "CMP-NAS + finetune (separate search)"}
    rows = [r for r in d["table"] if r["method"] in label]
    best = {}
    for r in rows:
        best[r["budget"]] = max(best.get(r["budget"], -1.0), r["r1_mean"])
    out = ["| budget (MMACs) | method | MMACs | cost reduction | R@1 (mean ± std) | behind paragon |",
           "|---|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        b = r["budget"]
        head = "" if b in seen else f"{b:g} ({par_mm / b:.0f}×)"
        seen.add(b)
        r1 = f"{r['r1_mean']:.2f} ± {r['r1_std']:.2f}"
        if r["r1_mean"] == best[b] and sum(x["budget"] == b for x in rows) > 1:
            r1 = f"**{r1}**"
        sn = f" (`{r['supernet']}`)" if r.get("supernet") and len(d.get("supernets", [])) > 1 else ""
        out.append(f"| {head} | {label[r['method']].format(arch=r.get('arch'))}{sn} | {_mm(r['mmacs'])} | "
                   f"{r['cost_reduction']:.1f}× | {r1} | {r['gap_mean']:.2f} |")
    return "\n".join(out)


def layout_table() -> str:
    """Random subnets of each stage layout trained from scratch, per budget (layout.json, validation split)."""
    d = _load("layout.json")
    first = d["layouts"][0]
    out = [f"| budget (MMACs) | layout | subnets | validation R@1 (mean ± std) | best | minus `{first}` (± s.e.) | "
           "preset, same training |", "|---|---|---|---|---|---|---|"]
    for r in d["summary"]:
        diff = f"{r['vs_first']:+.2f} ± {r['vs_first_se']:.2f}".replace("-", "−") if "vs_first" in r else "–"
        out.append(f"| {r['budget']:g} | `{r['layout']}` | {r['n']} | {r['mean']:.2f} ± {r['std']:.2f} | "
                   f"{r['best']:.2f} | {diff} | `{r['hand']}` {r['hand_r1']:.2f} |")
    return "\n".join(out)


def layout_spread_table() -> str:
    """One architecture trained with several seeds next to the spread between architectures (layout.json)."""
    d = _load("layout.json")
    lay = d["spread_layout"]
    pool = {r["budget"]: r["std"] for r in d["summary"] if r["layout"] == lay}
    out = ["| budget (MMACs) | model | validation R@1 per seed | mean ± std over seeds | "
           f"std over the {d['n']} `{lay}` architectures (one seed each) |", "|---|---|---|---|---|"]
    for r in d["seed_spread"]:
        mean = sum(r["r1"]) / len(r["r1"])
        out.append(f"| {r['budget']:g} | {r['model']} | {' / '.join(f'{v:.2f}' for v in r['r1'])} (seeds "
                   f"{', '.join(map(str, r['seeds']))}) | {mean:.2f} ± {r['std']:.2f} | {pool[r['budget']]:.2f} |")
    return "\n".join(out)


def export_int8_table() -> str:
    """int8 parity and R@1 change per model and format (export.json)."""
    d = _load("export.json")
    by = {(r["model"], r["format"], r["precision"]): r for r in d["rows"]}
    out = ["| model | MMACs | ONNX int8 cos min | ONNX int8 R@1 Δ | TFLite int8 cos min | TFLite int8 R@1 Δ |",
           "|---|---|---|---|---|---|"]
    for name, m in d["models"].items():
        cells = []
        for fmt in ("onnx", "tflite"):
            r = by.get((name, fmt, "int8"))
            if r is None or r.get("cos_min") is None:
                cells += ["-", "-"]
                continue
            cells += [f"{r['cos_min']:.5f}", f"{r['r1_delta']:+.2f} ± {r['r1_delta_se']:.2f}".replace("-", "−")]
        label = name if name == m["architecture"] else f"{name} ({m['architecture']})"
        out.append(f"| {label} | {m['mmacs']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def export_qat_table() -> str:
    """Post-training vs quantization-aware int8 per model and format (export-qat.json)."""
    d = _load("export-qat.json")
    by = {(r["model"], r["format"], r["weights"]): r for r in d["rows"] if r["precision"] == "int8"}
    out = ["| model | format | PTQ cos min | QAT cos min | PTQ R@1 Δ | QAT R@1 Δ | delegate | p50 int8 / fp32 (ms) |",
           "|---|---|---|---|---|---|---|---|"]
    fp32 = {(r["model"], r["format"]): r for r in d["rows"] if r["precision"] == "fp32" and r["weights"] == "float"}
    for name, m in d["models"].items():
        for fmt in ("onnx", "tflite"):
            p, q = by.get((name, fmt, "PTQ")), by.get((name, fmt, "QAT"))
            if p is None or q is None:
                continue
            delta = [f"{r['r1_delta']:+.2f} ± {r['r1_delta_se']:.2f}".replace("-", "−") for r in (p, q)]
            f = fp32.get((name, fmt), {})
            lat = (f"{q['p50_ms']:.4f} / {f['p50_ms']:.4f}" if q.get("p50_ms") and f.get("p50_ms") else "-")
            out.append(f"| {name} ({m['mmacs']:.2f} MMACs) | {fmt} | {p['cos_min']:.5f} | {q['cos_min']:.5f} | "
                       f"{delta[0]} | {delta[1]} | {q['delegate']} | {lat} |")
    return "\n".join(out)


def server_table() -> str:
    """Concurrent clients against the server (each ``serve`` mode) and against in-process faiss (server.json):
    every level with Python client processes, and the h2load rows at the most clients."""
    d = _load("server.json")
    conc = {(r["index"], r["clients"], r["mode"]): r for r in d["concurrency"]}
    most = max(r["clients"] for r in d["concurrency"])
    out = ["| index (100k) | clients | server processes, clients | gRPC QPS | gRPC p50 / p99 (ms) | in-process QPS "
           "| gRPC share | errors |", "|---|---|---|---|---|---|---|---|"]
    for s in d["concurrency_share"]:  # per index and level: 1 process, more, then the same with h2load
        if s["mode"].endswith("(h2load)") and s["clients"] != most:
            continue
        g = conc[(s["index"], s["clients"], s["mode"])]
        i = conc[(s["index"], s["clients"], "in-process")]
        procs = int(m.group(1)) if (m := re.search(r"--processes (\d+)", s["mode"])) else 1
        mode = f"{procs} process{'es' if procs > 1 else ''}, {'h2load' if 'h2load' in s['mode'] else 'Python'}"
        out.append(f"| {s['index']} | {s['clients']} | {mode} | {g['qps']:,.0f} | "
                   f"{g['p50_ms']:.2f} / {g['p99_ms']:.1f} | {i['qps']:,.0f} | {100 * s['grpc_qps_share']:.1f}% | "
                   f"{g['errors']} |")
    return "\n".join(out)


BLOCKS = {"nas": nas_table, "layout": layout_table, "layout-spread": layout_spread_table,
          "export-int8": export_int8_table, "export-qat": export_qat_table, "server-concurrency": server_table}


def render(text: str) -> str:
    """``text`` with every generated block replaced by what the results say now."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(\n<!-- /results:{re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no block <!-- results:{name} --> … <!-- /results:{name} -->")
        text = pattern.sub(lambda m: m.group(1) + make() + m.group(2), text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.readme_tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only report whether README.md is up to date")
    p.add_argument("--readme", default=str(REPO / "README.md"))
    args = p.parse_args(argv)
    path = Path(args.readme)
    old = path.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md's generated tables differ from benchmarks/results/: run python -m benchmarks.readme_tables",
                  file=sys.stderr)
            return 1
        print("README.md's generated tables match benchmarks/results/")
        return 0
    path.write_text(new)
    print(f"rewrote {len(BLOCKS)} generated block(s) of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
