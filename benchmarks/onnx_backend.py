"""ONNX Runtime backend: Conch under perf_analyzer beside a raw ``InferenceSession.run`` loop, in one run.

    .venv/bin/python benchmarks/onnx_backend.py [--concurrency 1,4,16] [--interval-ms 2000] [--no-triton]

Builds Triton's add_sub (FP32, two ``[batch, 16]`` inputs, sum and difference) as an ONNX graph,
serves it twice from one ``conch serve`` (``add_sub``: default scheduler; ``add_sub_dyn``: with
``dynamic_batching {}``), drives both with perf_analyzer over HTTP and gRPC at each concurrency, and
times the same graph with ``InferenceSession.run`` in this process (batch 1, same session options as
one Conch instance). Prints a Markdown table: throughput, p50 latency, and the serving overhead per
request (Conch p50 minus the raw call's median) at concurrency 1.

With ``/work/shared/tools/triton-reference`` present (the real Triton 2.51, which has only its Python
backend here), the same repository is then served by Triton with the graph wrapped in a Python
backend ``model.py`` that calls ONNX Runtime, and measured the same way, each setting right after
Conch's (both servers up, one measured at a time).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from servers import TRITON, default_perf_analyzer, start, stop

CONFIG = """
name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
{extra}
"""

# For Triton 2.51's Python backend: the same graph through ONNX Runtime, one request at a time.
TRITON_MODEL_PY = """
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in ("INPUT0", "INPUT1")
            }
            sum_, diff = self.session.run(["OUTPUT0", "OUTPUT1"], feed)
            outputs = [pb_utils.Tensor("OUTPUT0", sum_), pb_utils.Tensor("OUTPUT1", diff)]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
"""


def add_sub_graph() -> onnx.ModelProto:
    io = helper.make_tensor_value_info
    dims: list[str | int] = ["batch", 16]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [io("INPUT0", TensorProto.FLOAT, dims), io("INPUT1", TensorProto.FLOAT, dims)],
        [io("OUTPUT0", TensorProto.FLOAT, dims), io("OUTPUT1", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_repository(root: Path, instances: int, triton: bool = False) -> Path:
    """Two models over one graph; for Triton, as Python backend models with the graph beside model.py."""
    graph = add_sub_graph()
    for name, extra in (("add_sub", ""), ("add_sub_dyn", "dynamic_batching { }")):
        version = root / name / "1"
        version.mkdir(parents=True)
        onnx.save_model(graph, str(version / "model.onnx"))
        config = CONFIG.format(name=name, instances=instances, extra=extra)
        if triton:
            (version / "model.py").write_text(TRITON_MODEL_PY)
            config = config.replace('backend: "onnxruntime"', 'backend: "python"')
        (root / name / "config.pbtxt").write_text(config)
    return root / "add_sub" / "1" / "model.onnx"


def raw_loop(path: Path, instances: int, seconds: float) -> tuple[float, float]:
    """Median µs of one ``session.run`` at batch 1 and calls per second, single thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)) // instances)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.ones((1, 16), np.float32)}
    names = ["OUTPUT0", "OUTPUT1"]
    for _ in range(1000):
        session.run(names, feed)
    samples: list[float] = []
    clock = time.perf_counter_ns
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(1000):
            start = clock()
            session.run(names, feed)
            samples.append((clock() - start) / 1000)
    return statistics.median(samples), 1e6 / statistics.fmean(samples)


def perf(
    tool: str, model: str, protocol: str, url: str, concurrency: int, interval_ms: int, out: Path
) -> dict[str, float] | None:
    """One perf_analyzer run; infer/s and p50 latency (µs) from its CSV, None when never stable.

    On a shared machine the default 10 % stability window is rarely met: 25 % is asked first, then 50 %.
    """
    for stability in ("25", "50"):
        args = [tool, "-m", model, "-i", protocol, "-u", url, "--shape", "INPUT0:16", "--shape", "INPUT1:16",
                "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms),
                "--percentile", "50", "--max-trials", "10", "--stability-percentage", stability,
                "-f", str(out)]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            with out.open() as f:
                row = next(csv.DictReader(f))
            return {"throughput": float(row["Inferences/Second"]), "p50": float(row["p50 latency"])}
        if "stable measurement" not in proc.stdout + proc.stderr:
            raise SystemExit(f"perf_analyzer failed ({' '.join(args)}):\n{proc.stdout}\n{proc.stderr}")
    return None


