"""conch.tracing and conch.trace_config: Triton's number parsing, sampling, and trace files that stay valid JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conch import tracing
from conch.errors import ConchError
from conch.trace_config import TraceOptions


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("trace_rate", "12", 12),
        ("trace_rate", " +7abc", 7),
        ("trace_rate", "-1", 4294967295),
        ("log_frequency", "0", 0),
        ("trace_count", "-1", -1),
        ("trace_count", "2147483647", 2147483647),
    ],
)
def test_parse_number_as_stoi(key: str, text: str, value: int) -> None:
    assert tracing.parse_number(key, text) == value


@pytest.mark.parametrize(
    ("key", "text", "grpc", "message"),
    [
        ("trace_rate", "x1", False, "Unable to parse 'trace_rate', got: x1"),
        ("trace_rate", "", False, "Unable to parse 'trace_rate', got: "),
        ("log_frequency", "2147483648", False,
         "Unable to parse 'log_frequency', value is out of range [ 0, 4294967295 ], got: 2147483648"),
        ("trace_count", "-2", False, "Unable to parse 'trace_count'. Expecting value >= -1, got:-2"),
        ("trace_count", "-2", True, "Unable to parse 'trace_count'. Expecting value >= -1, got: -2"),
    ],
)
def test_parse_number_errors(key: str, text: str, grpc: bool, message: str) -> None:
    with pytest.raises(ConchError) as caught:
        tracing.parse_number(key, text, grpc=grpc)
    assert caught.value.message == message


def test_levels() -> None:
    assert tracing.parse_levels(["TENSORS", "TIMESTAMPS"]) == tracing.TIMESTAMPS | tracing.TENSORS
    assert tracing.parse_levels(["nope"]) is None
    assert tracing.parse_levels(["OFF"]) == 0
    assert tracing.level_names(0) == ["OFF"]
    assert tracing.level_names(tracing.TENSORS | tracing.TIMESTAMPS) == ["TIMESTAMPS", "TENSORS"]


def test_trace_file_is_valid_json_after_every_write(tmp_path: Path) -> None:
    name = tmp_path / "t.json"
    file = tracing.TraceFile(str(name))
    file.save(['{"id":1}'], numbered=False)
    assert json.loads(name.read_text()) == [{"id": 1}]
    file.save(['{"id":2}', '{"id":3}'], numbered=False)
    assert json.loads(name.read_text()) == [{"id": 1}, {"id": 2}, {"id": 3}]
    file.save(['{"id":4}'], numbered=True)
    file.save(['{"id":5}'], numbered=True)
    assert json.loads(Path(f"{name}.0").read_text()) == [{"id": 4}]
    assert json.loads(Path(f"{name}.1").read_text()) == [{"id": 5}]


def test_sampling_rate_count_and_active_flag(tmp_path: Path) -> None:
    manager = tracing.TraceManager(tracing.TIMESTAMPS, rate=3, count=2, file=str(tmp_path / "t.json"))
    assert manager.active
    sampled = [manager.sample("m") is not None for _ in range(9)]
    assert sampled == [False, False, True, False, False, True, False, False, False]
    assert not manager.active  # the count is used up
    assert manager.settings()["trace_count"] == "0"


def test_tracing_off_costs_one_check() -> None:
    manager = tracing.TraceManager()
    assert not manager.active
    assert manager.sample("m") is None


def test_trace_config_options() -> None:
    options = TraceOptions()
    for text in ("triton,file=/tmp/f.json", "level=TIMESTAMPS", "rate=5", "count=3", "triton,log-frequency=2",
                 "log-frequency=9", "mode=triton"):
        options.apply(text)
    assert options == TraceOptions(level=tracing.TIMESTAMPS, rate=5, count=3, log_frequency=2, file="/tmp/f.json")
    with pytest.raises(ValueError, match="invalid value for trace level option: bad"):
        options.apply("level=BAD")
    with pytest.raises(ValueError, match="'triton' mode only"):
        options.apply("opentelemetry,url=localhost:4318")
    with pytest.raises(ValueError, match="expected"):
        options.apply("foo")
