"""Wires the repository, plugins, model manager and frontends; start-up, serving and drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conch.frontends.linger import DEFAULT_LINGER_US
from conch.metrics import MetricsOptions
from conch.models import ManagerOptions, ModelManager
from conch.plugins import Plugins
from conch.repository import Repository
from conch.service import InferenceService
from conch.trace_config import TraceOptions

log = logging.getLogger("conch.server")


@dataclass
class GrpcTls:
    """``--grpc-use-ssl`` and its files (PEM); ``mutual`` asks clients for certificates signed by ``root``."""

    cert: str
    key: str
    root: str = ""
    mutual: bool = False

    def credentials(self) -> Any:
        """grpcio server credentials; a StartupError naming the flag and file when one cannot be read."""
        import grpc

        def read(flag: str, path: str) -> bytes:
            if not path:
                raise StartupError(f"failed to start GRPC service: {flag} is required with --grpc-use-ssl")
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise StartupError(f"failed to start GRPC service: {flag} '{path}': {exc.strerror or exc}") from None

        cert = read("--grpc-server-cert", self.cert)
        pair = (read("--grpc-server-key", self.key), cert)
        root = read("--grpc-root-cert", self.root) if self.mutual or self.root else None
        return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=self.mutual)


@dataclass
class ServerOptions:
    """What ``conch serve`` was asked for (tritonserver's flags, by their names)."""

    model_repositories: list[Path] = field(default_factory=list)
    server_id: str = "conch"
    allow_http: bool = True
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    http_max_input_size: int = 1 << 26
    allow_grpc: bool = True
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    grpc_transport: str = "conch"
    grpc_tls: GrpcTls | None = None
    linger_us: int = DEFAULT_LINGER_US
    exit_on_error: bool = True
    strict_readiness: bool = True
    exit_timeout_secs: int = 30
    manager: ManagerOptions = field(default_factory=ManagerOptions)
    blocked_plugins: set[str] = field(default_factory=set)
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    trace: TraceOptions = field(default_factory=TraceOptions)


class StartupError(Exception):
    """Start-up failed; the message is what Triton would log before exiting non-zero."""


class Server:
    """One Conch server: ``await Server(options).run()`` serves until SIGINT/SIGTERM."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.plugins = Plugins(blocked=options.blocked_plugins)
        self.models: ModelManager | None = None
        self.service: InferenceService | None = None
        self._stop = asyncio.Event()
        self._http: Any = None  # conch.frontends.http.server.HTTPServer
        self._http_sockets: list[socket.socket] = []
        self._grpc: Any = None
        self._metrics: Any = None  # conch.metrics.Metrics
        self._metrics_http: Any = None
        self._metrics_sockets: list[socket.socket] = []
        self._metrics_loop_task: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Serve until asked to stop; returns the process exit code."""
        try:
            await self.start()
        except StartupError as exc:
            log.error("%s", exc)
            await self.stop(drain=False)
            return 1
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._on_signal, signum)
        await self._stop.wait()
        await self.stop(drain=True)
        return 0

    def _on_signal(self, signum: int) -> None:
        if self._stop.is_set():
            log.warning("Signal (%d) received again: exiting without waiting for in-flight requests", signum)
            os._exit(1)
        log.info("Signal (%d) received.", signum)
        self._stop.set()

    async def start(self) -> None:
        """Load plugins and models, start the frontends; raises StartupError."""
        opts = self.options
        self.plugins.load()
        for backend in self.plugins.backends().values():
            settings = dict(opts.manager.backend_settings.get("", {}))
            settings.update(opts.manager.backend_settings.get(backend.name, {}))
            self.plugins.hook.conch_configure_backend(backend=backend, settings=settings)
        for root in opts.model_repositories:
            if not root.is_dir():
                raise StartupError(f"failed to stat file {root}: model repository path does not exist")
        repository = Repository(list(opts.model_repositories))
        self.models = ModelManager(repository, self.plugins, opts.manager)
        self.service = InferenceService(
            self.models,
            self.plugins,
            server_id=opts.server_id,
            strict_readiness=opts.strict_readiness,
            tracer=opts.trace.manager(),
        )
        # Frontends listen before models load: probes see "live, not ready" instead of a refused port.
        await self._start_frontends()
        await self.models.load_startup_models()
        self.service.started = True
        self._print_model_table()
        failed = [row for row in self.models.index() if row.get("state") != "READY" and row.get("reason") != "unloaded"]
        if failed and opts.manager.control_mode == "none":
            if opts.exit_on_error:
                raise StartupError("failed to load all models")
            log.error("Internal: failed to load all models")
        if opts.manager.control_mode == "poll" and opts.manager.poll_secs > 0:
            self._poller = asyncio.create_task(self._poll_forever(opts.manager.poll_secs))
        self.plugins.hook.conch_server_started(server=self)

    async def _poll_forever(self, seconds: int) -> None:
        """Poll mode: look for added, removed and changed models every ``seconds``."""
        assert self.models is not None
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.models.poll()
            except Exception:  # noqa: BLE001 - a failed poll is logged; the next one tries again
                log.exception("failed to poll the model repositories")

    async def _start_frontends(self) -> None:
        opts = self.options
        assert self.service is not None
        if opts.allow_grpc:
            from conch.frontends.grpc.server import start_grpc_server

            try:
                credentials = opts.grpc_tls.credentials() if opts.grpc_tls is not None else None
                if credentials is not None and opts.grpc_transport == "conch":
                    log.info("gRPC over TLS is served by grpcio's server (Conch's HTTP/2 transport is plain text)")
                self._grpc = await start_grpc_server(
                    self.service,
                    opts.grpc_address,
                    opts.grpc_port,
                    credentials=credentials,
                    transport=opts.grpc_transport,
                    linger_s=opts.linger_us / 1e6,
                    fast_infer=os.environ.get("CONCH_GRPC_FAST", "1") != "0",  # off: for comparisons
                )
            except OSError as exc:
                raise StartupError(f"failed to start GRPC service: Unavailable - {exc}") from None
            log.info("Started GRPCInferenceService at %s:%d", opts.grpc_address, opts.grpc_port)
        if opts.allow_http:
            await self._start_http()
            log.info("Started HTTPService at %s:%d", opts.http_address, opts.http_port)
        if opts.metrics.enabled:
            await self._start_metrics()

    async def _start_metrics(self) -> None:
        import uvicorn

        from conch.metrics import Metrics, metrics_app

        opts = self.options
        assert self.models is not None
        address = opts.metrics.address or opts.http_address
        sock = _bind(address, opts.metrics.port, "Metrics")
        self._metrics_sockets = [sock]
        assert self.service is not None
        self._metrics = Metrics(self.models, opts.metrics, self.service.custom_metrics)
        self._metrics.start()
        config = uvicorn.Config(metrics_app(self._metrics), lifespan="off", log_config=None, access_log=False)
        config.load()
        self._metrics_http = uvicorn.Server(config)
        self._metrics_http.lifespan = config.lifespan_class(config)
        await self._metrics_http.startup(sockets=self._metrics_sockets)
        self._metrics_loop_task = asyncio.create_task(self._metrics_http.main_loop())
        log.info("Started Metrics Service at %s:%d", address, opts.metrics.port)

    async def _start_http(self) -> None:
        from conch.frontends.http import create_app
        from conch.frontends.http.fast_infer import FastInfer
        from conch.frontends.http.server import HTTPServer

        opts = self.options
        assert self.service is not None
        sock = _bind(opts.http_address, opts.http_port, "HTTP")
        self._http_sockets = [sock]
        app = create_app(self.service, max_input_size=opts.http_max_input_size)
        fast = FastInfer(app) if os.environ.get("CONCH_HTTP_FAST", "1") != "0" else None
        self._http = HTTPServer(app, keep_alive_s=75, linger_s=opts.linger_us / 1e6, fast=fast)
        await self._http.start(self._http_sockets)

    def _print_model_table(self) -> None:
        assert self.models is not None
        rows: list[tuple[str, str, str]] = []
        for name, version, status in self.models.table():
            first, *more = status.splitlines() or [""]
            rows.append((name, version, first))
            rows.extend(("", "", extra) for extra in more)  # multi-line reasons continue below
        headers = ("Model", "Version", "Status")
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

        def line(cells: tuple[str, ...]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        table = [rule, line(headers), rule, *(line(r) for r in rows), rule]
        log.info("\n%s", "\n".join(table))

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting, finish in-flight requests (up to --exit-timeout-secs), unload, close."""
        timeout = self.options.exit_timeout_secs
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self.service is not None:
            with contextlib.suppress(Exception):
                self.plugins.hook.conch_server_stopping(server=self)
            if drain and self.service.inflight:
                log.info("Waiting for in-flight requests to complete.")
            completed = await self.service.drain(timeout if drain else 0)
            if not completed:
                log.warning("Timeout %ds: %d in-flight requests not completed", timeout, self.service.inflight)
        if self._http is not None:
            await self._http.shutdown(timeout=timeout)
            for sock in self._http_sockets:
                sock.close()
            self._http = None
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
            self._grpc = None
        if self._metrics_http is not None:
            self._metrics_http.should_exit = True
            if self._metrics_loop_task is not None:
                await self._metrics_loop_task
            await self._metrics_http.shutdown(sockets=self._metrics_sockets)
            self._metrics_http = None
        if self._metrics is not None:
            self._metrics.stop()
        if self.models is not None:
            await self.models.unload_all()
            log.info("All models are stopped, unloading models")
        if self.service is not None:
            self.service.shared_memory.unregister_all()
            self.service.tracer.close()


def _bind(address: str, port: int, what: str) -> socket.socket:
    """Bind a listening socket; a port in use is Triton's start-up error."""
    host = address[len("ipv6:") :].strip("[]") if address.startswith("ipv6:") else address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise StartupError(
            f"failed to start {what} service: Unavailable - Socket '{address}:{port}' already in use"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
