"""gRPC beyond unary infer, against a real server: streaming, health, reflection, repository index."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serverkit import RunningServer


def test_stream_infer_in_order_with_ids_and_errors_on_the_stream(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(5):
            inp = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
            inp.set_data_from_numpy(np.full((1, 2), i, np.float32))
            client.async_stream_infer("identity_fp32", [inp], request_id=f"r{i}")
        bad = grpcclient.InferInput("INPUT0", [1, 2], "INT32")
        bad.set_data_from_numpy(np.zeros((1, 2), np.int32))
        client.async_stream_infer("identity_fp32", [bad], request_id="bad")
        inp = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
        inp.set_data_from_numpy(np.full((1, 2), 9, np.float32))
        client.async_stream_infer("identity_fp32", [inp], request_id="after")
        got = [results.get(timeout=30) for _ in range(7)]
    finally:
        client.stop_stream()
    ok = [(r.get_response().id, r.as_numpy("OUTPUT0")[0, 0]) for r, e in got if e is None]
    errors = [e for r, e in got if e is not None]
    assert [i for i, _ in ok if i.startswith("r")] == [f"r{i}" for i in range(5)]
    assert dict(ok)["after"] == 9.0  # the stream stayed open after the error
    assert len(errors) == 1 and "data-type is 'INT32'" in errors[0].message()


def test_health_v1_and_reflection(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "inference.GRPCInferenceService" in names
    assert "grpc.health.v1.Health" in names


def test_repository_index_over_grpc(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["identity_fp32"].state == "READY" and index["identity_fp32"].version == "1"
    stats = client.get_inference_statistics("identity_fp32")
    assert stats.model_stats[0].name == "identity_fp32"
