"""Python backend: Conch and Triton 2.51 side by side on Triton's add_sub ``model.py``, in one run.

    .venv/bin/python benchmarks/python_backend.py [--concurrency 1,4,16] [--interval-ms 2000] [--no-triton]

Writes a repository with the add_sub Python model twice (``add_sub``: default scheduler;
``add_sub_dyn``: ``dynamic_batching {}``; two FP32 ``[batch, 16]`` inputs, one instance), serves it
with ``conch serve`` and with ``/work/shared/tools/triton-reference serve`` (the real Triton 2.51 and
its Python backend) at the same time, and drives each with perf_analyzer over HTTP and gRPC at every
concurrency, one server after the other for each cell. ``--identity`` adds Conch's built-in identity
backend on the same signature: the cost of the server without any Python model. Prints a Markdown
table of infer/s, p50 and p99 latency.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from servers import start, stop  # noqa: E402 - run as a script from benchmarks/

ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", Path.home() / ".cache/conch-tools/bin/perf_analyzer"))

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{extra}
"""


def write_repository(root: Path, with_identity: bool = False) -> None:
    """add_sub and add_sub_dyn; with ``with_identity`` also Conch's built-in identity backend on the same
    signature (``identity``, ``identity_dyn``): what the server costs without any Python model."""
    model = (ROOT / "examples/model_repository/add_sub/1/model.py").read_text()
    for name, extra in (("add_sub", ""), ("add_sub_dyn", "dynamic_batching { }")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(model)
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name, extra=extra))
        if with_identity:
            twin = name.replace("add_sub", "identity")
            (root / twin / "1").mkdir(parents=True)
            config = CONFIG.format(name=twin, extra=extra).replace('backend: "python"', 'backend: "identity"')
            (root / twin / "config.pbtxt").write_text(config)


def perf(model: str, url: str, protocol: str, concurrency: int, interval_ms: int, out: Path) -> dict[str, float]:
    command = [
        str(PERF_ANALYZER), "-m", model, "-u", url, "-i", protocol, "-b", "1",
        f"--concurrency-range={concurrency}", f"--measurement-interval={interval_ms}",
        "--max-trials=10", "--stability-percentage=50", "-f", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not out.exists():  # a busy machine: accept a looser stability once
        command[command.index("--stability-percentage=50")] = "--stability-percentage=100"
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not out.exists():
        print(
            f"perf_analyzer failed for {model} {protocol} c={concurrency}: {(done.stdout + done.stderr)[-400:]}",
            file=sys.stderr,
        )
        return {"infer/s": float("nan"), "p50": float("nan"), "p99": float("nan")}
    with out.open() as f:
        row = next(csv.DictReader(f))
    return {
        "infer/s": float(row["Inferences/Second"]),
        "p50": float(row["p50 latency"]) / 1000.0,
        "p99": float(row["p99 latency"]) / 1000.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--interval-ms", type=int, default=2000)
    parser.add_argument("--no-triton", action="store_true", help="measure Conch only")
    parser.add_argument(
        "--identity", action="store_true", help="also Conch's identity backend on the same signature (the server alone)"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    servers = ["conch"] + ([] if args.no_triton else ["triton"])
    work = Path(tempfile.mkdtemp(prefix="conch-bench-python-"))
    results: dict[tuple[str, str, str, int], dict[str, float]] = {}
    try:
        repo = work / "repo"
        write_repository(repo, with_identity=args.identity)
        triton_repo = work / "triton_repo"
        write_repository(triton_repo)
        # Every server runs for the whole measurement, and each cell is measured on all of them back to
        # back, so a busy machine weighs on both sides alike.
        running: dict[str, tuple[subprocess.Popen[bytes], int, int]] = {}
        try:
            for kind in servers:
                running[kind] = start(kind, repo if kind == "conch" else triton_repo, work / f"{kind}.log")
            columns = [(kind, "add_sub") for kind in servers] + ([("identity", "identity")] if args.identity else [])
            for model in ("add_sub", "add_sub_dyn"):
                for protocol in ("http", "grpc"):
                    for level in levels:
                        for column, served in columns:
                            _, http, grpc = running["conch" if column == "identity" else column]
                            port = http if protocol == "http" else grpc
                            name = model.replace("add_sub", served)
                            out = work / f"{column}-{model}-{protocol}-{level}.csv"
                            result = perf(name, f"127.0.0.1:{port}", protocol, level, args.interval_ms, out)
                            results[(column, model, protocol, level)] = result
                            print(f"{column:8} {name:12} {protocol:4} c={level:<3} {result['infer/s']:9.0f} infer/s  "
                                  f"p50 {result['p50']:7.2f} ms  p99 {result['p99']:7.2f} ms", file=sys.stderr)  # fmt: skip
        finally:
            for process, _, _ in running.values():
                stop(process)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.identity:
        servers.append("identity")
    header = (
        "| model | protocol | concurrency | "
        + " | ".join(f"{k} infer/s | {k} p50 ms | {k} p99 ms" for k in servers)
        + " |"
    )
    print(header)
    print("|" + "---|" * (3 + 3 * len(servers)))
    for model in ("add_sub", "add_sub_dyn"):
        for protocol in ("http", "grpc"):
            for level in levels:
                cells = []
                for kind in servers:
                    r = results[(kind, model, protocol, level)]
                    cells += [f"{r['infer/s']:.0f}", f"{r['p50']:.2f}", f"{r['p99']:.2f}"]
                print(f"| {model} | {protocol} | {level} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
