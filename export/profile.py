"""Latency of a bundle's files on target hardware: ``hetsearch profile BUNDLE --target …``.

Targets
-------
``local``
    This machine, in this process, through :mod:`hetsearch.sdk.profile`.
``ssh://[user@]host[:port]``
    A device reachable over SSH with ``hetsearch[sdk]`` installed (no torch needed).
    The files are copied with ``scp`` into a fresh ``mktemp -d`` directory on the
    device, ``python3 -m hetsearch.sdk.profile`` runs there (``remote_python``
    chooses the interpreter), its JSON is read back and the directory is removed.
    Uses the system OpenSSH client in batch mode (keys only, never a password
    prompt), ``StrictHostKeyChecking=accept-new``, optionally an identity file
    and a known_hosts file of your own.
``adb://SERIAL``
    An Android device over adb. Only ``.tflite`` files run there, through LiteRT's
    ``benchmark_model`` (give its path with ``benchmark_model``: a binary on this
    machine is pushed, otherwise it is taken as a path on the device). Each model
    is pushed to ``/data/local/tmp/hetsearch-profile-XXXX/`` and run as::

        benchmark_model --graph=MODEL --warmup_runs=W --num_runs=R --min_secs=S [--num_threads=N]

    Its log is parsed (:func:`parse_benchmark_model_output`): the line
    ``Inference timings in us: Init: …, First inference: …, Warmup (avg): …,
    Inference (avg): …`` gives load, first-inference and mean latency; the last
    ``count=… first=… curr=… min=… max=… avg=… std=…`` line gives the spread of the
    timed runs (its ``median=``/``p50=`` when the tool prints one); the lines
    ``Memory footprint delta from the start of the tool (MB): init=… overall=…`` and
    ``Overall peak memory footprint (MB) via periodic monitoring: …`` give memory.
    benchmark_model prints no p90/p99, so those stay empty for adb targets and the
    latency used for comparisons is the mean.

Results go into the manifest under ``latency[TARGET][FILE_PATH]`` (rewritten
atomically) and into a report (JSON + Markdown) with the model's MMACs and, when a
paragon bundle is given, each file's latency relative to the paragon's file of the
same format and precision profiled the same way.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from hetsearch import manifest as manifest_mod
from hetsearch.errors import BundleError, HetsearchError
from hetsearch.report import format_table, markdown_table, write_json
from hetsearch.sdk.profile import runtime_label

SCHEMA = "hetsearch.profile-bundle/1"
REMOTE_PROFILER = "hetsearch.sdk.profile"


class TargetError(HetsearchError):
    """The profiling target cannot be reached or did not run the profiler."""


class RemoteSDKMissing(TargetError):
    """The device's Python lacks hetsearch[sdk]."""


# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    kind: str  # local | ssh | adb
    name: str  # the key under manifest["latency"]
    host: str | None = None
    user: str | None = None
    port: int = 22
    serial: str | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._]+", "-", self.name).strip("-") or "target"


def parse_target(text: str) -> Target:
    """``local``, ``ssh://[user@]host[:port]`` or ``adb://SERIAL``."""
    text = (text or "").strip()
    if text in ("local", "localhost-process", ""):
        return Target("local", "local")
    if text.startswith("ssh://"):
        try:
            parts = urlsplit(text)
            port = parts.port or 22
        except ValueError as exc:
            raise HetsearchError(f"bad ssh target {text!r}: {exc}") from exc
        if not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise HetsearchError(f"bad ssh target {text!r}; expected ssh://user@host[:port]")
        user = parts.username
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        name = f"ssh://{user + '@' if user else ''}{shown}{':' + str(port) if port != 22 else ''}"
        return Target("ssh", name, host=host, user=user, port=port)
    if text.startswith("adb://"):
        serial = text[len("adb://"):].strip("/")
        if not serial or any(c.isspace() for c in serial):
            raise HetsearchError(f"bad adb target {text!r}; expected adb://SERIAL (see `adb devices`)")
        return Target("adb", f"adb://{serial}", serial=serial)
    raise HetsearchError(f"unknown target {text!r}; use local, ssh://user@host[:port] or adb://SERIAL")


