"""Model config validation with Triton's messages (core ``ValidateModelConfig``, ``ValidateModelIOConfig``,
``ValidateInstanceGroup``, ``ValidateEnsembleSchedulingConfig``).

Triton stops at the first error; :func:`validate_config` collects every independent one (the first is
what a load reports) and tags each with the dotted path of the field it concerns, so the loader can
point at its line in config.pbtxt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from conch._proto.model_config_pb2 import (
    BatchInput,
    BatchOutput,
    DataType,
    ModelConfig,
    ModelInput,
    ModelInstanceGroup,
    ModelOutput,
    ModelQueuePolicy,
    ModelSequenceBatching,
)
from conch.config.normalize import AOTI_PLATFORM, ENSEMBLE_PLATFORM, LIBTORCH_PLATFORMS, TENSORRT_PLATFORM
from conch.errors import ErrorCode

__all__ = ["Issue", "validate_config"]

WILDCARD_DIM = -1
#: The minimum CUDA compute capability Triton is built with (TRITON_MIN_COMPUTE_CAPABILITY).
MIN_COMPUTE_CAPABILITY = 6.0

#: Platforms a known backend accepts (core ``GetBackendType`` / ``GetBackendTypeFromPlatform``).
_BACKEND_PLATFORMS: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow_graphdef", "tensorflow_savedmodel"),
    "tensorrt": (TENSORRT_PLATFORM,),
    "onnxruntime": ("onnxruntime_onnx",),
    "pytorch": (*LIBTORCH_PLATFORMS, AOTI_PLATFORM),
}


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem with a config: the field path it concerns (None for the whole model) and Triton's text."""

    field: str | None
    message: str
    code: ErrorCode = ErrorCode.INVALID_ARG


class _Issues:
    def __init__(self) -> None:
        self.items: list[Issue] = []

    def add(self, field: str | None, message: str, code: ErrorCode = ErrorCode.INVALID_ARG) -> None:
        if all(issue.message != message for issue in self.items):
            self.items.append(Issue(field, message, code))


def validate_config(config: ModelConfig, *, gpu_count: int = 0) -> list[Issue]:
    """Every problem with a normalised config, in Triton's order; empty when the config is valid."""
    issues = _Issues()
    _model(config, issues)
    _io(config, issues)
    if not config.HasField("ensemble_scheduling"):
        _instance_groups(config, gpu_count, issues)
    return issues.items


# --- ValidateModelConfig ---------------------------------------------------------------------------


def _model(config: ModelConfig, issues: _Issues) -> None:
    name = config.name
    if not name:
        issues.add("name", "model configuration must specify 'name'")
    _platform_backend(config, issues)
    if config.max_batch_size < 0:
        issues.add("max_batch_size", f"'max_batch_size' must be non-negative value for {name}")
    if not config.HasField("version_policy"):
        issues.add("version_policy", f"must specify 'version policy' for {name}")
    if config.HasField("dynamic_batching"):
        _dynamic_batching(config, issues)
    if config.HasField("sequence_batching"):
        _sequence_batching(config, issues)
    if config.HasField("ensemble_scheduling"):
        _ensemble(config, issues)
    elif config.platform == ENSEMBLE_PLATFORM:
        issues.add(
            "platform",
            f"ensemble scheduling must be set for ensemble {name} whose platform is {ENSEMBLE_PLATFORM}",
        )
    if config.model_transaction_policy.decoupled and config.response_cache.enable:
        issues.add(
            "response_cache",
            f"Response Cache does not currently support model {name} with 'decoupled' transaction policy. "
            "Please disable the response cache.",
        )
    for index, control in enumerate(config.model_metrics.metric_control):
        at = f"model_metrics.metric_control[{index}]"
        if not control.HasField("metric_identifier"):
            issues.add(at, "metric control must specify 'metric_identifier'")
        elif not control.metric_identifier.family:
            issues.add(f"{at}.metric_identifier", "metric identifier must specify non-empty 'family'")
        elif not control.HasField("histogram_options"):
            issues.add(at, "metric control must specify 'histogram_options'")
        elif not control.histogram_options.buckets:
            issues.add(f"{at}.histogram_options", "histogram options must specify non-empty 'buckets'")


