"""Start and stop the servers a benchmark compares: ``conch serve`` and the real Triton 2.51.

Shared by every benchmark script, so each measures both servers the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

#: The real Triton 2.51 (Python backend only), from ../shared/tools.
TRITON = Path(os.environ.get("TRITON_REFERENCE", "/work/shared/tools/triton-reference"))


def default_perf_analyzer() -> str:
    """``$PERF_ANALYZER``, else the copy ../shared/tools installs (when present), else ``perf_analyzer`` on PATH."""
    tool = os.environ.get("PERF_ANALYZER") or str(Path.home() / ".cache/conch-tools/bin/perf_analyzer")
    return tool if Path(tool).exists() else "perf_analyzer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(kind: str, repo: Path, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """``conch serve`` (kind "conch") or Triton (kind "triton") over ``repo`` on free loopback ports.

    Returns the process and its HTTP and gRPC ports once the server is ready.
    """
    http, grpc, metrics = free_port(), free_port(), free_port()
    flags = [f"--model-repository={repo}", f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
             "--log-info=false"]  # fmt: skip
    if kind == "conch":
        args = [sys.executable, "-m", "conch", "serve", *flags, "--http-address=127.0.0.1", "--grpc-address=127.0.0.1"]
    else:
        args = [str(TRITON), "serve", *flags]
    process = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{kind} exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1).status_code == 200:
                return process, http, grpc
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop(process)
    raise SystemExit(f"{kind} did not become ready:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """End the server and everything it started (Triton's Python stubs, Conch's workers)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
