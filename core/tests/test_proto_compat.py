"""Conch's protobuf schema must stay wire-compatible with Triton's.

Walks every message and enum that ``tritonclient.grpc`` (a dev dependency)
ships and checks Conch's private-pool definitions have the same fields
(name, number, type, label, referenced type, oneof, map-ness) and enum values,
recursively through nested types. Also checks the services match and that
both sets of generated modules coexist in one process.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

tc_model_config = pytest.importorskip("tritonclient.grpc.model_config_pb2")
tc_service = pytest.importorskip("tritonclient.grpc.service_pb2")

from google.protobuf import descriptor as _d  # noqa: E402
from google.protobuf import json_format, text_format  # noqa: E402

import conch._proto as conch_proto  # noqa: E402
from conch._proto import grpc_service_pb2, model_config_pb2  # noqa: E402

POOL = conch_proto.POOL


def _is_repeated(f: _d.FieldDescriptor) -> bool:
    if hasattr(f, "is_repeated"):  # protobuf >= 6.32; `label` is deprecated there
        return bool(f.is_repeated)
    return f.label == f.LABEL_REPEATED


def _field_sig(f: _d.FieldDescriptor) -> dict:
    return {
        "number": f.number,
        "type": f.type,
        "label": "repeated" if _is_repeated(f) else "singular",
        "type_name": (
            f.message_type.full_name
            if f.message_type is not None
            else f.enum_type.full_name
            if f.enum_type is not None
            else None
        ),
        "oneof": f.containing_oneof.name if f.containing_oneof is not None else None,
        "map": bool(
            f.message_type is not None and f.message_type.GetOptions().map_entry
        ),
        "packed": f.is_packed if hasattr(f, "is_packed") else None,
    }


def _compare_enum(ref: _d.EnumDescriptor, ours: _d.EnumDescriptor, diffs: list[str]) -> None:
    ref_vals = {v.name: v.number for v in ref.values}
    our_vals = {v.name: v.number for v in ours.values}
    if ref_vals != our_vals:
        diffs.append(f"enum {ref.full_name}: triton={ref_vals} conch={our_vals}")


def _compare_message(ref: _d.Descriptor, ours: _d.Descriptor, diffs: list[str]) -> None:
    name = ref.full_name
    ref_fields = {f.name: f for f in ref.fields}
    our_fields = {f.name: f for f in ours.fields}
    for fname in sorted(ref_fields.keys() - our_fields.keys()):
        diffs.append(f"{name}.{fname}: missing in conch")
    for fname in sorted(our_fields.keys() - ref_fields.keys()):
        diffs.append(f"{name}.{fname}: not in triton")
    for fname in sorted(ref_fields.keys() & our_fields.keys()):
        a, b = _field_sig(ref_fields[fname]), _field_sig(our_fields[fname])
        if a != b:
            diffs.append(f"{name}.{fname}: triton={a} conch={b}")

    ref_oneofs = {o.name: sorted(f.name for f in o.fields) for o in ref.oneofs}
    our_oneofs = {o.name: sorted(f.name for f in o.fields) for o in ours.oneofs}
    if ref_oneofs != our_oneofs:
        diffs.append(f"{name} oneofs: triton={ref_oneofs} conch={our_oneofs}")

    ref_nested = {m.name: m for m in ref.nested_types}
    our_nested = {m.name: m for m in ours.nested_types}
    for n in sorted(ref_nested.keys() ^ our_nested.keys()):
        where = "conch" if n in ref_nested else "triton"
        diffs.append(f"{name}.{n}: nested message missing in {where}")
    for n in sorted(ref_nested.keys() & our_nested.keys()):
        _compare_message(ref_nested[n], our_nested[n], diffs)

    ref_enums = {e.name: e for e in ref.enum_types}
    our_enums = {e.name: e for e in ours.enum_types}
    for n in sorted(ref_enums.keys() ^ our_enums.keys()):
        where = "conch" if n in ref_enums else "triton"
        diffs.append(f"{name}.{n}: nested enum missing in {where}")
    for n in sorted(ref_enums.keys() & our_enums.keys()):
        _compare_enum(ref_enums[n], our_enums[n], diffs)


def _compare_file(ref_file: _d.FileDescriptor, our_file: _d.FileDescriptor) -> list[str]:
    diffs: list[str] = []
    assert ref_file.package == our_file.package == "inference"
    for mname in sorted(set(ref_file.message_types_by_name) | set(our_file.message_types_by_name)):
        ref = ref_file.message_types_by_name.get(mname)
        ours = our_file.message_types_by_name.get(mname)
        if ref is None or ours is None:
            diffs.append(f"message {mname}: missing in {'conch' if ours is None else 'triton'}")
            continue
        _compare_message(ref, ours, diffs)
    for ename in sorted(set(ref_file.enum_types_by_name) | set(our_file.enum_types_by_name)):
        ref = ref_file.enum_types_by_name.get(ename)
        ours = our_file.enum_types_by_name.get(ename)
        if ref is None or ours is None:
            diffs.append(f"enum {ename}: missing in {'conch' if ours is None else 'triton'}")
            continue
        _compare_enum(ref, ours, diffs)
    for sname in sorted(set(ref_file.services_by_name) | set(our_file.services_by_name)):
        ref = ref_file.services_by_name.get(sname)
        ours = our_file.services_by_name.get(sname)
        if ref is None or ours is None:
            diffs.append(f"service {sname}: missing in {'conch' if ours is None else 'triton'}")
            continue

        def sig(s: _d.ServiceDescriptor) -> dict:
            return {
                m.name: (
                    m.input_type.full_name,
                    m.output_type.full_name,
                    m.client_streaming,
                    m.server_streaming,
                )
                for m in s.methods
            }

        if sig(ref) != sig(ours):
            diffs.append(f"service {sname}: triton={sig(ref)} conch={sig(ours)}")
    return diffs


def test_model_config_matches_triton() -> None:
    diffs = _compare_file(tc_model_config.DESCRIPTOR, model_config_pb2.DESCRIPTOR)
    assert not diffs, "\n".join(diffs)


def test_grpc_service_matches_triton() -> None:
    diffs = _compare_file(tc_service.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR)
    assert not diffs, "\n".join(diffs)


def test_uses_private_pool() -> None:
    assert model_config_pb2.DESCRIPTOR.pool is POOL
    assert grpc_service_pb2.DESCRIPTOR.pool is POOL
    svc = POOL.FindServiceByName("inference.GRPCInferenceService")
    assert [m.name for m in svc.methods] == [
        m.name for m in tc_service.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    ]
    assert POOL.FindMessageTypeByName("inference.ModelConfig") is model_config_pb2.ModelConfig.DESCRIPTOR
    # The default pool's inference.ModelConfig (if any) belongs to tritonclient, not us.
    assert tc_model_config.ModelConfig.DESCRIPTOR is not model_config_pb2.ModelConfig.DESCRIPTOR


@pytest.mark.parametrize(
    "first,second",
    [("conch._proto.grpc_service_pb2_grpc", "tritonclient.grpc"),
     ("tritonclient.grpc", "conch._proto.grpc_service_pb2_grpc")],
)
def test_coexists_with_tritonclient(first: str, second: str) -> None:
    # Fresh interpreter so import order is really what we say it is.
    code = textwrap.dedent(
        f"""
        import importlib
        importlib.import_module({first!r})
        importlib.import_module({second!r})
        from conch._proto import model_config_pb2, grpc_service_pb2
        import tritonclient.grpc.model_config_pb2 as t
        assert model_config_pb2.ModelConfig.DESCRIPTOR is not t.ModelConfig.DESCRIPTOR
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


