"""Loading one instance: the TorchScript file onto its device, its settings, its binding to the config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from conch import ConchError, ErrorCode, InstanceContext, ModelContext, ModelInstance
from conch.tensors import config_to_protocol
from conch_pytorch.binding import bind, forward_arguments
from conch_pytorch.datatypes import PROTOCOL_TO_TORCH, config_type_name
from conch_pytorch.errors import load_error
from conch_pytorch.instance import TorchInstance
from conch_pytorch.model_file import model_path
from conch_pytorch.options import torch_settings

log = logging.getLogger("conch.pytorch")


def create_instance(context: InstanceContext) -> ModelInstance:
    """One instance of ``context``'s model; any problem is a load error naming the model."""
    model = context.model
    _check_listed(model)
    _check_datatypes(model)
    device = _device(context)
    settings = torch_settings(context, model.backend_settings)
    torch.set_num_threads(settings.intra_op_threads)  # this instance's thread, before its first run
    module = _load(model.name, model_path(model), device)
    binding = bind(model.config, forward_arguments(module))
    log.info(
        "model '%s' instance '%s': %s, %d intra-op threads, %s, inputs %s",
        model.name,
        context.name,
        device,
        settings.intra_op_threads,
        "inference mode" if settings.inference_mode else "no_grad",
        "as one dict" if binding.mode == "dict" else ", ".join(binding.order) or "none",
    )
    return TorchInstance(module, model.config, binding, settings, device)


def _device(context: InstanceContext) -> torch.device:
    """``cpu``, or ``cuda:<id>`` for a KIND_GPU instance (a load error when torch has no CUDA)."""
    if context.kind != "GPU":
        return torch.device("cpu")  # KIND_CPU, and KIND_MODEL (the model places its own work)
    if not torch.cuda.is_available():
        raise ConchError(
            f"unable to load model '{context.model.name}': instance '{context.name}' is KIND_GPU but torch "
            f"{torch.__version__} has no CUDA device available (torch.cuda.is_available() is False); "
            "install a CUDA build of torch or use KIND_CPU",
            ErrorCode.UNAVAILABLE,
        )
    if context.device_id >= torch.cuda.device_count():
        raise ConchError(
            f"unable to load model '{context.model.name}': instance '{context.name}' asks for GPU "
            f"{context.device_id} but torch sees {torch.cuda.device_count()}",
            ErrorCode.INVALID_ARG,
        )
    return torch.device("cuda", context.device_id)


def _load(model: str, path: Path, device: torch.device) -> Any:
    """``torch.jit.load`` onto ``device``, in eval mode; torch's failure becomes the model's load error."""
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001 - a bad file fails this model only
        raise load_error(model, exc) from None
    module.eval()
    return module


def _check_datatypes(model: ModelContext) -> None:
    for kind, tensors in (("input", model.config.input), ("output", model.config.output)):
        for tensor in tensors:
            datatype = config_to_protocol(tensor.data_type)
            if datatype not in PROTOCOL_TO_TORCH:
                raise ConchError(
                    f"unable to load model '{model.name}': {kind} '{tensor.name}' has datatype "
                    f"{config_type_name(datatype)}, which the pytorch backend does not support",
                    ErrorCode.UNSUPPORTED,
                )


def _check_listed(model: ModelContext) -> None:
    config = model.config
    if not config.output:
        raise ConchError(
            f"unable to load model '{model.name}': the pytorch backend does not auto-complete the model "
            "configuration; config.pbtxt must list the model's inputs and outputs",
            ErrorCode.INVALID_ARG,
        )
