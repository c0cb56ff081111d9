"""``python -m hetsearch.gallery_server serve ...``: this part's commands without the rest of the CLI."""

import argparse
import sys

from hetsearch.errors import HetsearchError
from hetsearch.logsetup import configure_logging

from .cli import register


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hetsearch.gallery_server")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    configure_logging(args.verbose, quiet=bool(getattr(args, "quiet", False)))
    try:
        return int(args.func(args) or 0)
    except HetsearchError as exc:
        print(f"hetsearch {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
