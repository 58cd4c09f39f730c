"""Helpers for end-to-end tests: start a real ``conch serve`` on free loopback ports, write repositories."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A ``conch serve`` subprocess and where to reach it."""

    process: subprocess.Popen[str]
    http_port: int
    grpc_port: int
    log_path: Path
    repos: list[Path] = field(default_factory=list)
    metrics_port: int = 0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def start_server(
    repos: list[Path],
    tmp_path: Path,
    *extra: str,
    wait_ready: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> RunningServer:
    """Start ``conch serve``; wait until live (and ready unless told otherwise)."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    log_path = tmp_path / f"server-{http_port}.log"
    args = [sys.executable, "-m", "conch", "serve"]
    for repo in repos:
        args.append(f"--model-repository={repo}")
    args += [
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        *extra,
    ]
    full_env = dict(os.environ)
    full_env.update(env or {})
    log_file = open(log_path, "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=full_env)
    server = RunningServer(process, http_port, grpc_port, log_path, list(repos), metrics_port)
    deadline = time.monotonic() + timeout
    path = "/v2/health/ready" if wait_ready else "/v2/health/live"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"conch serve exited with {process.returncode}:\n{server.log()}")
        try:
            if requests.get(server.base + path, timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"conch serve did not become {'ready' if wait_ready else 'live'}:\n{server.log()}")


def write_model(
    repo: Path,
    name: str,
    config: str,
    versions: tuple[int, ...] = (1,),
    files: dict[str, str] | None = None,
) -> Path:
    """Write ``<repo>/<name>/config.pbtxt`` and version folders (with optional files)."""
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    for version in versions:
        (model_dir / str(version)).mkdir(exist_ok=True)
    for rel, text in (files or {}).items():
        target = model_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return model_dir


def identity_config(
    name: str,
    datatype: str = "TYPE_FP32",
    dims: str = "[ -1 ]",
    max_batch_size: int = 8,
    inputs: int = 1,
    extra: str = "",
) -> str:
    ins = ",".join(
        f'{{ name: "INPUT{i}" data_type: {datatype} dims: {dims} }}' for i in range(inputs)
    )
    outs = ",".join(
        f'{{ name: "OUTPUT{i}" data_type: {datatype} dims: {dims} }}' for i in range(inputs)
    )
    return (
        f'name: "{name}"\nbackend: "identity"\nmax_batch_size: {max_batch_size}\n'
        f"input [ {ins} ]\noutput [ {outs} ]\n{extra}\n"
    )


ALL_TYPES = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "STRING", "BF16",
]
