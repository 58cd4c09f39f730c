"""A shared ``conch serve`` over the Python test models (see pymodels.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pymodels import backend_directory, write_repository  # noqa: E402

from serverkit import RunningServer, start_server  # noqa: E402


@pytest.fixture(scope="session")
def py_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = write_repository(tmp_path_factory.mktemp("py_repo"))
    running = start_server(
        [repo],
        tmp_path_factory.mktemp("py_server"),
        "--model-control-mode=explicit",
        "--load-model=*",
        f"--backend-config=python,backend-directory={backend_directory(repo)}",
    )
    yield running
    running.stop()
