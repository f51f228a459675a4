#!/usr/bin/env bash
# Started by ../shared/bench/peers.sh start-custom: writes a gardefou config from the harness's
# environment (BENCH_PORT, BENCH_LISTS, BENCH_UPSTREAM, BENCH_LOG_DIR) and runs the proxy with
# filtering AND the journal on, forwarding to the harness origin as its parent proxy.
# GARDEFOU_INDEX: a compiled index of BENCH_LISTS (bench/peers.sh makes it), else the UT1
# folder is compiled at start.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${BENCH_PORT:?}" "${BENCH_LISTS:?}" "${BENCH_UPSTREAM:?}" "${BENCH_LOG_DIR:?}"
conf="$BENCH_LOG_DIR/gardefou.json"
cat > "$conf" <<JSON
{
  "listen": ["127.0.0.1:$BENCH_PORT"],
  "clients": ["127.0.0.0/8"],
  "lists": "${GARDEFOU_INDEX:-$BENCH_LISTS}",
  "parentProxy": "http://$BENCH_UPSTREAM",
  "journal": { "path": "$BENCH_LOG_DIR/journal.db" },
  "admin": { "listen": null },
  "logLevel": "${GARDEFOU_LOG_LEVEL:-warn}"
}
JSON
# the same V8 young-generation size as the systemd unit and `npm start`
exec node --max-semi-space-size=4 "$here/../bin/gardefou" serve --config "$conf"