def _run(cmd: list[str], what: str, timeout: float, input_text: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text,
                              stdin=None if input_text is not None else subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise TargetError(f"{what}: {cmd[0]!r} is not installed or not on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise TargetError(f"{what}: no answer within {timeout:.0f} s") from exc


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


# ----------------------------------------------------------------------------- ssh


class SSH:
    """The system OpenSSH client in batch mode, for one target."""

    def __init__(self, target: Target, identity: str | None = None, known_hosts: str | None = None,
                 connect_timeout: int = 15):
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise TargetError(f"the ssh target needs the OpenSSH client ({tool}) on this machine")
        if identity and not Path(identity).is_file():
            raise TargetError(f"identity file {identity} does not exist")
        self.target = target
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(connect_timeout)}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]
        if known_hosts:
            opts += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if identity:
            opts += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
        self.opts = opts
        self.dest = f"{target.user}@{target.host}" if target.user else target.host

    def run(self, command: str, timeout: float = 60.0, what: str = "ssh") -> subprocess.CompletedProcess:
        proc = _run(["ssh", *self.opts, "-p", str(self.target.port), self.dest, command],
                    f"{what} on {self.target.name}", timeout)
        if proc.returncode == 255:
            raise TargetError(f"cannot reach {self.target.name} over ssh: {_tail(proc.stderr) or 'connection failed'}")
        return proc

    def upload(self, local: Sequence[Path], names: Sequence[str], remote_dir: str, timeout: float) -> None:
        """scp ``local`` files into ``remote_dir`` under ``names`` (one scp call when the names are unchanged)."""
        host = f"[{self.target.host}]" if ":" in (self.target.host or "") else self.target.host
        user = f"{self.target.user}@" if self.target.user else ""
        if all(src.name == name for src, name in zip(local, names)):
            batches = [([str(src) for src in local], f"{user}{host}:{remote_dir}/")]
        else:
            batches = [([str(src)], f"{user}{host}:{remote_dir}/{name}") for src, name in zip(local, names)]
        for sources, dest in batches:
            proc = _run(["scp", "-q", "-r", *self.opts, "-P", str(self.target.port), *sources, dest],
                        f"copying the model files to {self.target.name}", timeout)
            if proc.returncode != 0:
                raise TargetError(f"copying the model files to {self.target.name} failed: {_tail(proc.stderr)}")


def _profiler_args(threads: int | None, warmup: int, runs: int, min_seconds: float) -> list[str]:
    args = ["--warmup", str(int(warmup)), "--runs", str(int(runs)), "--min-seconds", repr(float(min_seconds))]
    if threads:
        args += ["--threads", str(int(threads))]
    return args


_NO_MODULE = re.compile(r"No module named '?([A-Za-z0-9_.]+)'?")


def _explain_remote_failure(target: Target, python: str, proc: subprocess.CompletedProcess) -> TargetError:
    out = (proc.stderr or "") + (proc.stdout or "")
    missing = _NO_MODULE.search(out)
    if missing:
        module = missing.group(1)
        if module.split(".")[0] == "hetsearch":
            return RemoteSDKMissing(
                f"{target.name}: {python} cannot import {REMOTE_PROFILER} — the device needs the hetsearch SDK: "
                "run `pip install 'hetsearch[sdk]'` there, or pass --remote-python with a Python that has it"
            )
        return RemoteSDKMissing(
            f"{target.name}: {python} lacks the module {module!r} that hetsearch[sdk] needs; "
            "run `pip install 'hetsearch[sdk]'` on the device"
        )
    if proc.returncode == 127:
        return TargetError(f"{target.name}: remote python {python!r} not found (set --remote-python)")
    return TargetError(f"{target.name}: the profiler failed (exit {proc.returncode}):\n{_tail(out)}")


def _matched(report: dict, entries: list[dict], target: Target) -> dict:
    """Attach the manifest paths to the profiler's results (same order) and check the files' sha256."""
    if len(report.get("results", [])) != len(entries):
        raise TargetError(f"{target.name}: the profiler returned {len(report.get('results', []))} results "
                          f"for {len(entries)} files")
    for entry, result in zip(entries, report["results"]):
        result["file"] = entry["path"]
        if result.get("sha256") and result["sha256"] != entry["sha256"]:
            result.update(status="failed", error=f"the copy profiled on {target.name} does not match the "
                                                 "manifest's sha256")
    return report


