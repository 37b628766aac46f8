#!/usr/bin/env bash
# Profile the sidecar's hot path: run the sidecar scenarios with py-spy attached and write
# flamegraph SVGs to benchmarks/results/ (flame-sidecar-http-*.svg, flame-sidecar-l4-*.svg).
# Extra arguments go to run.py, e.g. `benchmarks/profile.sh --scenarios http --duration 20`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ ! -x "$root/.venv/bin/py-spy" ]]; then
    "$root/.venv/bin/pip" install py-spy
fi
exec "$root/.venv/bin/python" "$root/benchmarks/run.py" --only sidecar --profile "$@"
