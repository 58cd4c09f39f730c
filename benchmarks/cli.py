"""``python -m benchmarks``: Conch, its peers and the raw framework calls, measured side by side in one run.

    ./dev bench [--short] [--peers triton,mlserver|none] [--models ...] [--protocols http,grpc]
                [--concurrency 1,4,16,64] [--repeats N] [--out DIR]

Installs what it needs under ``.bench/`` (perf_analyzer, matplotlib, and each peer in its own virtual
environment), writes the benchmark repositories, times each framework model's raw call, starts Conch and
every peer on free loopback ports (all stay up for the whole run), and measures every (model, protocol,
concurrency) on each server right after the other, so that load from elsewhere weighs on all alike.
Results go to ``results/<date>_<time>-<mode>/``: ``table.md``, the CSVs and one PNG per model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from . import baseline, install, models, perf, report, servers
from .install import InstallError, say

MODES = {
    "short": dict(models="add_sub_python,add_sub_onnx", concurrency="1,16", repeats=1, interval_ms=500,
                  stability=50, max_trials=5, raw_seconds=1.0),
    "full": dict(models=",".join(models.MODELS), concurrency="1,4,16,64", repeats=2, interval_ms=1000,
                 stability=25, max_trials=6, raw_seconds=3.0),
}  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--short", action="store_true", help="quick check (under 3 minutes): 2 models, c=1,16, 1 repeat"
    )
    parser.add_argument("--peers", default="triton,mlserver,floor",
                        help="peer servers to install and measure (floor: canned answers, benchmarks/floor.py), or 'none'")  # fmt: skip
    parser.add_argument("--models", help=f"comma-separated, from: {', '.join(models.MODELS)}")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--concurrency", help="comma-separated levels")
    parser.add_argument("--repeats", type=int, help="measurements of each cell; the table shows their median")
    parser.add_argument("--interval-ms", type=int, help="perf_analyzer's measurement window")
    parser.add_argument("--stability", type=int, help="perf_analyzer's stability window, percent")
    parser.add_argument("--max-trials", type=int, help="windows perf_analyzer may take to become stable")
    parser.add_argument("--raw-seconds", type=float, help="seconds of each raw baseline loop")
    parser.add_argument("--out", type=Path, help="results folder (default results/<date>_<time>-<mode>)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs (and matplotlib)")
    ns = parser.parse_args(argv)
    ns.mode = "short" if ns.short else "full"
    for key, value in MODES[ns.mode].items():
        if getattr(ns, key) is None:
            setattr(ns, key, value)
    ns.models = [name for name in ns.models.split(",") if name]
    unknown = [name for name in ns.models if name not in models.MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(models.MODELS)}")
    ns.protocols = [p for p in ns.protocols.split(",") if p]
    ns.concurrency = [int(c) for c in ns.concurrency.split(",") if c]
    ns.peers = [] if ns.peers in ("", "none") else ns.peers.split(",")
    if set(ns.peers) - {"triton", "mlserver", "floor"}:
        parser.error("--peers takes triton, mlserver, floor or none")
    return ns


def main(argv: list[str] | None = None) -> Path:
    ns = parse(argv)
    began = time.monotonic()
    stamp = datetime.now(timezone.utc)
    out: Path = ns.out or install.ROOT / "results" / f"{stamp:%Y-%m-%d_%H%M}-{ns.mode}"
    (out / "raw").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    try:
        tool = install.perf_analyzer()
        plotter = None if ns.no_plots else install.tools()
    except InstallError as error:
        raise SystemExit(f"[bench] cannot run: {error}") from None
    peers: dict[str, install.Command] = {}
    for peer in [p for p in ns.peers if p != "floor"]:
        try:
            peers[peer] = install.triton() if peer == "triton" else install.mlserver()
        except InstallError as error:
            say(f"skipping {peer}: it could not be installed ({error})")

    chosen = [models.MODELS[name] for name in ns.models]
    work = Path(tempfile.mkdtemp(prefix="conch-bench-"))
    cpu_start, load_start = _cpu_busy(), os.getloadavg()
    try:
        measurements, baselines = _run(ns, tool, peers, chosen, work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    busy = _cpu_busy(cpu_start)
    cells = report.summarise(measurements)
    report.write_csv(out / "measurements.csv", list(measurements))
    report.write_csv(out / "summary.csv", list(cells))
    report.write_csv(out / "baselines.csv", list(baselines.values()))
    minutes = (time.monotonic() - began) / 60
    measured = sorted([*peers, *(["floor"] if "floor" in ns.peers else [])])
    header = _header(ns, stamp, tool, measured, load_start, busy, minutes)
    (out / "table.md").write_text(report.markdown(cells, baselines, header))
    (out / "run.json").write_text(json.dumps({"argv": sys.argv[1:] if argv is None else argv, "mode": ns.mode,
                                              "started": stamp.isoformat(), "minutes": round(minutes, 2),
                                              "settings": {k: getattr(ns, k) for k in MODES[ns.mode]}}, indent=2))  # fmt: skip
    if plotter is not None:
        done = subprocess.run([str(plotter), str(Path(__file__).with_name("plot.py")), str(out)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            say(f"plots failed: {done.stderr.strip()[-800:]}")
    print((out / "table.md").read_text())
    say(f"done in {minutes:.1f} min: {out}")
    return out


def _run(ns: argparse.Namespace, tool: Path, peers: dict[str, install.Command], chosen: list[models.Model],
         work: Path, out: Path) -> tuple[list[perf.Measurement], dict[str, baseline.Baseline]]:  # fmt: skip
    graphs: dict[str, Path] = {}
    for model in chosen:
        if model.kind == "onnx":
            graphs[model.name] = work / "graphs" / f"{model.name}.onnx"
            models.write_graph(model, graphs[model.name])
    baselines = _baselines(chosen, graphs, ns.raw_seconds, {})

    repos = {"conch": models.write_conch(work / "conch", chosen, graphs)}
    if "triton" in peers:
        repos["triton"] = models.write_triton(work / "triton", chosen, graphs)
    if "mlserver" in peers:
        repos["mlserver"] = models.write_mlserver(work / "mlserver", chosen, graphs)
    if "floor" in ns.peers:
        repos["floor"] = work / "conch"  # answers copied from Conch's
    running: dict[str, servers.Server] = {}
    measurements: list[perf.Measurement] = []
    try:
        for kind, repo in repos.items():
            say(f"starting {kind} ...")
            try:
                running[kind] = servers.start(kind, repo, out / "logs" / f"{kind}.log", peers.get(kind),
                                              running.get("conch"), [m.name for m in chosen])  # fmt: skip
            except RuntimeError as error:
                if kind == "conch":
                    raise
                say(f"skipping {kind}: it did not start ({str(error).splitlines()[0]}; see logs/{kind}.log)")
        settings = perf.Settings(ns.interval_ms, ns.stability, ns.max_trials)
        order = list(running)
        for repeat in range(ns.repeats):
            # Every cell on every server back to back; the order of the servers turns with each repeat.
            turn = order[repeat % len(order) :] + order[: repeat % len(order)]
            for model in chosen:
                for protocol in ns.protocols:
                    for level in ns.concurrency:
                        for kind in turn:
                            if kind == "floor":  # the machine's own cost: HTTP at concurrency 1
                                if protocol != "http" or level != 1:
                                    continue
                            elif kind != "conch" and kind not in model.peers:
                                continue
                            name = f"{kind}-{model.name}-{protocol}-c{level}-r{repeat + 1}.csv"
                            m = perf.measure(tool, running[kind], model.name, protocol, level, repeat + 1, settings,
                                             out / "raw" / name)  # fmt: skip
                            measurements.append(m)
                            say(_line(m))
    finally:
        for server in running.values():
            servers.stop(server)
    return measurements, _baselines(chosen, graphs, ns.raw_seconds, baselines)


def _baselines(chosen: list[models.Model], graphs: dict[str, Path], seconds: float,
               before: dict[str, baseline.Baseline]) -> dict[str, baseline.Baseline]:  # fmt: skip
    """Each framework model's raw call, timed before the servers start and again after they stop: the
    faster of the two is kept, so that a burst of load elsewhere during one of them does not make the
    floor look higher than it is."""
    best = dict(before)
    for model in chosen:
        if model.raw:
            result = baseline.measure(model, graphs.get(model.name), seconds)
            say(f"raw {model.name}: {result.call}: median {result.median_us:.1f} µs, {result.calls_per_s:,.0f} calls/s")
            if model.name not in best or result.median_us < best[model.name].median_us:
                best[model.name] = result
    return best


def _line(m: perf.Measurement) -> str:
    where = f"r{m.repeat} {m.server:8} {m.model:18} {m.protocol:4} c={m.concurrency:<3}"
    if m.throughput is None:
        return f"{where} failed: {m.error}"
    cpu = f"{m.cpu_per_1k:.3f}" if m.cpu_per_1k is not None else "?"
    mark = "" if m.stable else " (unstable)"
    return (f"{where} {m.throughput:9,.0f} infer/s  p50 {m.p50_us / 1000:6.2f} ms  p99 {m.p99_us / 1000:6.2f} ms  "
            f"cpu {cpu} s/1k{mark}")  # fmt: skip


def _cpu_busy(since: tuple[int, int] | None = None) -> tuple[int, int]:
    """Machine-wide (busy, total) jiffies from /proc/stat; with ``since``, the difference."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    busy, total = sum(values) - values[3] - values[4], sum(values)
    return (busy - since[0], total - since[1]) if since else (busy, total)


