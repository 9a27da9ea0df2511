"""Entry point of the `llmforge` console script."""

from __future__ import annotations

import argparse
import sys

from . import crds, dev, docs, operator_cmd, render, validate
from .errors import friendly


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmforge", description="llmforge: fine-tune, evaluate and serve LLMs "
                                     "on Kubernetes")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (validate, render, crds, docs, operator_cmd, dev):
        module.add_parser(sub)
    return parser


@friendly
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
