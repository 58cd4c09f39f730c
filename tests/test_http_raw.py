"""Raw HTTP against a real server: binary extension by hand, compression, chunking, errors, limits."""

from __future__ import annotations

import gzip
import http.client
import json
import struct
import zlib

import numpy as np
import requests

from serverkit import RunningServer

INFER = "/v2/models/identity_fp32/infer"


def _request_json(data: list[float]) -> dict:
    return {"inputs": [{"name": "INPUT0", "shape": [1, len(data)], "datatype": "FP32", "data": data}]}


def test_binary_request_and_response_by_hand(server: RunningServer) -> None:
    tensor = np.arange(8, dtype=np.float32).reshape(1, 8)
    header = json.dumps({
        "inputs": [{"name": "INPUT0", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 32}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }).encode()
    r = requests.post(
        server.base + INFER,
        data=header + tensor.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/octet-stream"
    json_len = int(r.headers["Inference-Header-Content-Length"])
    meta = json.loads(r.content[:json_len])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 32
    assert "data" not in meta["outputs"][0]
    assert np.frombuffer(r.content[json_len:], np.float32).tolist() == tensor.ravel().tolist()


def test_bytes_binary_with_length_prefixes(server: RunningServer) -> None:
    elements = [b"", b"abc", b"\x00\xff"]
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    header = json.dumps({
        "inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    r = requests.post(f"{server.base}/v2/models/identity_string/infer", data=header + blob,
                      headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    json_len = int(r.headers["Inference-Header-Content-Length"])
    assert r.content[json_len:] == blob


def test_gzip_and_deflate_both_directions(server: RunningServer) -> None:
    body = json.dumps(_request_json([1.0, 2.0])).encode()
    for encoding, pack, unpack in (
        ("gzip", gzip.compress, gzip.decompress),
        ("deflate", zlib.compress, zlib.decompress),
    ):
        conn = http.client.HTTPConnection("127.0.0.1", server.http_port)
        conn.request("POST", INFER, body=pack(body),
                     headers={"Content-Encoding": encoding, "Accept-Encoding": encoding})
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.status == 200
        assert resp.getheader("Content-Encoding") == encoding
        assert json.loads(unpack(raw))["outputs"][0]["data"] == [1.0, 2.0]
        conn.close()


def test_unsupported_content_encoding(server: RunningServer) -> None:
    r = requests.post(server.base + INFER, data=b"{}", headers={"Content-Encoding": "br"})
    assert r.status_code == 501
    assert r.json() == {"error": "Unsupported compression type"}


def test_chunked_request_body(server: RunningServer) -> None:
    body = json.dumps(_request_json([3.0, 4.0, 5.0])).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port)
    conn.putrequest("POST", INFER)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    for i in range(0, len(body), 7):
        chunk = body[i : i + 7]
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    assert resp.status == 200
    assert json.loads(resp.read())["outputs"][0]["data"] == [3.0, 4.0, 5.0]


def test_not_found_and_method_not_allowed(server: RunningServer) -> None:
    for path in ("/v2/notapi", "/notapi/v2", "/v2/models/identity_fp32/foo"):
        r = requests.get(server.base + path)
        assert r.status_code == 404 and r.json() == {"error": "Not Found"}, path
    r = requests.get(server.base + INFER)
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}
    r = requests.get(server.base + "/v2/models/nope")
    assert r.status_code == 404
    assert r.json() == {"error": "Request for unknown model: 'nope' is not found"}
    r = requests.get(server.base + "/v2/models/identity_fp32/versions/7")
    assert r.status_code == 404
    assert r.json() == {"error": "Request for unknown model: 'identity_fp32' version 7 is not found"}
    r = requests.get(server.base + "/v2/models/nope/ready")
    assert r.status_code == 400 and r.json() == {"error": "Model version not ready"}


def test_reserved_parameter_rejected(server: RunningServer) -> None:
    body = _request_json([1.0])
    body["parameters"] = {"triton_foo": 1}
    r = requests.post(server.base + INFER, json=body)
    assert r.status_code == 400
    assert r.json() == {
        "error": "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified."
    }


def test_custom_parameters_accepted(server: RunningServer) -> None:
    body = _request_json([1.0])
    body["parameters"] = {"my_key": "v", "n": 3, "flag": True}
    r = requests.post(server.base + INFER, json=body)
    assert r.status_code == 200, r.text


def test_body_over_limit_rejected(server: RunningServer) -> None:
    big = b"{" + b" " * (64 * 1024 * 1024 + 16) + b"}"
    r = requests.post(server.base + INFER, data=big)
    assert r.status_code == 400
    assert "error" in r.json()


def test_header_length_out_of_range(server: RunningServer) -> None:
    body = json.dumps(_request_json([1.0])).encode()
    r = requests.post(server.base + INFER, data=body, headers={"Inference-Header-Content-Length": "100000"})
    assert r.status_code == 400
    assert r.json()["error"] == f"inference header size should be in range (0, {len(body)}), got: 100000"


def test_statistics_count_inferences(server: RunningServer) -> None:
    before = requests.get(f"{server.base}/v2/models/identity_int64/stats").json()["model_stats"][0]
    for _ in range(3):
        body = {"inputs": [{"name": "INPUT0", "shape": [2, 1], "datatype": "INT64", "data": [1, 2]}]}
        assert requests.post(f"{server.base}/v2/models/identity_int64/infer", json=body).status_code == 200
    after = requests.get(f"{server.base}/v2/models/identity_int64/stats").json()["model_stats"][0]
    assert after["name"] == "identity_int64" and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 6
    assert after["execution_count"] - before["execution_count"] == 3
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 3
    r = requests.get(f"{server.base}/v2/models/nope/stats")
    assert r.status_code == 400 and r.json() == {"error": "requested model 'nope' is not available"}


def test_repository_index_and_load_in_mode_none(server: RunningServer) -> None:
    index = requests.post(f"{server.base}/v2/repository/index").json()
    row = [r for r in index if r["name"] == "identity_fp32"][0]
    assert row == {"name": "identity_fp32", "version": "1", "state": "READY"}
    r = requests.post(f"{server.base}/v2/repository/models/identity_fp32/load")
    assert r.status_code == 503
    assert r.json() == {"error": "explicit model load / unload is not allowed if polling is enabled"}


def test_plugins_route(server: RunningServer) -> None:
    plugins = requests.get(f"{server.base}/conch/plugins").json()["plugins"]
    identity = [p for p in plugins if p["name"] == "identity"][0]
    assert identity["status"] == "loaded" and identity["backends"] == ["identity"]


def test_malformed_bytes_tensor_errors(server: RunningServer) -> None:
    def send(blob: bytes, count: int) -> requests.Response:
        header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, count], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": len(blob)}}]}).encode()
        return requests.post(f"{server.base}/v2/models/identity_string/infer", data=header + blob,
                             headers={"Inference-Header-Content-Length": str(len(header))})

    subject = "inference input 'INPUT0' for model 'identity_string'"
    r = send(struct.pack("<I", 1) + b"a" + b"\x01\x00", 2)
    assert r.status_code == 400
    assert r.json()["error"] == (
        f"[request id: <id_unknown>] incomplete string length indicator for {subject}, expecting 4 bytes but "
        "only 2 bytes available. Please make sure the string length indicator is in one buffer."
    )
    r = send(struct.pack("<I", 1) + b"a", 2)
    assert r.json()["error"] == f"[request id: <id_unknown>] expected 2 string elements for {subject}, got 1"
    r = send((struct.pack("<I", 1) + b"a") * 3, 2)
    assert r.json()["error"] == (
        f"[request id: <id_unknown>] unexpected number of string elements 3 for {subject}, expecting 2"
    )
