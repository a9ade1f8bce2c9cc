#!/usr/bin/env bash
# The encoder benchmark in one command: omnibind's encoders (the bundled default model, every
# modality, and CLIP ViT-B/32 with seeded random weights), then PyTorch (transformers) on the
# same ViT-B/32 checkpoint, inputs, threads and batch sizes, and the Markdown tables of
# BENCHMARKS.md.
#
#   benches/encode.sh [OUT_DIR] [more `omnibind bench encode` arguments]
#
# OUT_DIR defaults to target/bench-encode; the Markdown lands in OUT_DIR/encode.md. PyTorch is
# installed from PyPI into target/bench-venv-encode (benches/peers/requirements-encode.txt).
# SMOKE=1 runs one batch size for a moment and skips PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-encode}
shift || true
smoke=${SMOKE:-0}

cargo build --release --locked --bin omnibind
mkdir -p "$out"
if [[ $smoke == 1 ]]; then
    ./target/release/omnibind bench encode --out "$out" --batches 1,2 --seconds 0.05 "$@"
    exit 0
fi
./target/release/omnibind bench encode --out "$out" "$@"

venv=target/bench-venv-encode
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c "import torch, transformers" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r benches/peers/requirements-encode.txt
fi
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
memory=$(free -g | awk '/^Mem:/ {print $2}')
"$venv/bin/python" benches/peers/encode_peers.py "$out" --markdown "$out/encode.md" \
    --machine "$(nproc) cores ($cpu), ${memory} GiB, $(uname -sr), $(date -u +%Y-%m-%d)" \
    --command "benches/encode.sh $*"
