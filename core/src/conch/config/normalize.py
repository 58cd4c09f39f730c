"""The defaults Triton fills into a model config, in Triton's order.

- :func:`fill_backend_fields` is core's ``AutoCompleteBackendFields``: name, backend, platform and
  default_model_filename from the platform/backend table, the files of the first version folder and
  the ``<model>.<backend>`` folder name.
- :func:`normalize_config` is ``NormalizeModelConfig`` plus ``NormalizeInstanceGroup`` and
  ``SetDefaultInstanceCount``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from conch._proto.model_config_pb2 import ModelConfig, ModelInstanceGroup
from conch.backend import Backend
from conch.config.parse import ConfigError

__all__ = [
    "ENSEMBLE_PLATFORM",
    "SEQUENCE_IDLE_DEFAULT_MICROSECONDS",
    "fill_backend_fields",
    "normalize_config",
    "normalize_instance_groups",
    "normalize_model_config",
]

ENSEMBLE_PLATFORM = "ensemble"
SEQUENCE_IDLE_DEFAULT_MICROSECONDS = 1_000_000

TF_SAVEDMODEL_PLATFORM, TF_SAVEDMODEL_FILE = "tensorflow_savedmodel", "model.savedmodel"
TF_GRAPHDEF_PLATFORM, TF_GRAPHDEF_FILE = "tensorflow_graphdef", "model.graphdef"
TENSORRT_PLATFORM, TENSORRT_FILE = "tensorrt_plan", "model.plan"
ONNX_PLATFORM, ONNX_FILE = "onnxruntime_onnx", "model.onnx"
OPENVINO_FILE = "model.xml"
LIBTORCH_PLATFORMS, LIBTORCH_FILE = ("pytorch_libtorch", "libtorch"), "model.pt"
AOTI_PLATFORM, AOTI_FILE = "torch_aoti", "model.pt2"
PYTHON_FILE = "model.py"

#: Backends whose KIND_CPU groups default to 2 instances in Triton (``SetDefaultInstanceCount``).
_TWO_CPU_INSTANCES = ("tensorflow", "onnxruntime")


def _first_version_dir(model_dir: Path) -> Path | None:
    """The version folder Triton inspects: the first (by name) numeric one."""
    try:
        entries = sorted(model_dir.iterdir(), key=lambda p: p.name)
    except OSError:
        return None
    for entry in entries:
        name = entry.name
        if name.isascii() and name.isdigit() and (name == "0" or name[0] != "0") and entry.is_dir():
            return entry
    return None


def fill_backend_fields(
    config: ModelConfig,
    model_name: str,
    model_dir: Path,
    backends: Mapping[str, Backend] | None = None,
) -> None:
    """Triton's ``AutoCompleteBackendFields``; then, for plugin backends, their platforms and file names.

    Raises :class:`ConfigError` when nothing names a backend and the folder is not ``<name>.<backend>``.
    """
    if not config.name:
        config.name = model_name
    version_dir = _first_version_dir(model_dir)
    files: dict[str, bool] = {}  # name -> is a directory
    if version_dir is not None:
        for entry in version_dir.iterdir():
            files[entry.name] = entry.is_dir()
    backends = backends or {}

    def has_file(name: str) -> bool:
        return name in files and not files[name]

    def has_dir(name: str) -> bool:
        return files.get(name, False)

    unset = not config.backend and not config.platform and not config.default_model_filename
    detect = version_dir is not None and not config.default_model_filename

    # TensorFlow: the platform decides.
    if not config.platform and config.backend in ("", "tensorflow"):
        if config.default_model_filename == TF_SAVEDMODEL_FILE:
            config.platform = TF_SAVEDMODEL_PLATFORM
        elif config.default_model_filename == TF_GRAPHDEF_FILE:
            config.platform = TF_GRAPHDEF_PLATFORM
        elif detect:
            if has_dir(TF_SAVEDMODEL_FILE):
                config.platform = TF_SAVEDMODEL_PLATFORM
            if has_file(TF_GRAPHDEF_FILE):
                config.platform = TF_GRAPHDEF_PLATFORM
    if config.platform in (TF_SAVEDMODEL_PLATFORM, TF_GRAPHDEF_PLATFORM):
        config.backend = config.backend or "tensorflow"
        if not config.default_model_filename:
            saved = config.platform == TF_SAVEDMODEL_PLATFORM
            config.default_model_filename = TF_SAVEDMODEL_FILE if saved else TF_GRAPHDEF_FILE
        return

    # TensorRT.
    if not config.backend:
        if config.platform == TENSORRT_PLATFORM or config.default_model_filename == TENSORRT_FILE:
            config.backend = "tensorrt"
        elif not config.platform and detect and has_file(TENSORRT_FILE):
            config.backend = "tensorrt"
    if config.backend == "tensorrt":
        config.platform = config.platform or TENSORRT_PLATFORM
        config.default_model_filename = config.default_model_filename or TENSORRT_FILE
        return

    # ONNX Runtime: the model may be a file or a folder.
    if not config.backend:
        if config.platform == ONNX_PLATFORM or config.default_model_filename == ONNX_FILE:
            config.backend = "onnxruntime"
        elif not config.platform and detect and ONNX_FILE in files:
            config.backend = "onnxruntime"
    if config.backend == "onnxruntime":
        config.platform = config.platform or ONNX_PLATFORM
        config.default_model_filename = config.default_model_filename or ONNX_FILE
        return

    # OpenVINO: no platform.
    if not config.backend:
        if config.default_model_filename == OPENVINO_FILE:
            config.backend = "openvino"
        elif not config.platform and detect and OPENVINO_FILE in files:
            config.backend = "openvino"
    if config.backend == "openvino":
        config.default_model_filename = config.default_model_filename or OPENVINO_FILE
        return

    # PyTorch: LibTorch (model.pt) or AOTInductor (model.pt2).
    if not config.backend:
        if config.platform in LIBTORCH_PLATFORMS or config.default_model_filename == LIBTORCH_FILE:
            config.backend = "pytorch"
        elif config.platform == AOTI_PLATFORM or config.default_model_filename == AOTI_FILE:
            config.backend = "pytorch"
        elif not config.platform and detect:
            if has_file(LIBTORCH_FILE):
                config.backend, config.platform = "pytorch", LIBTORCH_PLATFORMS[0]
            elif has_file(AOTI_FILE):
                config.backend, config.platform = "pytorch", AOTI_PLATFORM
    if config.backend == "pytorch":
        if not config.platform:
            config.platform = LIBTORCH_PLATFORMS[0]
        if not config.default_model_filename:
            aoti = config.platform == AOTI_PLATFORM
            config.default_model_filename = AOTI_FILE if aoti else LIBTORCH_FILE
        return

    # Python.
    if not config.backend:
        if config.default_model_filename == PYTHON_FILE:
            config.backend = "python"
        elif not config.platform and detect and PYTHON_FILE in files:
            config.backend = "python"
    if config.backend == "python":
        config.default_model_filename = config.default_model_filename or PYTHON_FILE
        return

    # Conch: a plugin backend that declares the platform, or whose model file is present.
    if not config.backend and config.platform and config.platform != ENSEMBLE_PLATFORM:
        for backend in backends.values():
            if config.platform in backend.platforms:
                config.backend = backend.name
                return
    if unset and detect:
        for backend in backends.values():
            if backend.default_model_filename and backend.default_model_filename in files:
                config.backend = backend.name
                config.default_model_filename = backend.default_model_filename
                return

    # Custom backend: a model folder named "<name>.<backend>".
    if unset:
        if "." not in model_name:
            raise ConfigError(
                f"Invalid model name: Could not determine backend for model '{model_name}' with no backend in "
                "model configuration. Expected model name of the form 'model.<backend_name>'.",
                field="backend",
                hint="set 'backend' (or 'platform') in config.pbtxt, or add the model file "
                "(e.g. 1/model.py or 1/model.onnx) so the backend can be detected",
            )
        backend_name = model_name.split(".", 1)[1]
        config.backend = backend_name
        config.default_model_filename = f"model.{backend_name}"


def normalize_model_config(config: ModelConfig) -> None:
    """Triton's ``NormalizeModelConfig``: version policy, batching defaults, pinned memory."""
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if config.HasField("dynamic_batching"):
        batching = config.dynamic_batching
        if not batching.preferred_batch_size and config.max_batch_size > 0:
            batching.preferred_batch_size.append(config.max_batch_size)
    if config.HasField("sequence_batching"):
        sequence = config.sequence_batching
        if sequence.max_sequence_idle_microseconds == 0:
            sequence.max_sequence_idle_microseconds = SEQUENCE_IDLE_DEFAULT_MICROSECONDS
        if sequence.HasField("oldest"):
            oldest = sequence.oldest
            if not oldest.preferred_batch_size and config.max_batch_size > 0:
                oldest.preferred_batch_size.append(config.max_batch_size)
    if not config.HasField("ensemble_scheduling"):
        optimization = config.optimization
        if not optimization.HasField("input_pinned_memory"):
            optimization.input_pinned_memory.enable = True
        if not optimization.HasField("output_pinned_memory"):
            optimization.output_pinned_memory.enable = True


