#!/usr/bin/env bash
# The index benchmark in one command: omnibind's indexes, hnswlib and faiss HNSW on the same
# data and parameters (M=16, ef_construction=200, k=10, cosine), then the Markdown tables and
# SVG plots of BENCHMARKS.md.
#
#   benches/index.sh [OUT_DIR] [more `omnibind bench index` arguments]
#
# OUT_DIR defaults to target/bench-index; the Markdown lands in OUT_DIR/index.md and the plots
# in docs/bench/. The peers are installed from PyPI into target/bench-venv
# (benches/peers/requirements.txt). SMOKE=1 runs a small configuration in seconds, writes its
# plots under OUT_DIR, and skips the peers when they cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-index}
shift || true
smoke=${SMOKE:-0}

cargo build --release --locked --bin omnibind
rm -rf "$out"
mkdir -p "$out"
if [[ $smoke == 1 ]]; then
    sizes=(--n 2000 --dim 64 --queries 100 --real 2000 --ef 10,32,128)
    plots=$out/plots
else
    sizes=(--real 50000)
    plots=docs/bench
fi
./target/release/omnibind bench index --out "$out" "${sizes[@]}" "$@"

venv=target/bench-venv
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c "import hnswlib, faiss, matplotlib" 2>/dev/null; then
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q -r benches/peers/requirements.txt; }; then
        if [[ $smoke == 1 ]]; then
            echo "the peer libraries cannot be installed; omnibind's results are in $out/results" >&2
            exit 0
        fi
        exit 1
    fi
fi
"$venv/bin/python" benches/peers/index_peers.py "$out"
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
memory=$(free -g | awk '/^Mem:/ {print $2}')
"$venv/bin/python" benches/peers/report.py "$out" --markdown "$out/index.md" --plots "$plots" \
    --machine "$(nproc) cores ($cpu), ${memory} GiB, $(uname -sr), $(date -u +%Y-%m-%d)" \
    --command "benches/index.sh $*"
