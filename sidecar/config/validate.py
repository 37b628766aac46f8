"""`sidecar validate FILE...`: load and translate mesh config, report every issue, exit 1 on errors.

Issues go to stderr one per line (`file:line: severity: Kind/ns/name: path: reason`); a one-line
summary goes to stdout. The same code path as a real load, so what passes here loads in the proxy.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sidecar.bootstrap import Bootstrap
from sidecar.config.load import load_paths
from sidecar.config.translate import translate
from sidecar.errors import ConfigError


def run(args: argparse.Namespace) -> int:
    """The subcommand: 0 when the config loads (warnings allowed), 1 on any error."""
    boot = Bootstrap(
        pod_name=args.pod_name or "",
        pod_namespace=args.pod_namespace or "default",
    )
    try:
        mesh = load_paths(args.files)
    except ConfigError as exc:
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        errors = sum(1 for i in exc.issues if i.severity.value == "error")
        print(f"invalid: {errors} errors, {len(exc.issues) - errors} warnings")
        return 1
    snap = translate(mesh, boot)
    for warning in snap.warnings:
        print(warning, file=sys.stderr)
    print(
        f"{len(mesh.objects)} objects, {len(snap.listeners)} listeners, "
        f"{len(snap.clusters)} clusters, {len(snap.warnings)} warnings"
    )
    return 0


def register(sub: Any) -> argparse.ArgumentParser:
    """Add `validate` to an argparse subparsers object (from `add_subparsers()`)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "validate",
        help="check mesh config files and show what the proxy would build from them",
        description="Load Kubernetes/Istio YAML, report every issue with file, line, object "
        "and field path; exit 1 on errors.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML file or directory")
    parser.add_argument("--pod-name", default=None, help="pod this proxy serves (POD_NAME)")
    parser.add_argument("--pod-namespace", default=None, help="its namespace (POD_NAMESPACE)")
    parser.set_defaults(func=run)
    return parser
