"""``hetsearch release``: one command from a trained supernet to a checked, profiled bundle per device.

``devices.toml`` names the devices; for each one the release

1. prices subnets: MMACs, or milliseconds with a latency model measured on the device (built with
   :func:`hetsearch.cmpnas.nas.latency.build_latency_model`, or reused when its settings are unchanged, or a
   given file);
2. searches the supernet under the device's budget (:func:`hetsearch.cmpnas.nas.search.run_search`; with a ms
   budget the winner is measured on the device and, if over, the next finalists are);
3. finetunes the winner (:func:`~hetsearch.cmpnas.nas.search.finetune_subnet`), and with ``qat_epochs`` a device
   that ships int8 also finetunes it quantization-aware (``--qat int8``; its bundle then comes from that model);
4. exports it with the exporter and its checks (:func:`hetsearch.export.exporter.export_bundle`: the same gate
   ``hetsearch export`` applies; a file whose checks fail is removed and fails the device);
5. profiles the bundle on the device (:func:`hetsearch.export.profile.profile_bundle`);
6. evaluates heterogeneous R@1 on the test split of the supernet's data (:func:`hetsearch.cmpnas.evaluate.evaluate_pair`,
   what ``hetsearch eval`` runs) next to the paragon (the gallery model on both sides).

It writes ``OUT/<device>/bundle/`` (the deliverable), ``OUT/<device>/work/`` (latency model, search, finetuned
checkpoint), ``OUT/<device>/release.json``, and ``OUT/index.json`` + ``OUT/README.md`` for all devices. A device
that fails is recorded with its reason and the others continue (exit status 1 at the end). A re-run reuses a
finished device whose digest (device entry + supernet + gallery + settings) is unchanged, and says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import __version__
from . import manifest as mf
from .errors import HetsearchError
from .report import format_table, markdown_table, read_json, write_json

log = logging.getLogger("hetsearch.release")

INDEX_KIND = "hetsearch-release"
SCHEMA_VERSION = 1
DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LATENCY_FORMATS = ("tflite", "onnx")  # what a latency model can be measured on, in order of preference


class ReleaseConfigError(HetsearchError):
    """devices.toml is missing, unreadable or invalid (exit status 2)."""


# ----------------------------------------------------------------------------- settings and devices


@dataclass
class ReleaseSettings:
    """Release-wide settings: the ``[release]`` table of devices.toml, each overridable on the command line."""

    finetune_epochs: int = 8
    finetune_lr: float | None = None  # None: the finetune's default (cmpnas.nas.search.FINETUNE_LR)
    # quantization-aware int8 finetune (--qat int8) of the winner of every device that ships int8; its bundle (all
    # precisions) then comes from that checkpoint. 0 = off (post-training int8).
    qat_epochs: int = 0
    qat_lr: float = 0.005
    qat_consistency: float = 200.0
    batch_size: int = 128
    max_train_samples: int | None = None  # finetune on a class-balanced subset (quick runs)
    compat: str = "bct-l2"
    population: int = 24
    generations: int = 6
    max_val_samples: int | None = 2000  # search: validation images per evaluated subnet
    calib_images: int = 500  # BN recalibration of subnets
    max_rechecks: int = 5  # ms budgets: finalists measured after a winner measures over budget
    check_samples: int = 2000  # export checks: validation images (parity + compatibility gate)
    int8_calib_samples: int = 200
    int8_probe_samples: int = 3000  # other training images: they choose what of an int8 graph stays float
    test_samples: int | None = None  # R@1 on the test split: all of it unless capped
    latency_samples: int = 40  # subnets measured when a device's latency model is built
    warmup: int = 5
    runs: int = 50
    min_seconds: float = 1.0
    timeout: float = 1800.0  # seconds for one profiling call on a target
    seed: int = 0
    torch_threads: int | None = None

    def validate(self) -> "ReleaseSettings":
        positive = ("finetune_epochs", "batch_size", "population", "calib_images", "check_samples",
                    "int8_calib_samples", "runs", "latency_samples")
        for name in positive:
            if getattr(self, name) < 1:
                raise ReleaseConfigError(f"[release] {name} must be at least 1, got {getattr(self, name)}")
        if self.int8_probe_samples < 0:
            raise ReleaseConfigError(f"[release] int8_probe_samples must be 0 (a quarter of the calibration images) "
                                     f"or more, got {self.int8_probe_samples}")
        for name, least in (("max_train_samples", 2), ("max_val_samples", 2), ("test_samples", 2), ("torch_threads", 1)):
            v = getattr(self, name)
            if v is not None and v < least:
                raise ReleaseConfigError(f"[release] {name} must be at least {least}, got {v}")
        for name in ("generations", "max_rechecks", "warmup", "seed", "qat_epochs", "qat_consistency"):
            if getattr(self, name) < 0:
                raise ReleaseConfigError(f"[release] {name} must be >= 0, got {getattr(self, name)}")
        if (self.finetune_lr is not None and self.finetune_lr <= 0) or self.min_seconds < 0 or self.timeout <= 0 \
                or self.qat_lr <= 0:
            raise ReleaseConfigError("[release] finetune_lr, qat_lr and timeout must be > 0, min_seconds >= 0")
        if self.latency_samples < 6:
            raise ReleaseConfigError(f"[release] latency_samples must be at least 6, got {self.latency_samples}")
        return self


_SETTING_TYPES = {f.name: f.type for f in fields(ReleaseSettings)}


@dataclass
class Device:
    """One ``[devices.NAME]`` entry, validated."""

    name: str
    target: str
    budget: float
    unit: str  # "ms" | "MMACs"
    formats: list[str]
    precisions: list[str]
    threads: int | None = 1
    latency_model: str | None = None  # a given latency model file (ms budgets: prices the search; MMACs: reports)
    latency_format: str | None = None
    latency_precision: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    remote_python: str = "python3"
    benchmark_model: str | None = None
    adb: str = "adb"
    supernet: str | None = None  # searched in this supernet instead of --supernet

    def signature(self) -> dict:
        """What the release of this device depends on (ways to reach the device, like a key file, are not)."""
        keep = ("name", "target", "budget", "unit", "formats", "precisions", "threads", "latency_format",
                "latency_precision")
        return {k: getattr(self, k) for k in keep}

    def reach(self) -> dict:
        return {"identity": self.identity, "known_hosts": self.known_hosts, "remote_python": self.remote_python,
                "benchmark_model": self.benchmark_model, "adb": self.adb}


DEVICE_KEYS = {
    "target": "local | ssh://user@host[:port] | adb://SERIAL",
    "budget_ms": "latency budget in ms (p50 on the device)",
    "budget_mmacs": "cost budget in MMACs",
    "formats": f"list of {', '.join(mf.FORMATS)}",
    "precisions": f"list of {', '.join(mf.PRECISIONS)}",
    "threads": "runtime threads on the device (default 1)",
    "latency_model": "a latency model file for this device (default with budget_ms: built in OUT/<device>/work)",
    "supernet": "the supernet this device is searched in (default: --supernet), e.g. one of the 14x14 layout "
                "(`nas supernet --hires 1`) for budgets it reaches; trained on the same data against the same gallery",
    "latency_format": "the format a ms budget is measured on (default: tflite if listed, else onnx)",
    "latency_precision": "the precision a ms budget is measured on (default: fp32 if listed, else the first)",
    "identity": "ssh: private key file", "known_hosts": "ssh: known_hosts file",
    "remote_python": "ssh: the device's Python with hetsearch[sdk]",
    "benchmark_model": "adb: LiteRT benchmark_model binary", "adb": "adb: the adb executable",
}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _names_list(where: str, key: str, value, allowed: tuple) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ReleaseConfigError(f"{where}.{key} must be a non-empty list of strings, e.g. {list(allowed[:2])}")
    bad = [v for v in value if v not in allowed]
    if bad:
        raise ReleaseConfigError(f"{where}.{key}: unknown {', '.join(repr(b) for b in bad)}; choose from "
                                 f"{', '.join(allowed)}")
    return list(dict.fromkeys(value))


def _unknown(where: str, keys, allowed) -> None:
    bad = sorted(set(keys) - set(allowed))
    if bad:
        raise ReleaseConfigError(f"{where}: unknown key{'s' if len(bad) > 1 else ''} {', '.join(bad)}; allowed: "
                                 f"{', '.join(sorted(allowed))}")


def parse_device(name: str, entry: Any, base: Path) -> Device:
    from hetsearch.export.profile import parse_target

    where = f"[devices.{name}]"
    if not DEVICE_NAME.match(name):
        raise ReleaseConfigError(f"{where}: a device name is a folder name: letters, digits, '.', '_', '-' "
                                 "(at most 64, starting with a letter or digit)")
    if not isinstance(entry, dict):
        raise ReleaseConfigError(f"{where} must be a table (target = ..., budget_ms = ... or budget_mmacs = ...)")
    _unknown(where, entry, DEVICE_KEYS)
    for key in ("target", "formats", "precisions"):
        if key not in entry:
            raise ReleaseConfigError(f"{where}: missing {key} ({DEVICE_KEYS[key]})")
    budgets = [k for k in ("budget_ms", "budget_mmacs") if k in entry]
    if len(budgets) != 1:
        raise ReleaseConfigError(f"{where}: give exactly one budget: budget_ms = X (latency on the device) or "
                                 f"budget_mmacs = X" + (f" (it has {' and '.join(budgets)})" if budgets else ""))
    budget = entry[budgets[0]]
    if not _is_number(budget) or budget <= 0:
        raise ReleaseConfigError(f"{where}.{budgets[0]} must be a positive number, got {budget!r}")
    for key in ("target", "latency_model", "latency_format", "latency_precision", "identity", "known_hosts",
                "remote_python", "benchmark_model", "adb", "supernet"):
        if key in entry and not isinstance(entry[key], str):
            raise ReleaseConfigError(f"{where}.{key} must be a string, got {entry[key]!r}")
    try:
        target = parse_target(entry["target"]).name
    except HetsearchError as exc:
        raise ReleaseConfigError(f"{where}.target: {exc}") from None
    formats = _names_list(where, "formats", entry["formats"], mf.FORMATS)
    precisions = _names_list(where, "precisions", entry["precisions"], mf.PRECISIONS)
    threads = entry.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ReleaseConfigError(f"{where}.threads must be an integer >= 1, got {threads!r}")
    if target.startswith("adb://") and set(formats) - {"tflite", "mediapipe"}:
        raise ReleaseConfigError(f"{where}: adb:// targets run .tflite files only; formats {formats} would leave "
                                 "files unprofiled (use formats = [\"tflite\"])")
    dev = Device(name=name, target=target, budget=float(budget), unit="ms" if budgets[0] == "budget_ms" else "MMACs",
                 formats=formats, precisions=precisions, threads=threads,
                 **{k: entry[k] for k in ("identity", "known_hosts", "remote_python", "benchmark_model", "adb")
                    if k in entry})
    for key in ("identity", "known_hosts", "benchmark_model"):
        v = getattr(dev, key)
        if v and not Path(v).expanduser().is_absolute() and (base / v).exists():
            setattr(dev, key, str(base / v))
    if "latency_model" in entry:
        p = Path(entry["latency_model"]).expanduser()
        p = (p if p.is_absolute() else base / p).resolve()
        if not p.is_file():
            raise ReleaseConfigError(f"{where}.latency_model: {p} does not exist")
        dev.latency_model = str(p)
    if "supernet" in entry:
        from hetsearch.cmpnas.nas.supernet import SUPERNET_FILE

        p = Path(entry["supernet"]).expanduser()
        p = (p if p.is_absolute() else base / p).resolve()
        if not (p / SUPERNET_FILE).is_file():
            raise ReleaseConfigError(f"{where}.supernet: {p} holds no {SUPERNET_FILE} (a `hetsearch nas supernet` "
                                     "folder, relative to devices.toml)")
        dev.supernet = str(p)
    if dev.unit == "MMACs" and not dev.latency_model:
        for key in ("latency_format", "latency_precision"):
            if key in entry:
                raise ReleaseConfigError(f"{where}.{key} applies to budget_ms (or with a latency_model file)")
    if dev.unit == "ms" or dev.latency_model:
        fmt = entry.get("latency_format") or next((f for f in LATENCY_FORMATS if f in formats), None)
        if fmt not in LATENCY_FORMATS or fmt not in formats:
            raise ReleaseConfigError(f"{where}: a ms budget is measured on a tflite or onnx file of the bundle: "
                                     f"latency_format must be one of {[f for f in LATENCY_FORMATS if f in formats]} "
                                     f"(formats lists {formats})")
        prec = entry.get("latency_precision") or ("fp32" if "fp32" in precisions else precisions[0])
        if prec not in precisions:
            raise ReleaseConfigError(f"{where}.latency_precision {prec!r} is not in its precisions {precisions}")
        dev.latency_format, dev.latency_precision = fmt, prec
    return dev


def parse_settings(table: Any) -> ReleaseSettings:
    if not isinstance(table, dict):
        raise ReleaseConfigError("[release] must be a table of settings")
    _unknown("[release]", table, _SETTING_TYPES)
    values = {}
    for key, v in table.items():
        typ = str(_SETTING_TYPES[key])
        want_int, want_float = "int" in typ, "float" in typ
        ok = (isinstance(v, str) and typ.startswith("str")) or (
            not isinstance(v, bool) and ((want_int and isinstance(v, int)) or (want_float and _is_number(v))))
        if not ok:
            raise ReleaseConfigError(f"[release] {key} must be {typ.replace(' | None', '')}, got {v!r}")
        values[key] = v
    return ReleaseSettings(**values).validate()


def load_devices(path: str | Path) -> tuple[ReleaseSettings, list[Device]]:
    """Read and strictly validate devices.toml: ``[release]`` settings (optional) and ``[devices.NAME]`` entries."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise ReleaseConfigError(f"--devices {p}: no such file")
    try:
        doc = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ReleaseConfigError(f"{p} is not valid TOML: {exc}") from None
    _unknown(str(p), doc, ("release", "devices"))
    settings = parse_settings(doc.get("release", {}))
    devices = doc.get("devices")
    if not isinstance(devices, dict) or not devices:
        raise ReleaseConfigError(f"{p}: no devices; add at least one [devices.NAME] table with target, a budget "
                                 "(budget_ms or budget_mmacs), formats and precisions")
    base = p.resolve().parent
    out = []
    for name, entry in devices.items():
        try:
            out.append(parse_device(name, entry, base))
        except ReleaseConfigError as exc:
            raise ReleaseConfigError(f"{p}: {exc}") from None
    return settings, out


