"""``hetsearch profile``: latency of a bundle's files on target hardware (see hetsearch.export.profile)."""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  hetsearch profile bundles/query                                  # this machine
  hetsearch profile bundles/query --paragon bundles/paragon --runs 200
  hetsearch profile bundles/query --target ssh://pi@raspberrypi.local --identity ~/.ssh/id_ed25519
  hetsearch profile bundles/query --target adb://R58M12345 --benchmark-model ./android_aarch64_benchmark_model

ssh:// needs `pip install 'hetsearch[sdk]'` on the device; adb:// runs .tflite files with
LiteRT's benchmark_model. Results go into the bundle's manifest (latency[TARGET]) and into
a JSON + Markdown report (default BUNDLE/profile-TARGET.json and .md).
"""


def add_profiler_args(p, timeout: float) -> None:
    """The profiler's timing settings and the ways to reach a target (shared with ``nas latency-model``)."""
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before timing (default 5)")
    p.add_argument("--runs", type=int, default=50, help="at least this many timed runs (default 50)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="and timing lasts at least this long (default 1)")
    p.add_argument("--identity", metavar="KEYFILE", default=None, help="ssh: private key file")
    p.add_argument("--known-hosts", metavar="FILE", default=None, help="ssh: known_hosts file to use")
    p.add_argument("--remote-python", default="python3", help="ssh: the device's Python with hetsearch[sdk]")
    p.add_argument("--benchmark-model", metavar="PATH", default=None,
                   help="adb: LiteRT benchmark_model binary (local file to push, or a path on the device)")
    p.add_argument("--adb", default="adb", help="adb: the adb executable (default: adb on PATH)")
    p.add_argument("--timeout", type=float, default=timeout, help=f"seconds allowed for one profiling call on a "
                   f"target (default {timeout:g})")


def register(sub) -> None:
    p = sub.add_parser("profile", help="measure a bundle's latency on target hardware",
                       description="Run each file of a bundle with its real runtime on a target and record "
                                   "load time, first inference, p50/p90/p99, mean, std, peak memory.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--target", default="local", help="local | ssh://user@host[:port] | adb://SERIAL (default local)")
    p.add_argument("--threads", type=int, default=None, help="runtime CPU threads (default: the runtime's choice)")
    p.add_argument("--formats", default=None, help="comma list of onnx,tflite,coreml (default: all in the bundle)")
    p.add_argument("--precision", "--precisions", dest="precisions", default=None,
                   help="comma list of fp32,fp16,int8 (default: all); --precisions also works")
    p.add_argument("--paragon", metavar="BUNDLE", default=None,
                   help="the paragon's bundle, profiled the same way, for latency ratios")
    add_profiler_args(p, timeout=1800.0)
    p.add_argument("--json", metavar="FILE", default=None,
                   help="report path (a .md twin is written next to it; default BUNDLE/profile-TARGET.json)")
    p.add_argument("--no-manifest", action="store_true", help="do not record the results in the manifest")
    p.set_defaults(func=run)


def run(args) -> int:
    from hetsearch.errors import HetsearchError

    from .profile import default_report_path, format_report, profile_bundle, write_reports

    report = profile_bundle(
        args.bundle, args.target, threads=args.threads, warmup=args.warmup, runs=args.runs,
        min_seconds=args.min_seconds, formats=args.formats, update_manifest=not args.no_manifest,
        precisions=args.precisions, paragon=args.paragon, identity=args.identity, known_hosts=args.known_hosts,
        remote_python=args.remote_python, benchmark_model=args.benchmark_model, adb=args.adb, timeout=args.timeout,
    )
    try:
        json_path, md_path = write_reports(report, args.json or default_report_path(args.bundle, args.target))
    except OSError as exc:
        raise HetsearchError(f"cannot write the report: {exc}") from exc
    print(format_report(report))
    print(f"report: {json_path} and {md_path}")
    return 1 if any(r["status"] == "failed" for r in report["results"]) else 0
