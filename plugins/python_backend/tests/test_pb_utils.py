"""The pure-Python part of ``triton_python_backend_utils``, against Triton's documented behaviour."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
import triton_python_backend_utils as pb_utils
from conch_python.bls import control

from conch.errors import ConchError


def test_byte_tensor_round_trip_and_empty() -> None:
    array = np.array([b"ab", "é", b"", 7], dtype=object)
    wire = pb_utils.serialize_byte_tensor(array)
    assert wire == b"\x02\x00\x00\x00ab\x02\x00\x00\x00\xc3\xa9\x00\x00\x00\x00\x01\x00\x00\x007"
    assert list(pb_utils.deserialize_bytes_tensor(wire)) == [b"ab", "é".encode(), b"", b"7"]
    assert pb_utils.serialize_byte_tensor(np.array([], dtype=object)) == ()
    assert pb_utils.serialize_byte_tensor(np.array([1.0])) is None


def test_type_converters() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_BOOL") is bool
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    with pytest.raises(KeyError):
        pb_utils.triton_string_to_numpy("TYPE_BF16")
    assert pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.numpy_to_triton_type(np.object_) == 13 and pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.triton_to_numpy_type(1) is np.bool_ and pb_utils.triton_to_numpy_type(13) is np.object_


def test_tensor_basics_and_dlpack() -> None:
    t = pb_utils.Tensor("X", np.arange(6, dtype=np.int16).reshape(2, 3).T)  # non-contiguous: made contiguous
    assert t.name() == "X" and t.shape() == [3, 2] and t.triton_dtype() == 7 and t.is_cpu()
    assert t.as_numpy().flags.c_contiguous
    back = pb_utils.Tensor.from_dlpack("Y", t.to_dlpack())
    np.testing.assert_array_equal(back.as_numpy(), t.as_numpy())
    np.testing.assert_array_equal(pb_utils.Tensor.from_dlpack("Z", t).as_numpy(), t.as_numpy())
    strings = pb_utils.Tensor("S", np.array(["a"], dtype=object))
    assert strings.triton_dtype() == 13
    with pytest.raises(pb_utils.TritonModelException, match="DLPack does not have support for string tensors"):
        strings.to_dlpack()
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.Tensor("", np.zeros(1))


def test_response_and_error() -> None:
    error = pb_utils.TritonError("bad", pb_utils.TritonError.INVALID_ARG)
    assert error.message() == "bad" and error.code() == 3
    assert pb_utils.TritonError("x").code() == pb_utils.TritonError.INTERNAL
    response = pb_utils.InferenceResponse(error=error, parameters={"a": 1, "b": True, "c": "s"})
    assert response.has_error() and response.error() is error
    assert json.loads(response.parameters()) == {"a": 1, "b": True, "c": "s"}
    out = pb_utils.InferenceResponse([pb_utils.Tensor("O", np.zeros(2))])
    assert pb_utils.get_output_tensor_by_name(out, "O") is out.output_tensors()[0]
    assert pb_utils.get_output_tensor_by_name(out, "nope") is None


def test_config_helpers() -> None:
    config = {"input": [{"name": "A"}], "output": [{"name": "B"}], "model_transaction_policy": {"decoupled": True}}
    assert pb_utils.get_input_config_by_name(config, "A") == {"name": "A"}
    assert pb_utils.get_output_config_by_name(config, "A") is None
    assert pb_utils.using_decoupled_model_transaction_policy(config)
    assert not pb_utils.using_decoupled_model_transaction_policy({})


def test_model_config_setters_and_their_errors() -> None:
    config = pb_utils.ModelConfig(json.dumps({"name": "m", "max_batch_size": 8, "input": [], "output": []}))
    with pytest.raises(ValueError, match="configuration specified max_batch_size 8, but in auto-complete-config"):
        config.set_max_batch_size(4)
    config.set_max_batch_size(16)
    config.add_input({"name": "I", "data_type": "TYPE_FP32", "dims": [2]})
    config.add_input({"name": "I", "data_type": "TYPE_FP32", "dims": [2], "optional": True})
    with pytest.raises(ValueError, match="configuration expects datatype TYPE_FP32 for input 'I', model provides TYPE_INT32"):
        config.add_input({"name": "I", "data_type": "TYPE_INT32", "dims": [2]})
    with pytest.raises(ValueError, match="is missing 'dims' property"):
        config.add_output({"name": "O", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="contains property other than"):
        config.add_output({"name": "O", "data_type": "TYPE_FP32", "dims": [1], "optional": True})
    config.set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": True})
    with pytest.raises(ValueError, match="trying to change decoupled property"):
        config.set_model_transaction_policy({"decoupled": False})
    as_dict = config.as_dict()
    assert as_dict["max_batch_size"] == 16 and as_dict["dynamic_batching"] == {}
    assert as_dict["input"] == [{"name": "I", "data_type": "TYPE_FP32", "dims": [2], "optional": True}]
    sequence = pb_utils.ModelConfig({"name": "s", "sequence_batching": {}})
    with pytest.raises(ValueError, match="scheduling_choice as 'sequence_batching'"):
        sequence.set_dynamic_batching()


def test_constants_and_unsupported_pieces() -> None:
    assert (
        pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
        pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END,
        pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL,
        pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE,
    ) == (1, 2, 1, 1, 2)
    with pytest.raises(pb_utils.TritonModelException, match="BLS is only available"):
        pb_utils.InferenceRequest(model_name="m").exec()


def test_metric_family_kinds_and_use_outside_a_server() -> None:
    assert (pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE, pb_utils.MetricFamily.HISTOGRAM) == (0, 1, 2)
    assert repr(pb_utils.MetricFamily.COUNTER) == "<MetricKind.COUNTER: 0>"
    with pytest.raises(TypeError, match="kind must be pb_utils.MetricFamily.COUNTER, GAUGE or HISTOGRAM"):
        pb_utils.MetricFamily("x", "x", "counter")  # type: ignore[arg-type]
    with pytest.raises(pb_utils.TritonModelException, match="MetricFamily is only available in a model served by"):
        pb_utils.MetricFamily("requests_total", "requests", pb_utils.MetricFamily.COUNTER)


class _Service:
    """Just enough of InferenceService for model control."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, dict[str, Any]]] = []

    async def load_model(self, name: str, parameters: dict[str, Any]) -> None:
        self.loads.append((name, parameters))

    def model_ready(self, name: str, version: str = "") -> bool:
        return True


