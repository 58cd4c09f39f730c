"""The gRPC frontend's grpcio settings, which must be made before grpcio is first imported."""

from __future__ import annotations

import os
import subprocess
import sys

SHOW = "import os, conch.frontends.grpc; print(os.environ['GRPC_EXPERIMENTS'])"


def _experiments(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_event_engine_listener_is_off_unless_the_user_says_otherwise() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    assert _experiments(env) == "-event_engine_listener"
    assert _experiments({**env, "GRPC_EXPERIMENTS": "event_engine_listener"}) == "event_engine_listener"
