#!/usr/bin/env bash
# Schema-driven API fuzzing: schemathesis (pip install schemathesis) generates requests from
# /openapi.json for every operation and checks the answers: no 5xx, status codes, headers and
# bodies as the document declares them. Runs against a fresh server with the bundled model.
# Usage: tests/load/schemathesis.sh [path/to/omnibind]; EXAMPLES (default 100) per operation.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../../target/release/omnibind}"
port="${PORT:-6621}" examples="${EXAMPLES:-100}"
out="${OUT:-$(mktemp -d)}"
base="http://127.0.0.1:$port"
mkdir -p "$out/data"
# With keys, as a server reachable by others runs: the document declares bearer security.
admin="schemathesis-admin-key-0001" read="schemathesis-read-key-00001"
printf '[server]\nlisten = "127.0.0.1:%s"\ndata_dir = "%s/data"\n[auth]\nadmin_key = "%s"\nread_key = "%s"\n' \
    "$port" "$out" "$admin" "$read" > "$out/config.toml"
"$bin" serve --config "$out/config.toml" > "$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -sf "$base/readyz" >/dev/null; do sleep 0.1; done
# A collection for the item and search operations to find.
curl -sf -X POST "$base/v1/collections" -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $admin" \
    -d '{"name":"photos","model":"default"}' >/dev/null
schemathesis run "$base/openapi.json" --checks all --max-examples "$examples" \
    -H "Authorization: Bearer $admin" \
    --report junit --report-dir "$out" "${@:2}"
echo "server log and report: $out"