# ----------------------------------------------------------------------------- the release


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _say(msg: str) -> None:
    print(f"[release] {msg}", file=sys.stderr, flush=True)


class Release:
    def __init__(self, supernet, gallery, devices_path, out, settings: ReleaseSettings, devices: list[Device], *,
                 data_dir: str | None = None, fresh: bool = False, progress: bool = True):
        from hetsearch.cmpnas.checkpoint import CKPT_NAME
        from hetsearch.cmpnas.nas.supernet import SUPERNET_FILE

        self.supernet, self.gallery_dir, self.out = Path(supernet), Path(gallery), Path(out)
        self.devices_path, self.settings, self.devices = Path(devices_path), settings, devices
        self.data_dir, self.fresh, self.progress = data_dir, fresh, progress
        for what, p, f in (("--supernet", self.supernet, SUPERNET_FILE), ("--gallery", self.gallery_dir, CKPT_NAME)):
            if not (p / f).is_file():
                raise HetsearchError(f"{what} {p}: no {f} there")
        self._sn_inputs: dict[Path, dict] = {}
        self.inputs = {**self.supernet_inputs(self.supernet),
                       "gallery_sha256": mf.sha256_path(self.gallery_dir / CKPT_NAME)}
        self._loaded: dict[Path, Any] = {}
        self._test = None

    def supernet_inputs(self, sn: Path) -> dict:
        """A supernet's file digests, hashed once per release run (every device's key names its supernet's)."""
        if sn not in self._sn_inputs:
            from hetsearch.cmpnas.nas.supernet import SUPERNET_FILE

            self._sn_inputs[sn] = {"supernet_sha256": mf.sha256_path(sn / SUPERNET_FILE),
                                   "supernet_config_sha256": mf.sha256_path(sn / "config.json")}
        return self._sn_inputs[sn]

    def supernet_of(self, dev: Device) -> Path:
        return Path(dev.supernet) if dev.supernet else self.supernet

    # ------------------------------------------------------------------ shared inputs, loaded once when needed
    def loaded(self, supernet: Path | None = None):
        """The supernet (default: --supernet), the gallery model and the training data. The gallery and the data
        are shared: a device's own supernet must have been trained on the data of --supernet (one test split)."""
        sn = self.supernet if supernet is None else Path(supernet)
        if sn not in self._loaded:
            from types import SimpleNamespace

            from hetsearch.cmpnas.checkpoint import load_checkpoint
            from hetsearch.cmpnas.nas.cli import _data_name, _training_data
            from hetsearch.cmpnas.nas.supernet import load_supernet
            from hetsearch.errors import SpaceMismatchError

            net, meta = load_supernet(sn)
            ns = SimpleNamespace(data=None, data_dir=self.data_dir, open_set_classes=None)
            if sn == self.supernet:
                gck = load_checkpoint(self.gallery_dir, expect_kind="gallery")
                data_name, data, held = _training_data(ns, meta, str(sn))
            else:
                base = self.loaded()
                gck, data, data_name, held = base.gck, base.data, base.data_name, base.held
                mine = (_data_name(ns, meta, str(sn)), meta.get("open_set_classes") or [])
                if not _same_data(mine[0], data_name) or mine[1] != held:
                    raise HetsearchError(
                        f"the device's supernet {sn} was trained on {mine[0]} (held-out classes {mine[1] or 'none'}), "
                        f"--supernet {self.supernet} on {data_name} (held-out classes {held or 'none'}): one release "
                        "evaluates every device on one test split, so train both supernets on the same data")
            if meta.get("space_id") and meta["space_id"] != gck.space_id:
                raise SpaceMismatchError(meta["space_id"], gck.space_id, what=f"--gallery (the supernet {sn}'s space)")
            self._loaded[sn] = SimpleNamespace(net=net, meta=meta, gck=gck, data_name=data_name, data=data, held=held)
        return self._loaded[sn]

    def test_side(self) -> dict:
        """The test split of the supernet's data (open-set: its held-out classes), the gallery's embeddings of
        it and the paragon's R@1 — computed once per run."""
        if self._test is None:
            from hetsearch.cmpnas.data import load_data, open_set, stratified_sample
            from hetsearch.cmpnas.embed import embed
            from hetsearch.cmpnas.evaluate import evaluate_pair

            L = self.loaded()
            full = load_data(L.data_name, "test", self.data_dir)
            note = None
            if L.data_name != "fashion-mnist":
                note = (f"{L.data_name} has no separate test split (folders and .npz are used whole): R@1 is on the "
                        "same images the models trained on")
            test = open_set(full, [full.classes.index(c) for c in L.held], "eval")
            if self.settings.test_samples:
                test = test.subset(stratified_sample(test.labels, self.settings.test_samples, self.settings.seed),
                                   f"{self.settings.test_samples}")
            _say(f"test split: {len(test)} images of {L.data_name}" + (f" (held-out classes {L.held})" if L.held else "")
                 + "; embedding it with the gallery model")
            g_emb = embed(L.gck.model, test, progress="embed test (gallery)" if self.progress else False)
            paragon = evaluate_pair(L.gck, L.gck, test, query_emb=g_emb, gallery_emb=g_emb, verification=False)
            self._test = {"data": test, "gallery_emb": g_emb, "paragon_r1": paragon["recall_at_1"],
                          "images": len(test), "source": f"{L.data_name} test split" + (
                              f" (open-set classes {L.held})" if L.held else ""), "note": note}
        return self._test

    # ------------------------------------------------------------------ one device
    def key(self, dev: Device) -> dict:
        lat = mf.sha256_path(dev.latency_model) if dev.latency_model else None
        # a device searched in --supernet keeps the key (and digest) it had before devices could name their own
        return {"device": dev.signature(), **self.inputs, **self.supernet_inputs(self.supernet_of(dev)),
                "latency_model_sha256": lat,
                "settings": asdict(self.settings), "data_dir": self.data_dir, "hetsearch": __version__}

    def run_device(self, dev: Device, digest: str) -> dict:
        from hetsearch.cmpnas.nas.search import FINETUNE_LR, SearchConfig, budget_dirname, finetune_subnet, run_search
        from hetsearch.cmpnas.train import TrainConfig, train_query

        sn = self.supernet_of(dev)
        s, L = self.settings, self.loaded(sn)
        root = self.out / dev.name
        work = root / "work"
        entry: dict[str, Any] = {"device": dev.name, "target": dev.target, "budget": dev.budget, "unit": dev.unit,
                                 "formats": dev.formats, "precisions": dev.precisions, "threads": dev.threads,
                                 "supernet": str(sn), "digest": digest, "status": "running", "stages": {}}
        t_all = time.time()

        def stage(name: str, t0: float) -> None:
            entry["stages"][name] = round(time.time() - t0, 1)

        # 1. cost model
        t0 = time.time()
        cost, device_check, predictor = self.cost_model(dev, work, entry, sn)
        stage("latency_model", t0)
        # 2. search
        t0 = time.time()
        _say(f"{dev.name}: searching {sn} under {dev.budget:g} {dev.unit}")
        scfg = SearchConfig(population=s.population, generations=s.generations, seed=s.seed, tie_tolerance=0.3)
        budget = dev.budget
        res = run_search(sn, L.data, L.gck, work / "search", [budget], scfg=scfg, random_baseline=False,
                         cost_model=cost, max_val_samples=s.max_val_samples, calib_images=s.calib_images,
                         progress=self.progress, device_check=device_check, max_rechecks=s.max_rechecks)
        best = next(iter(res["best"].values()))
        entry["search"] = {"evaluations": res["evaluations"], "validation_images": res["validation"]["images"],
                           "val_het_r1_inherited": best["het_r1"], "arch": best["arch"],
                           "seconds": res["seconds"]}
        if dev.unit == "ms":
            check = next(iter((res.get("device_check") or {}).values()), None) or {}
            entry["search"]["device_check"] = {"within_budget": check.get("within_budget"),
                                               "tries": len(check.get("tries") or []), "note": check.get("note")}
            if check and not check.get("within_budget"):
                raise HetsearchError(f"no subnet measured within {dev.budget:g} ms on {dev.target}: "
                                     f"{check.get('note')}")
        stage("search", t0)
        # 3. finetune
        t0 = time.time()
        _say(f"{dev.name}: finetuning the {best['mmacs']:.3f}-MMAC winner for {s.finetune_epochs} epoch(s)")
        cfg = TrainConfig(epochs=s.finetune_epochs, lr=FINETUNE_LR if s.finetune_lr is None else s.finetune_lr,
                          batch_size=s.batch_size, seed=s.seed,
                          max_train_samples=s.max_train_samples, threads=s.torch_threads, compat=s.compat)
        cfg.validate()
        qdir = work / f"cmpnas-{dev.name}"  # the folder names the model
        ck = finetune_subnet(L.data, sn, work / "search" / budget_dirname(budget), L.gck, qdir, cfg,
                             calib_images=s.calib_images, progress=self.progress)
        stage("finetune", t0)
        if s.qat_epochs and "int8" in dev.precisions:  # 3b. quantization-aware int8 finetune of the winner
            t0 = time.time()
            _say(f"{dev.name}: quantization-aware int8 finetune for {s.qat_epochs} epoch(s); the bundle comes from it")
            # the finetune's settings, but its own epochs and lr, and fake quantization
            qcfg = replace(cfg, epochs=s.qat_epochs, lr=s.qat_lr, qat="int8", qat_consistency=s.qat_consistency)
            qcfg.validate()
            qdir = work / f"cmpnas-{dev.name}-qat"
            ck = train_query(L.data, L.gck, None, qdir, qcfg, init=ck, progress=self.progress)
            entry["qat"] = {"epochs": s.qat_epochs, "lr": s.qat_lr, "consistency": s.qat_consistency,
                            "val_het_r1": ck.meta["metrics"].get("val_heterogeneous_r1"),
                            "val_float_het_r1": ck.meta["metrics"].get("val_float_heterogeneous_r1")}
            stage("qat", t0)
        # 4. export + checks
        t0 = time.time()
        bundle = root / "bundle"
        man = self.export(dev, qdir, bundle, entry)
        stage("export", t0)
        # 5. profile on the device
        t0 = time.time()
        self.profile(dev, bundle, entry, predictor, best["arch"])
        stage("profile", t0)
        # 6. R@1 on the test split
        t0 = time.time()
        self.evaluate(ck, entry)
        stage("evaluate", t0)
        entry.update(model_id=man["model_id"], mmacs=man["macs"] / 1e6, params=man["params"],
                     space_id=man["space_id"], bundle=f"{dev.name}/bundle",
                     files=[e["path"] for e in mf.load(bundle)["files"]])
        problems = entry.pop("_problems", [])
        entry["status"] = "failed" if problems else "ok"
        if problems:
            entry["reason"] = "; ".join(problems)
        entry["seconds"] = round(time.time() - t_all, 1)
        return entry

    def cost_model(self, dev: Device, work: Path, entry: dict, sn: Path):
        """(the search's cost model, its device check or None, the latency predictor or None) for a device."""
        from hetsearch.cmpnas.nas.latency import (DeviceCheck, LatencyModelError, TargetSettings, _identity,
                                                  build_latency_model)
        from hetsearch.cmpnas.nas.search import LatencyTable, MacsCost
        from hetsearch.cmpnas.nas.supernet import calib_subset

        L, s = self.loaded(sn), self.settings
        if dev.unit == "MMACs" and not dev.latency_model:
            return MacsCost(L.net.config), None, None
        ts = TargetSettings(target=dev.target, format=dev.latency_format, precision=dev.latency_precision,
                            threads=dev.threads, warmup=s.warmup, runs=s.runs, min_seconds=s.min_seconds,
                            timeout=s.timeout, **dev.reach()).validate()
        calib = calib_subset(L.data, s.int8_calib_samples, s.seed) if ts.precision == "int8" else None
        if dev.latency_model:
            path = Path(dev.latency_model)
            model = read_json(path)
            want = _identity(sn, L.net.config, ts)
            keys = ("supernet_sha256", "space_digest", "target", "format", "precision", "threads")
            changed = [f"{k}: file has {(model.get('signature') or {}).get(k)!r}, this device {want[k]!r}"
                       for k in keys if (model.get("signature") or {}).get(k) != want[k]]
            if changed:
                raise HetsearchError(f"latency_model {path} was measured for something else:\n  " + "\n  ".join(changed))
            _say(f"{dev.name}: using the given latency model {path} (held-out MAPE "
                 f"{(model.get('held_out') or {}).get('mape_pct', float('nan')):.1f}%)")
            entry["latency_model"] = {"file": str(path), "built": False}
        else:
            path = work / "latency-model.json"
            work.mkdir(parents=True, exist_ok=True)
            try:
                model = build_latency_model(sn, path, ts, samples=s.latency_samples, seed=s.seed,
                                            resume=path.exists(), calib=calib, progress=self.progress)
            except LatencyModelError as exc:
                if not path.exists() or "--resume" not in str(exc) and "--fresh" not in str(exc):
                    raise
                _say(f"{dev.name}: the latency model in {path} does not apply any more; measuring again ({exc})")
                model = build_latency_model(sn, path, ts, samples=s.latency_samples, seed=s.seed,
                                            fresh=True, calib=calib, progress=self.progress)
            entry["latency_model"] = {"file": f"{dev.name}/work/latency-model.json", "built": True}
        held = model.get("held_out") or {}
        entry["latency_model"].update(format=ts.format, precision=ts.precision, predictor=model["selection"]["chosen"],
                                      held_out_mape_pct=held.get("mape_pct"), kendall_tau=held.get("kendall_tau"),
                                      subnets=len(model.get("measurements") or []))
        table = LatencyTable(L.net.config, path)
        if dev.unit == "MMACs":
            return MacsCost(L.net.config), None, table  # the latency model only reports predicted ms
        check = DeviceCheck(table.model, L.net, L.meta.get("space_id"), **dev.reach())
        return table, check, table

    def export(self, dev: Device, qdir: Path, bundle: Path, entry: dict) -> dict:
        """The exporter with its checks, as ``hetsearch export --gallery`` runs it (failed files are removed)."""
        from types import SimpleNamespace

        from hetsearch.export.checks import failed_records
        from hetsearch.export.cli import _calib_and_probe, _failed_message, _sample, _split
        from hetsearch.export.exporter import export_bundle

        s, L = self.settings, self.loaded()
        _say(f"{dev.name}: exporting {', '.join(dev.formats)} x {', '.join(dev.precisions)} with the checks")
        ns = SimpleNamespace(data=L.data_name, data_dir=self.data_dir, val_fraction=None, seed=None)
        train, val = _split(ns, qdir)
        check = _sample(val, s.check_samples, ns.seed + 2, "check_samples")
        calib, probe = _calib_and_probe(train, s.int8_calib_samples, s.int8_probe_samples, ns.seed + 1,
                                        "int8_calib_samples") if "int8" in dev.precisions else (None, None)
        if bundle.exists():
            shutil.rmtree(bundle)
        man = export_bundle(qdir, bundle, formats=dev.formats, precisions=dev.precisions, calib_data=calib,
                            gallery=str(self.gallery_dir), check_data=check, progress=self.progress, threads=1,
                            probe_data=probe)
        entry["checks"] = {p: {"status": r.get("status"), "reason": r.get("reason"),
                               "r1_change": (r.get("compat") or {}).get("delta"),
                               "parity_cos_min": (r.get("parity") or {}).get("cos_min")}
                           for p, r in (man.get("checks") or {}).items()}
        entry["check_images"] = len(check)
        entry["export_failures"] = man.get("failures") or []
        problems = entry.setdefault("_problems", [])
        if failed_records(man["checks"]):
            problems.append(_failed_message(man["checks"]).replace(
                "(--report-only reports without failing)", "(removed from the bundle)"))
        conv = [f for f in man.get("failures") or [] if f.get("stage") != "checks"]
        if conv:
            problems.append("not exported: " + "; ".join(f"{f['format']} {f['precision']}: {f['reason']}"
                                                         for f in conv))
        return man

    def profile(self, dev: Device, bundle: Path, entry: dict, cost, arch: dict) -> None:
        from hetsearch.export.profile import default_report_path, headline_ms, profile_bundle, write_reports

        s = self.settings
        _say(f"{dev.name}: profiling the bundle on {dev.target}")
        report = profile_bundle(bundle, dev.target, threads=dev.threads, warmup=s.warmup, runs=s.runs,
                                min_seconds=s.min_seconds, timeout=s.timeout, **dev.reach())
        write_reports(report, default_report_path(bundle, dev.target))
        per_file = {}
        problems = entry.setdefault("_problems", [])
        for r in report["results"]:
            ms, stat = headline_ms(r)
            per_file[r["file"]] = {"format": r["format"], "precision": r["precision"], "status": r["status"],
                                   "ms": ms, "statistic": stat, "error": r.get("error")}
            if r["status"] == "failed":
                problems.append(f"{r['file']} did not run on {dev.target}: {r.get('error')}")
        entry["latency"] = {"target": dev.target, "host": report.get("host") or {}, "files": per_file,
                            "load_average": _loadavg()}
        fmt = dev.latency_format or next((f for f in ("tflite", "onnx") if f in dev.formats), dev.formats[0])
        prec = dev.latency_precision or ("fp32" if "fp32" in dev.precisions else dev.precisions[0])
        head = next((p for p, r in per_file.items() if (r["format"], r["precision"]) == (fmt, prec)), None)
        entry["headline_file"] = head
        entry["measured_ms"] = per_file[head]["ms"] if head else None
        entry["predicted_ms"] = float(cost.cost(arch)) if cost is not None else None
        if dev.unit == "ms":
            within = entry["measured_ms"] is not None and entry["measured_ms"] <= dev.budget
            entry["within_budget"] = within
            if not within:
                problems.append(f"{head or fmt + ' ' + prec} measured {entry['measured_ms']} ms on {dev.target}, "
                                f"over the budget {dev.budget:g} ms")

    def evaluate(self, ck, entry: dict) -> None:
        from hetsearch.cmpnas.evaluate import evaluate_pair

        t = self.test_side()
        r = evaluate_pair(ck, self.loaded().gck, t["data"], gallery_emb=t["gallery_emb"], verification=False)
        entry["eval"] = {"het_r1": r["recall_at_1"], "het_r5": r.get("recall_at_5"),
                         "paragon_r1": t["paragon_r1"], "gap_to_paragon": t["paragon_r1"] - r["recall_at_1"],
                         "test_images": t["images"], "data": t["source"], "model": "the finetuned PyTorch model "
                         "(the export checks report each file's R@1 change against it)", "note": t["note"]}

    # ------------------------------------------------------------------ all devices
    def run(self) -> int:
        s = self.settings
        self.out.mkdir(parents=True, exist_ok=True)
        if s.torch_threads:
            from hetsearch.cmpnas.train import set_threads

            set_threads(s.torch_threads)
        entries: dict[str, dict] = {}
        n = len(self.devices)
        for i, dev in enumerate(self.devices, 1):
            key = self.key(dev)
            digest = _digest(key)
            stamp = self.out / dev.name / "release.json"
            old = read_json(stamp) if stamp.is_file() else None
            if not self.fresh and old and old.get("digest") == digest and old.get("status") == "ok" \
                    and _bundle_intact(self.out / dev.name / "bundle"):
                _say(f"device {i}/{n} {dev.name}: reusing the finished release (digest {digest} unchanged; --fresh "
                     "to redo)")
                entries[dev.name] = {**old, "reused": True}
                self.write_index(entries)
                continue
            why = ("--fresh" if self.fresh and old else "new" if not old else
                   "the last attempt failed" if old.get("status") != "ok" else
                   "its configuration changed" if old.get("digest") != digest else "its bundle is incomplete")
            _say(f"device {i}/{n} {dev.name} ({dev.target}, budget {dev.budget:g} {dev.unit}): releasing ({why})")
            t0 = time.time()
            try:
                entry = self.run_device(dev, digest)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed device must not stop the others; reason recorded
                reason = str(exc) if isinstance(exc, HetsearchError) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, HetsearchError):
                    log.debug("device %s failed:\n%s", dev.name, traceback.format_exc())
                entry = {"device": dev.name, "target": dev.target, "budget": dev.budget, "unit": dev.unit,
                         "formats": dev.formats, "precisions": dev.precisions, "threads": dev.threads,
                         "supernet": str(self.supernet_of(dev)), "digest": digest, "status": "failed", "reason": reason, "seconds": round(time.time() - t0, 1)}
            entry["key"] = key
            entry["released_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            entry["reused"] = False
            write_json(stamp, entry)
            if entry["status"] == "ok":
                _say(f"device {i}/{n} {dev.name}: released in {entry['seconds']:.0f} s")
            else:
                _say(f"device {i}/{n} {dev.name}: FAILED: {entry['reason']}")
            entries[dev.name] = entry
            self.write_index(entries)
        rows = [table_row(e) for e in entries.values()]
        print(format_table(rows, digits=4))
        failed = [e["device"] for e in entries.values() if e["status"] != "ok"]
        reused = [e["device"] for e in entries.values() if e.get("reused")]
        print(f"{n - len(failed)} of {n} device(s) released" + (f" ({len(reused)} reused: {', '.join(reused)})"
                                                               if reused else "")
              + (f"; FAILED: {', '.join(failed)}" if failed else "") + f"; {self.out / 'index.json'}, "
              f"{self.out / 'README.md'}")
        return 1 if failed else 0

    def write_index(self, entries: dict[str, dict]) -> None:
        test = next((e["eval"] for e in entries.values() if e.get("eval")), None)
        index = {"kind": INDEX_KIND, "schema_version": SCHEMA_VERSION, "hetsearch": __version__,
                 "supernet": str(self.supernet), "gallery": str(self.gallery_dir), "devices_file": str(self.devices_path),
                 **self.inputs, "settings": asdict(self.settings),
                 "paragon": None if test is None else {"model_id": self.loaded().gck.name, "r1": test["paragon_r1"],
                                                       "test_images": test["test_images"], "data": test["data"]},
                 "devices": [{k: v for k, v in e.items() if k != "key"} for e in entries.values()],
                 "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(self.out / "index.json", index)
        (self.out / "README.md").write_text(readme(index))


def _same_data(a: str, b: str) -> bool:
    """Whether two data names (fashion-mnist, or a folder / .npz path) are the same data."""
    if "fashion-mnist" in (a, b):
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def _bundle_intact(bundle: Path) -> bool:
    try:
        man = mf.load(bundle)
        for e in man["files"]:
            mf.verify_file(bundle, e)
    except HetsearchError:
        return False
    return True


def _loadavg():
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _files_cell(e: dict) -> str:
    lat = (e.get("latency") or {}).get("files") or {}
    cells = []
    for p in e.get("files") or []:
        c = (e.get("checks") or {}).get(p, {}).get("status", "?")
        ms = (lat.get(p) or {}).get("ms")
        cells.append(f"{p} ({c}" + (f", {ms:.4f} ms" if isinstance(ms, (int, float)) else "") + ")")
    return "; ".join(cells) or "-"


def _checks_cell(e: dict) -> str:
    st = [r.get("status") for r in (e.get("checks") or {}).values()]
    if not st:
        return "-"
    return ", ".join(f"{st.count(k)} {k}" for k in dict.fromkeys(st))


def table_row(e: dict) -> dict:
    ev = e.get("eval") or {}
    return {"device": e["device"], "status": e["status"] + (" (reused)" if e.get("reused") else ""),
            "target": e["target"], "budget": f"{e['budget']:g} {e['unit']}", "model": e.get("model_id"),
            "supernet": Path(e["supernet"]).name if e.get("supernet") else None,
            "MMACs": e.get("mmacs"), "predicted ms": e.get("predicted_ms"), "measured p50 ms": e.get("measured_ms"),
            "measured file": e.get("headline_file"), "het R@1": ev.get("het_r1"),
            "gap to paragon": ev.get("gap_to_paragon"), "checks": _checks_cell(e)}


def readme(index: dict) -> str:
    rows = []
    for e in index["devices"]:
        r = table_row(e)
        r["files"] = _files_cell(e) if e["status"] == "ok" or e.get("files") else f"- ({e.get('reason', '')})"
        rows.append(r)
    par = index.get("paragon")
    own = sorted({e["supernet"] for e in index["devices"] if e.get("supernet")} - {index["supernet"]})
    lines = ["# Release", "",
             f"Supernet `{index['supernet']}`" + (f" (devices naming their own: {', '.join(f'`{x}`' for x in own)})"
                                                   if own else "") + f", gallery `{index['gallery']}`, devices `{index['devices_file']}`; "
             f"hetsearch {index['hetsearch']}; updated {index['updated_at']}.", ""]
    if par:
        lines += [f"Heterogeneous R@1: each released query model (finetuned, PyTorch) embeds the queries, the gallery "
                  f"model `{par['model_id']}` the gallery; leave-one-out on {par['test_images']} images of the "
                  f"{par['data']}. The paragon (gallery model on both sides) has R@1 {par['r1']:.2f}; the gap is "
                  "paragon minus heterogeneous R@1, in points. Each exported file's R@1 change against the PyTorch "
                  "model is in its checks (the compatibility gate of `hetsearch export`).", ""]
    lines += ["Predicted ms: the device's latency model (none for an MMACs budget without one); measured p50: the "
              "profiler on the device, for the file named.", "",
              markdown_table(rows, ["device", "status", "target", "budget", "model", *(["supernet"] if own else []),
                                    "MMACs", "predicted ms",
                                    "measured p50 ms", "measured file", "het R@1", "gap to paragon", "checks", "files"],
                             digits=4), ""]
    failed = [e for e in index["devices"] if e["status"] != "ok"]
    for e in failed:
        lines.append(f"- **{e['device']} failed**: {e.get('reason')}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line

EPILOG = """\
examples:
  hetsearch release --supernet runs/supernet --gallery runs/gallery --devices devices.toml --out release/
  # a quick run: fewer finetune epochs and a smaller search than the TOML says
  hetsearch release ... --finetune-epochs 1 --population 8 --generations 1 --test-samples 2000

devices.toml:
  [release]                       # optional; every setting has a default (see below)
  finetune_epochs = 3

  [devices.pi4]
  target = "ssh://pi@raspberrypi.local"
  identity = "~/.ssh/id_ed25519"
  budget_ms = 0.05                # or budget_mmacs = 0.4
  formats = ["tflite", "onnx"]
  precisions = ["fp32", "int8"]
  threads = 1

  [devices.this-machine]
  target = "local"
  budget_mmacs = 0.4
  formats = ["onnx"]
  precisions = ["fp32"]
  supernet = "runs/sn-h1"         # optional: search this device in another supernet (relative to this file)

Per device: latency model (ms budgets; built in OUT/<device>/work/latency-model.json, reused while its settings
hold, or latency_model = FILE), search, finetune, export with the checks, profile on the device, R@1 on the test
split. Writes OUT/<device>/bundle/, OUT/index.json and OUT/README.md. A failed device is recorded with its reason
and the others continue (exit status 1); devices.toml errors exit 2. A re-run reuses finished devices whose
configuration (device entry, its supernet, gallery, settings) is unchanged. A device's own supernet must have been
trained on --supernet's data against the same gallery (one test split for all devices).
"""


def register(sub) -> None:
    from .cli import DefaultsHelpFormatter

    p = sub.add_parser("release", help="one command per release: search, finetune, export, check, profile per device",
                       description="From a trained supernet to a checked, profiled bundle for every device of "
                                   "devices.toml.", epilog=EPILOG, formatter_class=DefaultsHelpFormatter)
    p.add_argument("--supernet", required=True, help="supernet directory (from `hetsearch nas supernet`)")
    p.add_argument("--gallery", required=True, help="gallery checkpoint directory (the frozen model)")
    p.add_argument("--devices", required=True, metavar="TOML", help="the devices and release settings")
    p.add_argument("--out", required=True, help="release directory to write")
    p.add_argument("--data-dir", default=None, help="folder holding the Fashion-MNIST idx files")
    p.add_argument("--fresh", action="store_true", help="redo every device instead of reusing finished ones")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("overrides of [release] settings (default: the TOML's, else the built-in default)")
    for f in fields(ReleaseSettings):
        typ = float if "float" in str(f.type) else int if "int" in str(f.type) else str
        g.add_argument("--" + f.name.replace("_", "-"), dest="set_" + f.name, type=typ, default=None,
                       metavar=typ.__name__.upper(), help=f"default {f.default}")
    p.set_defaults(func=cmd_release)


def cmd_release(args) -> int:
    settings, devices = load_devices(args.devices)
    over = {f.name: getattr(args, "set_" + f.name) for f in fields(ReleaseSettings)
            if getattr(args, "set_" + f.name) is not None}
    if over:
        _say("command-line overrides: " + ", ".join(f"{k}={v}" for k, v in over.items()))
        settings = ReleaseSettings(**{**asdict(settings), **over}).validate()
    return Release(args.supernet, args.gallery, args.devices, args.out, settings, devices, data_dir=args.data_dir,
                   fresh=args.fresh, progress=not args.quiet).run()
