#!/usr/bin/env python3
"""Report of the ANN index benchmark: plots and a Markdown fragment.

Reads every DIR/results/*.json, the ones benches/peers/index_peers.py writes
for the peers and the ones `omnibind bench index` writes for omnibind (any
library name is handled alike; `omnibind-hnsw` is the one compared with the
peers). This script owns, per dataset:

- PLOT_DIR/index-<dataset>-qps1.svg and -qpsall.svg: recall@k against
  queries/s (one thread, all threads), log-scale queries/s, a line per library;
- in OUT.md: tables of build rate, memory, file size and reload time, of the
  ef_search sweep, and of single-thread queries/s at recall@k = 0.95 and 0.99
  with omnibind-hnsw's ratios over hnswlib and faiss.

OUT.md ends with the machine-readable lines, also printed to stdout, for the
dataset `synthetic` (or the first dataset when there is none):

    qps_ratio_vs_hnswlib@0.95: X
    qps_ratio_vs_hnswlib@0.99: X
"""

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# A fixed salt for the SVG element ids, so an unchanged plot gives an unchanged file.
matplotlib.rcParams["svg.hashsalt"] = "omnibind-bench"
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

OMNIBIND = "omnibind-hnsw"
PEERS = ("hnswlib", "faiss")
TARGETS = (0.95, 0.99)
RATIO_DATASET = "synthetic"
# Fields every result has; any other top-level scalar is shown as a note.
KNOWN_FIELDS = {
    "library", "version", "dataset", "n", "dim", "queries", "m", "ef_construction", "k",
    "threads", "build_seconds", "build_rate", "memory_bytes_per_vector",
    "resident_bytes_per_vector", "file_bytes", "reload_seconds", "sweep",
}


def load_results(results_dir):
    """{dataset: {library: result}} from every *.json in results_dir."""
    by_dataset = {}
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        by_dataset.setdefault(result["dataset"], {})[result["library"]] = result
    return by_dataset


def library_order(libraries):
    """omnibind's libraries first, then the rest, each group alphabetically."""
    return sorted(libraries, key=lambda name: (not name.startswith("omnibind"), name))


def qps_at_recall(sweep, target):
    """Single-thread queries/s at recall == target, interpolated linearly
    between the two sweep points (in ef order) that bracket it; the first
    point's value when it already reaches the target; None when none does."""
    points = sorted(sweep, key=lambda point: point["ef"])
    if points and points[0]["recall"] >= target:
        return points[0]["qps_1"]
    for low, high in zip(points, points[1:]):
        if low["recall"] < target <= high["recall"]:
            t = (target - low["recall"]) / (high["recall"] - low["recall"])
            return low["qps_1"] + t * (high["qps_1"] - low["qps_1"])
    return None


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def fmt_number(value):
    return f"{value:,.0f}"


def fmt_qps_at(sweep, target):
    value = qps_at_recall(sweep, target)
    return "not reached" if value is None else fmt_number(value)


def fmt_ratio(value):
    return "n/a" if value is None else f"{value:.2f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def notes(result):
    extra = {key: value for key, value in result.items()
             if key not in KNOWN_FIELDS and isinstance(value, (str, int, float, bool))}
    return ", ".join(f"{key}={value}" for key, value in sorted(extra.items()))


