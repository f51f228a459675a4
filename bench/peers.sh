#!/usr/bin/env bash
# npm run bench:peers — gardefou side by side with Squid, Squid + squidGuard, e2guardian and
# tinyproxy, on the same lists and workloads, in one run, with ../shared/bench (read-only: its
# generated files go to bench/work, its results to bench/results).
#   DOMAINS=1000000 (default) or 5000000; other knobs: see ../shared/bench/README.md
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shared="${GARDEFOU_SHARED_BENCH:-$here/../../shared/bench}"
[ -x "$shared/peers.sh" ] || { echo "bench:peers: $shared not found (it lives in ../shared/bench)" >&2; exit 2; }
export BENCH_WORK="${BENCH_WORK:-$here/work}" BENCH_RESULTS="${BENCH_RESULTS:-$here/results}"
mkdir -p "$BENCH_WORK" "$BENCH_RESULTS"
trap '"$shared/peers.sh" stop >/dev/null 2>&1 || true' EXIT
"$shared/peers.sh" start ${PEERS:-}
"$shared/peers.sh" start-custom gardefou "${GARDEFOU_PORT:-13140}" -- "$here/launch-gardefou.sh"
"$shared/run.sh" "$@"