def normalize_instance_groups(config: ModelConfig, *, default_cpu_count: int = 1, gpu_count: int = 0) -> None:
    """Triton's ``NormalizeInstanceGroup`` and ``SetDefaultInstanceCount``; GPUs are ids 0..gpu_count-1."""
    if config.HasField("ensemble_scheduling"):
        return
    gpus = set(range(gpu_count))
    if not config.instance_group:
        config.instance_group.add(name=config.name)
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.kind == ModelInstanceGroup.KIND_AUTO:
            if not gpus or any(gpu not in gpus for gpu in group.gpus):
                group.kind = ModelInstanceGroup.KIND_CPU
            else:
                group.kind = ModelInstanceGroup.KIND_GPU
        if group.count < 1:
            group.count = default_cpu_count if group.kind == ModelInstanceGroup.KIND_CPU else 1
        if group.kind == ModelInstanceGroup.KIND_GPU and not group.gpus:
            group.gpus.extend(sorted(gpus))


def default_cpu_instance_count(config: ModelConfig, backend: Backend | None) -> int:
    """The count of a KIND_CPU group that gives none: the backend's, else Triton's rule by name."""
    if backend is not None:
        return max(int(backend.default_cpu_instance_count), 1)
    return 2 if config.backend in _TWO_CPU_INSTANCES else 1


def normalize_config(config: ModelConfig, *, backend: Backend | None = None, gpu_count: int = 0) -> None:
    """Every default Triton fills after auto-complete; mutates ``config``."""
    if not config.default_model_filename and backend is not None and backend.default_model_filename:
        if config.platform != ENSEMBLE_PLATFORM:
            config.default_model_filename = backend.default_model_filename
    normalize_model_config(config)
    normalize_instance_groups(
        config, default_cpu_count=default_cpu_instance_count(config, backend), gpu_count=gpu_count
    )
