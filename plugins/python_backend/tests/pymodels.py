"""Triton-style Python test models (config.pbtxt + 1/model.py), written into a repository at test time."""

from __future__ import annotations

import textwrap
from pathlib import Path

from serverkit import write_model

ADD_SUB_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
{extra}
"""

ADD_SUB = """
import json
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        out0 = pb_utils.get_output_config_by_name(config, "OUTPUT0")
        self.dtype = pb_utils.triton_string_to_numpy(out0["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", (in0 + in1).astype(self.dtype)),
                pb_utils.Tensor("OUTPUT1", (in0 - in1).astype(self.dtype)),
            ]))
        return responses
"""

IDENTITY_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "STRING"]

IDENTITY = """
import triton_python_backend_utils as pb_utils
from .helper import out_name


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            outputs = [pb_utils.Tensor(out_name(t.name()), t.as_numpy()) for t in request.inputs()]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""

#: Every datatype DLPack carries (no strings), BF16 included: numpy has no bfloat16, so BF16 models
#: pass tensors through DLPack (``to_dlpack`` / ``from_dlpack``), as with Triton.
DLPACK_TYPES = [t for t in IDENTITY_TYPES if t != "STRING"] + ["BF16"]

IDENTITY_DLPACK = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            outputs = []
            for tensor in request.inputs():
                name = "OUTPUT" + tensor.name()[len("INPUT"):]
                outputs.append(pb_utils.Tensor.from_dlpack(name, tensor.to_dlpack()))
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""

HELPER = """
def out_name(input_name):
    return "OUTPUT" + input_name[len("INPUT"):]
"""

STRINGS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            words = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            upper = np.array([w.decode("utf-8").upper() for w in words.reshape(-1)], dtype=object).reshape(words.shape)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", upper)]))
        return responses
"""

OPTIONAL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            extra = in1.as_numpy() if in1 is not None else np.full_like(in0, 100)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", in0 + extra)]))
        return responses
"""

INIT_ARGS = """
import json
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in args.items())
        self.args = dict(args)
        self.args["pid"] = str(os.getpid())

    def execute(self, requests):
        text = json.dumps(self.args).encode()
        params = json.loads(requests[0].parameters())
        out = pb_utils.Tensor("OUT", np.array([[text]], dtype=object))
        return [pb_utils.InferenceResponse([out], parameters={"echo": params.get("echo", "")}) for r in requests]
"""

ERRORS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        mode = int(pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy().reshape(-1)[0])
        if mode == 0:
            raise pb_utils.TritonModelException("execute failed on purpose")
        if mode == 1:
            raise ValueError("plain exception from execute")
        if mode == 2:
            return []  # wrong number of responses
        if mode == 3:
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.zeros([1, 1], np.float64))])]
        if mode == 4:
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.zeros([1, 5], np.float32))])]
        code = mode - 10  # 10 + a TritonError code
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"error with code {code}", code))]
"""

ASYNC_BLS = """
import asyncio
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            await asyncio.sleep(0.001)
            if json.loads(request.parameters()).get("target") == "repeat":
                bls = pb_utils.InferenceRequest(
                    model_name="repeat", requested_output_names=["OUT"],
                    inputs=[pb_utils.Tensor("COUNT", np.array([3], np.int32)),
                            pb_utils.Tensor("DELAY_MS", np.array([1], np.int32))],
                )
                values = []
                for response in await bls.async_exec(decoupled=True):
                    if response.has_error():
                        raise pb_utils.TritonModelException(response.error().message())
                    if response.output_tensors():
                        values.append(int(pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()[0]))
                total = np.full((1, 16), sum(values) + 1000 * len(values), np.float32)
            else:
                bls = pb_utils.InferenceRequest(
                    model_name="add_sub", requested_output_names=["OUTPUT0"], inputs=[in0, in1]
                )
                one, two = await asyncio.gather(bls.async_exec(), bls.async_exec())
                if one.has_error():
                    raise pb_utils.TritonModelException(one.error().message())
                total = pb_utils.get_output_tensor_by_name(one, "OUTPUT0").as_numpy()
                total = total + pb_utils.get_output_tensor_by_name(two, "OUTPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", total), pb_utils.Tensor("OUTPUT1", np.zeros_like(total))
            ]))
        return responses
