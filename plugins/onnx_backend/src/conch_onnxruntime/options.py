"""Session and run options of an instance, from the model config and ``--backend-config`` settings.

Keys are those of Triton's onnxruntime backend (``parameters`` of the model config):
``intra_op_thread_count``, ``inter_op_thread_count``, ``execution_mode`` (0 sequential, 1 parallel),
``enable_mem_arena``, ``enable_mem_pattern``, ``memory.enable_memory_arena_shrinkage`` (a run option)
and any ``session.*`` key (an ONNX Runtime session config entry, e.g.
``session.use_device_allocator_for_initializers``). ``optimization.graph.level`` maps as Triton
maps it: -1 basic, 1 extended, 2 none, anything else all.

Thread defaults differ from Triton on purpose: unless a count is given, the cores this process may
use are shared out among the model's instances (``max(1, cores // instances)`` intra-op threads
each), so two instances on eight cores use four threads each instead of eight each. And intra-op
threads do not spin between runs (``session.intra_op.allow_spinning`` defaults to ``0``, where ONNX
Runtime's default is ``1``): a spinning pool steals the cores the server's frontends and other models
need (measured on 2 cores: 1.8x the throughput of a 5M-parameter MLP at concurrency 16, half the CPU
per inference). Set the parameter to ``1`` to spin.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conch import ConchError, ErrorCode, InstanceContext
from conch.backend import default_thread_count

log = logging.getLogger("conch.onnxruntime")

#: ONNX Runtime session entries Conch sets unless the config's parameters do.
DEFAULT_SESSION_ENTRIES = {"session.intra_op.allow_spinning": "0"}

#: Settings (``--backend-config=onnxruntime,<key>=<value>``) that give thread defaults for every model.
THREAD_KEYS = ("intra_op_thread_count", "inter_op_thread_count")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass
class SessionSettings:
    """Everything needed to build one instance's ``SessionOptions`` and ``RunOptions``."""

    intra_op_threads: int
    inter_op_threads: int
    parallel: bool = False
    graph_level: str = "ORT_ENABLE_ALL"
    mem_arena: bool | None = None
    mem_pattern: bool | None = None
    session_entries: dict[str, str] = field(default_factory=dict)
    run_entries: dict[str, str] = field(default_factory=dict)
    log_severity: int = 3  # ONNX Runtime's own log: errors only, Conch logs the rest

    def session_options(self, ort: Any) -> Any:
        """An ``onnxruntime.SessionOptions`` with these settings."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.graph_level)
        if self.mem_arena is not None:
            options.enable_cpu_mem_arena = self.mem_arena
        if self.mem_pattern is not None:
            options.enable_mem_pattern = self.mem_pattern
        for key, value in self.session_entries.items():
            options.add_session_config_entry(key, value)
        options.log_severity_level = self.log_severity
        return options

    def run_options(self, ort: Any) -> Any | None:
        """An ``onnxruntime.RunOptions`` when a run entry is set, else None (the default)."""
        if not self.run_entries:
            return None
        options = ort.RunOptions()
        for key, value in self.run_entries.items():
            options.add_run_config_entry(key, value)
        return options


def session_settings(context: InstanceContext, settings: Mapping[str, str]) -> SessionSettings:
    """Read the config's parameters and optimization, with ``settings`` and the shared-cores default under them."""
    model = context.model
    name = model.name
    params = {key: value.string_value for key, value in model.config.parameters.items()}

    mode = params.get("execution_mode", "0").strip()
    if mode not in ("0", "1"):
        raise ConchError(
            f"Invalid configuration value provided. Expected values for execution_mode are 0 or 1 but got {mode} "
            f"(model '{name}')",
            ErrorCode.INVALID_ARG,
        )
    parallel = mode == "1"
    share = default_thread_count(context)
    intra = _count(name, "intra_op_thread_count", params, settings) or share
    inter = _count(name, "inter_op_thread_count", params, settings) or (share if parallel else 1)

    level = model.config.optimization.graph.level
    graph_level = {-1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_DISABLE_ALL"}.get(level, "ORT_ENABLE_ALL")

    result = SessionSettings(intra_op_threads=intra, inter_op_threads=inter, parallel=parallel, graph_level=graph_level)
    if "enable_mem_arena" in params:
        result.mem_arena = _flag(name, "enable_mem_arena", params["enable_mem_arena"])
    if "enable_mem_pattern" in params:
        result.mem_pattern = _flag(name, "enable_mem_pattern", params["enable_mem_pattern"])
    for key, value in params.items():
        if key.startswith("session."):
            result.session_entries[key] = value
        elif key.startswith("memory."):
            result.run_entries[key] = value
    for key, value in DEFAULT_SESSION_ENTRIES.items():
        result.session_entries.setdefault(key, value)
    if logging.getLogger("conch").isEnabledFor(logging.DEBUG):
        result.log_severity = 2
    return result


def _count(model: str, key: str, params: Mapping[str, str], settings: Mapping[str, str]) -> int:
    """A thread count from the config, else the backend settings; 0 when neither sets one."""
    source, text = ("parameters", params[key]) if key in params else ("--backend-config", settings.get(key, "0"))
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ConchError(
            f"model '{model}': {source} '{key}' must be a non-negative integer, got '{text}'", ErrorCode.INVALID_ARG
        )
    return value


def _flag(model: str, key: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConchError(
        f"model '{model}': parameter '{key}' must be 1 or 0 (true or false), got '{text}'", ErrorCode.INVALID_ARG
    )
