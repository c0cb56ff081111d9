"""SDK benchmark: what ``QueryModel.embed`` costs on top of the raw runtime, and image → hits latency.

    python -m benchmarks.bench_sdk                 # mbv3-small query model, 2,000 calls per mode
    python -m benchmarks.bench_sdk --quick         # 300 calls per mode
    python -m benchmarks.bench_sdk --bundle DIR    # an existing bundle instead of a fresh export

For onnxruntime and LiteRT (one thread each), on the same model file and the same image:

* ``raw invoke`` — the runtime's own API on a ready float32 tensor (``InferenceSession.run``;
  ``set_tensor`` + ``invoke`` + ``get_tensor``): the floor;
* ``sdk run`` — ``QueryModel.run`` on the same tensor (wrapper, output checks, normalisation);
* ``embed array`` — ``QueryModel.embed`` of a uint8 array already at the model's size;
* ``embed png`` — ``QueryModel.embed`` of a PNG file path (decode, convert, resize);
* ``embed camera`` — ``QueryModel.embed`` of a 640×480 RGB camera frame (colour conversion + resize).

Reported: p50 / p99 per mode and the p50 ratio to ``raw invoke``. The modes run in alternating
rounds so they see the same background load. When the gallery client and server are installed,
also image → hits through ``GalleryClient.search_images`` against a gallery server on loopback
(10,000 vectors, Flat index, k=10) next to the search alone.

Writes ``benchmarks/results/sdk.json`` and ``sdk.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hetsearch.report import format_table, markdown_table, write_json

REPO = Path(__file__).resolve().parent.parent
MODES = ("raw invoke", "sdk run", "embed array", "embed png", "embed camera")


def _raw_invoke(path: Path, x: np.ndarray):
    """A zero-argument call running ``x`` through the runtime's own API (no SDK code)."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        return lambda: sess.run(None, feed)[0]
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def call():
        interp.set_tensor(i, x)
        interp.invoke()
        return interp.get_tensor(o)

    return call


