#!/usr/bin/env python3
"""Peer side of the ANN index benchmark: hnswlib and faiss HNSW.

`omnibind bench index --out DIR` writes the datasets and omnibind's own
results; this script owns the peer libraries' numbers on the same data and
parameters. It reads, for every subdirectory of DIR that holds a base.npy:

    DIR/<dataset>/base.npy      float32 [n, d], L2-normalised
    DIR/<dataset>/queries.npy   float32 [nq, d], L2-normalised
    DIR/<dataset>/gt.npy        int64 [nq, k], exact top-k rows of base by dot product
    DIR/<dataset>/params.json   {"m", "ef_construction", "k", "ef_search": [...]}

and writes one DIR/results/<library>-<dataset>.json per library and dataset
(the schema that benches/peers/report.py reads): build time and rate, memory
per vector, index file size, reload time, and a sweep over ef_search of
recall@k and queries/s with one thread and with all threads.

Each (dataset, library) pair runs in a fresh subprocess (this script with
--one), so the process's peak resident memory belongs to that index alone.
"""

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LIBRARIES = ("hnswlib", "faiss")
# A timed pass that takes longer than this is not repeated.
SINGLE_PASS_SECONDS = 5.0
PASSES = 3


def log(tag, message):
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def proc_status_bytes(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class Hnswlib:
    """hnswlib with the inner-product space (the data is normalised)."""

    name = "hnswlib"

    def __init__(self):
        import hnswlib

        self.lib = hnswlib
        self.version = importlib.metadata.version("hnswlib")
        self.index = None

    def build(self, base, m, ef_construction, threads):
        n, dim = base.shape
        self.index = self.lib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=n, M=m, ef_construction=ef_construction)
        self.index.add_items(base, np.arange(n), num_threads=threads)

    def save(self, path):
        self.index.save_index(str(path))

    def load(self, path, n, dim):
        self.index = self.lib.Index(space="ip", dim=dim)
        self.index.load_index(str(path), max_elements=n)

    def prepare_search(self, ef, k, threads):
        # hnswlib searches with max(ef, k) anyway; say so explicitly.
        self.index.set_ef(max(ef, k))
        self.index.set_num_threads(threads)

    def search(self, queries, k):
        labels, _ = self.index.knn_query(queries, k=k)
        return labels