_PBTXT = r"""
name: "seq_model"
backend: "python"
max_batch_size: 8
version_policy { latest { num_versions: 2 } }
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 16 ] format: FORMAT_NONE },
  { name: "IMG" data_type: TYPE_UINT8 dims: [ 3, 224, 224 ] format: FORMAT_NCHW
    reshape { shape: [ 1, 3, 224, 224 ] } optional: true }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] label_filename: "labels.txt" }
]
batch_input [
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "IDX" data_type: TYPE_INT32
    source_input: "INPUT0" }
]
instance_group [
  { name: "gpu_group" kind: KIND_GPU count: 2 gpus: [ 0, 1 ]
    rate_limiter { resources [ { name: "R1" global: true count: 4 } ] priority: 2 }
    secondary_devices [ { kind: KIND_NVDLA device_id: 0 } ] },
  { kind: KIND_CPU count: 1 }
]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2, 4 ]
           max_queue_delay_microseconds: 100 preserve_ordering: true }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [
    { input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_INT32
      dims: [ 1 ] initial_state: { name: "init" data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }
      use_same_buffer_for_input_output: true use_growable_memory: true }
  ]
}
optimization {
  priority: PRIORITY_MAX
  input_pinned_memory { enable: false }
  cuda { graphs: true graph_spec [ { batch_size: 4 input { key: "INPUT0" value { dim: [ 4, 16 ] } }
         graph_lower_bound { batch_size: 1 input { key: "INPUT0" value { dim: [ 1, 16 ] } } } } ] }
  execution_accelerators {
    gpu_execution_accelerator : [ {
      name : "tensorrt"
      parameters { key: "precision_mode" value: "FP16" }
      parameters { key: "max_workspace_size_bytes" value: "1073741824" }
    } ]
    cpu_execution_accelerator : [ { name : "openvino" } ]
  }
}
parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }
parameters [ { key: "k2" value: { string_value: "v2" } } ]
model_warmup [
  { name: "warm" batch_size: 1 count: 3
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] random_data: true } } }
]
model_transaction_policy { decoupled: false }
response_cache { enable: true }
model_repository_agents { agents [ { name: "checksum" parameters { key: "MD5:a" value: "x" } } ] }
model_metrics { metric_control [ { metric_identifier { family: "nv_inference_first_response_histogram_ms" }
                histogram_options { buckets: [ 1, 2, 4, 8 ] } } ] }
"""

