"""Start-up, failure isolation, concurrency and shutdown of a real ``conch serve``."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import requests
import tritonclient.http as httpclient

from serverkit import RunningServer, free_port, identity_config, start_server, write_model


def _infer_fp32(url: str, model: str, data: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(url, network_timeout=120)
    inp = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    result = client.infer(model, [inp])
    return result.as_numpy("OUTPUT0")


def test_instances_execute_at_the_same_time(server: RunningServer) -> None:
    """identity_slow has 3 instances that each take 300 ms: 3 requests must overlap in time."""
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        start = time.monotonic()
        out = _infer_fp32(server.http_url, "identity_slow", np.full((1, 2), i, np.float32))
        end = time.monotonic()
        assert out[0, 0] == i
        with lock:
            spans.append((start, end))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spans) == 3
    latest_start = max(s for s, _ in spans)
    earliest_end = min(e for _, e in spans)
    # All three executions were in progress together at some instant.
    assert latest_start < earliest_end, spans
    # And the whole took far less than three serial executions (3 x 300 ms).
    total = max(e for _, e in spans) - min(s for s, _ in spans)
    assert total < 0.85, total


def test_broken_config_reported_with_line_and_column_while_others_serve(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "good", identity_config("good"))
    write_model(repo, "broken", 'name: "broken"\nbackend: "identity"\nmax_batch_size: $MBS\n')
    srv = start_server([repo], tmp_path, "--exit-on-error=false", wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if requests.get(srv.base + "/v2/models/good/ready").status_code == 200:
                break
            time.sleep(0.1)
        assert requests.get(srv.base + "/v2/models/good/ready").status_code == 200
        assert requests.get(srv.base + "/v2/models/broken/ready").status_code == 400
        # strict readiness: one model unavailable means the server is not ready
        assert requests.get(srv.base + "/v2/health/ready").status_code == 400
        assert requests.get(srv.base + "/v2/health/live").status_code == 200
        out = _infer_fp32(srv.http_url, "good", np.ones((1, 3), np.float32))
        assert out.tolist() == [[1.0, 1.0, 1.0]]
        index = requests.post(srv.base + "/v2/repository/index").json()
        broken = [row for row in index if row["name"] == "broken"][0]
        assert broken["state"] == "UNAVAILABLE"
        assert "config.pbtxt:3:" in broken["reason"], broken
        assert "max_batch_size" in broken["reason"], broken
        log = srv.log()
        assert "| broken" in log and "UNAVAILABLE" in log
        assert "| good" in log and "READY" in log
    finally:
        assert srv.stop() == 0


def test_exit_on_error_default_exits_nonzero(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "good", identity_config("good"))
    write_model(repo, "broken", 'name: "broken"\nbackend: "identity"\nmax_batch_size: [\n')
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "conch", "serve", f"--model-repository={repo}", f"--http-port={http_port}",
         f"--grpc-port={grpc_port}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "failed to load all models" in proc.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "good", identity_config("good"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "conch", "serve", f"--model-repository={repo}", f"--http-port={port}",
             f"--grpc-port={free_port()}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1"],
            capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode != 0
    assert f"failed to start HTTP service: Unavailable - Socket '127.0.0.1:{port}' already in use" in proc.stderr


def test_unimplemented_triton_flag_warns_and_serves(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "good", identity_config("good"))
    srv = start_server([repo], tmp_path, "--http-thread-count=4", "--trace-config", "level=OFF")
    try:
        assert requests.get(srv.base + "/v2/health/ready").status_code == 200
        assert "'--http-thread-count'" in srv.log()
        assert "'--trace-config'" not in srv.log()  # implemented since the trace extension
    finally:
        srv.stop()


def test_startup_prints_triton_lines(server: RunningServer) -> None:
    log = server.log()
    assert f"Started HTTPService at 127.0.0.1:{server.http_port}" in log
    assert f"Started GRPCInferenceService at 127.0.0.1:{server.grpc_port}" in log
    assert "| Model" in log and "| Version" in log and "| Status" in log
    assert "successfully loaded 'identity_fp32'" in log


def test_sigterm_finishes_inflight_requests_then_exits_zero(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(
        repo,
        "slow",
        identity_config(
            "slow", extra='parameters [ { key: "execute_delay_ms" value: { string_value: "1500" } } ]'
        ),
    )
    srv = start_server([repo], tmp_path)
    results: list[object] = []

    def call() -> None:
        try:
            results.append(_infer_fp32(srv.http_url, "slow", np.full((1, 2), 7, np.float32)))
        except Exception as exc:  # noqa: BLE001
            results.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)  # the request is executing (1.5 s) when the signal arrives
    srv.process.send_signal(signal.SIGTERM)
    thread.join(timeout=30)
    code = srv.process.wait(timeout=30)
    assert code == 0, srv.log()
    assert len(results) == 1 and isinstance(results[0], np.ndarray), results
    assert results[0].tolist() == [[7.0, 7.0]]


def _write_plugin(site: Path, name: str, module_source: str) -> None:
    """An installed-looking distribution (dist-info with an entry point) importable from ``site``."""
    (site / f"{name}.py").write_text(textwrap.dedent(module_source))
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[conch.backends]\n{name} = {name}\n")


def test_plugin_that_fails_to_import_is_reported_and_others_load(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _write_plugin(site, "aaa_broken_plugin", "import this_module_does_not_exist\n")
    _write_plugin(
        site,
        "zzz_negate_plugin",
        """
        import conch

        class NegateInstance(conch.ModelInstance):
            def __init__(self, context):
                pass

            def execute_batch(self, inputs, output_names):
                return {"OUTPUT0": -inputs["INPUT0"]}

        class NegateBackend(conch.Backend):
            name = "negate"
            batching = conch.Batching.CONCATENATE

            def create_instance(self, context):
                return NegateInstance(context)

        @conch.hookimpl
        def conch_register_backends():
            return [NegateBackend()]
        """,
    )
    repo = tmp_path / "repo"
    write_model(repo, "neg", identity_config("neg").replace('backend: "identity"', 'backend: "negate"'))
    write_model(repo, "ident", identity_config("ident"))
    env = {"PYTHONPATH": str(site)}
    srv = start_server([repo], tmp_path, env=env)
    try:
        out = _infer_fp32(srv.http_url, "neg", np.array([[1.0, -2.0]], np.float32))
        assert out.tolist() == [[-1.0, 2.0]]
        assert "failed to load plugin 'aaa_broken_plugin' (package 'aaa_broken_plugin'" in srv.log()
        assert "No module named 'this_module_does_not_exist'" in srv.log()
        plugins = requests.get(srv.base + "/conch/plugins").json()["plugins"]
        by_name = {p["name"]: p for p in plugins}
        assert by_name["aaa_broken_plugin"]["status"] == "failed"
        assert "this_module_does_not_exist" in by_name["aaa_broken_plugin"]["error"]
        assert by_name["zzz_negate_plugin"]["status"] == "loaded"
        assert by_name["zzz_negate_plugin"]["backends"] == ["negate"]
    finally:
        srv.stop()
    listing = subprocess.run(
        [sys.executable, "-m", "conch", "plugins"], capture_output=True, text=True, env={**__import__("os").environ, **env}
    )
    assert "aaa_broken_plugin" in listing.stdout and "failed" in listing.stdout
    assert "No module named 'this_module_does_not_exist'" in listing.stdout
    assert "zzz_negate_plugin" in listing.stdout and "negate" in listing.stdout


def test_conch_check_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "good", identity_config("good"))
    write_model(repo, "bad_syntax", 'name: "bad_syntax"\nbackend: "identity"\nmax_batch_size: {{MBS}}\n')
    write_model(repo, "bad_field", 'name: "bad_field"\nbackend: "identity"\nmax_batch_sise: 4\n')
    proc = subprocess.run([sys.executable, "-m", "conch", "check", str(repo)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert str(repo / "bad_syntax" / "config.pbtxt") + ":3:" in proc.stdout
    assert str(repo / "bad_field" / "config.pbtxt") + ":3:" in proc.stdout
    assert "max_batch_size" in proc.stdout  # the suggestion for the misspelt field
    ok = subprocess.run([sys.executable, "-m", "conch", "check", str(tmp_path / "repo" / "good" / "..")],
                        capture_output=True, text=True)
    assert ok.returncode != 0  # still the same repo with problems
    good_repo = tmp_path / "good_repo"
    write_model(good_repo, "good", identity_config("good"))
    ok = subprocess.run([sys.executable, "-m", "conch", "check", str(good_repo)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_version_policy_and_ignored_version_folders(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "latest2", identity_config("latest2", extra="version_policy: { latest: { num_versions: 2 } }"),
                versions=(1, 2, 3))
    write_model(repo, "specific", identity_config("specific", extra="version_policy: { specific: { versions: [1, 3] } }"),
                versions=(1, 2, 3))
    write_model(repo, "all", identity_config("all", extra="version_policy: { all: {} }"), versions=(1, 2))
    write_model(repo, "default", identity_config("default"), versions=(1, 5))
    (repo / "default" / "abc").mkdir()
    (repo / "default" / "01").mkdir()
    srv = start_server([repo], tmp_path)
    try:
        def versions(name: str) -> list[str]:
            return requests.get(f"{srv.base}/v2/models/{name}").json()["versions"]

        assert versions("latest2") == ["2", "3"]
        assert versions("specific") == ["1", "3"]
        assert versions("all") == ["1", "2"]
        assert versions("default") == ["5"]
        assert "ignore version directory 'abc' which fails to convert to integral number" in srv.log()
        assert "ignore version directory '01' which contains leading zeros in its directory name" in srv.log()
        assert requests.get(f"{srv.base}/v2/models/default/versions/1/ready").status_code == 400
        assert requests.get(f"{srv.base}/v2/models/specific/versions/3/ready").status_code == 200
    finally:
        srv.stop()


def test_several_repositories_and_duplicate_names(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    write_model(one, "a", identity_config("a"))
    write_model(two, "b", identity_config("b"))
    write_model(one, "dup", identity_config("dup"))
    write_model(two, "dup", identity_config("dup"))
    srv = start_server([one, two], tmp_path, "--exit-on-error=false", wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and requests.get(srv.base + "/v2/models/b/ready").status_code != 200:
            time.sleep(0.1)
        assert requests.get(srv.base + "/v2/models/a/ready").status_code == 200
        assert requests.get(srv.base + "/v2/models/b/ready").status_code == 200
        assert requests.get(srv.base + "/v2/models/dup/ready").status_code == 400
        index = {row["name"]: row for row in requests.post(srv.base + "/v2/repository/index").json()}
        assert index["dup"]["state"] == "UNAVAILABLE"
        assert str(one / "dup") in index["dup"]["reason"] and str(two / "dup") in index["dup"]["reason"]
    finally:
        srv.stop()


def test_auto_complete_from_a_backend_and_disabling_it(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _write_plugin(
        site,
        "autofill_plugin",
        """
        import conch
        from conch._proto import model_config_pb2 as mc

        class Echo(conch.ModelInstance):
            def __init__(self, context):
                pass

            def execute_batch(self, inputs, output_names):
                return {"y": inputs["x"] * 2}

        class AutofillBackend(conch.Backend):
            name = "autofill"
            batching = conch.Batching.CONCATENATE

            def auto_complete_config(self, context):
                config = context.config
                if not config.input:
                    config.max_batch_size = 4
                    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[3])
                    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[3])

            def create_instance(self, context):
                return Echo(context)

        @conch.hookimpl
        def conch_register_backends():
            return [AutofillBackend()]
        """,
    )
    repo = tmp_path / "repo"
    write_model(repo, "auto", 'backend: "autofill"\n')
    env = {"PYTHONPATH": str(site)}
    srv = start_server([repo], tmp_path, env=env)
    try:
        meta = requests.get(srv.base + "/v2/models/auto").json()
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
        out = requests.post(srv.base + "/v2/models/auto/infer", json={
            "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}).json()
        assert out["outputs"][0]["data"] == [2.0, 4.0, 6.0]
    finally:
        srv.stop()
    for flag in ("--disable-auto-complete-config", "--strict-model-config=true"):
        # Without auto-complete the config is taken as written: no inputs, so 'x' is unknown.
        srv = start_server([repo], tmp_path, flag, env=env)
        try:
            assert requests.get(srv.base + "/v2/models/auto").json()["inputs"] == []
            r = requests.post(srv.base + "/v2/models/auto/infer", json={
                "inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]})
            assert r.status_code == 400
            assert "'x'" in r.json()["error"], r.json()
        finally:
            srv.stop()

