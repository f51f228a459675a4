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
# Like squidGuard's database (built by peers.sh setup), the index is compiled before the start;
# the compile time is printed here, the start -> ready time is measured by the harness.
index="$BENCH_WORK/gardefou-lists.idx"
if [ ! -f "$index" ] || [ "$BENCH_WORK/lists.id" -nt "$index" ]; then
  t0=$(date +%s%3N)
  node "$here/../bin/gardefou" lists import "$BENCH_WORK/lists" --out "$BENCH_WORK/gardefou-index" >&2
  mv "$BENCH_WORK/gardefou-index/gardefou-lists.idx" "$index"
  echo "gardefou index compiled in $(( $(date +%s%3N) - t0 )) ms" >&2
fi
GARDEFOU_INDEX="$index" "$shared/peers.sh" start-custom gardefou "${GARDEFOU_PORT:-13140}" -- "$here/launch-gardefou.sh"
"$shared/run.sh" "$@"
