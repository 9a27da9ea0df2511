"""`llmforge docs`: write (or check) the API reference, docs/api.md, from the API models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..api.reference import render_reference


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("docs", help="generate the API reference (docs/api.md) from the API models")
    p.add_argument("--out", default=None, help="file to write (default: print to stdout)")
    p.add_argument("--check", action="store_true", help="exit 1 if --out differs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = render_reference()
    if not args.out:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"{out}: out of date; run `make docs`")
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0