def _local_profile(bundle: Path, entries: list[dict], target: Target, settings: dict, *, timeout: float) -> dict:
    """Run the SDK profiler in a fresh interpreter, so its memory figures are the runtime's alone."""
    with tempfile.TemporaryDirectory(prefix="hetsearch-profile-") as tmp:
        out = Path(tmp) / "profile.json"
        cmd = [sys.executable, "-m", REMOTE_PROFILER, "--json", str(out), *_profiler_args(**settings), "--",
               *[str(bundle / e["path"]) for e in entries]]
        proc = _run(cmd, "profiling", timeout)
        if not out.is_file():
            raise _explain_remote_failure(target, sys.executable, proc)
        return _matched(json.loads(out.read_text()), entries, target)


def _ssh_profile(bundle: Path, entries: list[dict], target: Target, settings: dict, *, identity: str | None,
                 known_hosts: str | None, remote_python: str, timeout: float) -> dict:
    ssh = SSH(target, identity, known_hosts)
    made = ssh.run('mktemp -d "${TMPDIR:-/tmp}/hetsearch-profile.XXXXXX"', what="mktemp")
    rdir = made.stdout.strip().splitlines()[-1] if made.returncode == 0 and made.stdout.strip() else ""
    if not rdir.startswith("/"):
        raise TargetError(f"{target.name}: cannot create a temporary directory: {_tail(made.stderr)}")
    cleaned = False
    try:
        names = [e["path"].replace("/", "__") for e in entries]
        ssh.upload([bundle / e["path"] for e in entries], names, rdir, timeout)
        python = " ".join(shlex.quote(p) for p in shlex.split(remote_python))
        where = shlex.quote(rdir)
        # one round trip: run (its own output to stderr), print the JSON on stdout, remove the directory
        command = (f"cd {where} && {python} -m {REMOTE_PROFILER} --json profile.json "
                   + " ".join(_profiler_args(**settings)) + " -- " + " ".join(shlex.quote(n) for n in names)
                   + f" >&2; status=$?; cat profile.json 2>/dev/null; cd / && rm -rf {where}; exit $status")
        proc = ssh.run(command, timeout=timeout, what="profiling")
        cleaned = True
        if not proc.stdout.strip():
            raise _explain_remote_failure(target, remote_python, proc)
        try:
            report = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise TargetError(f"{target.name}: the profiler's JSON is unreadable: {exc}") from exc
    finally:
        if not cleaned:
            ssh.run(f"rm -rf {shlex.quote(rdir)}", what="cleaning up")
    return _matched(report, entries, target)


# ----------------------------------------------------------------------------- adb / benchmark_model

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"
_TIMINGS = re.compile(r"Inference timings in us:\s*Init:\s*(?P<init>%s),\s*First inference:\s*(?P<first>%s),"
                      r"\s*Warmup \(avg\):\s*(?P<warmup>%s),\s*Inference \(avg\):\s*(?P<avg>%s)" % ((_NUM,) * 4))
_STAT_LINE = re.compile(r"\bcount=\d+(?:\s+[A-Za-z0-9_]+=(?:%s))+" % _NUM)
_STAT_PAIR = re.compile(r"([A-Za-z0-9_]+)=(%s)" % _NUM)
_MEM_DELTA = re.compile(r"Memory footprint delta from the start of the tool \(MB\):\s*init=(%s)\s+overall=(%s)"
                        % (_NUM, _NUM))
_MEM_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring:\s*(%s)" % _NUM)
_MODEL_SIZE = re.compile(r"The input model file size \(MB\):\s*(%s)" % _NUM)


def parse_benchmark_model_output(text: str) -> dict:
    """Timings (ms) and memory (MB) from LiteRT ``benchmark_model``'s log. TargetError if it has no timings."""
    m = _TIMINGS.search(text or "")
    if not m:
        raise TargetError("benchmark_model reported no timings (no 'Inference timings in us' line):\n" + _tail(text))
    us = {k: float(v) for k, v in m.groupdict().items()}
    out: dict[str, Any] = {
        "load_ms": us["init"] / 1e3,
        "first_inference_ms": us["first"] / 1e3,
        "warmup_mean_ms": us["warmup"] / 1e3 if us["warmup"] == us["warmup"] else None,
        "mean_ms": us["avg"] / 1e3,
        "p50_ms": None, "p90_ms": None, "p99_ms": None,
    }
    stats = _STAT_LINE.findall(text)
    if stats:  # the last one describes the timed runs (the one before, the warm-up)
        pairs = {k: float(v) for k, v in _STAT_PAIR.findall(stats[-1])}
        out["runs"] = int(pairs["count"])
        for key, field in (("min", "min_ms"), ("max", "max_ms"), ("std", "std_ms"), ("avg", "mean_ms"),
                           ("median", "p50_ms"), ("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms")):
            if key in pairs:
                out[field] = pairs[key] / 1e3
    delta = _MEM_DELTA.search(text)
    if delta:
        out["memory_delta_init_mb"] = float(delta.group(1))
        out["memory_delta_overall_mb"] = float(delta.group(2))
    peak = _MEM_PEAK.search(text)
    if peak:
        out["peak_rss_mb"] = float(peak.group(1))
    size = _MODEL_SIZE.search(text)
    if size:
        out["model_size_mb"] = float(size.group(1))
    return out