def _platform_backend(config: ModelConfig, issues: _Issues) -> None:
    name, platform, backend = config.name, config.platform, config.backend
    if not platform and not backend:
        issues.add("backend", f"must specify 'platform' or 'backend' for '{name}'")
        return
    if not backend:
        if platform != ENSEMBLE_PLATFORM:
            issues.add("platform", f"unexpected platform type '{platform}' for {name}")
        return
    if platform == ENSEMBLE_PLATFORM:
        issues.add("backend", f"Ensemble model '{name}' must have platform type '{platform}' and empty backend type")
        return
    allowed = _BACKEND_PLATFORMS.get(backend)
    if allowed is not None and platform not in allowed:
        issues.add("platform", f"unexpected 'platform' and 'backend' pair, got:{platform}, {backend}")


def _dynamic_batching(config: ModelConfig, issues: _Issues) -> None:
    name, batching = config.name, config.dynamic_batching
    at = "dynamic_batching"
    for size in batching.preferred_batch_size:
        if size <= 0:
            issues.add(f"{at}.preferred_batch_size", f"dynamic batching preferred size must be positive for {name}")
        elif size > config.max_batch_size:
            issues.add(
                f"{at}.preferred_batch_size",
                f"dynamic batching preferred size must be <= max batch size for {name}",
            )
    levels = batching.priority_levels
    if levels != 0:
        if batching.default_priority_level == 0 or batching.default_priority_level > levels:
            issues.add(
                f"{at}.default_priority_level",
                f"default priority level must be in range [1, {levels}] for {name}",
            )
        for level in batching.priority_queue_policy:
            if level == 0 or level > levels:
                issues.add(
                    f"{at}.priority_queue_policy",
                    f"priority queue policy must have priority level in range [1, {levels}] for {name}",
                )
    if batching.preserve_ordering:
        if levels > 1:
            issues.add(
                f"{at}.preserve_ordering",
                f"Only one priority level is allowed when 'preserve_ordering' is true for {name}",
            )
        policies = [batching.default_queue_policy, *batching.priority_queue_policy.values()]
        for policy in policies:
            if policy.default_timeout_microseconds != 0 and policy.timeout_action == ModelQueuePolicy.DELAY:
                issues.add(
                    f"{at}.preserve_ordering",
                    f"Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true for {name}",
                )


def _sequence_batching(config: ModelConfig, issues: _Issues) -> None:
    name, batcher = config.name, config.sequence_batching
    at = "sequence_batching"
    if config.response_cache.enable:
        issues.add(
            "response_cache",
            f"Response Cache does not currently support model {name} with sequence batching scheduler. "
            "Please disable the response cache.",
        )
    kinds = ModelSequenceBatching.Control
    for kind in (kinds.CONTROL_SEQUENCE_START, kinds.CONTROL_SEQUENCE_END, kinds.CONTROL_SEQUENCE_READY):
        _sequence_control(config, kind, True, issues)
    corrid = _sequence_control(config, kinds.CONTROL_SEQUENCE_CORRID, False, issues)
    allowed = (
        DataType.TYPE_UINT64,
        DataType.TYPE_INT64,
        DataType.TYPE_UINT32,
        DataType.TYPE_INT32,
        DataType.TYPE_STRING,
    )
    if corrid is not None and corrid[1] not in allowed:
        issues.add(
            corrid[0],
            f"unexpected data type for control CONTROL_SEQUENCE_CORRID for {name}. Allowed data types are "
            "TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING",
        )
    if batcher.HasField("oldest"):
        for size in batcher.oldest.preferred_batch_size:
            field = f"{at}.oldest.preferred_batch_size"
            if size <= 0:
                issues.add(field, f"sequence batching preferred batch size must be positive for {name}")
            elif size > config.max_batch_size:
                issues.add(field, f"sequence batching preferred batch size must be <= max batch size for {name}")
    if batcher.HasField("direct"):
        utilization = batcher.direct.minimum_slot_utilization
        if utilization < 0.0 or utilization > 1.0:
            issues.add(
                f"{at}.direct.minimum_slot_utilization",
                f"sequence batching minimum slot utilization must be in range (0.0, 1.0] for {name}",
            )


