"""An instance's settings, from the model config's ``parameters`` and ``--backend-config`` settings.

Keys are those of Triton's PyTorch backend that mean something on a CPU (GPU ones are read too):

- ``INFERENCE_MODE`` (default ``true``): run under ``torch.inference_mode()``; ``false`` runs under
  ``torch.no_grad()``. Either way no autograd graph is recorded.
- ``DISABLE_OPTIMIZED_EXECUTION`` (default ``false``): run with TorchScript's graph optimisations off
  (``torch.jit.optimized_execution(False)``), which avoids the slow first runs while it profiles.
- ``ENABLE_JIT_EXECUTOR`` / ``ENABLE_JIT_PROFILING``: TorchScript's profiling executor and profiling
  mode; process-wide in torch, so as in Triton the last model that sets one decides.
- ``ENABLE_CACHE_CLEANING`` (default ``false``): ``torch.cuda.empty_cache()`` after each run of a GPU instance.
- ``INTRA_OP_THREAD_COUNT``: threads one operator may use. Conch sets it on each instance's thread, so
  instances may differ; unless given (here or as ``--backend-config=pytorch,intra_op_thread_count=N``),
  the cores this process may use are shared out among the model's instances (``max(1, cores // instances)``),
  so that N instances do not oversubscribe the cores (Triton leaves torch's default, every core, to each).
- ``INTER_OP_THREAD_COUNT``: torch's inter-op pool (``torch.jit.fork``), process-wide and fixed once
  used: as in Triton, the first model that sets it decides and other values are logged and ignored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from conch import ConchError, ErrorCode, InstanceContext
from conch.backend import default_thread_count

log = logging.getLogger("conch.pytorch")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

_interop_lock = threading.Lock()
_interop_set: int | None = None


@dataclass(frozen=True)
class TorchSettings:
    inference_mode: bool = True
    optimized_execution: bool = True
    cache_cleaning: bool = False
    intra_op_threads: int = 1


def torch_settings(context: InstanceContext, settings: Mapping[str, str]) -> TorchSettings:
    """Read and apply the parameters of ``context``'s model, with ``settings`` (--backend-config) under them."""
    model = context.model
    name = model.name
    params = {key.upper(): value.string_value for key, value in model.config.parameters.items()}
    inference = _flag(name, "INFERENCE_MODE", params, True)
    disable_optimized = _flag(name, "DISABLE_OPTIMIZED_EXECUTION", params, False)
    cache_cleaning = _flag(name, "ENABLE_CACHE_CLEANING", params, False)
    if "ENABLE_JIT_EXECUTOR" in params:
        torch._C._jit_set_profiling_executor(_flag(name, "ENABLE_JIT_EXECUTOR", params, True))
    if "ENABLE_JIT_PROFILING" in params:
        torch._C._jit_set_profiling_mode(_flag(name, "ENABLE_JIT_PROFILING", params, True))
    intra = _count(name, "INTRA_OP_THREAD_COUNT", params, settings) or default_thread_count(context)
    inter = _count(name, "INTER_OP_THREAD_COUNT", params, settings)
    if inter:
        _set_interop_threads(name, inter)
    return TorchSettings(
        inference_mode=inference,
        optimized_execution=not disable_optimized,
        cache_cleaning=cache_cleaning,
        intra_op_threads=intra,
    )


def _set_interop_threads(model: str, count: int) -> None:
    global _interop_set
    with _interop_lock:
        if _interop_set is not None:
            if _interop_set != count:
                log.warning(
                    "model '%s': INTER_OP_THREAD_COUNT %d ignored, the process-wide value is already %d",
                    model,
                    count,
                    _interop_set,
                )
            return
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError as exc:  # torch's pool already started: its size is fixed
            log.warning("model '%s': INTER_OP_THREAD_COUNT %d ignored: %s", model, count, exc)
            _interop_set = torch.get_num_interop_threads()
            return
        _interop_set = count


def _count(model: str, key: str, params: Mapping[str, str], settings: Mapping[str, str]) -> int:
    """A thread count from the config, else the backend settings; 0 when neither sets one."""
    setting = key.lower()
    if key in params:
        source, text = "parameter", params[key]
    else:
        source, text = "--backend-config", settings.get(setting, settings.get(key, "0"))
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ConchError(
            f"model '{model}': {source} '{key}' must be a non-negative integer, got '{text}'", ErrorCode.INVALID_ARG
        )
    return value


def _flag(model: str, key: str, params: Mapping[str, str], default: bool) -> bool:
    if key not in params:
        return default
    text = params[key]
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConchError(f"model '{model}': parameter '{key}' must be true or false, got '{text}'", ErrorCode.INVALID_ARG)
