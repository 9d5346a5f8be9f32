"""`tandem`: the command line. Each subcommand lives in `host/commands/<name>.py` and
exposes NAME, HELP, `add_arguments(parser)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .commands import COMMANDS
from .errors import USER_ERRORS

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus where to look), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    width = max(len(c.NAME) for c in COMMANDS) + 2
    table = "\n".join(f"  {c.NAME:<{width}}{c.HELP}" for c in COMMANDS)
    parser = _Parser(prog="tandem", usage="tandem [-h] COMMAND ...",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="FPGA/GPU co-design toolkit for transformer text generation and "
                     f"Mixture-of-Experts models.\n\ncommands (one line each):\n{table}",
                     epilog="`tandem COMMAND --help` shows a command's options.")
    # prog: a subcommand's errors and usage read `tandem generate: ...`, not the top usage
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, prog="tandem",
                                parser_class=_Parser, help=argparse.SUPPRESS)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing Tandem does needs the network
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except USER_ERRORS as e:
        print(f"tandem {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tandem {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