class Faiss:
    """faiss IndexHNSWFlat with the inner-product metric."""

    name = "faiss"

    def __init__(self):
        import faiss

        self.lib = faiss
        self.version = faiss.__version__
        self.index = None

    def build(self, base, m, ef_construction, threads):
        self.lib.omp_set_num_threads(threads)
        self.index = self.lib.IndexHNSWFlat(base.shape[1], m, self.lib.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(base)

    def save(self, path):
        self.lib.write_index(self.index, str(path))

    def load(self, path, n, dim):
        self.index = self.lib.read_index(str(path))

    def prepare_search(self, ef, k, threads):
        self.index.hnsw.efSearch = ef
        self.lib.omp_set_num_threads(threads)

    def search(self, queries, k):
        _, labels = self.index.search(queries, k)
        return labels


ADAPTERS = {adapter.name: adapter for adapter in (Hnswlib, Faiss)}


def recall_at_k(found, gt):
    """Mean over queries of |found ∩ gt| / k."""
    k = gt.shape[1]
    hits = (found[:, :k, None].astype(np.int64) == gt[:, None, :]).any(axis=2)
    return float(hits.sum()) / (gt.shape[0] * k)


def timed_search(adapter, queries, k):
    """Best-of-3 wall time of one search over all queries (one pass if slow)."""
    best = None
    labels = None
    for _ in range(PASSES):
        start = time.perf_counter()
        labels = adapter.search(queries, k)
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
        if elapsed > SINGLE_PASS_SECONDS:
            break
    return best, labels


def run_one(data_dir, dataset, library, threads):
    """Benchmark one library on one dataset in this process; return the result dict."""
    tag = f"{library}/{dataset}"
    folder = data_dir / dataset
    params = json.loads((folder / "params.json").read_text())
    m, ef_construction, k = params["m"], params["ef_construction"], params["k"]
    base = np.ascontiguousarray(np.load(folder / "base.npy"), dtype=np.float32)
    queries = np.ascontiguousarray(np.load(folder / "queries.npy"), dtype=np.float32)
    gt = np.load(folder / "gt.npy").astype(np.int64)[:, :k]
    n, dim = base.shape
    adapter = ADAPTERS[library]()

    if not reset_peak_rss():
        log(tag, "cannot reset VmHWM; the peak may include data loading")
    rss_before = proc_status_bytes("VmRSS")
    log(tag, f"building n={n} dim={dim} M={m} ef_construction={ef_construction} threads={threads}")
    start = time.perf_counter()
    adapter.build(base, m, ef_construction, threads)
    build_seconds = time.perf_counter() - start
    peak_after = proc_status_bytes("VmHWM")
    rss_after = proc_status_bytes("VmRSS")
    log(tag, f"built in {build_seconds:.2f} s ({n / build_seconds:.0f} vectors/s)")

    with tempfile.TemporaryDirectory(prefix="index-peers-") as tmp:
        path = Path(tmp) / f"{library}.index"
        adapter.save(path)
        file_bytes = path.stat().st_size
        start = time.perf_counter()
        adapter.load(path, n, dim)
        reload_seconds = time.perf_counter() - start
    log(tag, f"saved {file_bytes} bytes, reloaded in {reload_seconds:.3f} s")

    # The sweep runs on the reloaded index, which shows that it is usable.
    sweep = []
    for ef in params["ef_search"]:
        adapter.prepare_search(ef, k, 1)
        seconds_1, labels = timed_search(adapter, queries, k)
        adapter.prepare_search(ef, k, threads)
        seconds_all, _ = timed_search(adapter, queries, k)
        point = {
            "ef": ef,
            "recall": recall_at_k(labels, gt),
            "qps_1": len(queries) / seconds_1,
            "qps_all": len(queries) / seconds_all,
        }
        sweep.append(point)
        log(tag, f"ef={ef} recall={point['recall']:.4f} qps_1={point['qps_1']:.0f} qps_all={point['qps_all']:.0f}")

    return {
        "library": library,
        "version": adapter.version,
        "dataset": dataset,
        "n": n,
        "dim": dim,
        "queries": len(queries),
        "m": m,
        "ef_construction": ef_construction,
        "k": k,
        "threads": threads,
        "build_seconds": build_seconds,
        "build_rate": n / build_seconds,
        "memory_bytes_per_vector": (peak_after - rss_before) / n,
        "resident_bytes_per_vector": (rss_after - rss_before) / n,
        "file_bytes": file_bytes,
        "reload_seconds": reload_seconds,
        "sweep": sweep,
    }


def datasets_in(data_dir):
    return sorted(p.name for p in data_dir.iterdir() if (p / "base.npy").is_file())


def main():
    parser = argparse.ArgumentParser(
        description="Benchmark hnswlib and faiss HNSW on the datasets that "
        "`omnibind bench index --out DIR` wrote; results go to DIR/results/."
    )
    parser.add_argument("dir", type=Path, help="benchmark directory (one subdirectory per dataset)")
    parser.add_argument(
        "--libraries",
        default=",".join(LIBRARIES),
        help=f"comma-separated libraries to run (default: {','.join(LIBRARIES)})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="threads for the build and the all-threads search (default: os.cpu_count())",
    )
    parser.add_argument(
        "--one",
        nargs=2,
        metavar=("DATASET", "LIBRARY"),
        help="internal: run one pair in this process and print its JSON to stdout",
    )
    args = parser.parse_args()

    if args.one:
        dataset, library = args.one
        json.dump(run_one(args.dir, dataset, library, args.threads), sys.stdout)
        return 0

    libraries = [name.strip() for name in args.libraries.split(",") if name.strip()]
    unknown = [name for name in libraries if name not in ADAPTERS]
    if unknown:
        parser.error(f"unknown libraries: {', '.join(unknown)} (known: {', '.join(ADAPTERS)})")
    if not args.dir.is_dir():
        parser.error(f"not a directory: {args.dir}")
    datasets = datasets_in(args.dir)
    if not datasets:
        parser.error(f"no dataset (a subdirectory holding base.npy) in {args.dir}")

    results_dir = args.dir / "results"
    results_dir.mkdir(exist_ok=True)
    failures = 0
    for dataset in datasets:
        for library in libraries:
            command = [
                sys.executable, __file__, str(args.dir),
                "--threads", str(args.threads), "--one", dataset, library,
            ]
            child = subprocess.run(command, stdout=subprocess.PIPE, text=True)
            if child.returncode != 0:
                log(f"{library}/{dataset}", f"failed with exit status {child.returncode}")
                failures += 1
                continue
            out = results_dir / f"{library}-{dataset}.json"
            out.write_text(json.dumps(json.loads(child.stdout), indent=2) + "\n")
            log(f"{library}/{dataset}", f"wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
