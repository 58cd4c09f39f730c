"""Triton's own load generator, perf_analyzer, runs unchanged against Conch on both protocols."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from serverkit import RunningServer

_DEFAULT = Path.home() / ".cache" / "conch-tools" / "bin" / "perf_analyzer"
PERF_ANALYZER = os.environ.get("PERF_ANALYZER") or (str(_DEFAULT) if _DEFAULT.exists() else shutil.which("perf_analyzer"))

pytestmark = pytest.mark.skipif(
    not PERF_ANALYZER,
    reason="perf_analyzer is not installed here (../shared/tools/install-perf-analyzer installs it; .ci/run does)",
)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_measures_identity(server: RunningServer, protocol: str) -> None:
    url = server.http_url if protocol == "http" else server.grpc_url
    proc = subprocess.run(
        [str(PERF_ANALYZER), "-m", "identity_fp32", "-i", protocol, "-u", url, "--shape", "INPUT0:16",
         "--measurement-interval", "1000", "--concurrency-range", "2",
         # CI machines are noisy: a looser stability window, more trials.
         "--stability-percentage", "60", "--max-trials", "10"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Throughput:" in proc.stdout
    assert "Successful request count:" in proc.stdout  # read from Conch's statistics extension


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_with_system_shared_memory(server: RunningServer, protocol: str) -> None:
    """``--shared-memory=system``: inputs and outputs through regions it registers (and unregisters) itself."""
    url = server.http_url if protocol == "http" else server.grpc_url
    proc = subprocess.run(
        [str(PERF_ANALYZER), "-m", "identity_fp32", "-i", protocol, "-u", url, "--shape", "INPUT0:16",
         "--shared-memory=system", "--output-shared-memory-size=1024",
         "--measurement-interval", "1000", "--concurrency-range", "2",
         "--stability-percentage", "60", "--max-trials", "10"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Throughput:" in proc.stdout
    assert "Unable to" not in proc.stdout + proc.stderr  # registering and unregistering every region worked