_ENSEMBLE_PBTXT = r"""
name: "ens"
platform: "ensemble"
max_batch_size: 4
input [ { name: "IN" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 10 ] } ]
ensemble_scheduling {
  step [
    { model_name: "pre" model_version: -1 input_map { key: "X" value: "IN" }
      output_map { key: "Y" value: "mid" } },
    { model_name: "net" model_version: 1 input_map { key: "A" value: "mid" }
      output_map { key: "B" value: "OUT" } }
  ]
}
"""

_DYNAMIC_PBTXT = r"""
name: "dyn"
platform: "onnxruntime_onnx"
max_batch_size: 16
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_priority_level: 1
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 10 max_queue_size: 5 }
  priority_queue_policy { key: 1 value: { timeout_action: REJECT allow_timeout_override: true } }
}
instance_group [ { kind: KIND_MODEL } ]
"""


@pytest.mark.parametrize("pbtxt", [_PBTXT, _ENSEMBLE_PBTXT, _DYNAMIC_PBTXT])
def test_text_format_and_wire_roundtrip(pbtxt: str) -> None:
    ours = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
    theirs = text_format.Parse(pbtxt, tc_model_config.ModelConfig())
    # Same bytes on the wire, and each side parses the other's bytes.
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    assert tc_model_config.ModelConfig.FromString(ours.SerializeToString()) == theirs
    assert model_config_pb2.ModelConfig.FromString(theirs.SerializeToString()) == ours
    assert text_format.MessageToString(ours) == text_format.MessageToString(theirs)


def test_parsed_values() -> None:
    cfg = text_format.Parse(_PBTXT, model_config_pb2.ModelConfig())
    assert cfg.WhichOneof("scheduling_choice") == "sequence_batching"
    sb = cfg.sequence_batching
    assert sb.WhichOneof("strategy_choice") == "oldest"
    assert [c.name for c in sb.control_input] == ["START", "READY", "END", "CORRID"]
    assert sb.control_input[2].control[0].bool_false_true == [False, True]
    assert sb.state[0].initial_state[0].WhichOneof("state_data") == "zero_data"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert cfg.parameters["EXECUTION_ENV_PATH"].string_value.endswith("env.tar.gz")
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.parameters["precision_mode"] == "FP16"
    assert cfg.model_warmup[0].inputs["INPUT0"].WhichOneof("input_data_type") == "random_data"
    assert cfg.optimization.cuda.graph_spec[0].input["INPUT0"].dim == [4, 16]


def test_json_format_roundtrip() -> None:
    for pbtxt in (_PBTXT, _ENSEMBLE_PBTXT, _DYNAMIC_PBTXT):
        cfg = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
        d = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
        assert json_format.ParseDict(d, model_config_pb2.ModelConfig()) == cfg
        # Same JSON as tritonclient's classes produce.
        ref = text_format.Parse(pbtxt, tc_model_config.ModelConfig())
        assert d == json_format.MessageToDict(ref, preserving_proto_field_name=True)
        js = json_format.MessageToJson(cfg)
        assert json_format.Parse(js, model_config_pb2.ModelConfig()) == cfg


def test_service_messages_wire_compatible() -> None:
    req = grpc_service_pb2.ModelInferRequest(model_name="m", model_version="1", id="x")
    req.parameters["sequence_id"].int64_param = 7
    inp = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 2])
    inp.contents.fp32_contents.extend([1.0, 2.0])
    req.raw_input_contents.append(b"\x00\x01")
    theirs = tc_service.ModelInferRequest.FromString(req.SerializeToString())
    assert theirs.parameters["sequence_id"].int64_param == 7
    assert list(theirs.inputs[0].contents.fp32_contents) == [1.0, 2.0]
    back = grpc_service_pb2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert back == req

    resp = grpc_service_pb2.ModelConfigResponse()
    text_format.Parse(_ENSEMBLE_PBTXT, resp.config)
    tresp = tc_service.ModelConfigResponse.FromString(resp.SerializeToString())
    assert tresp.config.ensemble_scheduling.step[1].model_name == "net"


def test_grpc_stubs_and_reflection_pool() -> None:
    grpc_mod = importlib.import_module("conch._proto.grpc_service_pb2_grpc")
    assert hasattr(grpc_mod, "GRPCInferenceServiceServicer")
    assert hasattr(grpc_mod, "add_GRPCInferenceServiceServicer_to_server")
    reflection = pytest.importorskip("grpc_reflection.v1alpha.reflection")
    svc = POOL.FindServiceByName("inference.GRPCInferenceService")
    assert svc.full_name == "inference.GRPCInferenceService"
    # The reflection servicer accepts a custom pool.
    reflection.ReflectionServicer([svc.full_name, reflection.SERVICE_NAME], pool=POOL)
    fd = POOL.FindFileContainingSymbol("inference.ModelConfig")
    assert fd.name == "conch/_proto/model_config.proto"
