"""The demo's report: the paper-style table, the export table and plots, in demo-report/."""

from __future__ import annotations

from pathlib import Path

from .report import format_table, markdown_table, read_json, write_json

PAPER_COLS = ["row", "model", "MMACs", "cost reduction", "R@1", "points behind paragon", "R@5", "mAP@R"]
EXPORT_COLS = ["model", "format", "precision", "status", "size", "parity", "compat", "p50 ms", "vs paragon"]


def _load(p: Path):
    return read_json(p) if p.exists() else None


def paper_rows(work: Path, queries: list[str]) -> list[dict]:
    ev = work / "eval"
    par = _load(ev / "paragon.json")
    rows = [{"row": "paragon (gallery model on both sides)", "model": "gallery", "MMACs": par["query_mmacs"],
             "cost reduction": 1.0, "R@1": par["recall_at_1"], "points behind paragon": 0.0,
             "R@5": par["recall_at_5"], "mAP@R": par["map_at_r"]}]
    for q in queries:
        hom, het = _load(ev / f"{q}-hom.json"), _load(ev / f"{q}-het.json")
        kind = "CMP-NAS (searched + finetuned)" if "nas" in q else "hand-designed + compat loss"
        for label, r in ((f"homogeneous compact ({q} on both sides)", hom),
                         (f"{kind}: query {q} vs gallery", het)):
            rows.append({"row": label, "model": q, "MMACs": r["query_mmacs"],
                         "cost reduction": par["query_mmacs"] / r["query_mmacs"], "R@1": r["recall_at_1"],
                         "points behind paragon": par["recall_at_1"] - r["recall_at_1"], "R@5": r["recall_at_5"],
                         "mAP@R": r["map_at_r"]})
    return rows


def nas_verdict(rows: list[dict]) -> str:
    """One line per hand-designed model: how the searched model of at most its MACs compares (test split)."""
    hand = [r for r in rows if r["row"].startswith("hand-designed")]
    nas = [r for r in rows if r["row"].startswith("CMP-NAS")]
    lines = []
    for h in hand:
        matched = [n for n in nas if n["MMACs"] <= h["MMACs"] * 1.001]
        if not matched:
            continue
        n = max(matched, key=lambda r: r["MMACs"])
        diff = n["R@1"] - h["R@1"]
        lines.append(f"searched {n['model']} ({n['MMACs']:.3f} MMACs) vs hand-designed {h['model']} ({h['MMACs']:.3f} "
                     f"MMACs): R@1 {n['R@1']:.2f} vs {h['R@1']:.2f} ({diff:+.2f} points; "
                     f"{'at or above' if diff >= 0 else 'BELOW'} the hand-designed model at matched MACs)")
    return "\n".join(lines)


def export_rows(work: Path, names: list[str]) -> list[dict]:
    from hetsearch.export.exporter import summary_rows

    from . import manifest as mf

    paragon_lat = {}
    bundles = work / "bundles"
    try:
        pm = mf.load(bundles / "gallery")
        for r in summary_rows(pm):
            if r.get("latency") is not None:
                paragon_lat[(r["format"], r["precision"])] = r["latency"]
    except Exception:  # the paragon may have failed to export
        pass
    rows = []
    for name in names:
        try:
            m = mf.load(bundles / name)
        except Exception as exc:
            rows.append({"model": name, "status": f"no bundle: {exc}"})
            continue
        for r in summary_rows(m):
            lat = r.get("latency")
            ref = paragon_lat.get((r["format"], "fp32"))
            rows.append({"model": name, "format": r["format"], "precision": r["precision"], "status": r["status"],
                         "size": r["size"], "parity": r["parity"], "compat": r["compat"],
                         "p50 ms": round(lat, 4) if lat is not None else None,
                         "vs paragon": (f"{lat / ref:.3f}x" if lat is not None and ref else None)})
    return rows