def _cells(result: dict[str, float] | None) -> str:
    if result is None:
        return "no stable measurement (busy machine)"
    return f"{result['throughput']:,.0f} infer/s, p50 {result['p50']:.0f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--perf-analyzer", default=default_perf_analyzer())
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--interval-ms", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=2, help="instances per model (Triton's CPU default: 2)")
    parser.add_argument("--raw-seconds", type=float, default=3.0)
    parser.add_argument("--no-triton", action="store_true", help="measure Conch only")
    ns = parser.parse_args()
    if not shutil.which(ns.perf_analyzer):
        raise SystemExit(f"perf_analyzer not found at {ns.perf_analyzer} (../shared/tools/install-perf-analyzer)")

    work = Path(tempfile.mkdtemp(prefix="conch-onnx-bench-"))
    try:
        run(ns, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(ns: argparse.Namespace, work: Path) -> None:
    """Measure everything and print the table; ``work`` holds the repositories and CSVs."""
    graph = write_repository(work / "repo", ns.instances)
    raw_median, raw_rate = raw_loop(graph, ns.instances, ns.raw_seconds)
    print(f"raw InferenceSession.run, batch 1: median {raw_median:.1f} µs, {raw_rate:,.0f} calls/s (one thread)")
    servers = ["conch"]
    if not ns.no_triton and TRITON.exists():
        write_repository(work / "triton_repo", ns.instances, triton=True)
        servers.append("triton")

    rows: list[tuple[str, str, str, int, dict[str, float] | None]] = []
    running: dict[str, tuple[subprocess.Popen[bytes], int, int]] = {}
    try:
        for server in servers:
            repo = work / ("repo" if server == "conch" else "triton_repo")
            running[server] = start(server, repo, work / f"{server}.log")
        # Servers measured back to back for each setting, so that both see the same load on a shared machine.
        for protocol in ns.protocols.split(","):
            for model in ("add_sub", "add_sub_dyn"):
                for concurrency in (int(c) for c in ns.concurrency.split(",")):
                    for server in servers:
                        _, http, grpc = running[server]
                        url = f"127.0.0.1:{http if protocol == 'http' else grpc}"
                        out = work / f"{server}-{protocol}-{model}-{concurrency}.csv"
                        result = perf(ns.perf_analyzer, model, protocol, url, concurrency, ns.interval_ms, out)
                        rows.append((server, protocol, model, concurrency, result))
                        print(f"{server} {protocol} {model} c={concurrency}: {_cells(result)}", flush=True)
    finally:
        for process, _, _ in running.values():
            stop(process)

    print()
    print("| server | protocol | scheduler | concurrency | infer/s | p50 latency (µs) | overhead vs raw run (µs) |")
    print("|---|---|---|---|---|---|---|")
    names = {"conch": "Conch, onnxruntime backend", "triton": "Triton 2.51, Python backend + onnxruntime"}
    for server, protocol, model, concurrency, result in rows:
        scheduler = "dynamic batching" if model.endswith("_dyn") else "default"
        overhead = f"{result['p50'] - raw_median:.0f}" if concurrency == 1 and result else ""
        cells = f"{result['throughput']:,.0f} | {result['p50']:.0f}" if result else "unstable | unstable"
        print(f"| {names[server]} | {protocol.upper()} | {scheduler} | {concurrency} | {cells} | {overhead} |")
    print(f"| raw `InferenceSession.run` (batch 1, one thread) | — | — | 1 | {raw_rate:,.0f} | {raw_median:.1f} | — |")


if __name__ == "__main__":
    main()
