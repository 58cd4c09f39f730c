"""config/: parsing with located errors, Triton's defaults, backend resolution, auto-complete, validation, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conch._proto.model_config_pb2 import DataType, ModelConfig
from conch.backend import Backend, ModelContext
from conch.config import (
    ConfigError,
    config_from_json,
    config_to_json,
    inspect_model_config,
    load_model_config,
    parse_config_text,
)
from conch.errors import ConchError, ErrorCode
from conch.hookimpl import hookimpl
from conch.plugins import Plugins

# --- helpers -----------------------------------------------------------------------------------------


class FakePython(Backend):
    name = "python"
    default_model_filename = "model.py"


class FakeOnnx(Backend):
    name = "onnxruntime"
    platforms = ("onnxruntime_onnx",)
    default_model_filename = "model.onnx"
    default_cpu_instance_count = 2


class AddsInput(Backend):
    """Auto-complete adds INPUT0 (and records what it was given)."""

    name = "adder"
    default_model_filename = "model.adder"

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[ModelContext] = []

    def auto_complete_config(self, context: ModelContext) -> None:
        self.contexts.append(context)
        if not context.config.input:
            context.config.input.add(name="INPUT0", data_type=DataType.TYPE_FP32, dims=[4])
        if context.config.max_batch_size == 0:
            context.config.max_batch_size = int(context.backend_settings["default-max-batch-size"])


class Refuses(Backend):
    name = "refuses"

    def auto_complete_config(self, context: ModelContext) -> None:
        raise ConchError("model says no")


def make_plugins(*backends: Backend) -> Plugins:
    class _Plugin:
        @hookimpl
        def conch_register_backends(self) -> list[Backend]:
            return list(backends)

    plugins = Plugins()
    plugins.load(autoload=False)
    plugins.pm.register(_Plugin(), name="test-backends")
    return plugins


@pytest.fixture
def plugins() -> Plugins:
    return make_plugins(FakePython(), FakeOnnx())


def make_model(root: Path, name: str, config: str | None, files: tuple[str, ...] = ("1/model.py",)) -> Path:
    model_dir = root / name
    model_dir.mkdir(parents=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    for file in files:
        path = model_dir / file
        path.parent.mkdir(parents=True, exist_ok=True)
        if file.endswith("/"):
            path.mkdir(exist_ok=True)
        else:
            path.write_text("")
    return model_dir


def load_error(model_dir: Path, plugins: Plugins, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_model_config(model_dir, plugins=plugins, **kwargs)  # type: ignore[arg-type]
    return info.value


PYTHON_MODEL = """name: "m"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


# --- parsing -------------------------------------------------------------------------------------------


def test_parse_error_names_file_line_column_field_and_template_hint() -> None:
    text = 'name: "m"\nbackend: "python"\nmax_batch_size: ${triton_max_batch_size}\n'
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "/repo/m/config.pbtxt")
    error = info.value
    assert (error.path, error.line, error.column, error.field) == ("/repo/m/config.pbtxt", 3, 17, "max_batch_size")
    assert error.code is ErrorCode.INVALID_ARG
    assert error.message.startswith(
        "/repo/m/config.pbtxt:3:17: field 'max_batch_size': Expected integer, got: $ (hint: the file looks like an "
        "unfilled template: '${triton_max_batch_size}' is a placeholder"
    )


def test_jinja_placeholder_is_reported_as_template() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text('name: "m"\nmax_batch_size: {{ mbs }}\n', "c.pbtxt")
    assert "unfilled template: '{{ mbs }}'" in info.value.message
    assert info.value.field == "max_batch_size"


def test_unknown_field_suggests_closest_name() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text('name: "m"\nmax_batch_siz: 8\n', "c.pbtxt")
    error = info.value
    assert (error.line, error.column, error.field) == (2, 1, "max_batch_siz")
    assert 'has no field named "max_batch_siz"' in error.message
    assert "(hint: did you mean 'max_batch_size'?)" in error.message


