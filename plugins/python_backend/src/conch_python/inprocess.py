"""The opt-in in-process mode: a trusted model runs on a thread of the server, without IPC.

Chosen per model with ``parameters { key: "CONCH_IN_PROCESS" value: { string_value: "true" } }``.
Tensors are handed over as the very numpy arrays the frontend decoded. There is no isolation: a
crash of the model is a crash of the server, and models share the server's interpreter and GIL.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import triton_python_backend_utils as pb_utils

from conch.backend import InstanceContext, ModelInstance
from conch.config.jsonify import config_to_json
from conch.errors import ConchError
from conch.inference import InferenceRequest, InferenceResponse
from conch_python import bls
from conch_python.convert import OutputChecker, error_from, request_fields
from conch_python.custom_metrics import InProcessMetrics
from conch_python.loader import initialize_args, locate
from conch_python.modelcall import LoadedModel, check_responses, error_code, error_text, model_request

IN_PROCESS_PARAMETER = "CONCH_IN_PROCESS"


def wants_in_process(context: InstanceContext) -> bool:
    value = (context.model.parameter(IN_PROCESS_PARAMETER, "") or "").strip().lower()
    return value in ("1", "true", "yes", "on")


def _pb_error(error: ConchError) -> Any:
    codes = {name: code for code, name in pb_utils.ERROR_CODE_NAMES.items()}
    return pb_utils.TritonError(error.message, codes.get(error.code.name, 1))


def _pb_response(response: InferenceResponse) -> Any:
    if response.error is not None:
        return pb_utils.InferenceResponse(error=_pb_error(response.error))
    tensors = [pb_utils.Tensor._wrap(t.name, t.datatype, t.data) for t in response.outputs]
    return pb_utils.InferenceResponse(tensors, parameters=dict(response.parameters))


class InProcessRuntime:
    """BLS and model control for in-process models: requests submitted to the server's event loop."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.service: Any = None
        self.metrics = InProcessMetrics(lambda: getattr(self.service, "custom_metrics", None))

    def _run(self, coroutine: Any) -> Any:
        if self.loop is None or self.service is None:
            raise pb_utils.TritonModelException("BLS is only available inside execute() of a served model")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def _submit(self, request: Any) -> Any:
        tensors = [(t.name(), t._datatype, t._array) for t in request.inputs()]
        conch_request = bls.build_request(
            request.model_name(),
            request.model_version(),
            request.request_id(),
            request.requested_output_names(),
            tensors,
            request.parameters(),
            request.correlation_id(),
            request.flags(),
            request.timeout(),
        )
        return self.service.submit(conch_request)

    async def _first(self, request: Any) -> Any:
        try:
            stream = self._submit(request)
        except ConchError as exc:
            return pb_utils.InferenceResponse(error=_pb_error(exc))
        return _pb_response(await stream.next())

    async def _relay(self, request: Any, replies: queue.Queue[tuple[Any, bool]]) -> None:
        try:
            stream = self._submit(request)
        except ConchError as exc:
            replies.put((pb_utils.InferenceResponse(error=_pb_error(exc)), True))
            return
        async for response in stream:
            replies.put((_pb_response(response), response.final))

    def bls(self, request: Any, decoupled: bool) -> Any:
        if not decoupled:
            return self._run(self._first(request)).result()
        replies: queue.Queue[tuple[Any, bool]] = queue.Queue()
        future = self._run(self._relay(request, replies))
        return pb_utils._ResponseIterator(replies.get, future.cancel)

    def bls_async(self, request: Any, decoupled: bool) -> Any:
        if decoupled:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(self.bls(request, True))
            return done
        return asyncio.wrap_future(self._run(self._first(request)))

    def load_model(self, name: str, config: str, files: Any) -> None:
        self._control("load_model", (name, config, files))

    def unload_model(self, name: str, unload_dependents: bool) -> None:
        self._control("unload_model", (name, unload_dependents))

    def is_model_ready(self, name: str, version: str) -> bool:
        return bool(self._control("is_model_ready", (name, version)))

    def _control(self, op: str, args: tuple[Any, ...]) -> Any:
        try:
            return self._run(bls.control(self.service, op, args)).result()
        except ConchError as exc:
            raise pb_utils.TritonModelException(exc.message) from None


