"""repository.py: model folders, duplicate names, version folders and version policies."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conch._proto.model_config_pb2 import ModelConfig
from conch.config import parse_config_text
from conch.errors import ConchError, ErrorCode
from conch.repository import ModelLocation, Repository, scan_versions, select_versions


def make_dirs(root: Path, *paths: str) -> None:
    for path in paths:
        target = root / path
        if path.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("")


def policy(text: str) -> ModelConfig:
    return parse_config_text(f'name: "m"\n{text}', "config.pbtxt")


def test_scan_lists_model_folders_only(tmp_path: Path) -> None:
    make_dirs(tmp_path, "a/1/", "b/config.pbtxt", ".git/", ".hidden_model/1/", "README.md")
    models, unavailable = Repository([tmp_path]).scan()
    assert models == {
        "a": ModelLocation("a", tmp_path / "a", tmp_path),
        "b": ModelLocation("b", tmp_path / "b", tmp_path),
    }
    assert unavailable == {}


def test_same_model_in_two_repositories_is_unavailable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second = tmp_path / "r1", tmp_path / "r2"
    make_dirs(first, "shared/1/", "only_first/1/")
    make_dirs(second, "shared/1/", "only_second/1/")
    with caplog.at_level(logging.ERROR, logger="conch.repository"):
        models, unavailable = Repository([first, second]).scan()
    assert sorted(models) == ["only_first", "only_second"]
    assert models["only_second"].repository == second
    assert unavailable == {
        "shared": f"model appears in two or more repositories: {first / 'shared'}, {second / 'shared'}"
    }
    assert "failed to poll model 'shared': not unique across all model repositories" in caplog.text


def test_missing_repository_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConchError) as info:
        Repository([tmp_path, missing]).scan()
    assert str(missing) in info.value.message
    assert "does not exist" in info.value.message
    (tmp_path / "file").write_text("")
    with pytest.raises(ConchError, match="is not a directory"):
        Repository([tmp_path / "file"]).scan()


def test_version_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_dirs(
        tmp_path,
        "1/",
        "2/",
        "10/",
        "0/",
        "abc/",
        "01/",
        "1a/",
        "-1/",
        ".ipynb_checkpoints/",
        "configs/",
        "warmup/",
        "initial_state/",
        "3",  # a file, not a folder
        "config.pbtxt",
    )
    with caplog.at_level(logging.WARNING, logger="conch.repository"):
        versions = Repository.versions(tmp_path)
    assert versions == [0, 1, 2, 10]
    warnings = sorted(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    assert warnings == [
        "ignore version directory '-1' which fails to convert to integral number",
        "ignore version directory '01' which contains leading zeros in its directory name",
        "ignore version directory '1a' which fails to convert to integral number",
        "ignore version directory 'abc' which fails to convert to integral number",
    ]
    assert all(record.name == "conch.repository" for record in caplog.records)


def test_scan_versions_reports_without_logging(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_dirs(tmp_path, "1/", "abc/")
    scan = scan_versions(tmp_path)
    assert scan.versions == [1]
    assert scan.ignored == [("abc", "ignore version directory 'abc' which fails to convert to integral number")]
    assert not caplog.records


@pytest.mark.parametrize(
    ("text", "available", "expected"),
    [
        ("", [1, 2, 3], [3]),  # no policy: latest 1 (normalisation sets it; select_versions assumes it too)
        ("version_policy { latest { num_versions: 1 } }", [3, 1, 2], [3]),
        ("version_policy { latest { num_versions: 2 } }", [1, 2, 3], [2, 3]),
        ("version_policy { latest { num_versions: 5 } }", [1, 2], [1, 2]),
        ("version_policy { all { } }", [2, 1, 7], [1, 2, 7]),
        ("version_policy { specific { versions: [ 3, 1 ] } }", [1, 2, 3], [1, 3]),
    ],
)
def test_select_versions(text: str, available: list[int], expected: list[int]) -> None:
    assert select_versions(policy(text), available) == expected
    assert Repository([]).select_versions(policy(text), available) == expected


def test_specific_version_missing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    config = policy("version_policy { specific { versions: [ 1, 4 ] } }")
    with caplog.at_level(logging.ERROR, logger="conch.repository"):
        assert select_versions(config, [1, 2]) == [1]
    assert "version 4 is specified for model 'm', but the version directory is not present" in caplog.text


@pytest.mark.parametrize(
    ("text", "available"),
    [
        ("", []),
        ("version_policy { specific { versions: [ 4 ] } }", [1, 2]),
        ("version_policy { latest { num_versions: 0 } }", [1]),
        ("version_policy { all { } }", []),
    ],
)
def test_no_version_available(text: str, available: list[int]) -> None:
    with pytest.raises(ConchError) as info:
        select_versions(policy(text), available)
    assert info.value.message == "at least one version must be available under the version policy of model 'm'"
    assert info.value.code is ErrorCode.INVALID_ARG