def test_unknown_nested_field_gets_its_path() -> None:
    text = (
        'name: "m"\ninput [\n  { name: "a" data_type: TYPE_FP32 dims: [1] },\n  { name: "b" data_typ: TYPE_FP32 }\n]\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "c.pbtxt")
    assert info.value.field == "input[1].data_typ"
    assert (info.value.line, info.value.column) == (4, 15)
    assert "did you mean 'data_type'?" in info.value.message


def test_unknown_enum_value_suggests_closest() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text('input [ { name: "x" data_type: TYPE_FLOAT32 dims: [1] } ]', "c.pbtxt")
    assert info.value.field == "input[0].data_type"
    assert 'Unknown enumeration value of "TYPE_FLOAT32" for field "data_type".' in info.value.message
    assert "did you mean TYPE_FP32?" in info.value.message


def test_stray_value_reads_like_triton() -> None:
    # Triton 2.51 logs "Error parsing text-format inference.ModelConfig: 3:19: Expected identifier, got: 8".
    text = 'name: "broken_config"\nbackend: "python"\nmax_batch_size: 8 8 {\n'
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "/r/broken_config/config.pbtxt")
    assert info.value.message.startswith(
        "/r/broken_config/config.pbtxt:3:19: field 'max_batch_size': Expected identifier, got: 8"
    )


def test_unquoted_string_hint() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("name: m\n", "c.pbtxt")
    assert "Expected string, got: m" in info.value.message
    assert "double quotes" in info.value.message


def test_runtime_field_is_kept() -> None:
    config = parse_config_text('name: "m"\nbackend: "vllm"\nruntime: "model.py"\n', "c.pbtxt")
    assert config.runtime == "model.py"


# --- defaults --------------------------------------------------------------------------------------

#: GET /v2/models/ident_fp32/config from Triton 2.51 (docs/dev/triton-observed.md), renamed to "m".
TRITON_PYTHON_MODEL_JSON = {
    "name": "m",
    "platform": "",
    "backend": "python",
    "runtime": "",
    "version_policy": {"latest": {"num_versions": 1}},
    "max_batch_size": 8,
    "input": [
        {
            "name": "INPUT0",
            "data_type": "TYPE_FP32",
            "format": "FORMAT_NONE",
            "dims": [4],
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": False,
            "is_non_linear_format_io": False,
        }
    ],
    "output": [
        {
            "name": "OUTPUT0",
            "data_type": "TYPE_FP32",
            "dims": [4],
            "label_filename": "",
            "is_shape_tensor": False,
            "is_non_linear_format_io": False,
        }
    ],
    "batch_input": [],
    "batch_output": [],
    "optimization": {
        "priority": "PRIORITY_DEFAULT",
        "input_pinned_memory": {"enable": True},
        "output_pinned_memory": {"enable": True},
        "gather_kernel_buffer_threshold": 0,
        "eager_batching": False,
    },
    "instance_group": [
        {
            "name": "m",
            "kind": "KIND_CPU",
            "count": 1,
            "gpus": [],
            "secondary_devices": [],
            "profile": [],
            "passive": False,
            "host_policy": "",
        }
    ],
    "default_model_filename": "model.py",
    "cc_model_filenames": {},
    "metric_tags": {},
    "parameters": {},
    "model_warmup": [],
}


@pytest.mark.parametrize("auto_complete", [True, False])
def test_python_model_defaults_match_triton(tmp_path: Path, plugins: Plugins, auto_complete: bool) -> None:
    model_dir = make_model(tmp_path, "m", PYTHON_MODEL)
    config, backend = load_model_config(model_dir, plugins=plugins, auto_complete=auto_complete)
    assert isinstance(backend, FakePython)
    document = config_to_json(config)
    assert document == TRITON_PYTHON_MODEL_JSON
    assert list(document) == list(TRITON_PYTHON_MODEL_JSON)  # Triton's key order too
    assert json.loads(json.dumps(document)) == document


