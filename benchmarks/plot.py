"""PNG plots from a results folder's summary.csv: per model, throughput and p99 against concurrency.

    .bench/tools/bin/python benchmarks/plot.py RESULTS_DIR

Runs in the suite's tools environment (matplotlib), not in Conch's; one line per server, one column per
protocol. Writes ``RESULTS_DIR/<model>.png``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = {"conch": "Conch", "triton": "Triton 2.51", "mlserver": "MLServer 1.7"}
STYLE = {"conch": ("tab:blue", "o"), "triton": ("tab:green", "s"), "mlserver": ("tab:orange", "^")}


def plot(results: Path) -> list[Path]:
    with (results / "summary.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["throughput"]]
    written = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        protocols = list(dict.fromkeys(r["protocol"] for r in mine))
        fig, axes = plt.subplots(2, len(protocols), figsize=(4.2 * len(protocols), 5.6), squeeze=False)
        for col, protocol in enumerate(protocols):
            for server in dict.fromkeys(r["server"] for r in mine):
                points = sorted((int(r["concurrency"]), float(r["throughput"]), float(r["p99_us"]) / 1000)
                                for r in mine if r["protocol"] == protocol and r["server"] == server)  # fmt: skip
                if not points:
                    continue
                color, marker = STYLE.get(server, ("tab:gray", "x"))
                x = [p[0] for p in points]
                axes[0][col].plot(
                    x, [p[1] for p in points], color=color, marker=marker, label=NAMES.get(server, server)
                )
                axes[1][col].plot(
                    x, [p[2] for p in points], color=color, marker=marker, label=NAMES.get(server, server)
                )
            for row, label in enumerate(("infer/s", "p99 latency (ms)")):
                ax = axes[row][col]
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted({int(r["concurrency"]) for r in mine}))
                ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
                ax.set_ylabel(label)
                ax.set_ylim(bottom=0)
                ax.grid(alpha=0.3)
                if row == 0:
                    ax.set_title(f"{model}, {protocol.upper()}", fontsize=10)
                else:
                    ax.set_xlabel("concurrency")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = results / f"{model}.png"
        fig.savefig(path, dpi=72)
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    for written in plot(Path(sys.argv[1])):
        print(written)
