"""``conch serve | check | plugins``: tritonserver's flags, by their names and defaults."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from conch import log as conch_log
from conch.frontends.linger import DEFAULT_LINGER_US
from conch.gpus import gpu_count
from conch.metrics import MetricsOptions
from conch.models import ManagerOptions
from conch.server import GrpcTls, Server, ServerOptions
from conch.trace_config import DEPRECATED, TraceOptions, deprecation

log = logging.getLogger("conch.cli")

#: tritonserver flags Conch accepts but does not implement yet: a warning names them, never a crash.
#: The value is whether the flag takes a value.
UNIMPLEMENTED_TRITON_FLAGS: dict[str, bool] = {
    "--allow-sagemaker": True, "--sagemaker-port": True, "--sagemaker-safe-port-range": True,
    "--sagemaker-thread-count": True, "--allow-vertex-ai": True, "--vertex-ai-port": True,
    "--vertex-ai-thread-count": True, "--vertex-ai-default-model": True,
    "--http-thread-count": True, "--reuse-http-port": True, "--reuse-grpc-port": True,
    "--http-header-forward-pattern": True, "--grpc-header-forward-pattern": True,
    "--http-restricted-api": True, "--grpc-restricted-protocol": True,
    "--grpc-infer-allocation-pool-size": True, "--grpc-max-response-pool-size": True,
    "--grpc-infer-response-compression-level": True,
    "--grpc-keepalive-time": True, "--grpc-keepalive-timeout": True,
    "--grpc-keepalive-permit-without-calls": True, "--grpc-http2-max-pings-without-data": True,
    "--grpc-http2-min-recv-ping-interval-without-data": True, "--grpc-http2-max-ping-strikes": True,
    "--grpc-max-connection-age": True, "--grpc-max-connection-age-grace": True,
    "--grpc-infer-thread-count": True, "--grpc-restricted-api": True,
    "--model-load-retry-count": True, "--model-namespacing": True,
    "--allow-client-shm": True, "--backend-directory": True, "--repoagent-directory": True,
    "--cache-config": True, "--cache-directory": True, "--response-cache-byte-size": True,
    "--rate-limit": True, "--rate-limit-resource": True, "--pinned-memory-pool-byte-size": True,
    "--cuda-memory-pool-byte-size": True, "--cuda-virtual-address-size": True,
    "--min-supported-compute-capability": True, "--buffer-manager-thread-count": True,
    "--host-policy": True, "--model-load-gpu-limit": True, "--enable-peer-access": True,
    "--memory-fraction": True,
    "--enable-model-namespacing": True, "--allow-poll-model-repository": True,
}


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value '{text}': expected true, false, 1 or 0")


def _add_bool(parser: argparse.ArgumentParser, flag: str, default: bool, help_text: str) -> None:
    parser.add_argument(flag, type=_bool, nargs="?", const=True, default=default, metavar="BOOL", help=help_text)


def _serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve Triton model repositories over HTTP/REST and gRPC")
    p.add_argument("--model-repository", "--model-store", dest="model_repository", action="append", default=[],
                   metavar="PATH", help="model repository (repeatable)")
    p.add_argument("--id", default="conch", help="server name reported in server metadata")
    _add_bool(p, "--allow-http", True, "serve HTTP/REST")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--http-address", default="0.0.0.0")
    p.add_argument("--http-max-input-size", type=int, default=1 << 26)
    _add_bool(p, "--allow-grpc", True, "serve gRPC")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--grpc-address", default="0.0.0.0")
    p.add_argument("--grpc-transport", choices=["conch", "grpcio"],
                   default=os.environ.get("CONCH_GRPC_TRANSPORT", "conch"),
                   help="gRPC over Conch's own HTTP/2 transport (default) or grpcio's asyncio server "
                        "(default from CONCH_GRPC_TRANSPORT)")
    p.add_argument("--linger-microseconds", type=int, metavar="US",
                   default=int(os.environ.get("CONCH_LINGER_MICROSECONDS", DEFAULT_LINGER_US)),
                   help="after a response to a client in a tight loop, keep polling this long for its next "
                        "request instead of sleeping (0: never; default from CONCH_LINGER_MICROSECONDS)")
    _add_bool(p, "--grpc-use-ssl", False, "serve gRPC over TLS (with --grpc-server-cert and --grpc-server-key)")
    _add_bool(p, "--grpc-use-ssl-mutual", False, "TLS with client certificates checked against --grpc-root-cert")
    p.add_argument("--grpc-server-cert", default="", metavar="PATH", help="PEM certificate (chain) of the server")
    p.add_argument("--grpc-server-key", default="", metavar="PATH", help="PEM private key of the server")
    p.add_argument("--grpc-root-cert", default="", metavar="PATH", help="PEM root certificates for client certificates")
    _add_bool(p, "--allow-metrics", True, "serve Prometheus metrics on the metrics port")
    _add_bool(p, "--allow-gpu-metrics", True, "GPU metrics through NVML (nvidia-ml-py), where present")
    _add_bool(p, "--allow-cpu-metrics", True, "CPU utilisation and memory metrics")
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--metrics-address", default="", help="defaults to the HTTP address")
    p.add_argument("--metrics-interval-ms", type=int, default=2000)
    p.add_argument("--trace-config", action="append", default=[], metavar="[MODE,]KEY=VALUE",
                   help="tracing: level=OFF|TIMESTAMPS, rate=N, count=N, triton,file=PATH, triton,log-frequency=N")
    for flag in DEPRECATED:
        p.add_argument(flag, action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--metrics-config", action="append", default=[], metavar="KEY=VALUE",
                   help="counter_latencies, summary_latencies, histogram_latencies, summary_quantiles")
    _add_bool(p, "--exit-on-error", True, "exit when a model fails to load at start-up")
    _add_bool(p, "--strict-readiness", True, "ready only when every model is ready")
    p.add_argument("--exit-timeout-secs", type=int, default=30)
    _add_bool(p, "--strict-model-config", False, "deprecated: true disables auto-complete")
    p.add_argument("--disable-auto-complete-config", action="store_true")
    p.add_argument("--backend-config", action="append", default=[], metavar="[BACKEND,]KEY=VALUE")
    p.add_argument("--model-control-mode", choices=["none", "explicit", "poll"], default="none")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME")
    p.add_argument("--model-config-name", default=None)
    p.add_argument("--model-load-thread-count", type=int, default=4)
    p.add_argument("--repository-poll-secs", type=int, default=15, help="poll mode: seconds between polls")
    p.add_argument("--log-verbose", type=int, default=0)
    _add_bool(p, "--log-info", True, "log informational messages")
    _add_bool(p, "--log-warning", True, "log warnings")
    _add_bool(p, "--log-error", True, "log errors")
    p.add_argument("--log-format", choices=["default", "ISO8601"], default="default")
    p.add_argument("--log-file", default=None)
    p.add_argument("--disable-plugin", action="append", default=[], metavar="NAME",
                   help="do not load the entry-point plugin NAME")
    return p


def _split_unimplemented(args: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Separate known-but-unimplemented tritonserver flags (returned for a warning) from the rest."""
    kept: list[str] = []
    ignored: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        flag = token.split("=", 1)[0]
        if flag in UNIMPLEMENTED_TRITON_FLAGS:
            ignored.append(flag)
            takes_value = UNIMPLEMENTED_TRITON_FLAGS[flag]
            if "=" not in token and takes_value and i + 1 < len(args) and not args[i + 1].startswith("--"):
                i += 1
        elif token.startswith("--") and flag not in _KNOWN_SERVE_FLAGS and token != "--help":
            unknown.append(token)
        else:
            kept.append(token)
        i += 1
    return kept, ignored, unknown