def _timed(calls: dict, n: int, rounds: int = 10) -> dict:
    samples = {name: [] for name in calls}
    per_round = max(1, n // rounds)
    for fn in calls.values():  # warm-up
        for _ in range(20):
            fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    out = {}
    for name, s in samples.items():
        a = np.asarray(s) * 1e3
        out[name] = {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
                     "mean_ms": float(a.mean()), "calls": int(a.size)}
    return out


def bench_backend(bundle: Path, backend: str, png: Path, pixels: np.ndarray, frame: np.ndarray, n: int) -> list[dict]:
    from hetsearch.sdk.model import QueryModel

    model = QueryModel.load(bundle, backend=backend, threads=1)
    x = model.preprocess(pixels)[:1]
    raw = _raw_invoke(model.path, x)
    ref = np.asarray(raw()).reshape(1, -1)
    assert np.allclose(model.embed(pixels), ref / np.linalg.norm(ref), atol=1e-5), "SDK and raw runtime disagree"
    calls = {"raw invoke": raw, "sdk run": lambda: model.run(x), "embed array": lambda: model.embed(pixels),
             "embed png": lambda: model.embed(png), "embed camera": lambda: model.embed(frame)}
    stats = _timed(calls, n)
    base = stats["raw invoke"]["p50_ms"]
    return [{"backend": backend, "file": model.path.name, "mode": mode, **stats[mode],
             "p50_vs_raw": stats[mode]["p50_ms"] / base} for mode in MODES]


def bench_end_to_end(bundle: Path, png: Path, n: int, work: Path) -> list[dict]:
    """image → hits through a gallery server on loopback (skipped when the client or server is missing)."""
    try:
        from hetsearch.sdk.client import GalleryClient
        from hetsearch.sdk.model import QueryModel

        import faiss  # noqa: F401  (the server needs it)
    except ImportError as exc:
        print(f"end-to-end skipped: {exc}", flush=True)
        return []
    model = QueryModel.load(bundle, backend="onnxruntime", threads=1)
    data, port_file = work / "gallery-data", work / "port"
    log = open(work / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "hetsearch.gallery_server", "serve", "--data-dir", str(data),
                             "--port", "0", "--port-file", str(port_file)], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    try:
        t0 = time.time()
        while not port_file.exists():
            if proc.poll() is not None or time.time() - t0 > 120:
                print("end-to-end skipped: the gallery server did not start; see " + str(work / "server.log"))
                return []
            time.sleep(0.1)
        client = GalleryClient(f"127.0.0.1:{port_file.read_text().strip()}", timeout=30.0)
        client.create_gallery("bench", model.space_id, index_factory="Flat")
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((10_000, model.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        client.upsert(np.arange(len(vectors)), vectors, [f'{{"sku": {i}}}' for i in range(len(vectors))],
                      gallery="bench", space_id=model.space_id)
        emb = model.embed(png)[0]
        hits = client.search_images(model, png, k=10, gallery="bench")
        assert len(hits) == 10
        stats = _timed({"image → hits": lambda: client.search_images(model, png, k=10, gallery="bench"),
                        "search only": lambda: client.search(emb, 10, gallery="bench", space_id=model.space_id),
                        "embed png": lambda: model.embed(png)}, n)
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return [{"mode": mode, **s} for mode, s in stats.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_sdk", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="an existing bundle (default: export a fresh one)")
    ap.add_argument("--arch", default="mbv3-small", help="query architecture for the fresh bundle")
    ap.add_argument("--calls", type=int, default=2000, help="timed calls per mode (default 2000)")
    ap.add_argument("--quick", action="store_true", help="300 calls per mode")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder")
    args = ap.parse_args(argv)
    n = 300 if args.quick else args.calls

    with tempfile.TemporaryDirectory(prefix="hetsearch-bench-sdk-") as tmp:
        work = Path(tmp)
        if args.bundle:
            bundle = Path(args.bundle)
        else:
            sys.path.insert(0, str(REPO / "tests"))
            from sdk_bundle import build_bundle  # the same exporter path the SDK tests use

            print(f"exporting a {args.arch} bundle (onnx, tflite)…", flush=True)
            bundle = build_bundle(work / args.arch, arch=args.arch)
        from PIL import Image

        from hetsearch import manifest as manifest_mod

        spec = manifest_mod.load(bundle)["input"]
        rng = np.random.default_rng(0)
        shape = (spec["height"], spec["width"]) + (() if spec["channels"] == 1 else (3,))
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        png = work / "query.png"
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(png)
        frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        rows = []
        for backend in ("onnxruntime", "litert"):
            rows += bench_backend(bundle, backend, png, pixels, frame, n)
            print(format_table(rows[-len(MODES):], ["backend", "mode", "p50_ms", "p99_ms", "p50_vs_raw"], digits=4),
                  flush=True)
        e2e = bench_end_to_end(bundle, png, max(100, n // 4), work)
        if e2e:
            print(format_table(e2e, ["mode", "p50_ms", "p99_ms", "calls"], digits=3), flush=True)
        manifest = manifest_mod.load(bundle)

    env = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(terse=True),
           "model": manifest["model_id"], "mmacs": manifest["macs"] / 1e6,
           "input": f"{spec['height']}x{spec['width']}x{spec['channels']}", "threads": 1, "calls_per_mode": n,
           "tools": {k: v for k, v in (manifest.get("tools") or {}).items()
                     if k in ("onnxruntime", "ai-edge-litert", "ai_edge_litert")}}
    out = Path(args.out)
    write_json(out / "sdk.json", {"env": env, "embed": rows, "end_to_end": e2e})
    md = ["# SDK benchmark", "",
          f"`python -m benchmarks.bench_sdk{' --quick' if args.quick else ''}`: {env['model']} "
          f"({env['mmacs']:.2f} MMACs, input {env['input']}), one runtime thread, {n} calls per mode in "
          f"alternating rounds, {env['cpus']} CPUs ({env['platform']}, Python {env['python']}).", "",
          "`p50_vs_raw` is the mode's p50 over the raw runtime invoke's p50 on the same tensor. `embed png` "
          "decodes a 96×96 RGB PNG; `embed camera` converts and resizes a 640×480 RGB frame.", "",
          markdown_table(rows, ["backend", "mode", "p50_ms", "p99_ms", "mean_ms", "p50_vs_raw"], digits=4)]
    if e2e:
        md += ["## Image → hits through the gallery server (loopback)", "",
               "onnxruntime model; server with 10,000 vectors, Flat index, k=10, one client.", "",
               markdown_table(e2e, ["mode", "p50_ms", "p99_ms", "mean_ms", "calls"], digits=3)]
    (out / "sdk.md").write_text("\n".join(md))
    print(f"wrote {out / 'sdk.json'} and {out / 'sdk.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
