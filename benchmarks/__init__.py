"""Runnable benchmarks; each writes JSON + Markdown under benchmarks/results/."""

from __future__ import annotations

import sys


def cli_main(prog: str, parse_args, run, argv=None) -> int:
    """A benchmark's ``main``: parse, run, and turn a HetsearchError into its message and exit code."""
    from hetsearch.errors import HetsearchError

    args = parse_args(argv)
    try:
        run(args)
    except HetsearchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