def _sequence_control(config: ModelConfig, kind: int, boolean: bool, issues: _Issues) -> tuple[str, int] | None:
    """Triton's ``Get{Boolean,Typed}SequenceControlProperties``: (field, datatype) of ``kind``'s tensor."""
    name = config.name
    kind_name = ModelSequenceBatching.Control.Kind.Name(kind)
    seen_tensors: set[str] = set()
    found: tuple[str, int] | None = None
    for index, control_input in enumerate(config.sequence_batching.control_input):
        at = f"sequence_batching.control_input[{index}]"
        if not control_input.name:
            issues.add(at, f"sequence batching control tensor must have a name for {name}")
            return found
        if control_input.name in seen_tensors:
            issues.add(
                at,
                f"sequence batching control tensor '{control_input.name}' is specified for multiple control "
                f"kinds for {name}",
            )
            return found
        seen_tensors.add(control_input.name)
        for c_index, control in enumerate(control_input.control):
            if control.kind != kind:
                continue
            where = f"{at}.control[{c_index}]"
            if found is not None:
                issues.add(where, f"sequence batching specifies multiple {kind_name} tensors for {name}")
                return found
            given = [
                label
                for label, values in (
                    ("int32_false_true", control.int32_false_true),
                    ("fp32_false_true", control.fp32_false_true),
                    ("bool_false_true", control.bool_false_true),
                )
                if len(values) > 0
            ]
            if not boolean:
                found = (where, control.data_type)
                if given:
                    issues.add(
                        where,
                        "sequence batching must not specify either 'int32_false_true', 'fp32_false_true' or "
                        f"'bool_false_true' for {kind_name} for {name}",
                    )
                    return found
                continue
            if not given:
                issues.add(
                    where,
                    "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or "
                    f"'bool_false_true' for {kind_name} for {name}",
                )
                return found
            if len(given) > 1:
                issues.add(
                    where,
                    "sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' and "
                    f"'bool_false_true' for {kind_name} for {name}",
                )
                return found
            values = getattr(control, given[0])
            if len(values) != 2:
                issues.add(
                    f"{where}.{given[0]}",
                    f"sequence batching control '{given[0]}' must have exactly 2 entries for {kind_name} for {name}",
                )
                return found
            datatype = {
                "int32_false_true": DataType.TYPE_INT32,
                "fp32_false_true": DataType.TYPE_FP32,
                "bool_false_true": DataType.TYPE_BOOL,
            }[given[0]]
            found = (where, datatype)
    return found


# --- ensembles ---------------------------------------------------------------------------------------


@dataclass
class _Tensor:
    name: str
    is_output: bool
    ready: bool = False

    def __post_init__(self) -> None:
        self.prev: list[_Tensor] = []
        self.next: list[_Tensor] = []