def plot(dataset, results, key, threads_label, path):
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for library in library_order(results):
        points = sorted(results[library]["sweep"], key=lambda point: point["ef"])
        axes.plot([p["recall"] for p in points], [p[key] for p in points],
                  marker="o", markersize=3, label=library)
    for target in TARGETS:
        axes.axvline(target, color="grey", linestyle=":", linewidth=0.8)
    k = next(iter(results.values()))["k"]
    axes.set_yscale("log")
    axes.set_xlabel(f"recall@{k}")
    axes.set_ylabel(f"queries/s ({threads_label})")
    axes.set_title(f"{dataset}: recall@{k} vs queries/s, {threads_label}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    # No date in the metadata either.
    figure.savefig(path, format="svg", metadata={"Date": None})
    plt.close(figure)


def dataset_section(dataset, results, link_prefix):
    libraries = library_order(results)
    first = results[libraries[0]]
    k = first["k"]
    threads = first["threads"]
    lines = [
        f"### Dataset `{dataset}`",
        "",
        f"n = {first['n']:,}, dim = {first['dim']}, {first['queries']:,} queries, "
        f"M = {first['m']}, ef_construction = {first['ef_construction']}, k = {k}, "
        f"{threads} threads for the build and the all-threads search.",
        "",
        f"![{dataset}: recall@{k} vs queries/s, 1 thread]({link_prefix}index-{dataset}-qps1.svg)",
        f"![{dataset}: recall@{k} vs queries/s, all threads]({link_prefix}index-{dataset}-qpsall.svg)",
        "",
        "#### Build, memory and persistence",
        "",
    ]
    rows = []
    for library in libraries:
        r = results[library]
        rows.append([
            library, r["version"], f"{r['build_seconds']:.2f}", fmt_number(r["build_rate"]),
            fmt_number(r["memory_bytes_per_vector"]), fmt_number(r["resident_bytes_per_vector"]),
            f"{r['file_bytes'] / 2**20:,.1f}", f"{r['reload_seconds']:.3f}", notes(r),
        ])
    lines += table(
        ["library", "version", "build s", "build rate (vectors/s)", "peak memory (B/vector)",
         "resident (B/vector)", "file (MiB)", "reload s", "notes"],
        rows,
    )

    lines += ["", "#### ef_search sweep", ""]
    for library in libraries:
        points = sorted(results[library]["sweep"], key=lambda point: point["ef"])
        lines += [f"`{library}`", ""]
        lines += table(
            ["ef", f"recall@{k}", "QPS 1 thread", f"QPS {results[library]['threads']} threads"],
            [[p["ef"], f"{p['recall']:.4f}", fmt_number(p["qps_1"]), fmt_number(p["qps_all"])]
             for p in points],
        )
        lines.append("")

    lines += [f"#### At recall@{k} = {' and '.join(str(t) for t in TARGETS)}", ""]
    lines += table(
        ["library"] + [f"QPS 1 thread @ {target}" for target in TARGETS],
        [[library] + [fmt_qps_at(results[library]["sweep"], target) for target in TARGETS]
         for library in libraries],
    )
    lines += [
        "",
        "QPS is interpolated linearly between the two sweep points that bracket the "
        "recall; where the smallest ef already reaches it, that point's QPS is used.",
        "",
    ]
    rows = []
    for peer in PEERS:
        ours, theirs = results.get(OMNIBIND), results.get(peer)
        row = [f"{OMNIBIND} / {peer}"]
        for target in TARGETS:
            row.append(fmt_ratio(ratio(
                ours and qps_at_recall(ours["sweep"], target),
                theirs and qps_at_recall(theirs["sweep"], target),
            )))
        for field in ("memory_bytes_per_vector", "build_rate"):
            row.append(fmt_ratio(ratio(ours and ours[field], theirs and theirs[field])))
        rows.append(row)
    lines += [
        f"Ratios are {OMNIBIND}'s value over the peer's: above 1 is better for QPS and "
        "build rate, worse for memory.",
        "",
    ]
    lines += table(
        ["ratio"] + [f"QPS 1 thread @ {target}" for target in TARGETS]
        + ["peak memory per vector", "build rate"],
        rows,
    )
    lines.append("")
    return lines


def ratio_lines(results):
    """The machine-readable lines: omnibind-hnsw over hnswlib, single-thread QPS."""
    ours, theirs = results.get(OMNIBIND), results.get("hnswlib")
    lines = []
    for target in TARGETS:
        value = ratio(
            ours and qps_at_recall(ours["sweep"], target),
            theirs and qps_at_recall(theirs["sweep"], target),
        )
        lines.append(f"qps_ratio_vs_hnswlib@{target}: {fmt_ratio(value)}")
    return lines


def main():
    parser = argparse.ArgumentParser(
        description="Plot and tabulate the ANN index benchmark results in DIR/results/."
    )
    parser.add_argument("dir", type=Path, help="benchmark directory holding results/*.json")
    parser.add_argument("--markdown", type=Path, required=True, metavar="OUT.md",
                        help="where to write the Markdown fragment")
    parser.add_argument("--plots", type=Path, required=True, metavar="PLOT_DIR",
                        help="where to write the SVG plots")
    parser.add_argument("--plot-link-prefix", default="docs/bench/",
                        help="prefix of the image links in the Markdown, relative to where "
                        "the fragment ends up (default: docs/bench/, for BENCHMARKS.md at "
                        "the repository root)")
    parser.add_argument("--machine", help="description of the machine, quoted in the fragment")
    parser.add_argument("--command", help="command that produced the results, quoted in the fragment")
    args = parser.parse_args()

    by_dataset = load_results(args.dir / "results")
    if not by_dataset:
        parser.error(f"no results in {args.dir / 'results'}")
    datasets = sorted(by_dataset)

    args.plots.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        results = by_dataset[dataset]
        plot(dataset, results, "qps_1", "1 thread", args.plots / f"index-{dataset}-qps1.svg")
        threads = next(iter(results.values()))["threads"]
        plot(dataset, results, "qps_all", f"{threads} threads",
             args.plots / f"index-{dataset}-qpsall.svg")

    lines = ["## ANN index: omnibind HNSW vs hnswlib and faiss", ""]
    if args.machine:
        lines += [f"Machine: {args.machine}", ""]
    if args.command:
        lines += ["Command:", "", "```", args.command, "```", ""]
    for dataset in datasets:
        lines += dataset_section(dataset, by_dataset[dataset], args.plot_link_prefix)

    ratio_dataset = RATIO_DATASET if RATIO_DATASET in by_dataset else datasets[0]
    final = ratio_lines(by_dataset[ratio_dataset])
    lines += [f"Single-thread QPS of {OMNIBIND} over hnswlib on `{ratio_dataset}`:", ""] + final
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text("\n".join(lines) + "\n")
    print("\n".join(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
