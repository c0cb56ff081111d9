"""The ``hetsearch`` command line.

Each part registers its own sub-commands (``register(subparsers)``) and imports
its heavy dependencies (torch, faiss, runtimes) only when a command runs, so
``hetsearch --help`` is instant and the SDK-only install still has a CLI.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import HetsearchError, MissingDependency
from .logsetup import configure_logging

# Modules that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "hetsearch.cmpnas.cli",  # train, eval, nas
    "hetsearch.cmpnas.nas.cli",
    "hetsearch.export.cli",  # export, check
    "hetsearch.export.profile_cli",  # profile
    "hetsearch.gallery_server.index_cli",  # index
    "hetsearch.gallery_server.cli",  # serve, gallery
    "hetsearch.sdk.cli",  # query
    "hetsearch.release",  # release
    "hetsearch.demo",  # demo
)

EPILOG = """\
The story, end to end:
  hetsearch train gallery --data fashion-mnist --arch resnet-gallery --out runs/gallery
  hetsearch train query --data fashion-mnist --gallery runs/gallery --arch mbv3-small --out runs/query
  hetsearch eval --data fashion-mnist --query runs/query --gallery runs/gallery
  hetsearch nas supernet --gallery runs/gallery --data fashion-mnist --out runs/supernet
  hetsearch nas search --supernet runs/supernet --budgets 0.3,0.6 --out runs/search
  hetsearch export runs/query --formats onnx,tflite,coreml --out bundles/query
  hetsearch index --gallery runs/gallery --data fashion-mnist --out gallery-data
  hetsearch serve --data-dir gallery-data --port 50051
  hetsearch query --bundle bundles/query --server localhost:50051 shoe.png

Run `hetsearch COMMAND --help` for the options and examples of each command.
"""


# which extra brings a missing module
EXTRA_OF = {"torch": "train", "tqdm": "train", "matplotlib": "train", "faiss": "server", "prometheus_client": "server",
            "grpc_health": "server", "grpc_reflection": "server", "onnx": "export", "onnxscript": "export",
            "litert_torch": "export", "coremltools": "export", "ai_edge_quantizer": "export", "paramiko": "export",
            "onnxruntime": "sdk", "ai_edge_litert": "sdk", "grpc": "sdk", "PIL": "sdk"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    pass


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and every option's default shown in --help (unless the help already says it,
    or there is none to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if ("default" in text.lower() or d is None or d is False or d is argparse.SUPPRESS
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hetsearch",
        description="Heterogeneous visual search: compact query models compatible with a large gallery model.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hetsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:  # a part whose CLI module is missing in this install
            logging.getLogger("hetsearch").debug("commands of %s unavailable: %s", name, exc)
            continue
        try:
            mod.register(sub)
        except ImportError as exc:  # registration needing an extra that is not installed
            logging.getLogger("hetsearch").debug("commands of %s unavailable: %s", name, exc)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, quiet=bool(getattr(args, "quiet", False)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        rc = args.func(args)
    except HetsearchError as exc:
        print(f"hetsearch {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        missing = MissingDependency(exc.name or "?", EXTRA_OF.get((exc.name or "").split(".")[0], "all"))
        print(f"hetsearch {args.command}: error: {missing}", file=sys.stderr)
        return missing.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
