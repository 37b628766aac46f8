"""`sidecar demo`: the two-service demo, on loopback or (root) in network namespaces."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sidecar.demo.run import run_demo
from sidecar.demo.stage import Stage


def register(sub: Any) -> None:
    """Add the `demo` subcommand to the `sidecar` command's subparsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="run two services with a sidecar each and show a request's way through both",
        description=(
            "Start apps a and b, each behind its own sidecar; send requests to a, which calls b; "
            "print each request's access-log lines from both sidecars and the answer; then stop "
            "everything. Without --capture everything runs on loopback addresses (no root)."
        ),
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="run each service in its own network namespace with real iptables capture (root)",
    )
    parser.add_argument(
        "--keep-running", action="store_true", help="keep everything up until Ctrl-C"
    )
    parser.add_argument(
        "--requests", type=_count, default=3, metavar="N", help="requests to send (default 3)"
    )
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the demo the arguments ask for; the process exit status."""
    stage: Stage
    if args.capture:
        from sidecar.demo.capture import CaptureStage

        stage = CaptureStage()
    else:
        from sidecar.demo.loopback import LoopbackStage

        stage = LoopbackStage()
    return run_demo(stage, args.requests, args.keep_running, sys.stdout)


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError("between 1 and 100")
    return value