"""

SYNC_BLS = """
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            await asyncio.sleep(0.001)
            bls = pb_utils.InferenceRequest(
                model_name="add_sub", requested_output_names=["OUTPUT0"], inputs=[in0, in1]
            )
            one, two = await asyncio.gather(bls.async_exec(), bls.async_exec())
            if one.has_error():
                raise pb_utils.TritonModelException(one.error().message())
            total = pb_utils.get_output_tensor_by_name(one, "OUTPUT0").as_numpy()
            total = total + pb_utils.get_output_tensor_by_name(two, "OUTPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", total), pb_utils.Tensor("OUTPUT1", np.zeros_like(total))
            ]))
        return responses
"""

SYNC_BLS = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            target = json.loads(request.parameters()).get("target", "add_sub")
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            if target == "repeat":
                count = np.array([3], np.int32)
                bls = pb_utils.InferenceRequest(
                    model_name="repeat", requested_output_names=["OUT"],
                    inputs=[pb_utils.Tensor("COUNT", count), pb_utils.Tensor("DELAY_MS", np.array([1], np.int32))],
                )
                values = []
                for response in bls.exec(decoupled=True):
                    if response.has_error():
                        raise pb_utils.TritonModelException(response.error().message())
                    if response.output_tensors():
                        values.append(int(pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()[0]))
                total = np.full((1, 16), sum(values) + 1000 * len(values), np.float32)
            else:
                bls = pb_utils.InferenceRequest(
                    model_name=target, requested_output_names=["OUTPUT1"], inputs=[in0, in1]
                )
                response = bls.exec()
                if response.has_error():
                    raise pb_utils.TritonModelException("BLS failed: " + response.error().message())
                total = pb_utils.get_output_tensor_by_name(response, "OUTPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", total), pb_utils.Tensor("OUTPUT1", total)
            ]))
        return responses
"""

REPEAT_CONFIG = """
name: "repeat"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "DELAY_MS" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "IDX" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

REPEAT = """
import threading
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        assert pb_utils.using_decoupled_model_transaction_policy(__import__("json").loads(args["model_config"]))
        self.threads = []

    def execute(self, requests):
        for request in requests:
            count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy()[0])
            delay = int(pb_utils.get_input_tensor_by_name(request, "DELAY_MS").as_numpy()[0]) / 1000.0
            sender = request.get_response_sender()
            thread = threading.Thread(target=self.send, args=(request, sender, count, delay))
            thread.start()
            self.threads.append(thread)
        return None

    def send(self, request, sender, count, delay):
        sent = 0
        for i in range(count):
            if request.is_cancelled():
                pb_utils.Logger.log_info(f"repeat: cancelled after {sent} responses")
                break
            time.sleep(delay)
            sender.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([i * 10], np.int32)), pb_utils.Tensor("IDX", np.array([i], np.int32))
            ]))
            sent += 1
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join()
"""

CRASHER = """
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().reshape(-1)[0])
            if value == 13:
                os._exit(3)
            if value == 11:
                os.kill(os.getpid(), 9)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[os.getpid()]], np.int64))]))
        return responses
"""

AUTO = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [2]})
        auto_complete_model_config.add_output({"name": "OUT", "data_type": "TYPE_FP32", "dims": [2]})
        auto_complete_model_config.set_max_batch_size(4)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * 2)]) for r in requests]
"""


def scalar_model(name: str, in_type: str, out_type: str, out_dims: str = "[ 1 ]", extra: str = "") -> str:
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 4\n'
        f'input [ {{ name: "IN" data_type: {in_type} dims: [ 1 ] }} ]\n'
        f'output [ {{ name: "OUT" data_type: {out_type} dims: {out_dims} }} ]\n{extra}\n'
    )


def write_py_model(repo: Path, name: str, config: str, source: str, extra_files: dict[str, str] | None = None) -> Path:
    files = {"1/model.py": textwrap.dedent(source)}
    files.update(extra_files or {})
    return write_model(repo, name, config, files=files)


def identity_config(name: str = "identity", types: list[str] = IDENTITY_TYPES) -> str:
    ins, outs = [], []
    for i, datatype in enumerate(types):
        ins.append(f'{{ name: "INPUT{i}" data_type: TYPE_{datatype} dims: [ -1 ] optional: true }}')
        outs.append(f'{{ name: "OUTPUT{i}" data_type: TYPE_{datatype} dims: [ -1 ] }}')
    return f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\ninput [ {", ".join(ins)} ]\noutput [ {", ".join(outs)} ]\n'