RUNTIME = InProcessRuntime()


class InProcessInstance(ModelInstance):
    """A Python model instance on a thread of the server."""

    def __init__(self, context: InstanceContext) -> None:
        model = context.model
        config = model.config
        self.name = context.name
        self.decoupled = config.model_transaction_policy.decoupled
        self.checker = OutputChecker(config, context.name)
        source = locate(
            model.version_dir, config.default_model_filename, config.backend, config.runtime, model.backend_settings
        )
        args = initialize_args(
            json.dumps(config_to_json(config)), context.kind, context.name, context.device_id,
            model.model_dir, model.version, model.name,
        )  # fmt: skip
        service = getattr(model, "server", None)
        if service is not None:
            RUNTIME.service = service
            RUNTIME.loop = RUNTIME.loop or getattr(service, "loop", None)  # model control from initialize()
        pb_utils._set_runtime(RUNTIME)
        unique = "conch_inprocess_" + re.sub(r"\W", "_", f"{model.name}_{model.version}_{context.name}")
        RUNTIME.metrics.enter(self, self.name)  # metric families created in initialize() are this instance's
        try:
            self.model = LoadedModel(source, args, unique, lambda: RUNTIME.metrics.enter(self, self.name))
        except Exception as exc:  # noqa: BLE001
            RUNTIME.metrics.release_owner(self)
            raise error_from(
                f"Failed to initialize Python model instance '{self.name}': {error_text(exc)}", error_code(exc)
            ) from None
        finally:
            RUNTIME.metrics.leave()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"conch-py-{self.name}")

    def is_ready(self) -> bool:
        try:
            return self.model.is_ready()
        except Exception:  # noqa: BLE001
            return False

    def not_ready_reason(self) -> str:
        return "" if self.is_ready() else f"is_ready() of Python model instance '{self.name}' returned False"

    async def execute(self, requests: list[InferenceRequest]) -> list[InferenceResponse] | None:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        RUNTIME.loop = loop
        return await loop.run_in_executor(self._executor, self._execute, requests)

    def _execute(self, requests: list[InferenceRequest]) -> list[InferenceResponse] | None:
        RUNTIME.metrics.enter(self, self.name)  # this executor thread only ever runs this instance
        wrapped = [self._wrap(request) for request in requests]
        try:
            result = check_responses(self.model.execute(wrapped), len(requests), self.decoupled)
        except Exception as exc:  # noqa: BLE001
            raise error_from(
                f"Failed to process the request(s) for model '{self.name}', message: {error_text(exc)}",
                error_code(exc),
            ) from None
        if result is None:
            return None
        return [self._convert(request, response) for request, response in zip(requests, result, strict=True)]

    def _wrap(self, request: InferenceRequest) -> Any:
        correlation_id, flags, timeout, parameters = request_fields(request)
        tensors = [pb_utils.Tensor._wrap(name, t.datatype, t.data) for name, t in request.inputs.items()]  # type: ignore[arg-type]
        return model_request(
            self,
            request,
            self.decoupled,
            tensors,
            request.requested_output_names(),
            request.id,
            correlation_id,
            flags,
            timeout,
            parameters,
        )

    def _convert(self, request: InferenceRequest, response: Any) -> InferenceResponse:
        if response is None:
            return InferenceResponse(final=True)
        error = response.error()
        if error is not None:
            return InferenceResponse(error=error_from(error.message(), pb_utils.ERROR_CODE_NAMES.get(error.code(), "INTERNAL")))
        tensors = [(t.name(), t._datatype, t._array) for t in response.output_tensors()]
        return self.checker.response(request, tensors, response._parameters)

    # -- the host interface pb_utils uses ------------------------------------------------------------

    def send(self, wrapped: Any, response: Any, flags: int) -> None:
        request: InferenceRequest = wrapped._key
        converted = self._convert(request, response)
        converted.final = bool(flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        request.respond(converted)

    def is_cancelled(self, wrapped: Any) -> bool:
        stream = wrapped._key.stream
        return bool(stream is not None and stream.cancelled)

    def unload(self) -> None:
        try:
            self.model.finalize()
        finally:
            self._executor.shutdown(wait=False)
            RUNTIME.metrics.release_owner(self)  # its custom metric families leave the endpoint