def _ensemble(config: ModelConfig, issues: _Issues) -> None:
    """``ValidateEnsembleSchedulingConfig``: structure first, then that data flows from inputs to outputs."""
    name = config.name
    if config.platform != ENSEMBLE_PLATFORM:
        issues.add(
            "ensemble_scheduling",
            f"ensemble scheduling cannot be set for model '{name}' whose platform is not {ENSEMBLE_PLATFORM}",
        )
        return
    if config.instance_group:
        issues.add("instance_group", f"instance group should not be specified for ensemble '{name}'")
    if config.HasField("optimization"):
        issues.add("optimization", f"optimization should not be specified for ensemble '{name}'")
    if config.model_warmup:
        issues.add("model_warmup", f"model_warmup can not be specified for ensemble '{name}'")
    steps = config.ensemble_scheduling.step
    if not steps:
        issues.add("ensemble_scheduling", f"must specify 'step' for ensemble '{name}'")
        return
    tensors = _ensemble_graph(config, issues)
    if tensors is None:
        return
    queue: list[_Tensor] = []
    for index, inp in enumerate(config.input):
        tensor = tensors.get(inp.name)
        if tensor is None:
            issues.add(f"input[{index}]", f"ensemble input '{inp.name}' for ensemble {name}' is not used")
            return
        tensor.ready = True
        queue.append(tensor)
    while queue:
        node = queue.pop(0)
        for following in node.next:
            if not following.ready and all(prev.ready for prev in following.prev):
                following.ready = True
                queue.append(following)
    outputs: set[str] = set()
    for index, out in enumerate(config.output):
        tensor = tensors.get(out.name)
        if tensor is None:
            issues.add(f"output[{index}]", f"ensemble output '{out.name}' for ensemble {name}' is not used")
            return
        if not tensor.ready:
            message = f"output '{out.name}' for ensemble '{name}' is not written"
            source = _not_ready_source(tensor)
            if source is not tensor:
                message += f": at least one of its depending tensors, '{source.name}', is not connected"
            issues.add(f"output[{index}]", message)
            return
        outputs.add(out.name)
    for tensor_name, tensor in tensors.items():
        if tensor_name in outputs:
            continue
        if not tensor.ready or not tensor.next:
            issues.add("ensemble_scheduling", f"ensemble tensor '{tensor_name}' is unused in ensemble '{name}'")
            return


def _not_ready_source(tensor: _Tensor) -> _Tensor:
    last, prev, seen = tensor, tensor.prev, set()
    while prev:
        candidates = [node for node in prev if not node.ready and node.name not in seen]
        if not candidates:
            break
        last = candidates[0]
        seen.add(last.name)
        prev = last.prev
    return last


def _ensemble_graph(config: ModelConfig, issues: _Issues) -> dict[str, _Tensor] | None:
    """``BuildEnsembleGraph``: ensemble tensors linked through the steps; None after an error."""
    name = config.name
    tensors: dict[str, _Tensor] = {}
    for index, step in enumerate(config.ensemble_scheduling.step):
        at = f"ensemble_scheduling.step[{index}]"
        for label, present in (
            ("model_name", step.model_name),
            ("input_map", step.input_map),
            ("output_map", step.output_map),
        ):
            if not present:
                issues.add(at, f"must specify '{label}' in step {index} of ensemble '{name}'")
                return None
        produced: list[_Tensor] = []
        for tensor_name in step.output_map.values():
            tensor = tensors.get(tensor_name)
            if tensor is None:
                tensor = tensors[tensor_name] = _Tensor(tensor_name, True)
            elif tensor.is_output:
                issues.add(
                    f"{at}.output_map",
                    f"ensemble tensor '{tensor_name}' can appear in an output map only once for ensemble "
                    f"'{name}' step {index}",
                )
                return None
            else:
                tensor.is_output = True
            produced.append(tensor)
        for tensor_name in step.input_map.values():
            tensor = tensors.get(tensor_name)
            if tensor is None:
                tensor = tensors[tensor_name] = _Tensor(tensor_name, False)
            for output in produced:
                output.prev.append(tensor)
                tensor.next.append(output)
    return tensors


# --- ValidateModelIOConfig -------------------------------------------------------------------------


def _io(config: ModelConfig, issues: _Issues) -> None:
    name = config.name
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for index, io in enumerate(tensors):
            at = f"{kind}[{index}]"
            problem = _io_problem(io, kind, config)
            if problem is not None:
                issues.add(f"{at}.{problem[0]}" if problem[0] else at, f"{problem[1]} for {name}")
            elif io.name in seen:
                issues.add(f"{at}.name", f"model {kind} '{io.name}' is specified more than once for {name}")
            seen.add(io.name)
    _batch_io(config, issues)


