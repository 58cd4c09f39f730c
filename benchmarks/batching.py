"""Dynamic batching: throughput and p99 latency with and without it, at concurrency 16 and 64.

    .venv/bin/python benchmarks/batching.py [--concurrency 16,64] [--protocols http,grpc] [--interval-ms 2000]
                                            [--triton]

One ``conch serve`` holds, each twice (default scheduler / ``dynamic_batching {}``), FP32 ``[batch, 16]``:

- ``identity`` and ``identity_dyn``: the built-in identity backend (a list-of-requests backend);
- ``add_sub`` and ``add_sub_dyn``: Triton's add_sub as an ONNX graph on the ONNX Runtime backend (a
  concatenating backend), when ``conch_onnxruntime`` and ``onnx`` are installed.

perf_analyzer drives each model at each concurrency (``--percentile 99``); the table lists infer/s and
p99 latency. With ``--triton`` the real Triton 2.51 (``/work/shared/tools/triton-reference``) serves
Triton's Python-backend add_sub (``dynamic_batching {}``) and is measured the same way, one server at
a time. Numbers depend on the machine and its load: compare rows of one run.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

from servers import TRITON, default_perf_analyzer, start, stop

IDENTITY = """name: "{name}"
backend: "identity"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
{extra}
"""
ADD_SUB = IDENTITY.replace('backend: "identity"', 'backend: "{backend}"')

TRITON_ADD_SUB_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            outputs = [pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
"""

DYNAMIC = "dynamic_batching { }"


def have_onnx() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "conch_onnxruntime"))


def write_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    io = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "add_sub",
        [io("INPUT0", TensorProto.FLOAT, ["batch", 16]), io("INPUT1", TensorProto.FLOAT, ["batch", 16])],
        [io("OUTPUT0", TensorProto.FLOAT, ["batch", 16]), io("OUTPUT1", TensorProto.FLOAT, ["batch", 16])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_model(repo: Path, name: str, config: str, files: dict[str, str] | None = None) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    for rel, text in (files or {}).items():
        (repo / name / rel).write_text(text)


def conch_repository(root: Path) -> list[str]:
    repo = root / "conch"
    models = []
    for suffix, extra in (("", ""), ("_dyn", DYNAMIC)):
        write_model(repo, f"identity{suffix}", IDENTITY.format(name=f"identity{suffix}", extra=extra))
        models.append(f"identity{suffix}")
    if have_onnx():
        for suffix, extra in (("", ""), ("_dyn", DYNAMIC)):
            name = f"add_sub{suffix}"
            write_model(repo, name, ADD_SUB.format(name=name, backend="onnxruntime", extra=extra))
            write_onnx(repo / name / "1" / "model.onnx")
            models.append(name)
    return models


def triton_repository(root: Path) -> list[str]:
    repo = root / "triton"
    write_model(repo, "add_sub_py", ADD_SUB.format(name="add_sub_py", backend="python", extra=DYNAMIC),
                {"1/model.py": TRITON_ADD_SUB_PY})
    return ["add_sub_py"]


def perf(tool: str, model: str, protocol: str, url: str, concurrency: int, interval_ms: int, out: Path) -> str:
    """One perf_analyzer run: "infer/s | p99 ms".

    A busy machine rarely meets perf_analyzer's stability window: 25 % is asked first, then any
    measurement is taken (marked ``*``).
    """
    proc = None
    for stability in ("25", "1000"):
        args = [tool, "-m", model, "-i", protocol, "-u", url, "--shape", "INPUT0:16", "--shape", "INPUT1:16",
                "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms),
                "--percentile", "99", "--max-trials", "6", "--stability-percentage", stability,
                "-f", str(out)]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            with out.open() as f:
                row = next(csv.DictReader(f))
            mark = "*" if stability == "1000" else ""
            return f"{float(row['Inferences/Second']):,.0f}{mark} | {float(row['p99 latency']) / 1000:.1f}{mark}"
        if "stable measurement" not in proc.stdout + proc.stderr:
            break
    assert proc is not None
    return f"failed: {(proc.stdout + proc.stderr).strip().splitlines()[-1:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--perf-analyzer", default=default_perf_analyzer())
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--protocols", default="http")
    parser.add_argument("--interval-ms", type=int, default=2000)
    parser.add_argument("--models", default="", help="comma-separated subset of the Conch models")
    parser.add_argument("--triton", action="store_true", help="also measure Triton 2.51 (Python-backend add_sub)")
    ns = parser.parse_args()
    if not shutil.which(ns.perf_analyzer):
        raise SystemExit(f"perf_analyzer not found at {ns.perf_analyzer} (../shared/tools/install-perf-analyzer)")
    concurrencies = [int(c) for c in ns.concurrency.split(",")]
    protocols = ns.protocols.split(",")
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="conch-batching-") as tmp:
        work = Path(tmp)
        servers = [("conch", conch_repository(work))]
        if ns.triton and TRITON.exists():
            servers.append(("triton", triton_repository(work)))
        for kind, models in servers:
            if kind == "conch" and ns.models:
                models = [m for m in models if m in ns.models.split(",")]
            process, http, grpc = start(kind, work / kind, work / f"{kind}.log")
            try:
                for model in models:
                    for protocol in protocols:
                        url = f"127.0.0.1:{http if protocol == 'http' else grpc}"
                        for concurrency in concurrencies:
                            out = work / f"{kind}-{model}-{protocol}-{concurrency}.csv"
                            result = perf(ns.perf_analyzer, model, protocol, url, concurrency, ns.interval_ms, out)
                            rows.append(f"| {kind} | {model} | {protocol} | {concurrency} | {result} |")
                            print(rows[-1], flush=True)
            finally:
                stop(process)
    print("\n| server | model | protocol | concurrency | infer/s | p99 ms |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n`*`: perf_analyzer could not meet a 25 % stability window (a loaded machine); one measurement shown.")


if __name__ == "__main__":
    main()