def test_dynamic_and_sequence_batching_defaults(tmp_path: Path, plugins: Plugins) -> None:
    dynamic = make_model(tmp_path, "dyn", PYTHON_MODEL.replace('"m"', '"dyn"') + "dynamic_batching {}\n")
    document = config_to_json(load_model_config(dynamic, plugins=plugins)[0])
    assert document["dynamic_batching"] == {
        "preferred_batch_size": [8],
        "max_queue_delay_microseconds": 0,
        "preserve_ordering": False,
        "priority_levels": 0,
        "default_priority_level": 0,
        "priority_queue_policy": {},
    }
    sequence = make_model(
        tmp_path,
        "seq",
        PYTHON_MODEL.replace('"m"', '"seq"') + "sequence_batching { oldest { max_candidate_sequences: 2 } }\n",
    )
    document = config_to_json(load_model_config(sequence, plugins=plugins)[0])
    assert document["sequence_batching"]["max_sequence_idle_microseconds"] == 1000000
    assert document["sequence_batching"]["oldest"]["preferred_batch_size"] == [8]
    assert list(document["sequence_batching"])[-4:] == [
        "max_sequence_idle_microseconds",
        "control_input",
        "state",
        "iterative_sequence",
    ]


def test_dynamic_batching_without_batching_is_allowed(tmp_path: Path, plugins: Plugins) -> None:
    text = PYTHON_MODEL.replace("max_batch_size: 8", "max_batch_size: 0") + "dynamic_batching {}\n"
    config, _ = load_model_config(make_model(tmp_path, "m", text), plugins=plugins)
    assert list(config.dynamic_batching.preferred_batch_size) == []


def test_decoupled_with_dynamic_batching_is_fine(tmp_path: Path, plugins: Plugins) -> None:
    text = PYTHON_MODEL + "dynamic_batching {}\nmodel_transaction_policy { decoupled: true }\n"
    config, _ = load_model_config(make_model(tmp_path, "m", text), plugins=plugins)
    assert config_to_json(config)["model_transaction_policy"] == {"decoupled": True}


def test_instance_group_defaults(tmp_path: Path, plugins: Plugins) -> None:
    text = PYTHON_MODEL + (
        'instance_group [ { kind: KIND_CPU }, { name: "named" count: 3 kind: KIND_CPU }, { kind: KIND_AUTO } ]\n'
    )
    config, _ = load_model_config(make_model(tmp_path, "m", text), plugins=plugins)
    groups = [(g["name"], g["kind"], g["count"], g["gpus"]) for g in config_to_json(config)["instance_group"]]
    assert groups == [("m_0", "KIND_CPU", 1, []), ("named", "KIND_CPU", 3, []), ("m_2", "KIND_CPU", 1, [])]


def test_instance_groups_with_gpus(tmp_path: Path, plugins: Plugins) -> None:
    text = PYTHON_MODEL + "instance_group [ { kind: KIND_AUTO }, { kind: KIND_GPU gpus: [1] count: 2 } ]\n"
    config, _ = load_model_config(make_model(tmp_path, "m", text), plugins=plugins, gpu_count=2)
    groups = [(g["name"], g["kind"], g["count"], g["gpus"]) for g in config_to_json(config)["instance_group"]]
    assert groups == [("m_0", "KIND_GPU", 1, [0, 1]), ("m_1", "KIND_GPU", 2, [1])]
    error = load_error(tmp_path / "m", plugins)  # the same model on a machine without GPUs
    assert "instance group m_1 of model m specifies invalid or unsupported gpu id 1" in error.message


def test_kind_auto_naming_a_missing_gpu_becomes_cpu(tmp_path: Path, plugins: Plugins) -> None:
    # As in Triton: KIND_AUTO falls back to KIND_CPU, which then may not list GPUs.
    text = PYTHON_MODEL + "instance_group [ { kind: KIND_AUTO gpus: [5] } ]\n"
    error = load_error(make_model(tmp_path, "m", text), plugins, gpu_count=2)
    assert "instance group m_0 of model m has kind KIND_CPU but specifies one or more GPUs" in error.message


