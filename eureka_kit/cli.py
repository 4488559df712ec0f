"""`eureka-kit` command line: a small dispatch table of subcommands, each a thin call into the package."""

from __future__ import annotations

import argparse
import sys


def _selfcheck(args: argparse.Namespace) -> int:
    from eureka_kit import selfcheck

    return selfcheck.main(seed=args.seed)


def _add_selfcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selfcheck", help="check every preset's loss on a synthetic batch and print a table")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_selfcheck)


# Each entry adds one subcommand (parser + handler). Other modules register theirs here.
SUBCOMMANDS = [_add_selfcheck]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eureka-kit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
