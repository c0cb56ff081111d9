"""``hetsearch demo`` — the paper's whole story on real data, end to end.

1. train the paragon gallery model;            2. train a compatible (BCT-style) query model;
3. CMP-NAS: a supernet per stage layout, its search, finetune at two budgets;
4. finetune the compatible query model quantization-aware for int8 (``--qat int8``); export each query
   model (its QAT version as int8, and the paragon, for latency ratios) to ONNX, TFLite and Core ML, checked;
5. profile the exported files locally;         6. index the gallery, start the gallery server and
   query it through the SDK with test images;  7. print the paper-style and export tables and write
   demo-report/ (Markdown, JSON, PNGs);         8. stop the server.

Every stage runs the same CLI commands the README documents. A finished stage is reused on a rerun
when its configuration is unchanged (``--fresh`` redoes everything).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .errors import HetsearchError
from .report import read_json, write_json

FULL = {
    "gallery": {"arch": "resnet-gallery", "epochs": 4, "max_train_samples": None},
    "query": {"arch": "mbv3-small", "epochs": 6, "max_train_samples": None},
    # a second hand-designed model, so that each searched budget has a hand-designed model of matched MACs
    "query2": {"arch": "mbv3-tiny", "epochs": 6, "max_train_samples": None},
    "supernet": {"epochs": 4, "max_train_samples": None, "num_random": 1},
    # one supernet per stage layout, each searching the budgets it serves: the 14x14 layout (hires 1) where its
    # subnets reach (>= 0.15 MMACs), the default one below (benchmarks/results/layout.md, nas.md)
    "supernets": {"supernet": {"hires": 0, "budgets": [0.126]}, "supernet-h1": {"hires": 1, "budgets": [0.401]}},
    # re-rank: 4 finalists per budget, 1 finetune epoch each (benchmarks/results/nas.md measures what it buys)
    "search": {"population": 12, "generations": 4, "max_val_samples": 2000, "random_baseline": True, "rerank": 4},
    "finetune": {"epochs": 6, "max_train_samples": None, "lr": 0.1},
    # quantization-aware int8 finetune of the hand-designed query model (benchmarks/results/export-qat.md)
    "qat": {"epochs": 3, "lr": 0.005, "consistency": 200, "max_train_samples": None},
    "export": {"formats": "onnx,tflite,coreml", "precision": "fp32,int8", "check_samples": 2000},
    "profile": {"runs": 30, "warmup": 5, "min_seconds": 0.5},
    "index": {"max_samples": None},
    "eval": {"max_samples": None},
    "queries": 5,
}
QUICK = {
    "gallery": {"arch": "resnet-tiny", "epochs": 1, "max_train_samples": 2000},
    "query": {"arch": "mbv3-tiny", "epochs": 1, "max_train_samples": 2000},
    "supernet": {"epochs": 1, "max_train_samples": 1000, "num_random": 1},
    "supernets": {"supernet": {"hires": 0, "budgets": [0.15]}, "supernet-h1": {"hires": 1, "budgets": [0.4]}},
    "search": {"population": 6, "generations": 2, "max_val_samples": 200, "random_baseline": False, "rerank": 2,
               "rerank_max_train_samples": 500},
    "finetune": {"epochs": 1, "max_train_samples": 1000, "lr": 0.1},
    "qat": {"epochs": 1, "lr": 0.005, "consistency": 200, "max_train_samples": 1000},
    "export": {"formats": "onnx,tflite,coreml", "precision": "fp32,int8", "check_samples": 100},
    "profile": {"runs": 5, "warmup": 1, "min_seconds": 0.05},
    "index": {"max_samples": 1000},
    "eval": {"max_samples": 1000},
    "queries": 3,
}


class Demo:
    def __init__(self, args):
        self.args = args
        self.cfg = QUICK if args.quick else FULL
        self.work = Path(args.work)
        self.report = Path(args.report)
        self.data = ["--data", args.data] + (["--data-dir", args.data_dir] if args.data_dir else [])
        self.times: dict[str, float] = {}
        self.reused: dict[str, float | None] = {}  # stage -> seconds it took when it ran
        self.server = None

    # ------------------------------------------------------------------ plumbing
    def run(self, *argv: str) -> None:
        from .cli import main

        print(f"\n$ hetsearch {' '.join(argv)}", flush=True)
        rc = main(list(argv))
        if rc:
            raise HetsearchError(f"demo step failed (exit {rc}): hetsearch {' '.join(argv)}")

    def stage(self, name: str, config: dict, fn) -> None:
        """Run ``fn`` unless a previous run finished this stage with the same configuration."""
        key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        stamp = self.work / ".stages" / f"{name}.json"
        if not self.args.fresh and stamp.exists() and read_json(stamp).get("key") == key:
            print(f"\n== {name}: reusing the finished stage (configuration unchanged; --fresh to redo)", flush=True)
            self.reused[name] = read_json(stamp).get("seconds")
            return
        print(f"\n== {name}", flush=True)
        t0 = time.time()
        fn()
        self.times[name] = round(time.time() - t0, 1)
        write_json(stamp, {"key": key, "config": config, "seconds": self.times[name]})

    def common_train(self, c: dict) -> list[str]:
        out = ["--epochs", str(c["epochs"])]
        if c.get("max_train_samples"):
            out += ["--max-train-samples", str(c["max_train_samples"])]
        return out + ["--seed", str(self.args.seed)]

    # ------------------------------------------------------------------ stages
    def main(self) -> int:
        t_start = time.time()
        w, c = self.work, self.cfg
        if self.args.fresh and w.exists():
            shutil.rmtree(w)
        w.mkdir(parents=True, exist_ok=True)
        base = {"data": self.args.data, "seed": self.args.seed, "quick": self.args.quick}

        gal_cfg = {**base, **c["gallery"]}
        self.stage("1. train the paragon gallery model", gal_cfg, lambda: self.run(
            "train", "gallery", "--arch", c["gallery"]["arch"], *self.data, *self.common_train(c["gallery"]),
            "--out", str(w / "gallery")))

        q_cfg = {**gal_cfg, "q": c["query"]}
        self.stage("2. train a compatible query model (bct-l2)", q_cfg, lambda: self.run(
            "train", "query", "--gallery", str(w / "gallery"), "--arch", c["query"]["arch"], *self.data,
            *self.common_train(c["query"]), "--out", str(w / "query-bct")))
        hand = ["query-bct"]
        if c.get("query2"):
            q2 = c["query2"]
            hand.append(f"query-bct-{q2['arch'].split('-')[-1]}")
            self.stage(f"2b. train a second hand-designed query model ({q2['arch']}, bct-l2)", {**gal_cfg, "q2": q2},
                       lambda: self.run("train", "query", "--gallery", str(w / "gallery"), "--arch", q2["arch"],
                                        *self.data, *self.common_train(q2), "--out", str(w / hand[-1])))

        sn, se, ft = c["supernet"], c["search"], c["finetune"]
        nas_models, se_cfgs = [], []
        for sn_name, layout in c["supernets"].items():
            suffix = sn_name[len("supernet"):]
            sn_cfg = {**gal_cfg, "sn": sn, "hires": layout["hires"]}
            self.stage(f"3a. CMP-NAS: train the supernet{f' ({suffix[1:]})' if suffix else ''}", sn_cfg,
                       lambda sn_name=sn_name, layout=layout: self.run(
                "nas", "supernet", "--gallery", str(w / "gallery"), *self.data, "--epochs", str(sn["epochs"]),
                *(["--max-train-samples", str(sn["max_train_samples"])] if sn.get("max_train_samples") else []),
                "--hires", str(layout["hires"]), "--num-random", str(sn["num_random"]), "--seed", str(self.args.seed),
                "--out", str(w / sn_name)))

            budgets = ",".join(str(b) for b in layout["budgets"])
            se_cfg = {**sn_cfg, "se": se, "budgets": layout["budgets"]}
            se_cfgs.append(se_cfg)
            search_dir = w / f"search{suffix}"
            self.stage(f"3b. CMP-NAS: search {sn_name} under {budgets} MMACs", se_cfg,
                       lambda sn_name=sn_name, budgets=budgets, search_dir=search_dir: self.run(
                "nas", "search", "--supernet", str(w / sn_name), "--gallery", str(w / "gallery"), *self.data,
                "--budgets", budgets, "--population", str(se["population"]), "--generations", str(se["generations"]),
                "--max-val-samples", str(se["max_val_samples"]), "--seed", str(self.args.seed),
                *([] if se["random_baseline"] else ["--no-random-baseline"]), "--rerank", str(se["rerank"]),
                *(["--rerank-max-train-samples", str(se["rerank_max_train_samples"])]
                  if se.get("rerank_max_train_samples") else []),
                "--out", str(search_dir)))

            for b in layout["budgets"]:
                name = f"query-nas-{b:g}"
                nas_models.append(name)
                sub = self._subnet_dir(search_dir, b)
                self.stage(f"3c. CMP-NAS: finetune the {b:g}-MMAC subnet", {**se_cfg, "ft": ft, "b": b},
                           lambda sub=sub, name=name, sn_name=sn_name: self.run(
                               "nas", "finetune", "--subnet", str(sub), "--supernet", str(w / sn_name),
                               "--gallery", str(w / "gallery"), *self.data, "--epochs", str(ft["epochs"]),
                               "--lr", str(ft["lr"]),
                               *(["--max-train-samples", str(ft["max_train_samples"])] if ft.get("max_train_samples")
                                 else []),
                               "--out", str(w / name)))
        nas_models.sort(key=lambda n: float(n.rsplit("-", 1)[1]))

        ev = c["eval"]
        queries = [*hand, *nas_models]
        ev_cfg = {**gal_cfg, "searches": se_cfgs, "ft": ft, "q": c["query"], "q2": c.get("query2"), "ev": ev}
        self.stage("evaluate on the test split", ev_cfg, lambda: self._evaluate(queries, ev))

        qa = c["qat"]
        qat_name = f"{hand[0]}-qat"
        qat_cfg = {**q_cfg, "qat": qa}
        self.stage(f"4a. quantization-aware int8 finetune of {hand[0]}", qat_cfg, lambda: self.run(
            "train", "query", "--gallery", str(w / "gallery"), "--init", str(w / hand[0]), "--qat", "int8",
            "--qat-consistency", str(qa["consistency"]), "--epochs", str(qa["epochs"]), "--lr", str(qa["lr"]),
            *self.data, *(["--max-train-samples", str(qa["max_train_samples"])] if qa.get("max_train_samples") else []),
            "--seed", str(self.args.seed), "--out", str(w / qat_name)))

        ex = c["export"]
        ex_cfg = {**ev_cfg, "ex": ex}
        self.qat_of = {qat_name: hand[0]}  # exported as int8 besides the query models; the report pairs them
        for name in [*queries, *self.qat_of, "gallery"]:
            # the QAT model ships as int8 (its float weights are the float model's, finetuned for int8)
            prec = "fp32" if name == "gallery" else "int8" if name == qat_name else ex["precision"]
            self.stage(f"4. export {name}", {**ex_cfg, "m": name, **({"qat": qa} if name == qat_name else {})},
                       lambda name=name, prec=prec: self.run(
                "export", str(w / name), "--formats", ex["formats"], "--precision", prec, "--gallery",
                str(w / "gallery"), *self.data, "--check-samples", str(ex["check_samples"]),
                # the quick demo's one-epoch smoke models are not release candidates: their failed checks are
                # reported (and the files marked failed), not fatal; the full demo fails when a gate fails
                *(["--report-only"] if self.args.quick else []),
                "--json", str(w / "exports" / f"{name}.json"), "--out", str(w / "bundles" / name)))

        pr = c["profile"]
        pr_cfg = {**ex_cfg, "pr": pr}
        for name in ["gallery", *queries, *self.qat_of]:
            self.stage(f"5. profile {name} locally", {**pr_cfg, "m": name}, lambda name=name: self.run(
                "profile", str(w / "bundles" / name), "--target", "local", "--runs", str(pr["runs"]),
                "--warmup", str(pr["warmup"]), "--min-seconds", str(pr["min_seconds"]), "--threads", "1",
                *(["--paragon", str(w / "bundles" / "gallery")] if name != "gallery" else []),
                "--json", str(w / "profiles" / f"{name}.json")))

        print("\n== 6. index the gallery, serve it, query it from the SDK", flush=True)
        t0 = time.time()
        hits = self._serve_and_query(queries[0], c)
        self.times["6. index + serve + query"] = round(time.time() - t0, 1)

        print("\n== 7. report", flush=True)
        self._report(queries, hits, time.time() - t_start)
        return 0

    def _subnet_dir(self, search_dir: Path, budget: float) -> Path:
        from hetsearch.cmpnas.nas.search import budget_dirname

        return search_dir / budget_dirname(budget)

    def _evaluate(self, queries, ev) -> None:
        w = self.work
        sub = ["--max-samples", str(ev["max_samples"])] if ev.get("max_samples") else []
        self.run("eval", "--query", str(w / "gallery"), *self.data, *sub, "--quiet", "--json", str(w / "eval" / "paragon.json"))
        for q in queries:
            self.run("eval", "--query", str(w / q), "--gallery", str(w / "gallery"), *self.data, *sub, "--quiet",
                     "--json", str(w / "eval" / f"{q}-het.json"))
            self.run("eval", "--query", str(w / q), *self.data, *sub, "--quiet", "--json", str(w / "eval" / f"{q}-hom.json"))

    def _serve_and_query(self, query_name: str, c: dict) -> list:
        from hetsearch.cmpnas.data import load_data
        from PIL import Image

        w = self.work
        gdata = w / "gallery-data"
        if gdata.exists():
            shutil.rmtree(gdata)
        # a few test images as files, as a phone camera would hand them over; they are held out of the gallery,
        # so a query never finds itself
        test = load_data(self.args.data, "test", self.args.data_dir)
        qdir = w / "queries"
        if qdir.exists():
            shutil.rmtree(qdir)
        qdir.mkdir()
        paths, held = [], []
        for i in range(c["queries"]):
            j = i * 997 % len(test)
            p = qdir / f"test-{j}-{test.classes[int(test.labels[j])].replace('/', '-').replace(' ', '-')}.png"
            Image.fromarray(test.images[j][..., 0] if test.images[j].shape[2] == 1 else test.images[j]).save(p)
            paths.append(str(p))
            held.append(j)
        (w / "held-out.txt").write_text("\n".join(str(j) for j in held) + "\n")
        idx = c["index"]
        self.run("index", "--gallery", str(w / "gallery"), *self.data, "--split", "test",
                 *(["--max-samples", str(idx["max_samples"])] if idx.get("max_samples") else []),
                 "--exclude", f"@{w / 'held-out.txt'}",
                 "--out", str(gdata), "--name", "fashion", "--json", str(w / "index.json"))
        port_file = w / "server.port"
        port_file.unlink(missing_ok=True)
        log = open(w / "server.log", "w")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "hetsearch", "serve", "--data-dir", str(gdata), "--host", "127.0.0.1",
             "--port", "0", "--port-file", str(port_file)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 60
            while not port_file.exists() or not port_file.read_text().strip():
                if self.server.poll() is not None or time.time() > deadline:
                    raise HetsearchError(f"the gallery server did not start; see {w / 'server.log'}")
                time.sleep(0.2)
            addr = f"127.0.0.1:{port_file.read_text().strip()}"
            print(f"gallery server listening on {addr} (pid {self.server.pid})")
            self.run("query", "--bundle", str(w / "bundles" / query_name), "--server", addr, "--gallery", "fashion",
                     "--k", "5", *paths, "--json", str(w / "hits.json"),
                     # the quick demo's smoke models may fail their gates; it still exercises the whole path (the
                     # SDK warns); the full demo never runs a file that failed its checks
                     *(["--allow-failed"] if self.args.quick else []))
            hits = read_json(w / "hits.json")
            found_itself = [h["image"] for h, j in zip(hits, held) if any(x["id"] == j for x in h["hits"])]
            if found_itself:
                raise HetsearchError(f"held-out query images were found in the gallery: {found_itself}")
            from .demo_report import plot_hits

            plot_hits(hits, held, test, self.report / "queries.png", query_name)
            return hits
        finally:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
            log.close()
            print("== 8. gallery server stopped")

    # ------------------------------------------------------------------ report
    def _report(self, queries, hits, total_seconds: float) -> None:
        from . import demo_report

        demo_report.write(self.work, self.report, queries, hits, self.times, total_seconds, quick=self.args.quick,
                          reused=self.reused, qat_of=self.qat_of)


EPILOG = """\
examples:
  hetsearch demo                 # the whole story (about 15 minutes on 2 cores)
  hetsearch demo --quick         # a smoke version on a data subset (a few minutes)
  hetsearch demo --fresh         # redo every stage instead of reusing finished ones

Writes its models, bundles and logs under demo-work/ and the report under demo-report/.
"""


def cmd_demo(args) -> int:
    return Demo(args).main()


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole story: train, search, export, profile, serve, query, report",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke version on a data subset")
    p.add_argument("--fresh", action="store_true", help="redo every stage")
    p.add_argument("--work", default="demo-work", help="working directory (default demo-work)")
    p.add_argument("--report", default="demo-report", help="report directory (default demo-report)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