def _adb_profile(bundle: Path, entries: list[dict], target: Target, settings: dict, *,
                 benchmark_model: str | None, adb: str, timeout: float) -> dict:
    if not benchmark_model:
        raise HetsearchError(
            "adb:// targets need --benchmark-model PATH: LiteRT's benchmark_model binary for the device "
            "(a file on this machine, pushed for you, or a path on the device)"
        )

    def call(*args: str, what: str, limit: float = 120.0) -> subprocess.CompletedProcess:
        proc = _run([adb, "-s", target.serial, *args], f"{what} on {target.name}", limit)
        if proc.returncode != 0 and args[0] != "shell":
            raise TargetError(f"{what} on {target.name} failed: {_tail(proc.stderr or proc.stdout)}")
        return proc

    rdir = f"/data/local/tmp/hetsearch-profile-{secrets.token_hex(4)}"
    made = call("shell", f"mkdir -p {rdir} && echo ok", what="creating a directory")
    if "ok" not in made.stdout:
        raise TargetError(f"cannot use {target.name}: {_tail(made.stderr or made.stdout) or 'adb failed'}")
    results: list[dict] = []
    host: dict = {"system": "Android"}
    try:
        props = call("shell", "getprop ro.product.manufacturer; getprop ro.product.model; "
                     "getprop ro.product.cpu.abi; getprop ro.build.version.release; getprop ro.board.platform",
                     what="describing the device").stdout.splitlines()
        props = [p.strip() for p in props] + [""] * 5
        host = {"platform": f"Android {props[3]}".strip(), "device": f"{props[0]} {props[1]}".strip(),
                "machine": props[2], "cpu": props[4], "system": "Android"}
        binary = benchmark_model
        if Path(benchmark_model).is_file():
            binary = f"{rdir}/benchmark_model"
            call("push", str(benchmark_model), binary, what="pushing benchmark_model")
            call("shell", f"chmod 755 {binary}", what="making benchmark_model executable")
        for entry in entries:
            name = entry["path"].replace("/", "__")
            call("push", str(bundle / entry["path"]), f"{rdir}/{name}", what=f"pushing {entry['path']}",
                 limit=timeout)
            flags = [f"--graph={rdir}/{name}", f"--warmup_runs={int(settings['warmup'])}",
                     f"--num_runs={int(settings['runs'])}", f"--min_secs={float(settings['min_seconds'])}"]
            if settings["threads"]:
                flags.append(f"--num_threads={int(settings['threads'])}")
            proc = call("shell", " ".join([shlex.quote(binary), *flags]), what="benchmark_model", limit=timeout)
            result = {"file": entry["path"], "name": entry["path"], "format": "tflite", "backend": "litert",
                      "runtime": "litert benchmark_model", "threads_requested": settings["threads"]}
            try:
                result.update(status="ok", error=None, **parse_benchmark_model_output(proc.stdout + proc.stderr))
            except TargetError as exc:
                result.update(status="failed", error=str(exc))
            results.append(result)
    finally:
        call("shell", f"rm -rf {rdir}", what="cleaning up")
    return {"host": host, "results": results, "measured_at": _now()}