def _io_problem(io: ModelInput | ModelOutput, kind: str, config: ModelConfig) -> tuple[str, str] | None:
    """(field, message) of the first problem of one input or output (``ValidateModelInput/Output``)."""
    prefix = f"model {kind} "
    if not io.name:
        return "name", prefix + "must specify 'name'"
    prefix += f"'{io.name}' "
    if io.data_type == DataType.TYPE_INVALID:
        return "data_type", prefix + "must specify 'data_type'"
    if not io.dims:
        return "dims", prefix + "must specify 'dims'"
    has_reshape = io.HasField("reshape")
    if has_reshape and not io.reshape.shape and config.max_batch_size == 0:
        return "reshape", prefix + (
            "cannot have empty reshape for non-batching model as scalar tensors are not supported"
        )
    if any(dim < 1 and dim != WILDCARD_DIM for dim in io.dims):
        return "dims", prefix + "dimension must be integer >= 1, or -1 to indicate a variable-size dimension"
    if has_reshape:
        shape = list(io.reshape.shape)
        if any(dim < 1 and dim != WILDCARD_DIM for dim in shape):
            return "reshape.shape", prefix + (
                "reshape dimensions must be integer >= 1, or -1 to indicate a variable-size dimension"
            )
        problem = _reshape_problem(list(io.dims), shape)
        if problem:
            return "reshape", prefix + problem
    if isinstance(io, ModelInput):
        if io.format in (ModelInput.FORMAT_NHWC, ModelInput.FORMAT_NCHW) and len(io.dims) != 3:
            return "format", "model input NHWC/NCHW require 3 dims"
    if config.platform != TENSORRT_PLATFORM and io.is_shape_tensor:
        return "is_shape_tensor", "shape tensors are only supported for TensorRT platform"
    if io.is_non_linear_format_io:
        if config.platform != TENSORRT_PLATFORM:
            return "is_non_linear_format_io", "Non-linear IO format is only supported for the TensorRT platform"
        if len(io.dims) != 3:
            return "dims", f"Non-linear IO format {kind} requires 3 dims"
    return None


def _element_count(dims: Sequence[int]) -> int:
    """Triton's GetElementCount: -1 with a wildcard, 0 for no dims."""
    if WILDCARD_DIM in dims:
        return WILDCARD_DIM
    count = 0
    for index, dim in enumerate(dims):
        count = dim if index == 0 else count * dim
    return count


def _chunks(dims: Iterable[int]) -> list[int]:
    """Element counts of the runs between variable-size dimensions."""
    out, current = [], 1
    for dim in dims:
        if dim == WILDCARD_DIM:
            out.append(current)
            current = 1
        else:
            current *= dim
    out.append(current)
    return out


def _reshape_problem(dims: list[int], shape: list[int]) -> str | None:
    dims_size, reshape_size = _element_count(dims), _element_count(shape)
    if dims_size != reshape_size and (reshape_size != 0 or dims_size != 1):
        return "has different size for dims and reshape"
    if dims_size == WILDCARD_DIM:
        dim_chunks, shape_chunks = _chunks(dims), _chunks(shape)
        if len(dim_chunks) != len(shape_chunks):
            return "has different number of variable-size dimensions for dims and reshape"
        if dim_chunks != shape_chunks:
            return "has different size for dims and reshape"
    return None