def test_cpu_instance_count_comes_from_backend(tmp_path: Path, plugins: Plugins) -> None:
    model_dir = make_model(tmp_path, "o", None, files=("1/model.onnx",))
    config, backend = load_model_config(model_dir, plugins=plugins)
    assert isinstance(backend, FakeOnnx)
    assert (config.backend, config.platform, config.default_model_filename) == (
        "onnxruntime",
        "onnxruntime_onnx",
        "model.onnx",
    )
    assert [(g.name, g.count) for g in config.instance_group] == [("o", 2)]


def test_kind_gpu_without_gpus_is_an_error(tmp_path: Path, plugins: Plugins) -> None:
    text = PYTHON_MODEL + "instance_group [\n  { kind: KIND_GPU }\n]\n"
    error = load_error(make_model(tmp_path, "m", text), plugins)
    assert error.field == "instance_group[0].kind"
    assert error.line == 7
    assert "instance group m_0 of model m has kind KIND_GPU but no GPUs are available" in error.message


def test_ensemble_gets_no_instance_groups_or_optimization(tmp_path: Path, plugins: Plugins) -> None:
    text = """name: "ens"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [ { model_name: "m" model_version: -1 input_map { key: "INPUT0" value: "IN" }
  output_map { key: "OUTPUT0" value: "OUT" } } ] }
"""
    config, backend = load_model_config(make_model(tmp_path, "ens", text, files=("1/",)), plugins=plugins)
    assert backend is None
    document = config_to_json(config)
    assert document["instance_group"] == []
    assert "optimization" not in document
    assert document["ensemble_scheduling"]["step"][0]["model_version"] == -1
    bad = text + "instance_group [ { kind: KIND_CPU } ]\n"
    error = load_error(make_model(tmp_path / "b", "ens", bad, files=("1/",)), plugins)
    assert "instance group should not be specified for ensemble 'ens'" in error.message
    assert error.line == 8


def test_ensemble_output_not_written(tmp_path: Path, plugins: Plugins) -> None:
    text = """name: "ens"
platform: "ensemble"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [ { model_name: "m" input_map { key: "INPUT0" value: "OTHER" }
  output_map { key: "OUTPUT0" value: "OUT" } } ] }
"""
    error = load_error(make_model(tmp_path, "ens", text, files=("1/",)), plugins)
    assert "ensemble input 'IN' for ensemble ens' is not used" in error.message


# --- backend resolution -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "config", "expected"),
    [
        (("1/model.py",), "", ("python", "", "model.py")),
        (("1/model.onnx/",), "", ("onnxruntime", "onnxruntime_onnx", "model.onnx")),
        (("1/model.plan",), "", ("tensorrt", "tensorrt_plan", "model.plan")),
        (("1/model.pt",), "", ("pytorch", "pytorch_libtorch", "model.pt")),
        (("1/model.pt2",), "", ("pytorch", "torch_aoti", "model.pt2")),
        (("1/model.xml", "1/model.bin"), "", ("openvino", "", "model.xml")),
        (("1/model.savedmodel/",), "", ("tensorflow", "tensorflow_savedmodel", "model.savedmodel")),
        (("1/model.graphdef",), "", ("tensorflow", "tensorflow_graphdef", "model.graphdef")),
        ((), 'platform: "onnxruntime_onnx"', ("onnxruntime", "onnxruntime_onnx", "model.onnx")),
        ((), 'platform: "pytorch_libtorch"', ("pytorch", "pytorch_libtorch", "model.pt")),
        ((), 'platform: "tensorflow_savedmodel"', ("tensorflow", "tensorflow_savedmodel", "model.savedmodel")),
        ((), 'backend: "tensorrt"', ("tensorrt", "tensorrt_plan", "model.plan")),
        ((), 'default_model_filename: "model.py"', ("python", "", "model.py")),
        (("10/model.py", "9/model.onnx"), "", ("python", "", "model.py")),  # first folder by name, like Triton
    ],
)
def test_backend_fields_resolved_like_triton(
    tmp_path: Path, files: tuple[str, ...], config: str, expected: tuple[str, str, str]
) -> None:
    model_dir = make_model(tmp_path, "m", config, files=files)
    report = inspect_model_config(model_dir, plugins=make_plugins(), auto_complete=False)
    assert report.config is not None
    assert (report.config.backend, report.config.platform, report.config.default_model_filename) == expected


