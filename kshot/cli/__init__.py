"""The ``kshot`` command: train, eval, compare, predict, datasets, plot, demo, sinusoid, ntm (one
module per command).

User errors end with one line on stderr (``kshot: error: ...``) and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kshot.cli.common import OneLineParser
from kshot.errors import KShotError


def build_parser() -> argparse.ArgumentParser:
    from kshot import __version__
    from kshot.cli import compare, evaluate, info, ntm, predict, santoro, sinusoid, train
    from kshot.methods.base import get_method

    get_method("protonet")  # registers every method
    parser = OneLineParser(prog="kshot", description="One-shot and few-shot learning.")
    parser.add_argument("--version", action="version", version=f"kshot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for command in (train, evaluate, compare, predict, info, sinusoid, ntm, santoro):
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "invert", None) in ("yes", "no"):
        args.invert = args.invert == "yes"
    try:
        return args.func(args)
    except KShotError as error:
        message = " ".join(str(error).split())
        print(f"kshot: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kshot: interrupted", file=sys.stderr)
        return 130
