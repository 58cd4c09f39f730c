"""The benchmark suite (``python -m benchmarks``) end to end on a tiny subset: one model, one level, HTTP, the floor."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_CANDIDATES = [os.environ.get("PERF_ANALYZER", ""), str(ROOT / ".bench/bin/perf_analyzer"),
               str(Path.home() / ".cache/conch-tools/bin/perf_analyzer"), shutil.which("perf_analyzer") or ""]  # fmt: skip
PERF_ANALYZER = next((c for c in _CANDIDATES if c and Path(c).exists()), None)
#: matplotlib lives in the suite's own environment; plots are checked where it was installed already
TOOLS = ROOT / ".bench/tools/bin/python"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not PERF_ANALYZER, reason="perf_analyzer is not installed here (python -m benchmarks installs it)"
    ),
]


def test_short_run_writes_csv_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "results"
    plots = TOOLS.exists()
    args = [sys.executable, "-m", "benchmarks", "--short", "--models", "add_sub_onnx", "--concurrency", "1",
            "--protocols", "http", "--peers", "floor", "--interval-ms", "300", "--raw-seconds", "0.2",
            "--out", str(out), *([] if plots else ["--no-plots"])]  # fmt: skip
    env = {**os.environ, "PERF_ANALYZER": str(PERF_ANALYZER)}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["server"], r["model"], r["protocol"], r["concurrency"]) for r in rows] == [
        ("conch", "add_sub_onnx", "http", "1"),
        ("floor", "add_sub_onnx", "http", "1"),
    ]
    assert float(rows[0]["throughput"]) > 0
    assert float(rows[0]["p99_us"]) >= float(rows[0]["p50_us"]) > 0
    assert float(rows[0]["cpu_per_1k"]) > 0  # the server's CPU time was read around the measurement
    assert list((out / "raw").glob("conch-add_sub_onnx-http-c1-r1.csv"))
    with (out / "baselines.csv").open() as f:
        assert float(next(csv.DictReader(f))["median_us"]) > 0

    table = (out / "table.md").read_text()
    assert "## Serving overhead at concurrency 1" in table
    assert "| add_sub_onnx | HTTP | 1 | Conch |" in table
    assert "| floor p50 µs | Conch above floor µs |" in table
    assert float(rows[1]["p50_us"]) > 0  # perf_analyzer ran against the canned answers
    if plots:
        png = out / "add_sub_onnx.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size < 100_000
