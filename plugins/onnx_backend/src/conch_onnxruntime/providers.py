"""Execution providers of an instance, from ``optimization.execution_accelerators`` and the instance kind.

As in Triton: a ``KIND_GPU`` instance runs on CUDA on its group's device (TensorRT first when a
``gpu_execution_accelerator`` names ``tensorrt``); ``cpu_execution_accelerator { name: "openvino" }``
adds OpenVINO; CPU always comes last. A provider the installed onnxruntime lacks is skipped with a
warning, so the instance falls back to what is there (in the end, CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from conch import ConchError, ErrorCode, InstanceContext

log = logging.getLogger("conch.onnxruntime")

CPU, CUDA, TENSORRT, OPENVINO = (
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider",
)

#: Triton's TensorRT accelerator parameter keys → ONNX Runtime TensorRT provider options, where they differ.
_TRT_KEYS = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "int8_calibration_table_name": "trt_int8_calibration_table_name",
    "int8_use_native_calibration_table": "trt_int8_use_native_calibration_table",
}

Provider = tuple[str, dict[str, str]]


def select_providers(context: InstanceContext, available: Sequence[str]) -> list[Provider]:
    """``(provider, options)`` pairs in priority order for ``InferenceSession(providers=...)``."""
    model = context.model
    accelerators = model.config.optimization.execution_accelerators
    gpu = context.kind == "GPU"
    wanted: list[Provider] = []
    cuda_options: dict[str, str] = {}
    for accelerator in accelerators.gpu_execution_accelerator:
        params = dict(accelerator.parameters)
        if accelerator.name == "tensorrt":
            wanted.append((TENSORRT, {"device_id": str(context.device_id), **_trt_options(model.name, params)}))
        elif accelerator.name == "cuda":
            cuda_options.update(params)
        else:
            raise _unknown(accelerator.name, model.name)
    if gpu:
        wanted.append((CUDA, {**cuda_options, "device_id": str(context.device_id)}))
    elif wanted or cuda_options:
        log.info(
            "model '%s': gpu_execution_accelerator is ignored by KIND_%s instance '%s'",
            model.name,
            context.kind,
            context.name,
        )
        wanted = []
    for accelerator in accelerators.cpu_execution_accelerator:
        if accelerator.name != "openvino":
            raise _unknown(accelerator.name, model.name)
        wanted.append((OPENVINO, {"device_type": "CPU", **dict(accelerator.parameters)}))

    chosen: list[Provider] = []
    for provider, options in wanted:
        if provider in available:
            chosen.append((provider, options))
        else:
            log.warning(
                "model '%s' instance '%s': %s is not available in the installed onnxruntime (it has %s); "
                "falling back to %s",
                model.name,
                context.name,
                provider,
                ", ".join(available) or "none",
                "CPU" if provider in (CUDA, OPENVINO) else "the next provider",
            )
    chosen.append((CPU, {}))
    return chosen


def _trt_options(model: str, params: dict[str, str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in params.items():
        if key == "precision_mode":
            mode = value.upper()
            if mode not in ("FP32", "FP16", "INT8"):
                raise ConchError(
                    f"model '{model}': TensorRT precision_mode must be FP32, FP16 or INT8, got '{value}'",
                    ErrorCode.INVALID_ARG,
                )
            if mode == "FP16":
                options["trt_fp16_enable"] = "True"
            elif mode == "INT8":
                options["trt_int8_enable"] = "True"
        else:
            options[_TRT_KEYS.get(key, key)] = value
    return options


def _unknown(name: str, model: str) -> ConchError:
    return ConchError(f"unknown Execution Accelerator '{name}' is requested (model '{model}')", ErrorCode.INVALID_ARG)


def provider_arguments(chosen: list[Provider]) -> tuple[list[str], list[dict[str, Any]]]:
    """``providers`` and ``provider_options`` as ``InferenceSession`` takes them."""
    return [name for name, _ in chosen], [options for _, options in chosen]
