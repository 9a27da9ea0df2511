"""`llmforge dev cluster up|down|status`: a local control plane (etcd, apiserver, kwok GPU nodes) for people."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dev", help="developer tools")
    dsub = p.add_subparsers(dest="dev_command", required=True)
    c = dsub.add_parser("cluster", help="local control plane with fake GKE GPU nodes")
    c.add_argument("action", choices=["up", "down", "status"])
    c.add_argument("--state-dir", default=None, help="where PIDs and kubeconfig live")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..devcluster import main as cluster_main

    argv = [args.action] + (["--state-dir", args.state_dir] if args.state_dir else [])
    return cluster_main(argv)
