"""`llmforge render -f FILE...`: the child objects the operator would create, as a YAML stream."""

from __future__ import annotations

import argparse
import sys

import yaml

from ..validation import validate_object
from .errors import CliError, load_documents


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="print the children (Jobs, Deployments, ...) the operator would create")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE")
    p.add_argument("-n", "--namespace", default="default", help="namespace for objects without one")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..builders import render_children
    from ..settings import Settings

    settings = Settings.from_env()
    children: list[dict] = []
    for _source, doc in load_documents(args.filename):
        errors = [p for p in validate_object(doc) if p.severity == "error"]
        if errors:
            raise CliError("; ".join(str(p) for p in errors))
        doc.setdefault("metadata", {}).setdefault("namespace", args.namespace)
        children += render_children(doc, settings)
    yaml.safe_dump_all(children, sys.stdout, sort_keys=False)
    return 0
