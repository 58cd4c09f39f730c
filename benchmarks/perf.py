"""One perf_analyzer measurement of one server, with the server's CPU time around it."""

from __future__ import annotations

import csv
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .servers import Server


@dataclass(frozen=True)
class Settings:
    """How perf_analyzer measures: window length, stability window in percent, trials before giving up."""

    interval_ms: int
    stability: int
    max_trials: int


#: How long one perf_analyzer run may take. perf_analyzer 2.51 summarises each window on its main thread
#: (``InferenceProfiler::ValidLatencyMeasurement``) while its clients keep sending; sharing two cores
#: with a server answering 15,000+ infer/s at concurrency 64, the summaries fall further and further
#: behind and it never finishes (seen with Conch's ONNX models over HTTP; the server keeps answering).
PERF_ANALYZER_TIMEOUT_S = 120


@dataclass
class Measurement:
    """One cell of one repeat; ``throughput`` is None when perf_analyzer failed (``error`` says why)."""

    server: str
    model: str
    protocol: str
    concurrency: int
    repeat: int
    throughput: float | None = None  # infer/s
    p50_us: float | None = None
    p99_us: float | None = None
    cpu_per_1k: float | None = None  # server CPU seconds per 1,000 inferences
    stable: bool = True  # False: perf_analyzer's stability window was never met; the last windows are shown
    csv: str = ""
    error: str = ""


def measure(tool: Path, server: Server, model: str, protocol: str, concurrency: int, repeat: int,
            settings: Settings, out: Path) -> Measurement:  # fmt: skip
    """perf_analyzer at one concurrency, batch 1; CSV at ``out``.

    When the stability window is never met (a shared, busy machine), it runs once more accepting any
    three windows, and the measurement is marked unstable.
    """
    result = Measurement(server.kind, model, protocol, concurrency, repeat, csv=out.name)
    cpu, count = server.cpu_seconds(), server.inferences(model)
    for stability in (settings.stability, 1000):
        args = [str(tool), "-m", model, "-i", protocol, "-u", server.url(protocol), "-b", "1",
                "--concurrency-range", str(concurrency), "--measurement-interval", str(settings.interval_ms),
                "--max-trials", str(settings.max_trials), "--stability-percentage", str(stability),
                "-f", str(out)]  # fmt: skip
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=PERF_ANALYZER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            result.error = (
                f"perf_analyzer did not finish within {PERF_ANALYZER_TIMEOUT_S} s (at tens of thousands of "
                "infer/s on the server's cores its window summaries fall behind its own clients)"
            )
            return result
        if done.returncode == 0 and out.exists():
            break
        text = (done.stdout + done.stderr).strip()
        if "stable measurement" not in text:
            result.error = text.splitlines()[-1] if text else f"perf_analyzer exited with {done.returncode}"
            return result
        result.stable = False
    else:
        result.error = "no measurement"
        return result
    with out.open() as f:
        row = next(csv.DictReader(f))
    result.throughput = float(row["Inferences/Second"])
    result.p50_us = float(row["p50 latency"])
    result.p99_us = float(row["p99 latency"])
    spent, served = server.cpu_seconds() - cpu, server.inferences(model)
    if count is not None and served is not None and served > count:
        result.cpu_per_1k = spent / (served - count) * 1000
    return result