_KNOWN_SERVE_FLAGS: set[str] = set()


def parse_backend_config(values: list[str]) -> dict[str, dict[str, str]]:
    """``--backend-config=<backend>,<key>=<value>`` (or ``<key>=<value>`` for all backends)."""
    table: dict[str, dict[str, str]] = {}
    for value in values:
        backend, _, setting = value.rpartition(",") if "," in value.split("=", 1)[0] else ("", "", value)
        key, sep, val = setting.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --backend-config '{value}': expected <backend>,<key>=<value> or <key>=<value>")
        table.setdefault(backend, {})[key] = val
    return table


def _serve_options(ns: argparse.Namespace) -> ServerOptions:
    if not ns.model_repository:
        raise SystemExit("error: --model-repository must be specified")
    if ns.load_model and "*" in ns.load_model and len(ns.load_model) > 1:
        raise SystemExit("error: Wildcard model name '*' must be the ONLY startup model if specified at all.")
    backend_settings = parse_backend_config(ns.backend_config)
    default_mbs = int(backend_settings.get("", {}).get("default-max-batch-size", "4"))
    manager = ManagerOptions(
        control_mode=ns.model_control_mode,
        startup_models=list(ns.load_model),
        auto_complete=not (ns.disable_auto_complete_config or ns.strict_model_config),
        config_name=ns.model_config_name,
        load_thread_count=ns.model_load_thread_count,
        poll_secs=ns.repository_poll_secs,
        default_max_batch_size=default_mbs,
        gpu_count=gpu_count(),
        backend_settings=backend_settings,
    )
    metrics = MetricsOptions(
        enabled=ns.allow_metrics,
        gpu=ns.allow_gpu_metrics,
        cpu=ns.allow_cpu_metrics,
        address=ns.metrics_address,
        port=ns.metrics_port,
        interval_ms=ns.metrics_interval_ms,
    )
    for setting in ns.metrics_config:
        try:
            metrics.apply(setting)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
    return ServerOptions(
        metrics=metrics,
        trace=_trace_options(ns),
        model_repositories=[Path(p).resolve() for p in ns.model_repository],
        server_id=ns.id,
        allow_http=ns.allow_http,
        http_address=ns.http_address,
        http_port=ns.http_port,
        http_max_input_size=ns.http_max_input_size,
        allow_grpc=ns.allow_grpc,
        grpc_address=ns.grpc_address,
        grpc_port=ns.grpc_port,
        grpc_transport=ns.grpc_transport,
        grpc_tls=_grpc_tls(ns),
        linger_us=max(ns.linger_microseconds, 0),
        exit_on_error=ns.exit_on_error,
        strict_readiness=ns.strict_readiness,
        exit_timeout_secs=ns.exit_timeout_secs,
        manager=manager,
        blocked_plugins=set(ns.disable_plugin),
    )


