"""One model instance: a TorchScript module running concatenated batches.

Inputs arrive concatenated along the batch dimension as numpy arrays; ``torch.from_numpy`` wraps them
without a copy (a GPU instance copies them to its device), ``forward()`` runs under
``torch.inference_mode()`` (or ``torch.no_grad()``), and each CPU output goes back as ``.numpy()``, a
view of the tensor's memory. Each instance sets its own intra-op thread count on the thread that runs
it (torch keeps that count per thread), so the instances of a model share the cores between them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from conch import ConchError, ErrorCode, ModelInstance
from conch.tensors import config_to_protocol
from conch_pytorch.binding import Binding
from conch_pytorch.datatypes import TORCH_TO_PROTOCOL, config_type_name, to_numpy, to_torch
from conch_pytorch.errors import run_error
from conch_pytorch.options import TorchSettings

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig


class TorchInstance(ModelInstance):
    """Runs concatenated batches through one loaded TorchScript module."""

    def __init__(
        self, module: Any, config: ModelConfig, binding: Binding, settings: TorchSettings, device: torch.device
    ):
        self.module = module
        self.model = config.name
        self.binding = binding
        self.settings = settings
        self.device = device
        self._threads = settings.intra_op_threads
        self._batching = config.max_batch_size > 0
        self._input_types = {t.name: config_to_protocol(t.data_type) for t in config.input}
        self._output_types = {t.name: config_to_protocol(t.data_type) for t in config.output}
        self._grad_mode: Callable[[], Any] = torch.inference_mode if settings.inference_mode else torch.no_grad
        self._on_gpu = device.type == "cuda"

    def execute_batch(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)  # this thread's count: instances may differ
        rows = _rows(inputs) if self._batching else None
        with self._grad_mode(), self._optimized():
            args = self._arguments(inputs)
            try:
                result = self.module(*args)
            except Exception as exc:  # noqa: BLE001 - every failure of the model becomes the model's error
                raise run_error(self.model, exc) from None
            outputs = {name: self._output(name, result, rows) for name in output_names}
        if self._on_gpu and self.settings.cache_cleaning:
            torch.cuda.empty_cache()
        return outputs

    def _optimized(self) -> contextlib.AbstractContextManager[Any]:
        if self.settings.optimized_execution:
            return contextlib.nullcontext()
        return torch.jit.optimized_execution(False)

    def _arguments(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        tensors: dict[str, torch.Tensor] = {}
        for name in self.binding.order:
            array = inputs.get(name)
            if array is None:
                raise ConchError(
                    f"expected input '{name}' for model '{self.model}' but the request does not provide it",
                    ErrorCode.INVALID_ARG,
                )
            tensor = to_torch(array, self._input_types[name])
            if self._on_gpu:
                tensor = tensor.to(self.device, non_blocking=True)
            tensors[name] = tensor
        if self.binding.mode == "dict":
            return [tensors]
        return [tensors[name] for name in self.binding.order]

    def _output(self, name: str, result: Any, rows: int | None) -> np.ndarray:
        value = self._pick(name, result)
        if not isinstance(value, torch.Tensor):
            raise ConchError(
                f"model '{self.model}' returned {type(value).__name__} for output '{name}', expected a tensor",
                ErrorCode.INTERNAL,
            )
        got = TORCH_TO_PROTOCOL.get(value.dtype)
        wanted = self._output_types[name]
        if got != wanted:
            raise ConchError(
                f"unexpected datatype {config_type_name(got) if got else value.dtype} for inference output "
                f"'{name}', expecting {config_type_name(wanted)} (model '{self.model}')",
                ErrorCode.INTERNAL,
            )
        if rows is not None and (value.dim() == 0 or value.shape[0] != rows):
            raise ConchError(
                f"output '{name}' of model '{self.model}' has shape {list(value.shape)}: a batching model must "
                f"return the batch's {rows} rows in dimension 0",
                ErrorCode.INTERNAL,
            )
        return to_numpy(value.detach())

    def _pick(self, name: str, result: Any) -> Any:
        if isinstance(result, dict):
            if name not in result:
                raise ConchError(
                    f"model '{self.model}' returned no entry '{name}' in its output dict (keys: "
                    f"{', '.join(repr(k) for k in result)})",
                    ErrorCode.INTERNAL,
                )
            return result[name]
        index = self.binding.output_index[name]
        if isinstance(result, (tuple, list)):
            if index >= len(result):
                raise ConchError(
                    f"model '{self.model}' returned {len(result)} outputs, output '{name}' expects index {index}",
                    ErrorCode.INTERNAL,
                )
            return result[index]
        if index != 0:
            raise ConchError(
                f"model '{self.model}' returned one tensor, output '{name}' expects index {index}",
                ErrorCode.INTERNAL,
            )
        return result

    def unload(self) -> None:
        self.module = None
        if self._on_gpu:
            torch.cuda.empty_cache()


def _rows(inputs: dict[str, np.ndarray]) -> int | None:
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else None
    return None