def write_repository(repo: Path) -> Path:
    """Every model the shared Python-backend server serves."""
    write_py_model(repo, "add_sub", ADD_SUB_CONFIG.format(name="add_sub", extra=""), ADD_SUB)
    write_py_model(
        repo,
        "add_sub_inproc",
        ADD_SUB_CONFIG.format(
            name="add_sub_inproc", extra='parameters { key: "CONCH_IN_PROCESS" value: { string_value: "true" } }'
        ),
        ADD_SUB,
    )
    write_py_model(repo, "identity", identity_config(), IDENTITY, {"1/helper.py": HELPER})
    write_py_model(repo, "identity_dlpack", identity_config("identity_dlpack", DLPACK_TYPES), IDENTITY_DLPACK)
    write_py_model(
        repo,
        "strings",
        'name: "strings"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]\n',
        STRINGS,
    )
    write_py_model(
        repo,
        "optional",
        'name: "optional"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 2 ] }, '
        '{ name: "INPUT1" data_type: TYPE_INT32 dims: [ 2 ] optional: true } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 2 ] } ]\n',
        OPTIONAL,
    )
    write_py_model(
        repo,
        "init_args",
        'name: "init_args"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1, 1 ] } ]\n'
        'instance_group [ { name: "grp" count: 2 kind: KIND_CPU } ]\n',
        INIT_ARGS,
    )
    write_py_model(repo, "errors", scalar_model("errors", "TYPE_INT32", "TYPE_FP32"), ERRORS)
    write_py_model(repo, "async_bls", ADD_SUB_CONFIG.format(name="async_bls", extra=""), ASYNC_BLS)
    write_py_model(repo, "sync_bls", ADD_SUB_CONFIG.format(name="sync_bls", extra=""), SYNC_BLS)
    write_py_model(repo, "repeat", REPEAT_CONFIG, REPEAT)
    inproc = '\nparameters { key: "CONCH_IN_PROCESS" value: { string_value: "yes" } }\n'
    write_py_model(repo, "repeat_inproc", REPEAT_CONFIG.replace('"repeat"', '"repeat_inproc"') + inproc, REPEAT)
    write_py_model(
        repo, "sync_bls_inproc", ADD_SUB_CONFIG.format(name="sync_bls_inproc", extra=inproc), SYNC_BLS
    )
    write_py_model(repo, "crasher", scalar_model("crasher", "TYPE_INT32", "TYPE_INT64"), CRASHER)
    write_py_model(repo, "auto", 'name: "auto"\nbackend: "python"\n', AUTO)
    write_py_model(repo, "sender", scalar_model("sender", "TYPE_INT32", "TYPE_INT32"), SENDER)
    write_py_model(repo, "sender_inproc", scalar_model("sender_inproc", "TYPE_INT32", "TYPE_INT32", extra=inproc), SENDER)
    write_py_model(repo, "metrics", METRICS_CONFIG.format(name="metrics", extra=""), METRICS)
    write_py_model(repo, "metrics_inproc", METRICS_CONFIG.format(name="metrics_inproc", extra=inproc), METRICS)
    for name, extra in (("init_control", ""), ("init_control_inproc", inproc)):
        write_py_model(
            repo,
            name,
            f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            'input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
            f'output [ {{ name: "OUT" data_type: TYPE_STRING dims: [ 1, 1 ] }} ]\n{extra}',
            INIT_CONTROL,
        )
    custom = write_py_model(
        repo, "custom_file", ADD_SUB_CONFIG.format(name="custom_file", extra='default_model_filename: "adder.py"'), ""
    )
    (custom / "1" / "model.py").unlink()
    (custom / "1" / "adder.py").write_text(textwrap.dedent(ADD_SUB))
    backend_dir = repo.parent / f"{repo.name}_backends" / "pybased"
    backend_dir.mkdir(parents=True)
    (backend_dir / "model.py").write_text(textwrap.dedent(ADD_SUB))
    write_model(
        repo,
        "uses_pybased",
        ADD_SUB_CONFIG.format(name="uses_pybased", extra='runtime: "model.py"').replace('"python"', '"pybased"'),
    )
    return repo


def backend_directory(repo: Path) -> Path:
    """Where :func:`write_repository` put its python-based backend (``pybased/model.py``)."""
    return repo.parent / f"{repo.name}_backends"


READY_FILE = """
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json
        self.marker = json.loads(args["model_config"])["parameters"]["marker"]["string_value"]

    def is_ready(self):
        return not os.path.exists(self.marker)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[os.getpid()]], np.int64))]) for r in requests]
"""