# ----------------------------------------------------------------------------- the bundle


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _split_list(value: Any, allowed: Sequence[str], what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [s.strip() for s in items if s and s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad:
        raise HetsearchError(f"unknown {what} {', '.join(bad)}; expected some of {', '.join(allowed)}")
    return tuple(items) or None


def headline_ms(result: dict) -> tuple[float | None, str]:
    """The latency used to compare files: p50, or the mean where no p50 was measured (adb)."""
    if result.get("p50_ms") is not None:
        return result["p50_ms"], "p50"
    return result.get("mean_ms"), "mean"


def _rows(report: dict) -> list[dict]:
    paragon = {(r["format"], r["precision"]): r for r in (report.get("paragon") or {}).get("results", [])}
    rows = []
    for r in report["results"]:
        latency, stat = headline_ms(r)
        row = {"file": r["file"], "format": r["format"], "precision": r["precision"], "status": r["status"],
               "runtime": runtime_label(r), "load_ms": r.get("load_ms"), "first_ms": r.get("first_inference_ms"),
               "p50_ms": r.get("p50_ms"), "p90_ms": r.get("p90_ms"), "p99_ms": r.get("p99_ms"),
               "mean_ms": r.get("mean_ms"), "std_ms": r.get("std_ms"), "peak_rss_mb": r.get("peak_rss_mb"),
               "mmacs": report["mmacs"], "error": r.get("error")}
        if report.get("paragon") is not None:
            other = paragon.get((r["format"], r["precision"]))
            base = headline_ms(other)[0] if other and other.get("status") == "ok" else None
            row["paragon_ms"] = base
            row["vs_paragon"] = latency / base if latency is not None and base else None
            row["compared_by"] = stat
        rows.append(row)
    return rows


def _select(manifest: dict, formats: tuple | None, precisions: tuple | None) -> list[dict]:
    chosen = [e for e in manifest["files"]
              if (formats is None or e["format"] in formats) and (precisions is None or e["precision"] in precisions)]
    if not chosen:
        have = ", ".join(f"{e['path']} ({e['format']}, {e['precision']})" for e in manifest["files"]) or "no files"
        raise BundleError(f"bundle {manifest['model_id']!r} has no file of the requested formats/precisions; "
                          f"it has {have}")
    return chosen


def profile_bundle(bundle: str | Path, target: str = "local", threads: int | None = None, warmup: int = 5,
                   runs: int = 50, min_seconds: float = 1.0, formats: Sequence[str] | str | None = None,
                   update_manifest: bool = True, *, precisions: Sequence[str] | str | None = None,
                   paragon: str | Path | None = None, identity: str | None = None, known_hosts: str | None = None,
                   remote_python: str = "python3", benchmark_model: str | None = None, adb: str = "adb",
                   timeout: float = 1800.0) -> dict:
    """Profile every selected file of ``bundle`` on ``target``; return the report (see module doc).

    With ``update_manifest`` the results are stored in ``manifest["latency"][target]``.
    ``paragon``: another bundle, profiled the same way, to report latency ratios against.
    """
    bundle = Path(bundle)
    manifest = manifest_mod.load(bundle)
    tgt = parse_target(target)
    fmts = _split_list(formats, manifest_mod.FORMATS, "format")
    precs = _split_list(precisions, manifest_mod.PRECISIONS, "precision")
    if tgt.kind == "adb" and fmts is None:
        fmts = ("tflite",)
    if threads is not None and int(threads) < 1:
        raise HetsearchError(f"--threads must be at least 1, got {threads}")
    if int(runs) < 1 or int(warmup) < 0 or float(min_seconds) < 0:
        raise HetsearchError("--runs must be at least 1, --warmup and --min-seconds at least 0")
    settings = {"threads": threads, "warmup": int(warmup), "runs": int(runs), "min_seconds": float(min_seconds)}
    entries = _select(manifest, fmts, precs)
    for entry in entries:  # nothing is profiled that the manifest does not vouch for
        manifest_mod.verify_file(bundle, entry)

    runnable = [e for e in entries if (tgt.kind != "adb" or e["format"] == "tflite") and e["format"] != "mediapipe"]
    if tgt.kind == "local":
        measured = _local_profile(bundle, runnable, tgt, settings, timeout=timeout)
    elif tgt.kind == "ssh":
        measured = _ssh_profile(bundle, runnable, tgt, settings, identity=identity, known_hosts=known_hosts,
                                remote_python=remote_python, timeout=timeout)
    else:
        measured = _adb_profile(bundle, runnable, tgt, settings, benchmark_model=benchmark_model, adb=adb,
                                timeout=timeout) if runnable else {"host": {}, "results": [], "measured_at": _now()}
    by_path = {r["file"]: r for r in measured["results"]}
    results = []
    for entry in entries:
        r = by_path.get(entry["path"]) or {
            "file": entry["path"], "status": "skipped",
            "error": ("MediaPipe files run inside MediaPipe Tasks (profile them in the app); the profiler runs "
                      "the bundle's .onnx/.tflite files" if entry["format"] == "mediapipe" else
                      "adb targets run .tflite files only (LiteRT benchmark_model)")}
        r.update(format=entry["format"], precision=entry["precision"])
        results.append(r)

    report = {
        "schema": SCHEMA,
        "model_id": manifest["model_id"],
        "space_id": manifest["space_id"],
        "bundle": str(bundle),
        "target": tgt.name,
        "measured_at": measured.get("measured_at", _now()),
        "host": measured.get("host", {}),
        "settings": settings,
        "macs": manifest["macs"],
        "mmacs": manifest["macs"] / 1e6,
        "params": manifest["params"],
        "results": results,
        "paragon": None,
    }
    if paragon is not None:
        # the paragon is measured for the ratios only: its bundle is not written to (it was not asked for)
        other = profile_bundle(paragon, target, threads, warmup, runs, min_seconds, formats, update_manifest=False,
                               precisions=precisions, identity=identity, known_hosts=known_hosts,
                               remote_python=remote_python, benchmark_model=benchmark_model, adb=adb,
                               timeout=timeout)
        report["paragon"] = {"model_id": other["model_id"], "bundle": other["bundle"], "mmacs": other["mmacs"],
                             "results": other["results"]}
    report["rows"] = _rows(report)
    if update_manifest:
        _store(bundle, tgt.name, report)
    return report


def _store(bundle: Path, target_name: str, report: dict) -> None:
    manifest = manifest_mod.load(bundle)  # re-read: keep whatever changed meanwhile
    latency = manifest.setdefault("latency", {})
    per_file = latency.setdefault(target_name, {})
    for r in report["results"]:
        if r["status"] == "skipped" and r["file"] in per_file:
            continue  # keep an earlier measurement rather than overwrite it with "not run"
        per_file[r["file"]] = {**{k: v for k, v in r.items() if k not in ("file", "name")},
                               "measured_at": report["measured_at"], "host": report["host"],
                               "settings": report["settings"]}
    manifest_mod.save(bundle, manifest)


# ----------------------------------------------------------------------------- reports

_COLUMNS = ["file", "status", "runtime", "load_ms", "first_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
            "std_ms", "peak_rss_mb", "mmacs"]


def _columns(report: dict) -> list[str]:
    return _COLUMNS + (["paragon_ms", "vs_paragon"] if report.get("paragon") else [])


def format_report(report: dict) -> str:
    """The human-readable table (with failure reasons below it)."""
    host = report.get("host") or {}
    head = (f"{report['model_id']} on {report['target']} "
            f"({host.get('cpu') or host.get('device') or '?'}, {host.get('platform', '?')}); "
            f"{report['mmacs']:.2f} MMACs")
    lines = [head, format_table(report["rows"], _columns(report), digits=3)]
    for row in report["rows"]:
        if row.get("error"):
            lines.append(f"  {row['file']}: {row['status']}: {row['error']}")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    host = report.get("host") or {}
    paragon = report.get("paragon")
    out = [f"# Latency of `{report['model_id']}` on `{report['target']}`", "",
           f"- measured: {report['measured_at']}",
           f"- host: {host.get('cpu') or host.get('device') or '?'} — {host.get('platform', '?')}, "
           f"{host.get('cores', '?')} cores",
           f"- settings: threads {report['settings']['threads'] or 'runtime default'}, "
           f"warm-up {report['settings']['warmup']}, at least {report['settings']['runs']} runs and "
           f"{report['settings']['min_seconds']} s",
           f"- model: {report['mmacs']:.2f} MMACs, {report['params']} parameters, space `{report['space_id']}`"]
    if paragon:
        out.append(f"- paragon: `{paragon['model_id']}` ({paragon['mmacs']:.2f} MMACs); vs_paragon = latency / "
                   "paragon latency for the same format and precision (p50; mean where no p50)")
    out += ["", markdown_table(report["rows"], _columns(report) + ["error"], digits=3)]
    return "\n".join(out)


def write_reports(report: dict, json_path: str | Path) -> tuple[Path, Path]:
    """Write the JSON report and a Markdown twin (same name, .md)."""
    json_path = Path(json_path)
    write_json(json_path, report)
    md = json_path.with_suffix(".md") if json_path.suffix == ".json" else json_path.with_name(json_path.name + ".md")
    md.write_text(markdown_report(report))
    return json_path, md


def default_report_path(bundle: str | Path, target: str) -> Path:
    return Path(bundle) / f"profile-{parse_target(target).slug}.json"