def test_folder_name_selects_custom_backend(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path, "mymodel.identity", None, files=("1/",))
    config, backend = load_model_config(model_dir, plugins=make_plugins())
    assert backend is not None and backend.name == "identity"
    assert (config.name, config.backend, config.default_model_filename) == (
        "mymodel.identity",
        "identity",
        "model.identity",
    )


def test_undetectable_backend_has_triton_message(tmp_path: Path, plugins: Plugins) -> None:
    error = load_error(make_model(tmp_path, "m", None, files=("1/",)), plugins)
    assert error.field == "backend"
    assert (
        "Invalid model name: Could not determine backend for model 'm' with no backend in model configuration. "
        "Expected model name of the form 'model.<backend_name>'."
    ) in error.message


def test_unknown_backend_lists_installed_ones(tmp_path: Path, plugins: Plugins) -> None:
    model_dir = make_model(tmp_path, "m", 'name: "m"\nbackend: "sklearn"\n', files=("1/",))
    error = load_error(model_dir, plugins)
    assert (error.line, error.column, error.field) == (2, 1, "backend")
    assert "unable to find backend library for backend 'sklearn'" in error.message
    assert "installed backends: identity, onnxruntime, python" in error.message


def test_platform_declared_by_a_plugin_backend(tmp_path: Path) -> None:
    class Sk(Backend):
        name = "sklearn"
        platforms = ("sklearn_joblib",)
        default_model_filename = "model.joblib"

    model_dir = make_model(tmp_path, "m", 'platform: "sklearn_joblib"', files=("1/",))
    config, backend = load_model_config(model_dir, plugins=make_plugins(Sk()))
    assert isinstance(backend, Sk)
    assert (config.backend, config.default_model_filename) == ("sklearn", "model.joblib")


def test_python_based_backend_uses_python_and_keeps_runtime(tmp_path: Path, plugins: Plugins) -> None:
    model_dir = make_model(tmp_path, "m", 'backend: "vllm"\nruntime: "model.py"\n', files=("1/",))
    config, backend = load_model_config(model_dir, plugins=plugins)
    assert isinstance(backend, FakePython)
    assert (config.backend, config.runtime) == ("vllm", "model.py")
    assert config_to_json(config)["runtime"] == "model.py"


def test_platform_backend_pair(tmp_path: Path, plugins: Plugins) -> None:
    text = 'backend: "onnxruntime"\nplatform: "tensorrt_plan"\n'
    error = load_error(make_model(tmp_path, "m", text, files=("1/",)), plugins)
    assert "unexpected 'platform' and 'backend' pair, got:tensorrt_plan, onnxruntime" in error.message
    assert error.line == 2


# --- the pipeline --------------------------------------------------------------------------------------


def test_missing_config_needs_auto_complete(tmp_path: Path, plugins: Plugins) -> None:
    model_dir = make_model(tmp_path, "m", None)
    error = load_error(model_dir, plugins, auto_complete=False)
    assert f"failed to open text file for read {model_dir / 'config.pbtxt'}: No such file or directory" in error.message
    config, _ = load_model_config(model_dir, plugins=plugins)
    assert (config.name, config.backend) == ("m", "python")


def test_name_must_match_folder(tmp_path: Path, plugins: Plugins) -> None:
    error = load_error(make_model(tmp_path, "m", PYTHON_MODEL.replace('"m"', '"other"')), plugins)
    assert (error.line, error.column, error.field) == (1, 1, "name")
    assert "unexpected directory name 'm' for model 'other', directory name must equal model name" in error.message


def test_custom_config_name(tmp_path: Path, plugins: Plugins) -> None:
    model_dir = make_model(tmp_path, "m", PYTHON_MODEL)
    (model_dir / "configs").mkdir()
    (model_dir / "configs" / "big.pbtxt").write_text(PYTHON_MODEL.replace("max_batch_size: 8", "max_batch_size: 32"))
    assert load_model_config(model_dir, plugins=plugins, config_name="big")[0].max_batch_size == 32
    assert load_model_config(model_dir, plugins=plugins, config_name="absent")[0].max_batch_size == 8


