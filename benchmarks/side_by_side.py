"""Two or more Conch checkouts (or settings) side by side on one machine, to see what a change gives.

    .venv/bin/python -m benchmarks.side_by_side --server base=../base/.venv/bin/python \\
        --server new=.venv/bin/python [--models add_sub_onnx,add_sub_python] [--protocols http,grpc] \\
        [--concurrency 1,16] [--rounds 3] [--interval-ms 1500] [--env new:GRPC_EXPERIMENTS=...] \
        [--arg new:--backend-config=python,spin-microseconds=0]

Each ``--server LABEL=PYTHON`` runs ``PYTHON -m conch serve`` (so a second worktree with its own
``./dev setup`` serves the old code) over the benchmark suite's Conch repository (``benchmarks.models``:
``add_sub_python[_dyn]``, ``add_sub_onnx[_dyn]``, ``identity``, ``mlp``). All servers stay up; for every
cell (model, protocol, concurrency) perf_analyzer measures them one right after the other, in turns
whose order alternates, for several rounds. On a machine shared with other work only such
comparisons mean something; the table gives the median of the rounds: infer/s, p50 latency (µs) and
the server's CPU time per inference (its process group, workers included, from ``/proc``), which
varies less than latency when the machine is busy.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from benchmarks.install import perf_analyzer
from benchmarks.models import MODELS, write_conch, write_graph

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def write_repository(root: Path) -> None:
    """The suite's Conch repository (every model of ``benchmarks.models``), graphs beside it."""
    graphs: dict[str, Path] = {}
    for model in MODELS.values():
        if model.graph is not None:
            graphs[model.name] = root.parent / "graphs" / f"{model.name}.onnx"
            write_graph(model, graphs[model.name])
    write_conch(root, list(MODELS.values()), graphs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One ``conch serve`` in a session of its own (so its CPU time and its workers can be found)."""

    def __init__(
        self, label: str, python: str, repo: Path, log: Path, env: dict[str, str], extra: list[str]
    ) -> None:
        self.label = label
        self.http, self.grpc = free_port(), free_port()
        args = [python, "-m", "conch", "serve", f"--model-repository={repo}", f"--http-port={self.http}",
                f"--grpc-port={self.grpc}", "--allow-metrics=false", "--log-info=false",
                "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", *extra]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env}
        )
        self.log = log

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.label} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.label} did not become ready:\n{self.log.read_text()[-3000:]}")

    def cpu_seconds(self) -> float:
        """User plus system time of every process in the server's session."""
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.process.pid:  # the session id
                total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def measure(tool: str, server: Server, model: str, protocol: str, concurrency: int, interval_ms: int,
            out: Path) -> tuple[float, float, float] | None:  # fmt: skip
    """infer/s, p50 µs and server CPU µs per inference of one perf_analyzer run (None: never stable)."""
    port = server.http if protocol == "http" else server.grpc
    args = [tool, "-m", model, "-u", f"127.0.0.1:{port}", "-i", protocol, "-b", "1",
            f"--concurrency-range={concurrency}", f"--measurement-interval={interval_ms}", "--percentile=50",
            "--max-trials=10", "--stability-percentage=50", "-f", str(out)]  # fmt: skip
    before, started = server.cpu_seconds(), time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:  # a busy machine: accept a looser stability once
        args[args.index("--stability-percentage=50")] = "--stability-percentage=100"
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        print(
            f"{server.label} {model} {protocol} c={concurrency}: {(done.stdout + done.stderr)[-300:]}", file=sys.stderr
        )
        return None
    cpu, elapsed = server.cpu_seconds() - before, time.monotonic() - started
    with out.open() as f:
        row = next(csv.DictReader(f))
    rate = float(row["Inferences/Second"])
    return rate, float(row["p50 latency"]), cpu / elapsed / rate * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", action="append", required=True, help="LABEL=PYTHON (repeat)")
    parser.add_argument("--env", action="append", default=[], help="LABEL:NAME=VALUE, an environment variable")
    parser.add_argument("--arg", action="append", default=[], help="LABEL:ARG, one more argument of conch serve")
    parser.add_argument("--models", default="add_sub_onnx,add_sub_python,identity")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--concurrency", default="1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval-ms", type=int, default=1500)
    parser.add_argument("--perf-analyzer", default=None)
    ns = parser.parse_args()
    ns.perf_analyzer = ns.perf_analyzer or str(perf_analyzer())
    envs: dict[str, dict[str, str]] = {}
    for item in ns.env:
        label, setting = item.split(":", 1)
        name, value = setting.split("=", 1)
        envs.setdefault(label, {})[name] = value
    extras: dict[str, list[str]] = {}
    for item in ns.arg:
        label, arg = item.split(":", 1)
        extras.setdefault(label, []).append(arg)
    cells = [(model, protocol, int(level)) for model in ns.models.split(",") for protocol in ns.protocols.split(",")
             for level in ns.concurrency.split(",")]  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="conch-side-by-side-"))
    (work / "repo").mkdir()
    write_repository(work / "repo")
    servers: list[Server] = []
    results: dict[tuple[str, str, int, str], list[tuple[float, float, float]]] = {}
    try:
        for spec in ns.server:
            label, python = spec.split("=", 1)
            servers.append(Server(label, python, work / "repo", work / f"{label}.log", envs.get(label, {}), extras.get(label, [])))
        for server in servers:
            server.wait_ready()
        for round_ in range(ns.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]
            for model, protocol, level in cells:
                for server in order:
                    result = measure(ns.perf_analyzer, server, model, protocol, level, ns.interval_ms, work / "out.csv")
                    print(f"round {round_ + 1} {server.label} {model} {protocol} c={level}: {result}", file=sys.stderr)
                    if result is not None:
                        results.setdefault((model, protocol, level, server.label), []).append(result)
    finally:
        for server in servers:
            server.stop()
    labels = [server.label for server in servers]
    print(
        "| model | protocol | concurrency | "
        + " | ".join(f"{x} infer/s | {x} p50 µs | {x} CPU µs/inf" for x in labels)
        + " |"
    )
    print("|" + "---|" * (3 + 3 * len(labels)))
    for model, protocol, level in cells:
        row = []
        for label in labels:
            got = results.get((model, protocol, level, label), [])
            row += [f"{statistics.median(r[i] for r in got):,.0f}" if got else "—" for i in range(3)]
        print(f"| {model} | {protocol} | {level} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