def test_load_model_passes_config_and_files_to_the_load_api() -> None:
    service = _Service()
    config = '{"backend": "python", "max_batch_size": 2}'
    files = {"file:1/model.py": b"print()", "file:1/extra.bin": bytearray(b"\x00\x01")}
    asyncio.run(control(service, "load_model", ("m", config, files)))  # type: ignore[arg-type]
    asyncio.run(control(service, "load_model", ("plain", "", None)))  # type: ignore[arg-type]
    assert service.loads == [
        ("m", {"config": config, "file:1/model.py": b"print()", "file:1/extra.bin": b"\x00\x01"}),
        ("plain", {}),
    ]
    for bad, message in [
        (("m", "", {"1/model.py": b""}), "file key '1/model.py' must start with 'file:'"),
        (("m", "", {"file:1/model.py": "text"}), "the content of 'file:1/model.py' must be bytes, got str"),
        (("m", {"backend": "python"}, None), "config must be the model configuration as a JSON string, got dict"),
    ]:
        with pytest.raises(ConchError, match=message):
            asyncio.run(control(service, "load_model", bad))  # type: ignore[arg-type]


def test_bf16_tensors_travel_as_dlpack_bfloat16_and_release_their_memory() -> None:
    import ctypes
    import gc

    from conch_python import dlpack

    bits = np.array([[0x3F80, 0xC020], [0x3E20, 0x0000]], dtype=np.uint16)  # 1.0, -2.5, 0.15625, 0.0
    tensor = pb_utils.Tensor._wrap("x", "BF16", bits)
    with pytest.raises(pb_utils.TritonModelException, match="use to_dlpack"):
        tensor.as_numpy()
    capsule = tensor.to_dlpack()
    assert dlpack.is_bf16_capsule(capsule)
    managed = ctypes.cast(ctypes.pythonapi.PyCapsule_GetPointer(capsule, b"dltensor"), ctypes.POINTER(dlpack._Managed))
    dl = managed.contents.dl_tensor
    assert (dl.dtype.code, dl.dtype.bits, dl.dtype.lanes, dl.ndim) == (4, 16, 1, 2)
    assert [dl.shape[0], dl.shape[1]] == [2, 2] and dl.device.device_type == 1
    assert dl.data == bits.ctypes.data  # zero-copy

    back = pb_utils.Tensor.from_dlpack("y", capsule)
    assert back.triton_dtype() == 14 and back.shape() == [2, 2]
    np.testing.assert_array_equal(back._array, bits)
    assert not dlpack.is_bf16_capsule(capsule)  # consumed
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.Tensor.from_dlpack("z", capsule)
    assert dlpack.exported_count() == 1
    del back
    gc.collect()
    assert dlpack.exported_count() == 0  # the consumer's deleter ran

    unused = tensor.to_dlpack()
    assert dlpack.exported_count() == 1
    del unused
    gc.collect()
    assert dlpack.exported_count() == 0  # a capsule nobody consumed frees its tensor too
