"""Start MLServer 1.7 so that Triton's perf_analyzer can drive it; runs in MLServer's own environment.

    .bench/mlserver/bin/python benchmarks/mlserver_shim.py FOLDER

perf_analyzer needs three things MLServer 1.7 lacks; this adds them and then runs ``mlserver start FOLDER``:

- the model configuration (``GET /v2/models/<m>/config`` and gRPC ``ModelConfig``), read by perf_analyzer
  once at start-up: answered from ``triton-config.json`` / ``triton-config.pb`` beside each model's
  ``model-settings.json`` (written by the suite);
- the binary tensor extension over HTTP, which perf_analyzer always uses and MLServer does not speak: an
  ASGI layer turns such a request into the plain JSON one (``data`` lists) before MLServer sees it, and
  MLServer's JSON response back into binary outputs. This costs MLServer's process some tens of µs per
  request, counted against MLServer in the results;
- empty statistics (``/v2/models/<m>/stats``, gRPC ``ModelStatistics``), so perf_analyzer reports client
  figures only, as it does for any server without the statistics extension.

Inference itself (gRPC ``ModelInfer``, HTTP ``/infer``) is MLServer's own code, unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np

DTYPES = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
          "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "BOOL": "?"}  # fmt: skip


def configs(folder: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Each model's Triton configuration: JSON for HTTP, a serialised ``ModelConfigResponse`` for gRPC."""
    as_json, as_proto = {}, {}
    for path in folder.glob("*/triton-config.json"):
        name = json.loads((path.parent / "model-settings.json").read_text())["name"]
        as_json[name] = json.loads(path.read_text())
        as_proto[name] = (path.parent / "triton-config.pb").read_bytes()
    return as_json, as_proto


class BinaryTensors:
    """ASGI layer: an infer request in the binary tensor extension becomes the equivalent JSON request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        header = None
        if scope["type"] == "http":
            header = next((v for k, v in scope["headers"] if k == b"inference-header-content-length"), None)
        if header is None:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        split = int(header)
        request = json.loads(body[:split])
        offset = split
        for tensor in request.get("inputs", []):
            size = (tensor.get("parameters") or {}).pop("binary_data_size", None)
            if size is not None:
                tensor["data"] = np.frombuffer(body[offset : offset + size], DTYPES[tensor["datatype"]]).tolist()
                offset += size
        binary = {
            o["name"] for o in request.get("outputs", []) if (o.get("parameters") or {}).pop("binary_data", False)
        }
        if (request.get("parameters") or {}).pop("binary_data_output", False):
            binary = None  # every output
        plain = json.dumps(request).encode()
        drop = (b"inference-header-content-length", b"content-length", b"content-type")
        headers = [(k, v) for k, v in scope["headers"] if k not in drop]
        headers += [(b"content-length", str(len(plain)).encode()), (b"content-type", b"application/json")]
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": plain, "more_body": False}

        start: dict[str, Any] = {}
        parts: list[bytes] = []

        async def reply(message: dict[str, Any]) -> None:  # the JSON response, back in the binary extension
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body, extra = b"".join(parts), []
            if start["status"] == 200:
                response = json.loads(body)
                tensors = []
                for tensor in response.get("outputs", []):
                    if "data" in tensor and (binary is None or tensor["name"] in binary):
                        data = np.asarray(tensor.pop("data"), DTYPES[tensor["datatype"]]).tobytes()
                        tensor.setdefault("parameters", {})["binary_data_size"] = len(data)
                        tensors.append(data)
                head = json.dumps(response).encode()
                body = head + b"".join(tensors)
                extra = [(b"inference-header-content-length", str(len(head)).encode())]
            drop = (b"content-length", b"content-type")
            response_headers = [(k, v) for k, v in start.get("headers", []) if k not in drop] + extra
            response_headers += [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/octet-stream" if extra else b"application/json"),
            ]
            await send({**start, "headers": response_headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app({**scope, "headers": headers}, replay, reply)


def patch(folder: Path) -> None:
    """Add the config and statistics endpoints and the binary-tensor layer to MLServer's servers."""
    import mlserver.grpc.server as grpc_server
    import mlserver.rest.server as rest_server
    from fastapi.responses import JSONResponse

    as_json, as_proto = configs(folder)
    create_app = rest_server.create_app

    def create_app_with_config(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)

        async def config(model_name: str) -> JSONResponse:
            if model_name not in as_json:
                return JSONResponse({"error": f"unknown model '{model_name}'"}, status_code=400)
            return JSONResponse(as_json[model_name])

        async def stats(model_name: str) -> JSONResponse:
            return JSONResponse({"model_stats": []})

        app.add_api_route("/v2/models/{model_name}/config", config, methods=["GET"])
        app.add_api_route("/v2/models/{model_name}/stats", stats, methods=["GET"])
        app.add_middleware(BinaryTensors)
        return app

    rest_server.create_app = create_app_with_config

    def model_name(request: bytes) -> str:  # ModelConfigRequest / ModelStatisticsRequest: field 1 is the name
        return request[2 : 2 + request[1]].decode() if request[:1] == b"\x0a" else ""

    async def model_config(request: bytes, context: Any) -> bytes:
        name = model_name(request)
        if name not in as_proto:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{name}'")
        return as_proto[name]

    async def model_statistics(request: bytes, context: Any) -> bytes:
        return b""

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelConfig": grpc.unary_unary_rpc_method_handler(model_config, response_serializer=bytes),
            "ModelStatistics": grpc.unary_unary_rpc_method_handler(model_statistics, response_serializer=bytes),
        },
    )
    create_server = grpc_server.GRPCServer._create_server

    def create_server_with_config(self: Any) -> Any:
        server = create_server(self)
        server.add_generic_rpc_handlers((handler,))
        return server

    grpc_server.GRPCServer._create_server = create_server_with_config  # type: ignore[method-assign]


def main() -> None:
    folder = Path(sys.argv[1]).resolve()
    patch(folder)
    from mlserver.cli.main import main as mlserver_main

    sys.argv = ["mlserver", "start", str(folder)]
    mlserver_main()


if __name__ == "__main__":
    main()
