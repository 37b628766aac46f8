"""`sidecar iptables render | apply | clean`, with istio-iptables' flags.

Each action takes the same flags, in istio-iptables' short and long spellings, so an init
container written for Istio can call `sidecar iptables apply` with the arguments it already has.
`--netns NAME` (not an Istio flag) runs the tools inside a named network namespace.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from sidecar.capture.iptables import Runner, apply, clean, dry_run_text
from sidecar.capture.options import CaptureOptions
from sidecar.capture.rules import render
from sidecar.errors import CaptureError


def _flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add = p.add_argument
    add("-p", "--envoy-port", default="15001", help="outbound capture port (default 15001)")
    add("-z", "--inbound-capture-port", default="15006", help="inbound capture port")
    add("--inbound-tunnel-port", default="15008", help="HBONE port returned untouched")
    add("-u", "--proxy-uid", default="1337", help="proxy uid(s), comma list, not captured")
    add("-g", "--proxy-gid", default=None, help="proxy gid(s), comma list (default: the uids)")
    add("-m", "--istio-inbound-interception-mode", default="REDIRECT", help="REDIRECT only")
    add("-b", "--istio-inbound-ports", default="", help="inbound ports to capture, '*' or list")
    add("-d", "--istio-local-exclude-ports", default="", help="inbound ports excluded from '*'")
    add("-i", "--istio-service-cidr", default="", help="outbound CIDRs to capture, '*' or list")
    add("-x", "--istio-service-exclude-cidr", default="", help="outbound CIDRs not captured")
    add("-q", "--istio-include-outbound-ports", default="", help="outbound ports to capture")
    add("-o", "--istio-local-outbound-ports-exclude", default="", help="outbound ports excluded")
    add("-k", "--kube-virt-interfaces", default="", help="virtual interfaces (comma list)")
    add("-c", "--exclude-interfaces", default="", help="interfaces never captured")
    add(
        "--ipv6",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write ip6tables rules (default: on when $INSTANCE_IP is IPv6)",
    )
    add("--netns", default=None, help="run the tools inside this network namespace")
    return p


def options_from_args(args: argparse.Namespace) -> CaptureOptions:
    """The capture options the parsed flags describe."""
    ipv6 = args.ipv6 if args.ipv6 is not None else ":" in os.environ.get("INSTANCE_IP", "")
    return CaptureOptions.from_flags(
        proxy_port=args.envoy_port,
        inbound_capture_port=args.inbound_capture_port,
        inbound_tunnel_port=args.inbound_tunnel_port,
        proxy_uid=args.proxy_uid,
        proxy_gid=args.proxy_gid,
        mode=args.istio_inbound_interception_mode,
        inbound_ports=args.istio_inbound_ports,
        inbound_ports_exclude=args.istio_local_exclude_ports,
        outbound_cidrs=args.istio_service_cidr,
        outbound_cidrs_exclude=args.istio_service_exclude_cidr,
        outbound_ports_include=args.istio_include_outbound_ports,
        outbound_ports_exclude=args.istio_local_outbound_ports_exclude,
        kube_virt_interfaces=args.kube_virt_interfaces,
        exclude_interfaces=args.exclude_interfaces,
        ipv6=ipv6,
    )


def _runner(args: argparse.Namespace) -> Runner:
    return Runner.in_netns(args.netns) if args.netns else Runner()


def _render(args: argparse.Namespace) -> int:
    sys.stdout.write(render(options_from_args(args)))
    return 0


def _apply(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    if args.dry_run:
        sys.stdout.write(dry_run_text(opts))
        return 0
    applied = apply(opts, _runner(args))
    families = ", ".join(f"IPv{fr.family.value}" for fr in applied)
    print(f"iptables capture rules applied ({families})", file=sys.stderr)
    return 0


def _clean(args: argparse.Namespace) -> int:
    ran = clean(options_from_args(args), _runner(args))
    print("iptables capture rules removed" if ran else "no capture rules found", file=sys.stderr)
    return 0


Handler = Callable[[argparse.Namespace], int]


def _guarded(handler: Handler) -> Handler:
    """Turn CaptureError into a one-line message and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            result = handler(args)
        except CaptureError as exc:
            print(f"sidecar iptables: {exc}", file=sys.stderr)
            return 1
        return result

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `iptables render | apply | clean` to the top-level subcommands."""
    flags = _flags()
    top = sub.add_parser("iptables", help="Istio's traffic capture rules: render, apply, clean")
    actions = top.add_subparsers(dest="iptables_action", required=True)
    render_p = actions.add_parser("render", parents=[flags], help="print the restore text")
    render_p.set_defaults(func=_guarded(_render))
    apply_p = actions.add_parser("apply", parents=[flags], help="install the rules")
    apply_p.add_argument("--dry-run", action="store_true", help="print instead of running")
    apply_p.set_defaults(func=_guarded(_apply))
    clean_p = actions.add_parser("clean", parents=[flags], help="remove what apply added")
    clean_p.set_defaults(func=_guarded(_clean))
