"""`llmforge validate -f FILE...`: the cluster's and operator's rules, offline."""

from __future__ import annotations

import argparse

from ..validation import validate_object
from .errors import load_documents


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check manifests exactly as the cluster and operator would")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                   help="manifest file (YAML/JSON, multi-document; '-' for stdin); repeatable")
    p.add_argument("--strict", action="store_true", help="treat advice warnings as errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    errors = warnings = checked = 0
    for _source, doc in load_documents(args.filename):
        checked += 1
        for problem in validate_object(doc):
            print(problem)
            if problem.severity == "error":
                errors += 1
            else:
                warnings += 1
    if checked == 0:
        print("no documents found")
        return 1
    summary = f"{checked} object(s): {errors} error(s), {warnings} warning(s)"
    print(summary if errors or warnings else f"{checked} object(s) valid")
    return 1 if errors or (args.strict and warnings) else 0
