"""The protocol-neutral server API that both frontends call (Triton's TRITONSERVER_Server surface).

Frontends decode the wire format into :class:`~conch.inference.InferenceRequest`, call this, and
encode what comes back; everything protocol-independent (model lookup, readiness, validation,
scheduling) lives behind it.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from conch import __version__
from conch import log as conch_log
from conch.custom_metrics import CustomMetrics
from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferenceResponse, ResponseStream
from conch.metrics import BUILTIN_FAMILIES
from conch.shared_memory import SharedMemoryRegistry
from conch.tracing import TraceManager

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig
    from conch.models import ModelManager, ModelVersion
    from conch.plugins import Plugins

#: Protocol extensions Conch really implements, in the order Triton lists them.
EXTENSIONS = [
    "classification",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
]


_STOL = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_INT64_MAX = 2**63 - 1


def parse_version(text: str | int | None) -> int:
    """A requested version as Triton's ``GetModelVersionFromString`` reads it (``std::stol``: leading
    whitespace, a sign, digits, anything after ignored); "", None or -1 mean "let the policy pick" (-1).
    The one parser of version strings for every frontend."""
    if text is None or text == "":
        return -1
    if isinstance(text, int):
        return text
    match = _STOL.match(text)
    value = int(match.group(1)) if match else None
    if value is None or not -(2**63) <= value <= _INT64_MAX:
        raise ConchError(
            f"failed to get model version from specified version string '{text}' (details: stol), "
            "version should be an integral value > 0",
            ErrorCode.INVALID_ARG,
        )
    if value < 0:
        raise ConchError(
            f"invalid model version specified '{text}' , version should be an integral value > 0",
            ErrorCode.INVALID_ARG,
        )
    return value


class InferenceService:
    """What the frontends may ask of the server."""

    def __init__(
        self,
        models: ModelManager,
        plugins: Plugins,
        server_id: str = "conch",
        strict_readiness: bool = True,
        tracer: TraceManager | None = None,
    ) -> None:
        self.models = models
        models.service = self  # backends reach the service through ModelContext.server (BLS)
        try:  # the server's event loop, for backends that watch worker processes from it
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self.plugins = plugins
        self.server_id = server_id
        self.strict_readiness = strict_readiness
        self.live = True
        self.started = False  # true once the start-up models have been loaded (or failed)
        self.accepting = True  # false once shutdown begins
        self.inflight = 0
        #: Metric families backends register (Python models' ``pb_utils.MetricFamily``), shown on the
        #: metrics endpoint; see :mod:`conch.custom_metrics`.
        self.custom_metrics = CustomMetrics(reserved=BUILTIN_FAMILIES)
        #: Client shared memory regions, one registry for both frontends (:mod:`conch.shared_memory`).
        self.shared_memory = SharedMemoryRegistry()
        #: Trace settings and sampling (:mod:`conch.tracing`); frontends sample while ``tracer.active``.
        self.tracer = tracer or TraceManager()
        self._idle: asyncio.Future[None] | None = None  # what drain() awaits, while it does

    # -- health and metadata -------------------------------------------------------------------

    def is_live(self) -> bool:
        return self.live

    def is_ready(self) -> bool:
        """Ready to serve: accepting, and with strict readiness every loaded model ready."""
        if not (self.live and self.started and self.accepting):
            return False
        return self.models.all_ready() if self.strict_readiness else True

    def metadata(self) -> dict[str, Any]:
        return {"name": self.server_id, "version": __version__, "extensions": list(EXTENSIONS)}

    # -- logging extension ---------------------------------------------------------------------

    def log_settings(self) -> dict[str, Any]:
        """The server's log settings, every key of Triton's ``/v2/logging``."""
        return conch_log.settings()

    def set_log_setting(self, key: str, value: bool | int | str) -> None:
        """Change one of :data:`conch.log.RUNTIME_SETTINGS`; the frontend has checked ``value``."""
        conch_log.update(**{key: value})

    # -- trace extension -----------------------------------------------------------------------

    def trace_settings(self, model: str = "", changes: dict[str, int | None] | None = None) -> dict[str, Any]:
        """Apply checked changes (``None`` clears) to the global or a ready model's setting; its values."""
        if model and not self.model_ready(model):
            raise ConchError(f"Request for unknown model : {model}", ErrorCode.INVALID_ARG)
        if changes is not None:
            self.tracer.update(model, changes)
        return self.tracer.settings(model)

    # -- models ----------------------------------------------------------------------------------

    def model(self, name: str, version: str | int | None = "") -> ModelVersion:
        """The model version a request names; raises Triton's ``Request for unknown model`` errors."""
        return self.models.get(name, parse_version(version))

    def model_ready(self, name: str, version: str | int | None = "") -> bool:
        """Whether a model version is ready; False (not an error) for unknown models and versions."""
        try:
            return self.models.get(name, parse_version(version), require_ready=False).is_ready()
        except ConchError:
            return False

    def model_metadata(self, name: str, version: str | int | None = "") -> dict[str, Any]:
        """``{"name","versions","platform","inputs","outputs"}`` as Triton's model metadata."""
        return self.model(name, version).metadata()

    def model_config(self, name: str, version: str | int | None = "") -> ModelConfig:
        return self.model(name, version).config

    def model_statistics(self, name: str = "", version: str | int | None = "") -> dict[str, Any]:
        """``{"model_stats": [...]}`` for every ready model, or one model (one version or all)."""
        return {"model_stats": self.models.statistics(name, parse_version(version))}

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.models.index(ready_only)

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        await self.models.load_from_api(name, parameters or {})

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        await self.models.unload_from_api(name, unload_dependents)

    # -- inference -------------------------------------------------------------------------------

    def submit(
        self, request: InferenceRequest, model: ModelVersion | None = None, *, checked: bool = False
    ) -> ResponseStream:
        """Validate and enqueue a request; its responses arrive on the returned stream.

        ``model`` is the version the caller already looked up (frontends do, to check it first);
        without it the request's model name and version pick it; ``checked``: the caller validated the
        request against that version's signature already. Raises :class:`ConchError` for
        anything wrong with the request itself (unknown model, validation); errors during execution
        arrive as error responses on the stream.
        """
        if not self.accepting:
            raise ConchError("Server is shutting down, not accepting new requests", ErrorCode.UNAVAILABLE)
        if model is None:
            model = self.models.get(request.model_name, request.model_version)
        stream = ResponseStream()
        request.stream = stream
        trace = request.trace
        if trace is not None:
            trace.start_request(model.name, model.version, request.id)
            trace.stamp("QUEUE_START")
        self._track(stream)  # before submitting: a request the scheduler runs at once is answered in there
        try:
            model.submit(request, checked)
        except BaseException:
            stream.on_done = None
            self._untrack()
            raise
        return stream

    def infer_now(self, request: InferenceRequest, model: ModelVersion) -> InferenceResponse | None:
        """The response of a request validated against ``model``, when its scheduler can execute it right
        here, at once (no queue, no stream); None otherwise, and then nothing happened: submit it."""
        if not self.accepting or request.trace is not None:
            return None
        return model.respond_now(request)

    async def infer(self, request: InferenceRequest, model: ModelVersion | None = None) -> InferenceResponse:
        """Submit and wait for the (single, final) response; error responses are raised."""
        stream = self.submit(request, model)
        response = await stream.next()
        if response.error is not None:
            raise response.error
        return response

    def _track(self, stream: ResponseStream) -> None:
        self.inflight += 1
        stream.on_done = self._untrack

    def _untrack(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def drain(self, timeout: float) -> bool:
        """Stop accepting and wait up to ``timeout`` seconds for in-flight requests; True if all done."""
        self.accepting = False
        try:
            if self.inflight:
                if self._idle is None or self._idle.done():
                    self._idle = asyncio.get_running_loop().create_future()
                await asyncio.wait_for(asyncio.shield(self._idle), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def plugin_list(self) -> list[dict[str, Any]]:
        return self.plugins.describe()
