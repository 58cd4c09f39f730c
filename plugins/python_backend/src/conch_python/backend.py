"""The ``python`` backend: serves Triton Python models (``model.py`` with ``TritonPythonModel``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conch.backend import Backend, Batching, InstanceContext, ModelContext, ModelInstance
from conch.config.jsonify import config_from_json, config_to_json
from conch.errors import ConchError, ErrorCode
from conch_python import execution_env
from conch_python.inprocess import InProcessInstance, wants_in_process
from conch_python.loader import locate
from conch_python.process import WorkerInstance


class PythonBackend(Backend):
    """One worker process per instance by default; in-process with ``CONCH_IN_PROCESS``."""

    name = "python"
    platforms = ()
    default_model_filename = "model.py"
    batching = Batching.REQUESTS

    def auto_complete_config(self, context: ModelContext) -> None:
        """Run the model's ``auto_complete_config`` in a throwaway interpreter, as Triton does."""
        config = context.config
        try:
            source = locate(
                context.version_dir, config.default_model_filename, config.backend, config.runtime, context.backend_settings
            )
        except ConchError:
            return  # no model file: loading reports it
        if "auto_complete_config" not in source.path.read_text(encoding="utf-8", errors="replace"):
            return
        request = {"path": str(source.path), "package_dir": str(source.package_dir), "config": config_to_json(config)}
        value = config.parameters[execution_env.PARAMETER].string_value if execution_env.PARAMETER in config.parameters else ""
        env = execution_env.from_parameter(value, context.model_dir, context.name)
        done = subprocess.run(
            [sys.executable, "-m", "conch_python.autocomplete"],
            env=env.apply(dict(os.environ)) if env is not None else None,
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        answer = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        try:
            result = json.loads(answer)
        except ValueError:
            raise ConchError(
                f"auto_complete_config of {source.path} failed (exit code {done.returncode}): {done.stderr.strip()[-2000:]}",
                ErrorCode.INTERNAL,
            ) from None
        if "error" in result:
            raise ConchError(result["error"], ErrorCode.INVALID_ARG)
        context.config = config_from_json(result["config"])

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        if wants_in_process(context):
            if (context.model.parameter(execution_env.PARAMETER, "") or "").strip():
                raise ConchError(
                    f"model '{context.model.name}': {execution_env.PARAMETER} needs the model's own worker "
                    "processes; it cannot be used with CONCH_IN_PROCESS",
                    ErrorCode.INVALID_ARG,
                )
            return InProcessInstance(context)
        return WorkerInstance(context)
