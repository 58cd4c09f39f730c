"""``inference.GRPCInferenceService`` on grpc.aio, answering as Triton 2.51 does.

Every RPC maps a :class:`~conch.errors.ConchError` to its gRPC status with the message verbatim
(``GrpcStatusUtil::CodeToStatus``); anything unexpected becomes INTERNAL with the exception's text and
is logged, so no request can take the server down. ModelInfer and ModelStreamInfer use the wire codec
in :mod:`.codec` instead of protobuf's (de)serializers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

from conch import log as conch_log
from conch import tracing
from conch._proto import grpc_service_pb2 as pb
from conch.errors import ConchError, ErrorCode
from conch.frontends.grpc import codec
from conch.service import parse_version

if TYPE_CHECKING:
    from conch.inference import InferenceResponse, ResponseStream
    from conch.service import InferenceService

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"

#: Responses at least this big are joined into one message on a worker thread, off the event loop.
OFFLOAD_THRESHOLD = 4 * 1024 * 1024

DECOUPLED_UNARY = "ModelInfer RPC doesn't support models with decoupled transaction policy"
REPOSITORY_NAME = "'repository_name' specification is not supported"
LOG_FILE_FIXED = "log file location can not be updated through network protocol"

#: The ``SettingValue`` field of each log setting type, and the name Triton's type errors give it.
_SETTING_FIELDS: dict[type, tuple[str, str]] = {
    bool: ("bool_param", "boolean"),
    int: ("uint32_param", "int32"),
    str: ("string_param", "string"),
}


def _status(error: ConchError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.code.grpc_status)


def _failure(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a failed RPC answers with."""
    if isinstance(exc, ConchError):
        return _status(exc), exc.message
    log.exception("unexpected error in a gRPC call", exc_info=exc)
    return grpc.StatusCode.INTERNAL, str(exc) or type(exc).__name__