def _batch_io(config: ModelConfig, issues: _Issues) -> None:
    """``ValidateBatchIO``; the message gets `` for <model>`` like the other IO errors."""
    name = config.name
    inputs = {io.name for io in config.input}
    outputs = {io.name for io in config.output}
    for index, batch_input in enumerate(config.batch_input):
        at = f"batch_input[{index}]"
        kind = BatchInput.Kind.Name(batch_input.kind)
        if len(batch_input.source_input) != 1:
            issues.add(
                f"{at}.source_input",
                f"batch input kind '{kind}' expects 1 source input, got {len(batch_input.source_input)} for {name}",
            )
            continue
        if batch_input.data_type not in (DataType.TYPE_INT32, DataType.TYPE_FP32):
            issues.add(f"{at}.data_type", f"batch input data type must be TYPE_INT32 or TYPE_FP32 for {name}")
            continue
        _unknown_sources(batch_input.source_input, inputs, f"{at}.source_input", name, issues)
    for index, batch_output in enumerate(config.batch_output):
        at = f"batch_output[{index}]"
        kind = BatchOutput.Kind.Name(batch_output.kind)
        if len(batch_output.source_input) != 1:
            issues.add(
                f"{at}.source_input",
                f"batch output kind '{kind}' expects 1 source input, got {len(batch_output.source_input)} for {name}",
            )
            continue
        _unknown_sources(batch_output.source_input, inputs, f"{at}.source_input", name, issues)
        targets: set[str] = set()
        for target in batch_output.target_name:
            if target not in outputs:
                issues.add(f"{at}.target_name", f"unknown target output name '{target}' for {name}")
            elif target in targets:
                issues.add(f"{at}.target_name", f"target output name '{target}' can only be specified once for {name}")
            targets.add(target)


def _unknown_sources(sources: Iterable[str], inputs: set[str], at: str, name: str, issues: _Issues) -> None:
    for source in sources:
        if source not in inputs:
            issues.add(at, f"unknown source input name '{source}' for {name}")


# --- ValidateInstanceGroup ---------------------------------------------------------------------------


def _instance_groups(config: ModelConfig, gpu_count: int, issues: _Issues) -> None:
    name = config.name
    if not config.instance_group:
        issues.add("instance_group", f"must specify one or more 'instance group's for {name}")
        return
    gpus = set(range(gpu_count))
    for index, group in enumerate(config.instance_group):
        at = f"instance_group[{index}]"
        head = f"instance group {group.name} of model {name}"
        if group.kind == ModelInstanceGroup.KIND_MODEL:
            if group.gpus:
                issues.add(f"{at}.gpus", f"{head} has kind KIND_MODEL but specifies one or more GPUs")
        elif group.kind == ModelInstanceGroup.KIND_GPU:
            if not group.gpus:
                if not gpus:
                    issues.add(f"{at}.kind", f"{head} has kind KIND_GPU but no GPUs are available")
                else:
                    issues.add(f"{at}.gpus", f"{head} has kind KIND_GPU but specifies no GPUs")
            for gpu in group.gpus:
                if gpu not in gpus:
                    supported = ", ".join(str(g) for g in sorted(gpus))
                    issues.add(
                        f"{at}.gpus",
                        f"{head} specifies invalid or unsupported gpu id {gpu}. GPUs with at least the minimum "
                        f"required CUDA compute compatibility of {MIN_COMPUTE_CAPABILITY:.6f} are: {supported}",
                    )
                    break
        elif group.kind == ModelInstanceGroup.KIND_CPU:
            if group.gpus:
                issues.add(f"{at}.gpus", f"{head} has kind KIND_CPU but specifies one or more GPUs")
        else:
            issues.add(f"{at}.kind", f"{head} has unexpected kind KIND_AUTO", ErrorCode.INTERNAL)
        if group.count < 1:
            issues.add(f"{at}.count", f"{head} must have a 'count' of at least 1, got {group.count}")
        if group.profile:
            if config.platform != TENSORRT_PLATFORM:
                issues.add(
                    f"{at}.profile",
                    f"{head} and platform {config.platform} specifies profile field which is only supported for "
                    "TensorRT models",
                )
            else:
                for profile in group.profile:
                    if not (profile.isascii() and profile.isdigit()):
                        issues.add(
                            f"{at}.profile",
                            f"{head} and platform {config.platform} specifies invalid profile {profile}. The field "
                            "should contain the string representation of a non-negative integer.",
                        )
                        break