def _trace_options(ns: argparse.Namespace) -> TraceOptions:
    """The deprecated ``--trace-*`` flags (with Triton's warnings), then every ``--trace-config``."""
    trace = TraceOptions()
    settings: list[str] = []
    for flag, key in (("--trace-file", "triton,file"), ("--trace-level", "level"), ("--trace-rate", "rate"),
                      ("--trace-count", "count"), ("--trace-log-frequency", "triton,log-frequency")):
        values = getattr(ns, flag[2:].replace("-", "_"))
        if values:
            print(deprecation(flag), file=sys.stderr)
        settings += [f"{key}={value}" for value in values]
    for setting in [*settings, *ns.trace_config]:
        try:
            trace.apply(setting)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
    return trace


def _grpc_tls(ns: argparse.Namespace) -> GrpcTls | None:
    """Triton's SSL flags: ``--grpc-use-ssl-mutual`` implies ``--grpc-use-ssl``."""
    if not (ns.grpc_use_ssl or ns.grpc_use_ssl_mutual):
        return None
    return GrpcTls(
        cert=ns.grpc_server_cert, key=ns.grpc_server_key, root=ns.grpc_root_cert, mutual=ns.grpc_use_ssl_mutual
    )


def _run_serve(options: ServerOptions) -> int:
    """Serve on uvloop where it is installed, else on asyncio's default loop."""
    server = Server(options)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(server.run())
    return uvloop.run(server.run())


def _run_check(ns: argparse.Namespace) -> int:
    from conch.check import check_repositories, format_problems
    from conch.plugins import Plugins

    plugins = Plugins()
    plugins.load()
    problems = check_repositories([Path(p) for p in ns.paths], plugins, auto_complete=not ns.disable_auto_complete_config)
    if problems:
        print(format_problems(problems))
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print("no problems found")
    return 0


def _run_plugins(ns: argparse.Namespace) -> int:
    from conch.plugins import Plugins

    plugins = Plugins()
    plugins.load()
    described = plugins.describe()
    if ns.json:
        print(json.dumps(described, indent=2))
    else:
        for entry in described:
            origin = entry["distribution"] or entry["source"]
            version = f" {entry['version']}" if entry["version"] else ""
            backends = ", ".join(entry["backends"]) or "-"
            print(f"{entry['name']:<20} {entry['status']:<8} {origin}{version}  backends: {backends}")
            if entry["error"]:
                print(f"    error: {entry['error']}")
    return 1 if any(e["status"] == "failed" for e in described) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="conch", description="Triton-compatible inference server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = _serve_parser(sub)
    _KNOWN_SERVE_FLAGS.update(
        opt for action in serve._actions for opt in action.option_strings  # noqa: SLF001
    )
    check = sub.add_parser("check", help="validate model repositories without serving")
    check.add_argument("paths", nargs="+", metavar="DIR")
    check.add_argument("--disable-auto-complete-config", action="store_true")
    plugins = sub.add_parser("plugins", help="list plugins and backends, with load errors")
    plugins.add_argument("--json", action="store_true")

    ignored: list[str] = []
    if args and args[0] == "serve":
        kept, ignored, unknown = _split_unimplemented(args[1:])
        if unknown:
            serve.error(f"unrecognized arguments: {' '.join(unknown)}")
        args = ["serve", *kept]
    ns = parser.parse_args(args)
    if ns.command == "serve":
        conch_log.configure(
            verbose=ns.log_verbose, info=ns.log_info, warning=ns.log_warning, error=ns.log_error,
            log_format=ns.log_format, log_file=ns.log_file,
        )
        for flag in ignored:
            log.warning("flag '%s' is a tritonserver flag that Conch does not implement yet; ignored", flag)
        return _run_serve(_serve_options(ns))
    conch_log.configure()
    if ns.command == "check":
        return _run_check(ns)
    return _run_plugins(ns)


if __name__ == "__main__":
    sys.exit(main())
