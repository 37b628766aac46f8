#!/bin/sh
# What the istio-init container runs: install the pod's traffic capture rules, then exit.
#
# Defaults are those of Istio's sidecar injector; every flag can be overridden by the container's
# arguments (appended after the defaults, and the last value wins), e.g.
#   istio-init.sh -b 8080,9080 -d 15090,15021,15020
# Needs CAP_NET_ADMIN (and CAP_NET_RAW) in the pod's network namespace. IPv6 rules are added
# when $INSTANCE_IP is an IPv6 address (or with --ipv6).
set -eu

SIDECAR="${SIDECAR:-sidecar}"

exec "$SIDECAR" iptables apply \
    -p 15001 \
    -z 15006 \
    -u 1337 \
    -m REDIRECT \
    -i '*' \
    -x "" \
    -b '*' \
    -d 15090,15021,15020 \
    "$@"
