"""The ``onnxruntime`` backend: serves ``onnxruntime_onnx`` models in-process with ONNX Runtime."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnxruntime as ort

from conch import Backend, Batching, ConchError, ErrorCode, InstanceContext, ModelContext, ModelInstance
from conch_onnxruntime.autocomplete import auto_complete, needs_graph
from conch_onnxruntime.checks import check_config
from conch_onnxruntime.errors import load_error
from conch_onnxruntime.instance import OnnxInstance
from conch_onnxruntime.model_file import graph_path
from conch_onnxruntime.options import SessionSettings, session_settings
from conch_onnxruntime.providers import provider_arguments, select_providers
from conch_onnxruntime.signature import GraphSignature

log = logging.getLogger("conch.onnxruntime")

DEFAULT_MAX_BATCH_SIZE = 4


class OnnxRuntimeBackend(Backend):
    """Triton's onnxruntime backend: auto-complete from the graph, one session per instance."""

    name = "onnxruntime"
    platforms = ("onnxruntime_onnx",)
    default_model_filename = "model.onnx"
    batching = Batching.CONCATENATE
    default_cpu_instance_count = 2

    def auto_complete_config(self, context: ModelContext) -> None:
        config = context.config
        if not needs_graph(config):
            log.info(
                "skipping model configuration auto-complete for '%s': inputs and outputs already specified",
                context.name,
            )
            return
        path = graph_path(context)
        probe = SessionSettings(intra_op_threads=1, inter_op_threads=1, graph_level="ORT_DISABLE_ALL")
        session = _open(context.name, path, probe, [("CPUExecutionProvider", {})])
        auto_complete(config, GraphSignature.of(session), _default_max_batch_size(context))

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        model = context.model
        path = graph_path(model)
        settings = session_settings(context, model.backend_settings)
        providers = select_providers(context, ort.get_available_providers())
        session = _open(model.name, path, settings, providers)
        signature = GraphSignature.of(session)
        check_config(model.config, signature)
        log.info(
            "model '%s' instance '%s': %s, %d intra-op / %d inter-op threads, graph optimization %s",
            model.name,
            context.name,
            ", ".join(session.get_providers()),
            settings.intra_op_threads,
            settings.inter_op_threads,
            settings.graph_level,
        )
        return OnnxInstance(session, model.config, signature, settings.run_options(ort), ort, name=context.name)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["onnxruntime"] = ort.__version__
        info["providers"] = ort.get_available_providers()
        return info


def _open(model: str, path: Path, settings: SessionSettings, providers: list[tuple[str, dict[str, str]]]) -> Any:
    """An ``InferenceSession`` over ``path``; ONNX Runtime's failure becomes the model's load error."""
    names, options = provider_arguments(providers)
    try:
        return ort.InferenceSession(str(path), settings.session_options(ort), providers=names, provider_options=options)
    except Exception as exc:  # noqa: BLE001 - a bad graph or option fails this model only
        raise load_error(model, exc) from None


def _default_max_batch_size(context: ModelContext) -> int:
    text = context.backend_settings.get("default-max-batch-size", str(DEFAULT_MAX_BATCH_SIZE))
    try:
        return int(text)
    except ValueError:
        raise ConchError(
            f"--backend-config default-max-batch-size must be an integer, got '{text}'", ErrorCode.INVALID_ARG
        ) from None
