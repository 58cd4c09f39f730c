"""gRPC over TLS (``--grpc-use-ssl``, ``--grpc-use-ssl-mutual``) with certificates made for the test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serverkit import start_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "model_repository"


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return key, cert


def _infer(client: grpcclient.InferenceServerClient) -> np.ndarray:
    inp = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
    inp.set_data_from_numpy(np.array([[1, 2, 3]], np.float32))
    return client.infer("identity_fp32", [inp]).as_numpy("OUTPUT0")


def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    key, cert = _self_signed(tmp_path, "server")
    server = start_server([EXAMPLES], tmp_path, "--grpc-use-ssl=true", f"--grpc-server-cert={cert}",
                          f"--grpc-server-key={key}")
    try:
        url = f"localhost:{server.grpc_port}"
        secure = grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(cert))
        assert _infer(secure).tolist() == [[1, 2, 3]]
        plain = grpcclient.InferenceServerClient(url)
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
    finally:
        server.stop()

    client_key, client_cert = _self_signed(tmp_path, "client")
    server = start_server([EXAMPLES], tmp_path, "--grpc-use-ssl-mutual=true", f"--grpc-server-cert={cert}",
                          f"--grpc-server-key={key}", f"--grpc-root-cert={client_cert}")
    try:
        url = f"localhost:{server.grpc_port}"
        with_cert = grpcclient.InferenceServerClient(
            url, ssl=True, root_certificates=str(cert), private_key=str(client_key), certificate_chain=str(client_cert)
        )
        assert _infer(with_cert).tolist() == [[1, 2, 3]]
        without = grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(cert))
        with pytest.raises(InferenceServerException):
            without.is_server_live(client_timeout=5)
    finally:
        server.stop()


def test_a_missing_certificate_stops_start_up_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"--grpc-server-cert '.*nope.crt': No such file or directory"):
        start_server([EXAMPLES], tmp_path, "--grpc-use-ssl=true", f"--grpc-server-cert={tmp_path / 'nope.crt'}",
                     f"--grpc-server-key={tmp_path / 'nope.key'}", timeout=20)