def _header(ns: argparse.Namespace, stamp: datetime, tool: Path, peers: list[str], load: tuple[float, ...],
            busy: tuple[int, int], minutes: float) -> list[str]:  # fmt: skip
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())  # fmt: skip
    done = subprocess.run([str(tool), "--version"], capture_output=True, text=True)
    version = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["?"]
    return [
        f"# Conch benchmark, {stamp:%Y-%m-%d %H:%M} UTC ({ns.mode} mode, {minutes:.1f} min)",
        "",
        f"- Machine: {os.cpu_count()} × {cpu}, Python {platform.python_version()}; {version[0]} "
        "and every server on the same cores; one server measured at a time, the others idle.",
        f"- Load average at the start: {load[0]:.2f}; the machine's CPUs were {100 * busy[0] / max(busy[1], 1):.0f} % "
        "busy over the run (all processes, the benchmark's included).",
        f"- Peers: {', '.join(servers.NAMES[p] for p in peers) or 'none'}. Models: {', '.join(ns.models)}.",
        f"- perf_analyzer: batch 1, concurrency {', '.join(map(str, ns.concurrency))}, {ns.interval_ms} ms windows, "
        f"stability {ns.stability} % within {ns.max_trials} windows; {ns.repeats} repeat(s) per cell, servers in turn.",
        "- Command: `" + " ".join(["python -m benchmarks", *sys.argv[1:]]) + "`",
    ]
