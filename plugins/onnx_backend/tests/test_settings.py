"""Session settings, thread sharing and execution providers, from configs parsed as Conch parses them."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort
import pytest
from conch_onnxruntime.errors import ort_error_text
from conch_onnxruntime.options import session_settings
from conch_onnxruntime.providers import CPU, CUDA, OPENVINO, TENSORRT, select_providers

from conch import ConchError, InstanceContext, ModelContext
from conch.backend import default_thread_count, usable_cores
from conch.config.parse import parse_config_text


def _instance(text: str, kind: str = "CPU", device: int = 0) -> InstanceContext:
    config = parse_config_text('name: "m"\nbackend: "onnxruntime"\n' + text, Path("config.pbtxt"))
    if not config.instance_group:
        config.instance_group.add(name="m", count=2)
    model = ModelContext("m", 1, Path("/nowhere/m"), config)
    return InstanceContext(model, "m_0", "m", 0, kind, device)


def test_threads_are_shared_out_among_instances() -> None:
    cores = usable_cores()
    assert default_thread_count(_instance("instance_group [ { count: 1 } ]")) == cores
    assert default_thread_count(_instance("instance_group [ { count: 2 } ]")) == max(1, cores // 2)
    assert default_thread_count(_instance("instance_group [ { count: 3 }, { count: 2 } ]")) == max(1, cores // 5)
    assert default_thread_count(_instance(f"instance_group [ {{ count: {cores * 4} }} ]")) == 1
    settings = session_settings(_instance("instance_group [ { count: 1 } ]"), {})
    assert (settings.intra_op_threads, settings.inter_op_threads, settings.parallel) == (cores, 1, False)


def test_parameters_then_backend_config_then_default() -> None:
    context = _instance(
        'parameters [ { key: "intra_op_thread_count" value: { string_value: "3" } },'
        ' { key: "execution_mode" value: { string_value: "1" } },'
        ' { key: "enable_mem_arena" value: { string_value: "false" } },'
        ' { key: "enable_mem_pattern" value: { string_value: "1" } },'
        ' { key: "session.use_device_allocator_for_initializers" value: { string_value: "1" } },'
        ' { key: "memory.enable_memory_arena_shrinkage" value: { string_value: "cpu:0" } } ]\n'
        "optimization { graph { level: -1 } }"
    )
    settings = session_settings(context, {"intra_op_thread_count": "7", "inter_op_thread_count": "5"})
    assert settings.intra_op_threads == 3  # the config wins over --backend-config
    assert settings.inter_op_threads == 5
    assert settings.parallel and settings.graph_level == "ORT_ENABLE_BASIC"
    assert settings.mem_arena is False and settings.mem_pattern is True
    assert settings.session_entries == {
        "session.use_device_allocator_for_initializers": "1",
        "session.intra_op.allow_spinning": "0",  # Conch's default: no spinning
    }
    assert settings.run_entries == {"memory.enable_memory_arena_shrinkage": "cpu:0"}
    options = settings.session_options(ort)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 5
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.enable_cpu_mem_arena is False
    assert options.get_session_config_entry("session.use_device_allocator_for_initializers") == "1"
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = session_settings(_instance('parameters [ { key: "session.intra_op.allow_spinning" value: { string_value: "1" } } ]'), {})
    assert spinning.session_entries["session.intra_op.allow_spinning"] == "1"  # the config wins
    assert settings.run_options(ort) is not None


@pytest.mark.parametrize(
    ("level", "expected"),
    [(0, "ORT_ENABLE_ALL"), (-1, "ORT_ENABLE_BASIC"), (1, "ORT_ENABLE_EXTENDED"), (2, "ORT_DISABLE_ALL")],
)
def test_graph_level_as_triton_maps_it(level: int, expected: str) -> None:
    assert session_settings(_instance(f"optimization {{ graph {{ level: {level} }} }}"), {}).graph_level == expected


@pytest.mark.parametrize(
    ("param", "value", "words"),
    [
        ("intra_op_thread_count", "many", "non-negative integer"),
        ("inter_op_thread_count", "-2", "non-negative integer"),
        ("execution_mode", "2", "execution_mode are 0 or 1"),
        ("enable_mem_arena", "maybe", "1 or 0"),
    ],
)
def test_bad_parameter_values_name_key_and_model(param: str, value: str, words: str) -> None:
    context = _instance(f'parameters {{ key: "{param}" value: {{ string_value: "{value}" }} }}')
    with pytest.raises(ConchError) as error:
        session_settings(context, {})
    assert words in error.value.message and "'m'" in error.value.message


def test_cpu_instance_uses_cpu_and_ignores_gpu_accelerators(caplog: pytest.LogCaptureFixture) -> None:
    context = _instance(
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }'
    )
    with caplog.at_level(logging.INFO, logger="conch.onnxruntime"):
        assert select_providers(context, [CUDA, TENSORRT, CPU]) == [(CPU, {})]
    assert "ignored" in caplog.text


def test_gpu_instance_gets_its_device_and_trt_options() -> None:
    context = _instance(
        "optimization { execution_accelerators { gpu_execution_accelerator [\n"
        ' { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" }'
        ' parameters { key: "max_workspace_size_bytes" value: "1073741824" } },\n'
        ' { name: "cuda" parameters { key: "cudnn_conv_use_max_workspace" value: "0" } } ] } }',
        kind="GPU",
        device=3,
    )
    chosen = select_providers(context, [TENSORRT, CUDA, CPU])
    assert chosen == [
        (TENSORRT, {"device_id": "3", "trt_fp16_enable": "True", "trt_max_workspace_size": "1073741824"}),
        (CUDA, {"cudnn_conv_use_max_workspace": "0", "device_id": "3"}),
        (CPU, {}),
    ]


def test_missing_providers_fall_back_to_cpu_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    context = _instance(
        'optimization { execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }', kind="GPU"
    )
    with caplog.at_level(logging.WARNING, logger="conch.onnxruntime"):
        assert select_providers(context, [CPU]) == [(CPU, {})]
    assert CUDA in caplog.text and OPENVINO in caplog.text and "falling back to CPU" in caplog.text


def test_openvino_selected_when_installed() -> None:
    context = _instance(
        'optimization { execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }'
    )
    assert select_providers(context, [OPENVINO, CPU]) == [(OPENVINO, {"device_type": "CPU"}), (CPU, {})]


def test_onnxruntime_messages_in_triton_form() -> None:
    text = "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Invalid rank for input: X Got: 1 Expected: 2"
    assert ort_error_text(RuntimeError(text)) == "onnx runtime error 2: Invalid rank for input: X Got: 1 Expected: 2"
    assert ort_error_text(RuntimeError("other")) == "onnx runtime error: other"