def _plot_accuracy(work: Path, rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    # one search per supernet (search/, search-h1/, ...): each has its own candidates and front
    for i, path in enumerate(sorted(work.glob("search*/search.json"))):
        search = _load(path)
        if not search:
            continue
        where = f"{path.parent.name}, validation split"
        recs = search.get("evaluated") or []
        xs = [r["mmacs"] for r in recs if isinstance(r, dict) and "mmacs" in r and "het_r1" in r]
        ys = [r["het_r1"] for r in recs if isinstance(r, dict) and "mmacs" in r and "het_r1" in r]
        if xs:
            ax.scatter(xs, ys, s=10, alpha=0.35, color=("tab:gray", "tab:olive", "tab:pink")[i % 3],
                       label=f"search candidates ({where})")
        front = search.get("pareto") or []
        if front and isinstance(front, list) and isinstance(front[0], dict):
            fx = [r["mmacs"] for r in front]
            fy = [r["het_r1"] for r in front]
            ax.step(fx, fy, where="post", color=("tab:blue", "tab:purple", "tab:brown")[i % 3],
                    label=f"Pareto front ({where})")
    colors = {"paragon": "black", "homogeneous": "tab:orange", "hand": "tab:green", "CMP-NAS": "tab:red"}
    for r in rows:
        key = next((k for k in colors if r["row"].startswith(k) or k in r["row"]), "paragon")
        ax.scatter([r["MMACs"]], [r["R@1"]], s=60, color=colors[key], marker="*" if key == "CMP-NAS" else "o",
                   edgecolor="white", zorder=3)
        ax.annotate(r["model"] + (" (hom)" if r["row"].startswith("homogeneous") else ""), (r["MMACs"], r["R@1"]),
                    fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("query model MMACs (log)")
    ax.set_ylabel("R@1 (%)")
    ax.set_title("Accuracy vs query cost (test split: points; search: validation split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _plot_latency(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("p50 ms") is not None]
    if not rows:
        return
    labels = [f"{r['model']}\n{r['format']} {r['precision']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(7, 0.55 * len(rows)), 4.5))
    colors = {"onnx": "tab:blue", "tflite": "tab:orange", "coreml": "tab:green"}
    ax.bar(range(len(rows)), [r["p50 ms"] for r in rows], color=[colors.get(r["format"], "gray") for r in rows])
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("p50 latency per image (ms, log)")
    ax.set_yscale("log")
    ax.set_title("Latency per format and precision (this machine, 1 thread)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_hits(hits: list, held: list[int], images, out: Path, model: str) -> None:
    """Each query image (held out of the gallery) beside its top-k gallery images, with labels and scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max((len(q["hits"]) for q in hits), default=0)
    fig, axes = plt.subplots(len(hits), k + 1, figsize=(1.6 * (k + 1), 1.9 * len(hits)), squeeze=False)
    for row, (q, j) in zip(axes, zip(hits, held)):
        truth = images.classes[int(images.labels[j])]
        row[0].imshow(images.images[j][..., 0], cmap="gray", vmin=0, vmax=255)
        row[0].set_title(f"query\n{truth}", fontsize=8, fontweight="bold")
        for ax, h in zip(row[1:], q["hits"]):
            label = images.classes[int(images.labels[h["id"]])]
            ax.imshow(images.images[h["id"]][..., 0], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{label}\n{h['score']:.3f}", fontsize=8, color="green" if label == truth else "red")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[1 + len(q["hits"]):]:
            ax.axis("off")
    fig.suptitle(f"{model} (on the device) -> gallery server: top-{k} for query images held out of the gallery "
                 "(green: same class)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def qat_verdict(rows: list[dict], qat_of: dict[str, str]) -> str:
    """Per format: a model's post-training int8 file vs its quantization-aware version's (``qat_of``: QAT model ->
    the float model it was finetuned from)."""
    lines = []
    for r in rows:
        if r.get("model") not in qat_of or r.get("precision") != "int8":
            continue
        ptq = next((p for p in rows if p.get("model") == qat_of[r["model"]]
                    and (p.get("format"), p.get("precision")) == (r["format"], "int8")), None)
        if ptq is None or not r.get("parity") or not ptq.get("parity"):
            continue
        lines.append(f"{r['format']} int8 of {ptq['model']}: parity cos min {ptq['parity']} post-training, "
                     f"{r['parity']} quantization-aware ({r['model']}); R@1 change {ptq['compat']} vs {r['compat']}")
    return "\n".join(lines)


def write(work: Path, report: Path, queries: list[str], hits: list, times: dict, total_seconds: float,
          quick: bool = False, reused: dict | None = None, qat_of: dict[str, str] | None = None) -> None:
    """``qat_of``: the quantization-aware models exported besides ``queries`` -> the model each was finetuned from."""
    report.mkdir(parents=True, exist_ok=True)
    qat_of = qat_of or {}
    prow = paper_rows(work, queries)
    erow = export_rows(work, ["gallery", *queries, *qat_of])
    print("\nPaper-style table (Fashion-MNIST test split, leave-one-out; 'points behind paragon' is positive when "
          "a row is below the paragon):")
    print(format_table(prow, PAPER_COLS, digits=2))
    verdict = nas_verdict(prow)
    if verdict:
        print(verdict)
    print("\nExport table (parity = min cosine vs PyTorch; compat = R@1 change vs the PyTorch query model):")
    print(format_table(erow, EXPORT_COLS, digits=3))
    qverdict = qat_verdict(erow, qat_of)
    if qverdict:
        print(qverdict)
    _plot_accuracy(work, prow, report / "accuracy_vs_mmacs.png")
    _plot_latency(erow, report / "latency.png")
    hit_rows = []
    for q in hits or []:
        for rank, h in enumerate(q["hits"][:3], 1):
            hit_rows.append({"query image": Path(q["image"]).name if rank == 1 else "", "rank": rank, "id": h["id"],
                             "score": round(h["score"], 4), "metadata": h["metadata"]})
    summary = {"quick": quick, "paper_table": prow, "export_table": erow, "hits": hits, "stage_seconds": times,
               "reused_stage_seconds": reused, "total_seconds": round(total_seconds, 1)}
    write_json(report / "summary.json", summary)
    reused = reused or {}
    then = sum(v for v in reused.values() if isinstance(v, (int, float)))
    run_line = (f"{'Quick smoke run on a data subset' if quick else 'Full run'}; this invocation took "
                f"{total_seconds / 60:.1f} min" + (
                    f", reusing {len(reused)} finished stage(s) from earlier runs (they took {then / 60:.1f} min "
                    f"when they ran: {', '.join(reused)}); all stages together {(total_seconds + then) / 60:.1f} "
                    "min" if reused else ", every stage run now") + ".")
    md = ["# hetsearch demo report", "", run_line, "",
          "## Accuracy vs query cost (Fashion-MNIST test split)", "", markdown_table(prow, PAPER_COLS, digits=2), "",
          nas_verdict(prow), "",
          "![accuracy vs MMACs](accuracy_vs_mmacs.png)", "",
          "## Export, checks and latency", "", markdown_table(erow, EXPORT_COLS, digits=3), qverdict, "",
          "![latency](latency.png)", "",
          "## Gallery server queried from the SDK", "",
          "The query images are test images held out of the indexed gallery.", "",
          "![queries and their hits](queries.png)" if (report / "queries.png").exists() else "", "",
          markdown_table(hit_rows, digits=4) if hit_rows else "", "",
          "## Stage times (s)", "", markdown_table(
              [{"stage": k, "seconds": v, "run": "now"} for k, v in times.items()]
              + [{"stage": k, "seconds": v, "run": "reused (time when it ran)"} for k, v in reused.items()]), ""]
    (report / "README.md").write_text("\n".join(md))
    print(f"\nreport written to {report}/ (README.md, summary.json, accuracy_vs_mmacs.png, latency.png)")
    print(run_line)