METRICS_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "COUNT" data_type: TYPE_FP64 dims: [ 1 ] }}, {{ name: "GAUGE" data_type: TYPE_FP64 dims: [ 1 ] }},
         {{ name: "ERROR" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
{extra}
"""

# Triton's custom-metrics example, grown: a counter, a gauge and a histogram per model; request parameter
# "case" runs one misuse and answers its error text in ERROR.
METRICS = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

CASES = {
    "counter_decrement": lambda m: m.counter.increment(-1),
    "counter_set": lambda m: m.counter.set(3),
    "gauge_observe": lambda m: m.gauge.observe(1),
    "histogram_value": lambda m: m.histogram.value(),
    "histogram_set": lambda m: m.histogram.set(1),
    "histogram_without_buckets": lambda m: m.values.Metric(labels={"x": "y"}),
    "counter_with_buckets": lambda m: m.requests.Metric(labels={"x": "y"}, buckets=[1.0]),
    "labels_not_dict": lambda m: m.requests.Metric(labels=[("x", "y")]),
    "buckets_not_list": lambda m: m.values.Metric(labels={"x": "y"}, buckets=(1, 2)),
    "buckets_unsorted": lambda m: m.values.Metric(labels={"x": "z"}, buckets=[2.0, 1.0]),
    "bad_label_name": lambda m: m.requests.Metric(labels={"bad-name": "x"}),
    "label_not_str": lambda m: m.requests.Metric(labels={"x": 1}),
    "duplicate_other_kind": lambda m: pb_utils.MetricFamily("requests_total", "again", pb_utils.MetricFamily.GAUGE),
    "bad_family_name": lambda m: pb_utils.MetricFamily("", "empty", pb_utils.MetricFamily.GAUGE),
    "server_family_name": lambda m: pb_utils.MetricFamily("nv_inference_count", "x", pb_utils.MetricFamily.COUNTER),
    "kind_not_a_kind": lambda m: pb_utils.MetricFamily("some_family", "x", 7),
}


class TritonPythonModel:
    def initialize(self, args):
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.requests = pb_utils.MetricFamily(
            name="requests_total", description="Requests seen by the model", kind=pb_utils.MetricFamily.COUNTER
        )
        self.last = pb_utils.MetricFamily("last_input", "The last input\\nof the model", pb_utils.MetricFamily.GAUGE)
        self.values = pb_utils.MetricFamily("input_values", "Inputs seen", pb_utils.MetricFamily.HISTOGRAM)
        self.counter = self.requests.Metric(labels=labels)
        self.gauge = self.last.Metric(labels=labels)
        self.histogram = self.values.Metric(labels=labels, buckets=[1.0, 10.0])
        # The same name and kind again: the same family; the same labels: the same series.
        self.again = pb_utils.MetricFamily("requests_total", "other text", pb_utils.MetricFamily.COUNTER).Metric(labels)

    def execute(self, requests):
        responses = []
        for request in requests:
            value = float(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            case = json.loads(request.parameters()).get("case", "")
            error = ""
            if case == "temporary":
                family = pb_utils.MetricFamily("temporary_gauge", "Dropped at once", pb_utils.MetricFamily.GAUGE)
                metric = family.Metric(labels={"k": "v"})
                metric.set(value)
                error = str(metric.value())
                del metric, family  # both gone: the family leaves the endpoint
            elif case:
                try:
                    CASES[case](self)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
            else:
                self.counter.increment(1)
                self.again.increment(0.5)
                self.gauge.increment(-100)
                self.gauge.set(value)
                self.histogram.observe(value)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("COUNT", np.array([self.counter.value()], np.float64)),
                pb_utils.Tensor("GAUGE", np.array([self.gauge.value()], np.float64)),
                pb_utils.Tensor("ERROR", np.array([error.encode()], dtype=object)),
            ]))
        return responses
"""

INIT_CONTROL = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # Model control works in initialize(); BLS does not (as in Triton): it answers an error at once.
        self.seen = {"nope_ready": pb_utils.is_model_ready("nope"), "self_ready": pb_utils.is_model_ready(args["model_name"])}
        bls = pb_utils.InferenceRequest(model_name="add_sub", requested_output_names=["OUTPUT0"], inputs=[])
        response = bls.exec()
        self.seen["bls_error"] = response.error().message() if response.has_error() else ""

    def execute(self, requests):
        text = json.dumps(self.seen).encode()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[text]], dtype=object))]) for r in requests]
"""

# A default-mode (not decoupled) model answering through the response sender from a thread of its own,
# which Triton allows since 24.06: one response, then the final flag.
SENDER = """
import threading
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            threading.Thread(target=self.answer, args=(request.get_response_sender(), value)).start()
        return None

    def answer(self, sender, value):
        time.sleep(0.01)
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", value * 2)]))
        try:
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", value)]))
        except pb_utils.TritonModelException as exc:
            pb_utils.Logger.log_info(f"sender: {exc}")
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""
