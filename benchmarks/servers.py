"""Start and stop the servers the suite compares, and read what each one spent: CPU time and inferences.

Every server runs in a session of its own (``start_new_session``), so its whole process tree (Conch's
Python-backend workers, Triton's stubs, MLServer's workers) is found by session id, and ended together.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .install import Command

TICK = os.sysconf("SC_CLK_TCK")
NAMES = {"conch": "Conch", "triton": "Triton 2.51", "mlserver": "MLServer 1.7", "floor": "Floor (canned answers)"}
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server: its kind, process, loopback ports and log."""

    kind: str
    process: subprocess.Popen[bytes]
    http: int
    grpc: int
    metrics: int
    log: Path
    models: list[str] = field(default_factory=list)

    def url(self, protocol: str) -> str:
        return f"127.0.0.1:{self.http if protocol == 'http' else self.grpc}"

    def cpu_seconds(self) -> float:
        """User plus system CPU time of every live process in the server's session."""
        return session_cpu(self.process.pid)

    def inferences(self, model: str) -> int | None:
        """Inferences the server has counted for ``model`` so far (statistics extension or metrics)."""
        try:
            if self.kind == "mlserver":
                text = requests.get(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5).text
                found = re.findall(rf'^model_infer_request_success_total{{model="{model}",[^}}]*}} (\S+)', text, re.M)
                return int(sum(float(value) for value in found))
            stats = requests.get(f"http://127.0.0.1:{self.http}/v2/models/{model}/stats", timeout=5).json()
            return sum(int(entry["inference_count"]) for entry in stats["model_stats"])
        except (requests.RequestException, KeyError, ValueError):
            return None


def session_cpu(sid: int) -> float:
    """CPU seconds (utime + stime) of the processes whose session id is ``sid``."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == sid:  # after the name: state ppid pgrp session ... utime(11) stime(12)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


def start(kind: str, repo: Path, log: Path, peer: Command | None = None, conch: Server | None = None,
          models: list[str] | None = None) -> Server:  # fmt: skip
    """``conch serve``, tritonserver, MLServer or the floor over ``repo`` on free loopback ports, once ready.

    ``peer`` is how to run Triton or MLServer (from :mod:`benchmarks.install`); the floor
    (:mod:`benchmarks.floor`) copies ``models``' answers from the running ``conch``.
    """
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ)
    cwd = None
    if kind == "floor":
        assert conch is not None and models
        args = [sys.executable, "-m", "benchmarks.floor", f"--port={http}", f"--conch=127.0.0.1:{conch.http}",
                f"--models={','.join(models)}"]  # fmt: skip
        cwd = ROOT
    elif kind == "mlserver":
        assert peer is not None
        settings = {"http_port": http, "grpc_port": grpc, "metrics_port": metrics, "host": "127.0.0.1",
                    "debug": False, "parallel_workers": 1}  # fmt: skip
        (repo / "settings.json").write_text(json.dumps(settings))
        args = [*peer.args, str(repo)]
        env.update(peer.env)
        cwd = repo
    else:
        flags = [f"--model-repository={repo}", f"--http-port={http}", f"--grpc-port={grpc}",
                 f"--metrics-port={metrics}", "--log-info=false"]  # fmt: skip
        if kind == "conch":
            args = [
                sys.executable,
                "-m",
                "conch",
                "serve",
                *flags,
                "--http-address=127.0.0.1",
                "--grpc-address=127.0.0.1",
            ]
        else:
            assert peer is not None
            args = [*peer.args, *flags]
            env.update(peer.env)
    process = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=cwd, env=env,
                               start_new_session=True)  # fmt: skip
    server = Server(kind, process, http, grpc, metrics, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.25)
    stop(server)
    raise RuntimeError(f"{kind} did not become ready in 180 s:\n{log.read_text()[-3000:]}")


def stop(server: Server) -> None:
    """End the server and everything it started."""
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
