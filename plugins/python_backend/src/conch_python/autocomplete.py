"""``python -m conch_python.autocomplete``: a model's ``auto_complete_config`` in a throwaway interpreter.

Reads ``{"path", "package_dir", "config"}`` as JSON on stdin and prints ``{"config": ...}`` or
``{"error": ...}`` as the last line of stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from conch_python import execution_env
from conch_python.loader import ModelSource, import_model_class


def main() -> None:
    execution_env.use_site_packages()
    request = json.loads(sys.stdin.read())
    try:
        model_class = import_model_class(ModelSource(Path(request["path"]), Path(request["package_dir"])))
        hook = getattr(model_class, "auto_complete_config", None)
        config = pb_utils.ModelConfig(json.dumps(request["config"]))
        if hook is not None:
            config = hook(config)
            if not isinstance(config, pb_utils.ModelConfig):
                raise pb_utils.TritonModelException(
                    f"auto_complete_config must return a pb_utils.ModelConfig, got {type(config).__name__}"
                )
        result: dict[str, Any] = {"config": config.as_dict()}
    except Exception as exc:  # noqa: BLE001 - reported to the server as the load error
        result = {"error": f"auto_complete_config of {request['path']} failed: {type(exc).__name__}: {exc}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
