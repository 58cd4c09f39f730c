"""In-process checks: binding rules, settings, thread sharing, datatype conversion (no server)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conch_pytorch.binding import Argument, bind
from conch_pytorch.datatypes import to_numpy, to_torch
from conch_pytorch.loader import create_instance
from google.protobuf import text_format

from conch import ConchError, InstanceContext, ModelContext
from conch._proto.model_config_pb2 import ModelConfig
from conch.backend import default_thread_count, usable_cores


def _config(text: str) -> ModelConfig:
    return text_format.Parse(text, ModelConfig())


def _args(*names: str, defaults: int = 0) -> list[Argument]:
    return [Argument(n, "Tensor", i >= len(names) - defaults) for i, n in enumerate(names)]


def test_bind_by_index_by_name_and_dict() -> None:
    indexed = _config(
        'name: "m" input [ { name: "B__1" }, { name: "A__0" } ] output [ { name: "Y__1" }, { name: "Z" } ]'
    )
    binding = bind(indexed, _args("x", "y"))
    assert binding.mode == "positional" and binding.order == ("A__0", "B__1")
    assert binding.output_index == {"Y__1": 1, "Z": 1}  # Z: its position in the output list
    named = _config('name: "m" input [ { name: "y" }, { name: "x" } ] output [ { name: "out" } ]')
    assert bind(named, _args("x", "y", "z", defaults=1)).order == ("x", "y")
    as_dict = _config('name: "m" input [ { name: "P" }, { name: "Q" } ] output [ { name: "out" } ]')
    assert bind(as_dict, [Argument("d", "Dict[str, Tensor]", False)]).mode == "dict"


@pytest.mark.parametrize(
    ("inputs", "arguments", "expected"),
    [
        ('{ name: "p" }, { name: "q" }', ("x", "y"), "forward() arguments ('x', 'y')"),
        ('{ name: "I__0" }, { name: "I__0" }', ("x", "y"), "share index 0"),
        ('{ name: "I__0" }', ("x", "y"), "1 input(s)"),
        ('{ name: "y" }', ("x", "y"), "argument 'x'"),
    ],
)
def test_bind_errors_name_both_sides(inputs: str, arguments: tuple[str, ...], expected: str) -> None:
    config = _config(f'name: "m" input [ {inputs} ] output [ {{ name: "o" }} ]')
    with pytest.raises(ConchError) as caught:
        bind(config, _args(*arguments))
    assert expected in str(caught.value) and "'m'" in str(caught.value)


def _context(tmp_path: Path, models: SimpleNamespace, extra: str, index: int = 0) -> InstanceContext:
    models.save(tmp_path, "m", models.AddSub(), models.config("m", [("INPUT__0", "TYPE_FP32", "[ 4 ]"),
                ("INPUT__1", "TYPE_FP32", "[ 4 ]")], [("OUTPUT__0", "TYPE_FP32", "[ 4 ]")], extra))  # fmt: skip
    config = _config((tmp_path / "m" / "config.pbtxt").read_text())
    config.default_model_filename = "model.pt"
    model = ModelContext(name="m", version=1, model_dir=tmp_path / "m", config=config)
    return InstanceContext(model=model, name=f"m_{index}", group_name="m", index=index, kind="CPU")


def test_instances_share_the_cores(tmp_path: Path, models: SimpleNamespace) -> None:
    context = _context(tmp_path, models, "max_batch_size: 4\ninstance_group [ { count: 3 kind: KIND_CPU } ]")
    assert default_thread_count(context) == max(1, usable_cores() // 3)


def test_each_instance_runs_with_its_own_thread_count(tmp_path: Path, models: SimpleNamespace) -> None:
    seen: dict[str, int] = {}
    inputs = {"INPUT__0": np.ones((2, 4), np.float32), "INPUT__1": np.ones((2, 4), np.float32)}

    def run(extra: str, key: str) -> None:
        instance = create_instance(_context(tmp_path / key, models, extra))
        instance.execute_batch(inputs, ["OUTPUT__0"])
        seen[key] = torch.get_num_threads()  # the count this thread ran with

    one = 'max_batch_size: 4\nparameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }'
    two = 'max_batch_size: 4\nparameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "2" } }'
    threads = [threading.Thread(target=run, args=(one, "one")), threading.Thread(target=run, args=(two, "two"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"one": 1, "two": 2}


def test_outputs_add_and_subtract(tmp_path: Path, models: SimpleNamespace) -> None:
    instance = create_instance(_context(tmp_path, models, "max_batch_size: 4"))
    a, b = np.arange(8, dtype=np.float32).reshape(2, 4), np.ones((2, 4), np.float32)
    got = instance.execute_batch({"INPUT__0": a, "INPUT__1": b}, ["OUTPUT__0"])
    np.testing.assert_array_equal(got["OUTPUT__0"], a + b)


def test_zero_copy_and_bf16_bits() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = to_torch(array, "FP32")
    assert tensor.data_ptr() == array.ctypes.data  # no copy in
    assert to_numpy(tensor).ctypes.data == array.ctypes.data  # no copy out
    reversed_rows = array[::-1]
    np.testing.assert_array_equal(to_torch(reversed_rows, "FP32").numpy(), reversed_rows)  # copied: negative strides
    bits = torch.tensor([1.5, -2.0], dtype=torch.bfloat16).view(torch.uint16).numpy()
    as_bf16 = to_torch(bits, "BF16")
    assert as_bf16.dtype == torch.bfloat16 and as_bf16.tolist() == [1.5, -2.0]
    np.testing.assert_array_equal(to_numpy(as_bf16), bits)
    readonly = np.frombuffer(np.ones(4, np.int32).tobytes(), dtype=np.int32)
    assert to_torch(readonly, "INT32").tolist() == [1, 1, 1, 1]