def test_auto_complete_on_and_off(tmp_path: Path) -> None:
    adder = AddsInput()
    plugins = make_plugins(adder)
    model_dir = make_model(tmp_path, "m", 'backend: "adder"\n', files=("1/", "3/", "abc/"))
    config, backend = load_model_config(model_dir, plugins=plugins, auto_complete=False)
    assert backend is adder and not adder.contexts
    assert list(config.input) == [] and config.max_batch_size == 0
    config, _ = load_model_config(model_dir, plugins=plugins, default_max_batch_size=16)
    assert [i.name for i in config.input] == ["INPUT0"]
    assert config.max_batch_size == 16
    assert config.default_model_filename == "model.adder"
    context = adder.contexts[-1]
    assert (context.name, context.version, context.model_dir) == ("m", 3, model_dir)
    assert [g.name for g in config.instance_group] == ["m"]  # filled either way


def test_auto_complete_error_is_a_config_error(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path, "m", 'backend: "refuses"\n', files=("1/",))
    error = load_error(model_dir, make_plugins(Refuses()))
    assert error.message.endswith("model says no")


def test_override_config(tmp_path: Path, plugins: Plugins) -> None:
    model_dir = make_model(tmp_path, "m", PYTHON_MODEL)
    override = config_from_json('{"backend": "python", "max_batch_size": "16"}')
    config, _ = load_model_config(model_dir, plugins=plugins, override=override)
    assert config.max_batch_size == 16 and list(config.input) == []


# --- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            ("max_batch_size: 8", "max_batch_size: -1"),
            "max_batch_size",
            "'max_batch_size' must be non-negative value for m",
        ),
        (
            ("dims: [ 4 ] } ]\noutput", "dims: [ 0 ] } ]\noutput"),
            "input[0].dims",
            "model input 'INPUT0' dimension must be integer >= 1, or -1 to indicate a variable-size dimension for m",
        ),
        (
            ("data_type: TYPE_FP32 dims: [ 4 ] } ]\noutput", "dims: [ 4 ] } ]\noutput"),
            "input[0].data_type",
            "model input 'INPUT0' must specify 'data_type' for m",
        ),
        (
            ('{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }', '{ name: "OUTPUT0" data_type: TYPE_FP32 }'),
            "output[0].dims",
            "model output 'OUTPUT0' must specify 'dims' for m",
        ),
        (
            ("dims: [ 4 ] } ]\noutput", "dims: [ 4 ] reshape { shape: [ 2, 3 ] } } ]\noutput"),
            "input[0].reshape",
            "model input 'INPUT0' has different size for dims and reshape for m",
        ),
        (
            ("dims: [ 4 ] } ]\noutput", 'dims: [ 4 ] }, { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]\noutput'),
            "input[1].name",
            "model input 'INPUT0' is specified more than once for m",
        ),
        (
            ("max_batch_size: 8", "max_batch_size: 8\ndynamic_batching { preferred_batch_size: [ 16 ] }"),
            "dynamic_batching.preferred_batch_size",
            "dynamic batching preferred size must be <= max batch size for m",
        ),
        (
            ("max_batch_size: 8", "max_batch_size: 0\ninstance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]"),
            "instance_group[0].gpus",
            "instance group m_0 of model m has kind KIND_CPU but specifies one or more GPUs",
        ),
        (
            (
                "max_batch_size: 8",
                "max_batch_size: 8\nresponse_cache { enable: true }\nmodel_transaction_policy { decoupled: true }",
            ),
            "response_cache",
            "Response Cache does not currently support model m with 'decoupled' transaction policy. Please disable the "
            "response cache.",
        ),
        (
            (
                "data_type: TYPE_FP32 dims: [ 4 ] } ]\noutput",
                "data_type: TYPE_FP32 dims: [ 4 ] is_shape_tensor: true } ]\noutput",
            ),
            "input[0].is_shape_tensor",
            "shape tensors are only supported for TensorRT platform for m",
        ),
    ],
)
def test_validation_messages(
    tmp_path: Path, plugins: Plugins, change: tuple[str, str], field: str, message: str
) -> None:
    assert change[0] in PYTHON_MODEL
    error = load_error(make_model(tmp_path, "m", PYTHON_MODEL.replace(change[0], change[1], 1)), plugins)
    assert error.field == field
    assert error.path == str(tmp_path / "m" / "config.pbtxt")
    assert error.line is not None
    assert error.message.endswith(f"field '{field}': {message}")