def _rpc(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Run a unary RPC body and turn its exceptions into a status."""

    @functools.wraps(method)
    async def wrapper(self: GRPCInferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            code, message = _failure(exc)
        await context.abort(code, message)

    return wrapper


async def _join(parts: list[bytes | memoryview], size: int) -> bytes:
    if size >= OFFLOAD_THRESHOLD:
        return await asyncio.to_thread(b"".join, parts)
    return b"".join(parts)


def _unsupported(feature: str) -> Callable[..., Awaitable[Any]]:
    async def handler(self: GRPCInferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{feature} is not supported by this server yet")

    handler.__doc__ = f"Not implemented: {feature}."
    return handler


class GRPCInferenceServicer:
    """The RPC bodies of ``inference.GRPCInferenceService``; register with :func:`rpc_method_handlers`."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    # -- health and metadata -------------------------------------------------------------------

    @_rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.service.is_live())

    @_rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.is_ready())

    @_rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        version = parse_version(request.version)
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, version))

    @_rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        metadata = self.service.metadata()
        return pb.ServerMetadataResponse(
            name=metadata["name"], version=metadata["version"], extensions=metadata.get("extensions", [])
        )

    @_rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        metadata = self.service.model_metadata(request.name, parse_version(request.version))
        response = pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=[str(v) for v in metadata.get("versions", [])],
            platform=metadata.get("platform", ""),
        )
        for field in ("inputs", "outputs"):
            for tensor in metadata.get(field, []):
                getattr(response, field).add(
                    name=tensor["name"], datatype=tensor["datatype"], shape=[int(d) for d in tensor["shape"]]
                )
        return response

    @_rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        config = self.service.model_config(request.name, parse_version(request.version))
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(config)
        return response

    @_rpc
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        stats = self.service.model_statistics(request.name, parse_version(request.version))
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    # -- logging extension -----------------------------------------------------------------------

    @_rpc
    async def LogSettings(self, request: pb.LogSettingsRequest, context: Any) -> pb.LogSettingsResponse:
        """Apply the request's settings in Triton's order (each before the next is checked), answer all."""
        settings = request.settings
        if "log_file" in settings:
            raise ConchError(LOG_FILE_FIXED, ErrorCode.UNSUPPORTED)
        for key, kind in conch_log.RUNTIME_SETTINGS:
            if key not in settings:
                continue
            field, name = _SETTING_FIELDS[kind]
            setting = settings[key]
            if setting.WhichOneof("parameter_choice") != field:
                raise ConchError(f"expect {name} for '{key}'", ErrorCode.INVALID_ARG)
            value = getattr(setting, field)
            if key == "log_format" and value not in conch_log.FORMATS:
                raise ConchError(f"invalid argument for log_format, got: {value}", ErrorCode.INVALID_ARG)
            self.service.set_log_setting(key, value)
        response = pb.LogSettingsResponse()
        for key, value in self.service.log_settings().items():
            field, _ = _SETTING_FIELDS[type(value)]
            setattr(response.settings[key], field, value)
        return response

    # -- trace extension -------------------------------------------------------------------------

    @_rpc
    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Any) -> pb.TraceSettingResponse:
        """Read, or update then read, the global or a model's trace settings, as Triton's handler does."""
        model = request.model_name
        if model and not self.service.model_ready(model):
            raise ConchError(f"Request for unknown model : {model}", ErrorCode.INVALID_ARG)
        changes = _trace_changes(request.settings) if request.settings else None
        response = pb.TraceSettingResponse()
        for key, value in self.service.trace_settings(model, changes).items():
            response.settings[key].value.extend(value if isinstance(value, list) else [value])
        return response

    # -- repository ------------------------------------------------------------------------------

    @_rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        if request.repository_name:
            raise ConchError(REPOSITORY_NAME, ErrorCode.UNSUPPORTED)
        response = pb.RepositoryIndexResponse()
        for entry in self.service.repository_index(request.ready):
            model = response.models.add(name=entry["name"])
            for key in ("version", "state", "reason"):
                if entry.get(key):
                    setattr(model, key, str(entry[key]))
        return response

    @_rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        if request.repository_name:
            raise ConchError(REPOSITORY_NAME, ErrorCode.UNSUPPORTED)
        parameters: dict[str, Any] = {}
        for key, param in request.parameters.items():
            choice = param.WhichOneof("parameter_choice")
            if key == "config":
                expected = "string_param"
            elif key.startswith("file:"):
                expected = "bytes_param"
            else:
                raise ConchError(f"unrecognized load parameter '{key}'.", ErrorCode.INVALID_ARG)
            if choice != expected:
                raise ConchError(
                    f"invalid value type for load parameter '{key}', expected {expected}.", ErrorCode.INVALID_ARG
                )
            parameters[key] = getattr(param, choice)
        await self.service.load_model(request.model_name, parameters)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        if request.repository_name:
            raise ConchError(REPOSITORY_NAME, ErrorCode.UNSUPPORTED)
        dependents = request.parameters.get("unload_dependents")
        unload_dependents = False
        if dependents is not None:
            if dependents.WhichOneof("parameter_choice") != "bool_param":
                raise ConchError(
                    "invalid value type for 'unload_dependents' parameter, expected bool_param.",
                    ErrorCode.INVALID_ARG,
                )
            unload_dependents = dependents.bool_param
        await self.service.unload_model(request.model_name, unload_dependents)
        return pb.RepositoryModelUnloadResponse()

    # -- inference -------------------------------------------------------------------------------

    @_rpc
    async def ModelInfer(self, wire: codec.WireInferRequest, context: Any) -> bytes:
        tracer = self.service.tracer
        if not tracer.active:
            return await self._infer(wire, None)
        trace = tracer.sample(wire.message.model_name)
        if trace is None:
            return await self._infer(wire, None)
        sending: list[bool] = []

        def sent(_: Any) -> None:  # the call is over: its response handed to the transport, or failed
            if sending:
                trace.stamp("GRPC_SEND_END")
            trace.finish()

        context.add_done_callback(sent)
        reply = await self._infer(wire, trace)
        trace.stamp("GRPC_SEND_START")
        sending.append(True)
        return reply

    async def _infer(self, wire: codec.WireInferRequest, trace: tracing.Trace | None) -> bytes:
        message = wire.message
        version = parse_version(message.model_version)
        model = self.service.model(message.model_name, version)
        if model.decoupled:
            raise ConchError(DECOUPLED_UNARY, ErrorCode.UNSUPPORTED)
        request, _ = codec.decode_request(wire, version, self.service.shared_memory)
        request.trace = trace
        try:
            response = await self.service.infer(request, model)
        except asyncio.CancelledError:
            if request.stream is not None:
                request.stream.cancelled = True
            raise
        if trace is not None:
            trace.stamp("INFER_RESPONSE_COMPLETE")
        classes = codec.classification_counts(request)
        encoded = codec.encode_response(
            response,
            model_name=message.model_name,
            model_version=str(model.version),
            request_id=message.id,
            classes=classes,
            batching=classes is not None and model.config.max_batch_size > 0,
            labels=getattr(model, "output_labels", None),
            regions=codec.shared_memory_outputs(request),
        )
        return await _join(encoded.parts, encoded.size)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[codec.WireInferRequest], context: Any
    ) -> AsyncIterator[bytes]:
        grpc_error_mode = any(
            key == "triton_grpc_error" and value == "true" for key, value in (context.invocation_metadata() or ())
        )
        session = _StreamSession(self.service, grpc_error_mode)
        session.start(requests)
        try:
            while True:
                item = await session.out.get()
                if item is _END:
                    break
                if isinstance(item, _Abort):
                    await context.abort(item.code, item.message)
                yield item
            session.raise_failure()
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            code, message = _failure(exc)
            await context.abort(code, message)
        finally:
            session.close()

    # -- shared memory ---------------------------------------------------------------------------

    @_rpc
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.service.shared_memory.status(request.name):
            response.regions[region["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**region))
        return response

    @_rpc
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.service.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        if request.name:
            self.service.shared_memory.unregister(request.name)
        else:
            self.service.shared_memory.unregister_all()
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Any
    ) -> pb.CudaSharedMemoryStatusResponse:
        """No CUDA region can be registered: none listed, a named one unknown (as on HTTP)."""
        if request.name in self.service.shared_memory:
            raise ConchError(
                f"The region named '{request.name}' is registered as system shared memory, not CUDA shared memory",
                ErrorCode.NOT_FOUND,
            )
        if request.name:
            raise ConchError(f"Unable to find cuda shared memory region: '{request.name}'", ErrorCode.NOT_FOUND)
        return pb.CudaSharedMemoryStatusResponse()

    @_rpc
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Any
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        """Nothing to unregister; succeeds, so clients that unregister everything at exit (perf_analyzer) do."""
        return pb.CudaSharedMemoryUnregisterResponse()

    # -- not implemented -----------------------------------------------------------------------

    CudaSharedMemoryRegister = _unsupported("CUDA shared memory")


def _trace_changes(settings: Any) -> dict[str, int | None]:
    """Checked changes of a ``TraceSettingRequest`` in Triton's order with its texts (no values: clear)."""
    if "trace_file" in settings:
        raise ConchError(tracing.FILE_FIXED, ErrorCode.UNSUPPORTED)
    changes: dict[str, int | None] = {}
    for key in tracing.UPDATABLE:
        if key not in settings:
            continue
        values = list(settings[key].value)
        if not values:
            changes[key] = None
        elif key == "trace_level":
            level = tracing.parse_levels(values)
            if level is not None:
                changes[key] = level
        elif len(values) != 1:
            raise ConchError(f"expect only 1 value for '{key}'", ErrorCode.INVALID_ARG)
        else:
            changes[key] = tracing.parse_number(key, values[0], grpc=True)
    return changes


class _Abort:
    """End the stream with a status (``triton_grpc_error: true`` mode)."""

    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message


_END = object()


class _StreamSession:
    """One ModelStreamInfer call: requests run concurrently, each request's responses stay in order.

    As in Triton, responses of non-decoupled requests also keep the order of their requests (each waits
    for the previous non-decoupled request to be written); decoupled requests write as they produce.
    """

    def __init__(self, service: InferenceService, grpc_error_mode: bool) -> None:
        self.service = service
        self.grpc_error_mode = grpc_error_mode
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.streams: set[ResponseStream] = set()
        self.tail: asyncio.Future[None] | None = None  # written-future of the last non-decoupled request
        self.reader: asyncio.Task[None] | None = None

    def start(self, requests: AsyncIterator[codec.WireInferRequest]) -> None:
        self.reader = asyncio.create_task(self._read(requests))

    def raise_failure(self) -> None:
        """Re-raise what stopped the reader, if anything did."""
        if self.reader is not None and self.reader.done() and not self.reader.cancelled():
            failure = self.reader.exception()
            if failure is not None:
                raise failure

    def close(self) -> None:
        """Stop reading and cancel whatever is still running (the call ended or was cancelled)."""
        if self.reader is not None:
            if self.reader.done() and not self.reader.cancelled():
                self.reader.exception()  # retrieved: raise_failure reported it, or the call was cancelled
            self.reader.cancel()
        for task in list(self.tasks):
            task.cancel()
        for stream in self.streams:
            stream.cancelled = True

    async def _read(self, requests: AsyncIterator[codec.WireInferRequest]) -> None:
        try:
            async for wire in requests:
                self._start(wire)
            if self.tasks:
                await asyncio.gather(*self.tasks)
        finally:
            self.out.put_nowait(_END)

    def _start(self, wire: codec.WireInferRequest) -> None:
        message = wire.message
        error: Exception | None = None
        version = -1
        model: Any = None
        try:
            version = parse_version(message.model_version)
            model = self.service.model(message.model_name, version)
        except Exception as exc:  # noqa: BLE001 - reported on the stream
            error = exc
        decoupled = bool(model is not None and model.decoupled)
        gate: asyncio.Future[None] | None = None
        written: asyncio.Future[None] | None = None
        if not decoupled:
            gate = self.tail
            written = asyncio.get_running_loop().create_future()
            self.tail = written
        task = asyncio.create_task(self._serve(wire, version, model, error, gate, written))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(
        self,
        wire: codec.WireInferRequest,
        version: int,
        model: Any,
        error: Exception | None,
        gate: asyncio.Future[None] | None,
        written: asyncio.Future[None] | None,
    ) -> None:
        try:
            try:
                async for item in self._responses(wire, version, model, error):
                    if gate is not None:
                        await gate
                        gate = None
                    self.out.put_nowait(item)
            except Exception as exc:  # noqa: BLE001 - reported on the stream, which stays open
                item = codec.stream_error(_failure(exc)[1], wire.message.id)
                if gate is not None:
                    await gate
                    gate = None
                self.out.put_nowait(item)
            if gate is not None:
                await gate
        finally:
            if written is not None and not written.done():
                written.set_result(None)

    async def _responses(
        self, wire: codec.WireInferRequest, version: int, model: Any, error: Exception | None
    ) -> AsyncIterator[Any]:
        message = wire.message
        request_id = message.id
        if error is None:
            try:
                request, empty_final = codec.decode_request(wire, version, self.service.shared_memory)
                stream = self.service.submit(request, model)
            except Exception as exc:  # noqa: BLE001 - reported on the stream
                error = exc
        if error is not None:
            yield codec.stream_error(_failure(error)[1], request_id)
            return

        decoupled = model.decoupled
        classes = codec.classification_counts(request)
        regions = codec.shared_memory_outputs(request)
        model_name = message.model_name
        requested_version = message.model_version
        served_version = str(model.version)
        self.streams.add(stream)
        try:
            async for response in stream:
                final = response.final
                if response.error is not None:
                    if self.grpc_error_mode:
                        yield _Abort(_status(response.error), response.error.message)
                        return
                    yield codec.stream_error(
                        response.error.message,
                        request_id,
                        model_name=model_name,
                        model_version=requested_version,
                        final=final,
                    )
                    continue
                if decoupled and final and _is_flag_only(response):
                    if empty_final:
                        yield codec.empty_final(request_id, model_name, requested_version)
                    continue
                yield await self._encode(
                    response, model_name, served_version, request_id, final, requested_version, model, classes, regions
                )
        finally:
            self.streams.discard(stream)
            if not stream.done:
                stream.cancelled = True

    async def _encode(
        self,
        response: InferenceResponse,
        model_name: str,
        served_version: str,
        request_id: str,
        final: bool,
        requested_version: str,
        model: Any,
        classes: dict[str, int] | None,
        regions: dict[str, memoryview] | None,
    ) -> Any:
        try:
            encoded = codec.stream_wrap(
                codec.encode_response(
                    response,
                    model_name=model_name,
                    model_version=served_version,
                    request_id=request_id,
                    final=final,
                    classes=classes,
                    batching=classes is not None and model.config.max_batch_size > 0,
                    labels=getattr(model, "output_labels", None),
                    regions=regions,
                )
            )
        except Exception as exc:  # noqa: BLE001 - reported on the stream
            code, message = _failure(exc)
            if self.grpc_error_mode:
                return _Abort(code, message)
            return codec.stream_error(
                message, request_id, model_name=model_name, model_version=requested_version, final=final
            )
        return await _join(encoded.parts, encoded.size)


def _is_flag_only(response: InferenceResponse) -> bool:
    """A final response with nothing in it: Triton's final flag sent without a response."""
    return not response.outputs and not response.parameters


def rpc_method_handlers(servicer: GRPCInferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """Method handlers for every RPC of the service, keyed by method name.

    ModelInfer and ModelStreamInfer take :class:`.codec.WireInferRequest` and answer with bytes the
    servicer has already serialized; the others use the generated messages.
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        behaviour = getattr(servicer, method.name)
        if method.name == "ModelInfer":
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=codec.parse_infer_request
            )
        elif method.name == "ModelStreamInfer":
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour, request_deserializer=codec.parse_infer_request
            )
        else:
            request_type = getattr(pb, method.input_type.name)
            response_type = getattr(pb, method.output_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
    return handlers
