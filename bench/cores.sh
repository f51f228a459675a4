#!/usr/bin/env bash
# All cores: `gardefou serve` with workers=1 and workers=N side by side in one run, interleaved
# (A B A B ...), on the harness's lists and workload (../shared/bench: origin.mjs as the parent
# proxy, lib/http.lua = small keep-alive GETs rotating over 10,000 allowed hostnames).
#
#   BENCH_WORK=/work/benchwork bash bench/cores.sh            # ROUNDS="1 2 1 2" by default
#   ROUNDS="1 2 1 2" DURATION=8 CONC=50 WARMUP=3 GARDEFOU_DIST=dist bash bench/cores.sh
#
# Needs: $BENCH_WORK/lists (gen-lists.mjs output) and $BENCH_WORK/gardefou-lists.idx (bench/peers.sh
# makes both), the origin's TLS files in $BENCH_WORK/tls (peers.sh), wrk. Prints one line per
# round: req/s, latency, CPU µs per request (whole process tree: primary, workers, their
# threads, from /proc), RSS per process after the run, start -> ready, journal rows vs requests.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shared="${GARDEFOU_SHARED_BENCH:-$here/../../shared/bench}"
WORK="${BENCH_WORK:?set BENCH_WORK (e.g. /work/benchwork)}"
ROUNDS="${ROUNDS:-1 2 1 2}" DURATION="${DURATION:-8}" CONC="${CONC:-50}" WARMUP="${WARMUP:-3}"
PORT="${GARDEFOU_PORT:-13150}" ORIGIN_PORT="${ORIGIN_PORT:-18080}" ORIGIN_TLS_PORT="${ORIGIN_TLS_PORT:-18443}"
export GARDEFOU_DIST="${GARDEFOU_DIST:-$here/../dist}"
LISTS="$WORK/lists" INDEX="$WORK/gardefou-lists.idx"
tmp="$(mktemp -d /tmp/gardefou-cores.XXXXXX)"
origin_pid=""
gw_pid=""
cleanup() {
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null || true
  [ -n "$origin_pid" ] && kill "$origin_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_busy "$ORIGIN_PORT"; then
  (cd "$shared" && exec node origin.mjs --port "$ORIGIN_PORT" --tls-port "$ORIGIN_TLS_PORT" \
    --cert "$WORK/tls/cert.pem" --key "$WORK/tls/key.pem") >"$tmp/origin.log" 2>&1 &
  origin_pid=$!
  for _ in $(seq 100); do port_busy "$ORIGIN_PORT" && break; sleep 0.05; done
fi

# CPU ticks (utime + stime, all threads) of a process and its children
tree_pids() { echo "$1"; pgrep -P "$1" || true; }
tree_ticks() { local t=0 p; for p in $(tree_pids "$1"); do
  [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
tree_rss() { local p out=""; for p in $(tree_pids "$1"); do
  out+="$(awk '/^VmRSS/{printf "%.1f", $2/1024}' "/proc/$p/status" 2>/dev/null)+"; done; echo "${out%+}"; }
hz=$(getconf CLK_TCK)

wrk_run() { # seconds -> wrk output
  timeout -k 5 $(( $1 + 30 )) wrk -t1 -c"$CONC" -d"$1s" --latency --timeout 5s -s "$shared/lib/http.lua" "http://127.0.0.1:$PORT/" -- \
    "$LISTS/probe-allowed.txt" - 0 / 5000000 1 2>&1
}

printf '%-8s %8s %8s %8s %10s %-22s %8s %s\n' workers 'req/s' 'p50' 'p99' 'CPU µs/req' 'RSS MiB (primary+w)' 'ready ms' 'journal rows / requests'
for w in $ROUNDS; do
  dir="$tmp/w$w-$RANDOM"; mkdir -p "$dir"
  cat >"$dir/g.json" <<JSON
{ "listen": ["127.0.0.1:$PORT"], "clients": ["127.0.0.0/8"], "lists": "$INDEX",
  "parentProxy": "http://127.0.0.1:$ORIGIN_PORT", "journal": { "path": "$dir/journal.db" },
  "admin": { "listen": null }, "logLevel": "info", "workers": $w }
JSON
  t0=$(date +%s%3N)
  node "$here/../bin/gardefou" serve --config "$dir/g.json" >"$dir/out.log" 2>&1 &
  gw_pid=$!
  for _ in $(seq 600); do grep -q '"msg":"ready"' "$dir/out.log" && break; sleep 0.01; done
  ready=$(( $(date +%s%3N) - t0 ))
  grep -q '"msg":"ready"' "$dir/out.log" || { cat "$dir/out.log"; exit 1; }
  warm=$(wrk_run "$WARMUP")
  c0=$(tree_ticks "$gw_pid")
  out=$(wrk_run "$DURATION")
  c1=$(tree_ticks "$gw_pid")
  rss=$(tree_rss "$gw_pid")
  kill -TERM "$gw_pid"; wait "$gw_pid" || true; gw_pid=""
  reqs=$(awk '/requests in/{print $1}' <<<"$out")
  wreqs=$(awk '/requests in/{print $1}' <<<"$warm")
  rps=$(awk '/Requests\/sec/{printf "%d", $2}' <<<"$out")
  p50=$(awk '$1=="50%"{print $2}' <<<"$out"); p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  errs=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr '\n' ' ' || true)
  cpu=$(( (c1 - c0) * 1000000 / hz / reqs ))
  rows=$(node -e "const D=require('$here/../node_modules/better-sqlite3');const d=new D(process.argv[1],{readonly:true});console.log(d.prepare('SELECT count(*) n FROM records').get().n)" "$dir/journal.db")
  printf '%-8s %8s %8s %8s %10s %-22s %8s %s %s\n' "$w" "$rps" "$p50" "$p99" "$cpu" "$rss" "$ready" "$rows / $((reqs + wreqs))" "$errs"
done
