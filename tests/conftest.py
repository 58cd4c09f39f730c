"""Fixtures for end-to-end tests: a shared server over a repository of identity models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serverkit import ALL_TYPES, RunningServer, identity_config, start_server, write_model


@pytest.fixture(scope="session")
def identity_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with identity models for every datatype and a few shapes."""
    repo = tmp_path_factory.mktemp("identity_repo")
    for t in ALL_TYPES:
        write_model(repo, f"identity_{t.lower()}", identity_config(f"identity_{t.lower()}", f"TYPE_{t}"))
    write_model(repo, "identity_fixed", identity_config("identity_fixed", "TYPE_FP32", "[ 4 ]"))
    write_model(
        repo, "identity_nobatch", identity_config("identity_nobatch", "TYPE_INT32", "[ -1, 2 ]", max_batch_size=0)
    )
    write_model(repo, "identity_multi", identity_config("identity_multi", "TYPE_FP32", "[ -1 ]", inputs=3))
    write_model(
        repo,
        "identity_slow",
        identity_config(
            "identity_slow",
            extra='instance_group [ { count: 3 kind: KIND_CPU } ]\n'
            'parameters [ { key: "execute_delay_ms" value: { string_value: "300" } } ]',
        ),
    )
    write_model(
        repo,
        "identity_optional",
        'name: "identity_optional"\nbackend: "identity"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] },'
        ' { name: "INPUT1" data_type: TYPE_FP32 dims: [ 2 ] optional: true } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] },'
        ' { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 2 ] } ]\n',
    )
    return repo


@pytest.fixture(scope="session")
def server(identity_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One shared server over the identity repository."""
    running = start_server([identity_repo], tmp_path_factory.mktemp("server"))
    yield running
    running.stop()
