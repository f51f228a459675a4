#!/usr/bin/env bash
# Soak: gardefou at the maximum rate wrk can drive for SOAK_SECONDS (default 60), in 10 s slices,
# with RSS sampled after each slice (flat at the end = no leak), then the journal's record count
# compared with the requests wrk completed (every request served has its record).
#
#   npm run build && bash bench/soak.sh            # needs wrk and ../shared/bench (origin, lua)
#   SOAK_LISTS=/path/to/lists-or-index SOAK_WORKERS=2 bash bench/soak.sh
#
# Loopback only: the harness origin (../shared/bench/origin.mjs) answers as gardefou's parent
# proxy, so no name is resolved. Prints one line per slice and a summary; exits 1 when the
# journal holds fewer records than requests served.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
shared="${SHARED_BENCH:-$root/../shared/bench}"
seconds="${SOAK_SECONDS:-60}"
slice=10
work="$(mktemp -d /tmp/gardefou-soak.XXXXXX)"
origin_port="${SOAK_ORIGIN_PORT:-18291}"
proxy_port="${SOAK_PROXY_PORT:-13291}"
lists="${SOAK_LISTS:-$root/rules/lists}"
command -v wrk >/dev/null || { echo "soak: wrk is not installed (apt-get install wrk)" >&2; exit 2; }
[ -f "$shared/origin.mjs" ] || { echo "soak: $shared/origin.mjs not found (set SHARED_BENCH)" >&2; exit 2; }

# allowed hosts: any names the shipped lists do not block
for i in $(seq 1 5000); do echo "soak-$i.example.org"; done > "$work/allowed.txt"
cat > "$work/gardefou.json" <<JSON
{
  "listen": ["127.0.0.1:$proxy_port"],
  "clients": ["127.0.0.0/8"],
  "lists": "$lists",
  "parentProxy": "http://127.0.0.1:$origin_port",
  "journal": { "path": "$work/journal.db" },
  "admin": { "listen": null },
  "logLevel": "warn"${SOAK_WORKERS:+,
  \"workers\": $SOAK_WORKERS}
}
JSON

cleanup() {
  [ -n "${gpid:-}" ] && kill "$gpid" 2>/dev/null && wait "$gpid" 2>/dev/null || true
  [ -n "${opid:-}" ] && kill "$opid" 2>/dev/null || true
}
trap cleanup EXIT

node "$shared/origin.mjs" --port "$origin_port" --tls-port $((origin_port + 1)) > "$work/origin.log" 2>&1 &
opid=$!
node --max-semi-space-size=4 "$root/bin/gardefou" serve --config "$work/gardefou.json" > "$work/gardefou.log" 2>&1 &
gpid=$!
for _ in $(seq 1 200); do
  curl -s -o /dev/null -x "http://127.0.0.1:$proxy_port" http://soak-0.example.org/ && break
  sleep 0.05
done

# RSS of gardefou and its children (workers, when any), KiB
rss() {
  local total=0 p
  for p in $gpid $(pgrep -P "$gpid" || true); do total=$((total + $(ps -o rss= -p "$p" 2>/dev/null || echo 0))); done
  echo "$total"
}

echo "slice  req/s  p99  rss_MiB"
served=0
rss_list=()
for s in $(seq 1 $((seconds / slice))); do
  out="$(wrk -t1 -c50 -d${slice}s --latency -s "$shared/lib/http.lua" "http://127.0.0.1:$proxy_port/" -- "$work/allowed.txt" - 0 / 100000000 0 2>&1)"
  rps="$(sed -nE 's/^Requests\/sec: +([0-9.]+).*/\1/p' <<<"$out")"
  p99="$(sed -nE 's/^ +99% +([0-9.]+[a-z]+).*/\1/p' <<<"$out")"
  n="$(sed -nE 's/^ +([0-9]+) requests in.*/\1/p' <<<"$out")"
  served=$((served + ${n:-0}))
  r=$(( $(rss) / 1024 ))
  rss_list+=("$r")
  printf '%5s  %5s  %5s  %7s\n' "$((s * slice))s" "${rps:-?}" "${p99:-?}" "$r"
done
kill -TERM "$gpid"; wait "$gpid" || true; gpid=""
records="$(node -e "
const D = require('$root/node_modules/better-sqlite3');
const db = new D(process.argv[1], { readonly: true });
console.log(db.prepare(\"SELECT count(*) AS n FROM records WHERE decision = 'allow' AND status = 200\").get().n);
" "$work/journal.db")"
echo "requests served (wrk): $served; journal records (allowed, 200): $records; RSS MiB per slice: ${rss_list[*]}"
rm -rf "$work"
[ "$records" -ge "$served" ] || { echo "soak: journal holds fewer records than requests served" >&2; exit 1; }
