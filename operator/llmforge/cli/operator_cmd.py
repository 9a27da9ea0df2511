"""`llmforge operator`: run the kopf operator (all three kinds, liveness and Prometheus endpoints)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("operator", help="run the operator")
    p.add_argument("-n", "--namespace", action="append", default=None,
                   help="namespace to watch (repeatable; default: all, or LLMFORGE_NAMESPACES)")
    p.add_argument("--liveness", default=None, help="liveness endpoint (default: from settings)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default: from settings)")
    p.add_argument("--peering", default=None, metavar="NAME",
                   help="kopf peering object for several replicas (default: standalone, or LLMFORGE_PEERING)")
    p.add_argument("--runtime", choices=["kubernetes", "local"], default=None,
                   help="kubernetes: create Jobs/Deployments; local: run the same commands as local processes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..controllers.run import run_operator
    from ..settings import Settings

    settings = Settings.from_env()
    overrides = {k: v for k, v in {"namespaces": args.namespace, "liveness": args.liveness,
                                   "metrics_port": args.metrics_port, "runtime": args.runtime,
                                   "peering": args.peering}.items()
                 if v is not None}
    return run_operator(settings.model_copy(update=overrides))
