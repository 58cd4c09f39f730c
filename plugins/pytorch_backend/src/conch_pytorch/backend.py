"""The ``pytorch`` backend: serves ``pytorch_libtorch`` (TorchScript) models in-process.

torch takes seconds to import, so this module does not: the first model load imports it
(:mod:`conch_pytorch.loader`), and a server without PyTorch models never pays for it.
"""

from __future__ import annotations

import logging
import sys
from importlib import metadata
from typing import Any

from conch import Backend, Batching, InstanceContext, ModelContext, ModelInstance
from conch_pytorch.model_file import MODEL_FILE

log = logging.getLogger("conch.pytorch")


class PyTorchBackend(Backend):
    """Triton's pytorch backend: one TorchScript module per instance; the config is required."""

    name = "pytorch"
    platforms = ("pytorch_libtorch",)
    default_model_filename = MODEL_FILE
    batching = Batching.CONCATENATE

    def auto_complete_config(self, context: ModelContext) -> None:
        # As Triton's PyTorch backend: a TorchScript file carries no tensor names, datatypes or shapes,
        # so nothing is filled in; the config must list the inputs and outputs (checked at load).
        log.info("skipping model configuration auto-complete for '%s': not supported for pytorch backend", context.name)

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        from conch_pytorch.loader import create_instance

        return create_instance(context)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(torch_info())
        return info


def torch_info() -> dict[str, Any]:
    """torch's version, and whether it sees CUDA once something imported it (without importing it here)."""
    try:
        info: dict[str, Any] = {"torch": metadata.version("torch")}
    except metadata.PackageNotFoundError:
        info = {"torch": None}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["cuda"] = bool(torch.cuda.is_available())
    return info