def test_all_problems_are_collected(tmp_path: Path, plugins: Plugins) -> None:
    text = PYTHON_MODEL.replace("max_batch_size: 8", "max_batch_size: -2").replace(
        "dims: [ 4 ] } ]\noutput", "dims: [ -3 ] } ]\noutput"
    )
    report = inspect_model_config(make_model(tmp_path, "m", text), plugins=plugins)
    assert [(e.field, e.line) for e in report.errors] == [("max_batch_size", 3), ("input[0].dims", 4)]


# --- JSON --------------------------------------------------------------------------------------------


def test_int64_fields_are_numbers_and_enums_names() -> None:
    config = parse_config_text(
        """name: "m"
version_policy { specific { versions: [ 1, 3 ] } }
input [ { name: "x" data_type: TYPE_INT64 dims: [ -1, 3 ] reshape { shape: [ 3, -1 ] } } ]
dynamic_batching {
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_priority_level: 1
  default_queue_policy { default_timeout_microseconds: 7 }
  priority_queue_policy { key: 2 value { default_timeout_microseconds: 9 max_queue_size: 4 } }
}
instance_group [ { kind: KIND_GPU secondary_devices [ { device_id: 5 } ] } ]
model_warmup [ { name: "w" inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } } } ]
""",
        "c.pbtxt",
    )
    document = config_to_json(config)
    assert document["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert document["input"][0]["dims"] == [-1, 3]
    assert document["input"][0]["reshape"] == {"shape": [3, -1]}
    assert document["input"][0]["data_type"] == "TYPE_INT64"
    batching = document["dynamic_batching"]
    assert (
        batching["max_queue_delay_microseconds"],
        batching["priority_levels"],
        batching["default_priority_level"],
    ) == (
        100,
        2,
        1,
    )
    assert batching["default_queue_policy"]["default_timeout_microseconds"] == 7
    assert batching["default_queue_policy"]["timeout_action"] == "REJECT"
    assert batching["priority_queue_policy"] == {
        "2": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": 9,
            "allow_timeout_override": False,
            "max_queue_size": 4,
        }
    }
    assert document["instance_group"][0]["kind"] == "KIND_GPU"
    assert document["instance_group"][0]["secondary_devices"] == [{"kind": "KIND_NVDLA", "device_id": 5}]
    assert document["model_warmup"][0]["inputs"]["x"]["dims"] == [2]


def test_json_round_trip_and_lenient_input() -> None:
    config = config_from_json(
        {
            "name": "m",
            "max_batch_size": "16",
            "input": [{"name": "x", "data_type": "type_fp32", "dims": ["4", -1]}],
            "instance_group": [{"kind": "kind_cpu", "count": 2}],
        }
    )
    assert config.max_batch_size == 16
    assert list(config.input[0].dims) == [4, -1]
    assert config.input[0].data_type == DataType.TYPE_FP32
    assert config.instance_group[0].kind == 2
    again = config_from_json(json.dumps(config_to_json(config)))
    assert again == config


def test_json_errors() -> None:
    with pytest.raises(ConfigError, match='no field named "inputs"'):
        config_from_json({"inputs": []})
    with pytest.raises(ConfigError, match="must be an object"):
        config_from_json("[1]")
    with pytest.raises(ConfigError):
        config_from_json("{not json")


def test_empty_config_to_json() -> None:
    assert config_to_json(ModelConfig())["name"] == ""
