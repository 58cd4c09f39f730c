"""The machine's floor: a server that answers perf_analyzer with canned bytes, doing no inference.

    python -m benchmarks.floor --port 9000 --conch 127.0.0.1:8000 --models add_sub_onnx,identity

At start it asks a running Conch server for each model's metadata, configuration and the answer to one
binary request of zeros shaped as perf_analyzer sends them, then serves those bytes over HTTP on
uvloop and httptools: one parse and one write per request, with the same lingering after a response
as Conch's default (``--linger-us``, 200). Its p50 at concurrency 1 is what perf_analyzer, the kernel's
loopback and the wake-ups of this machine cost before any server does anything; the suite measures it
in the same run as the servers, so that "overhead" can be read against it on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httptools
import numpy as np
import requests
import uvloop

_DTYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64,
           "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}  # fmt: skip


def _ok(body: bytes, extra: bytes = b"", content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\n%scontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        extra, content_type, len(body), body)  # fmt: skip


def capture(conch: str, model: str) -> dict[bytes, bytes]:
    """The responses for ``model``'s paths, taken from Conch: metadata, config, statistics and one inference."""
    base = f"http://{conch}/v2/models/{model}"
    metadata = requests.get(base, timeout=10)
    config = requests.get(f"{base}/config", timeout=10)
    metadata.raise_for_status()
    config.raise_for_status()
    inputs, blobs = [], []
    for tensor in metadata.json()["inputs"]:
        shape = [1 if d < 0 else d for d in tensor["shape"]]
        blob = np.zeros(shape, dtype=_DTYPES[tensor["datatype"]]).tobytes()
        inputs.append({"name": tensor["name"], "datatype": tensor["datatype"], "shape": shape,
                       "parameters": {"binary_data_size": len(blob)}})  # fmt: skip
        blobs.append(blob)
    outputs = [{"name": t["name"], "parameters": {"binary_data": True}} for t in metadata.json()["outputs"]]
    header = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    answer = requests.post(f"{base}/infer", data=header + b"".join(blobs),
                           headers={"Inference-Header-Content-Length": str(len(header))}, timeout=10)  # fmt: skip
    answer.raise_for_status()
    length = answer.headers["Inference-Header-Content-Length"].encode()
    infer = _ok(answer.content, b"inference-header-content-length: %s\r\n" % length, b"application/octet-stream")
    path = f"/v2/models/{model}".encode()
    return {
        path: _ok(metadata.content),
        path + b"/versions/1": _ok(metadata.content),
        path + b"/config": _ok(config.content),
        path + b"/stats": _ok(json.dumps({"model_stats": []}).encode()),
        path + b"/infer": infer,
        path + b"/versions/1/infer": infer,
    }


class _Canned(asyncio.Protocol):
    answers: dict[bytes, bytes] = {}
    linger_s = 0.0
    arrived = False

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        _Canned.arrived = True
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        self.transport.write(self.answers.get(path) or _ok(b"{}"))
        if self.linger_s:
            _Canned.arrived = False
            end = time.perf_counter() + self.linger_s
            loop = asyncio.get_running_loop()

            def turn() -> None:
                if not _Canned.arrived and time.perf_counter() < end:
                    loop.call_soon(turn)

            loop.call_soon(turn)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Canned, "127.0.0.1", port)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conch", required=True, help="host:port of a running Conch server's HTTP endpoint")
    parser.add_argument("--models", required=True)
    parser.add_argument("--linger-us", type=int, default=200)
    ns = parser.parse_args(argv)
    answers = {b"/v2/health/ready": _ok(b""), b"/v2/health/live": _ok(b""), b"/v2": _ok(b'{"name":"floor"}')}
    for model in ns.models.split(","):
        answers.update(capture(ns.conch, model))
    _Canned.answers = answers
    _Canned.linger_s = ns.linger_us / 1e6
    uvloop.run(_serve(ns.port))


if __name__ == "__main__":
    main()
