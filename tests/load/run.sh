#!/usr/bin/env bash
# HTTP load and restart test of a release build (see SECURITY.md, "Load"):
#   1. start a server on an empty data directory and fill a collection with ITEMS vectors;
#   2. wrk, CONNS connections for DURATION: vector searches, then 1 MB text uploads;
#   3. resident memory after each phase, answers by status, p50/p95/p99;
#   4. SIGKILL during uploads, then time to /readyz; a graceful stop, then time to /readyz.
# Needs wrk, curl and python3, and disk for what the uploads store (each 60-s upload phase
# stores about 8-9 GB of 1 MB texts here); the data directory is removed at the end unless
# KEEP_DATA=1. Usage: tests/load/run.sh [path/to/omnibind]
# Environment: ITEMS (10000), CONNS (50), DURATION (60s), PORT (6620), OUT (a temporary dir).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/release/omnibind}"
items="${ITEMS:-10000}" conns="${CONNS:-50}" duration="${DURATION:-60s}" port="${PORT:-6620}"
out="${OUT:-$(mktemp -d)}"
base="http://127.0.0.1:$port"
mkdir -p "$out/data"
cat > "$out/config.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
data_dir = "$out/data"
TOML

rss_mb() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
wait_ready() {
    local t0; t0=$(date +%s.%N)
    until curl -sf "$base/readyz" >/dev/null; do sleep 0.02; done
    echo "$(date +%s.%N) - $t0" | bc
}
start() { "$bin" serve --config "$out/config.toml" >> "$out/server.log" 2>&1 & pid=$!; }
summary() { grep -E '^(status|p50|p95|p99)|Requests/sec' "$1" | tr '\n' ' '; echo; }

start
echo "first start to ready: $(wait_ready) s"
python3 "$here/fill.py" "$base" "$items"
echo "rss after fill: $(rss_mb $pid) MB"
wrk -t2 -c"$conns" -d"$duration" --latency -s "$here/search.lua" \
    "$base/v1/collections/load/search" > "$out/search.txt" 2>&1
echo "search: $(summary "$out/search.txt")"
echo "rss after search load: $(rss_mb $pid) MB"
wrk -t2 -c"$conns" -d"$duration" --timeout 60s --latency -s "$here/upload.lua" \
    "$base/v1/collections/load/items" > "$out/upload.txt" 2>&1
echo "1 MB uploads: $(summary "$out/upload.txt")"
echo "rss after upload load: $(rss_mb $pid) MB"
wrk -t2 -c"$conns" -d"$duration" --timeout 60s --latency -s "$here/upload.lua" \
    "$base/v1/collections/load/items" > "$out/upload2.txt" 2>&1
echo "1 MB uploads, again: $(summary "$out/upload2.txt")"
echo "rss after second upload load: $(rss_mb $pid) MB"

# SIGKILL in the middle of uploads: the index dump is stale at the next start.
wrk -t2 -c"$conns" -d10s --timeout 60s -s "$here/upload.lua" \
    "$base/v1/collections/load/items" > /dev/null 2>&1 &
load=$!
sleep 5
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
wait "$load" 2>/dev/null || true
start
echo "restart after SIGKILL to ready: $(wait_ready) s"
curl -s "$base/v1/collections/load" | python3 -c 'import json,sys; c=json.load(sys.stdin); print("items:", c["total"], "index:", c["index"]["len"])'
kill -TERM "$pid"; wait "$pid" || true
start
echo "restart after graceful stop to ready: $(wait_ready) s"
kill -TERM "$pid"; wait "$pid" || true
echo "5xx answers (wrk): $(cat "$out"/search.txt "$out"/upload*.txt | awk '/^status 5/ { n += $3 } END { print n + 0 }')"
[ "${KEEP_DATA:-0}" = 1 ] || rm -rf "$out/data"
echo "logs and wrk output: $out"
