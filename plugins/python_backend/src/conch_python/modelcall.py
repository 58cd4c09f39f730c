"""Calling a ``TritonPythonModel``: initialize, execute (sync or ``async def``), is_ready, finalize.

Shared by the worker process and the in-process mode, so both check results with the same rules and
messages.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

import triton_python_backend_utils as pb_utils

from conch_python.loader import ModelSource, import_model_class

_HERE = os.path.dirname(os.path.abspath(__file__))  # frames of conch_python are not the model's


class AsyncRunner:
    """An event loop on a thread of its own, for ``async def`` hooks and the tasks they start."""

    def __init__(self, setup: Callable[[], None] | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._setup = setup
        self._thread = threading.Thread(target=self._run, name="conch-python-asyncio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class LoadedModel:
    """One ``TritonPythonModel`` object, initialised."""

    def __init__(
        self,
        source: ModelSource,
        args: dict[str, str],
        unique: str | None = None,
        thread_setup: Callable[[], None] | None = None,
    ) -> None:
        model_class = import_model_class(source, unique)
        self.model = model_class()
        self._async: AsyncRunner | None = None
        self._thread_setup = thread_setup  # run first on the thread of async hooks
        initialize = getattr(self.model, "initialize", None)
        if initialize is not None:
            self.call(initialize, args)
        execute = getattr(self.model, "execute", None)
        if execute is None:
            raise pb_utils.TritonModelException(f"{source.path}: TritonPythonModel does not implement execute()")
        self._execute = execute
        self.has_is_ready = callable(getattr(self.model, "is_ready", None))

    def call(self, function: Any, *args: Any) -> Any:
        """Call a hook; coroutines run on the model's event loop."""
        result = function(*args)
        if inspect.isawaitable(result):
            if self._async is None:
                self._async = AsyncRunner(self._thread_setup)
            return self._async.run(_await(result))
        return result

    def execute(self, requests: list[Any]) -> Any:
        return self.call(self._execute, requests)

    def is_ready(self) -> bool:
        return bool(self.call(self.model.is_ready)) if self.has_is_ready else True

    def finalize(self) -> None:
        finalize = getattr(self.model, "finalize", None)
        try:
            if finalize is not None:
                self.call(finalize)
        finally:
            if self._async is not None:
                self._async.stop()


async def _await(awaitable: Any) -> Any:
    return await awaitable


def model_request(
    host: Any,
    key: Any,
    decoupled: bool,
    tensors: list[Any],
    outputs: list[str],
    request_id: str,
    correlation_id: Any,
    flags: int,
    timeout: int,
    parameters: Any,
) -> Any:
    """The ``pb_utils.InferenceRequest`` a model's ``execute`` gets, answered through ``host``
    (``send`` / ``is_cancelled``) under ``key`` (worker process and in-process mode alike)."""
    request = pb_utils.InferenceRequest(
        requested_output_names=outputs,
        inputs=tensors,
        request_id=request_id,
        correlation_id=correlation_id,
        flags=flags,
        timeout=timeout,
        parameters=parameters,
    )
    request._host = host
    request._key = key
    request._decoupled = decoupled
    return request


def error_text(exc: BaseException) -> str:
    """An exception as the client sees it: ``<type>: <message>`` plus where it was raised."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _HERE not in f.filename]
    where = "".join(f"\n  {frame.filename}({frame.lineno}): {frame.name}" for frame in reversed(frames[-3:]))
    return f"{type(exc).__name__}: {exc}" + (f"\n\nAt:{where}\n" if where else "")


def error_code(exc: BaseException) -> str:
    """The Conch error-code name for an exception a model raised."""
    if isinstance(exc, pb_utils.TritonError):
        return pb_utils.ERROR_CODE_NAMES.get(exc.code(), "INTERNAL")
    return "INTERNAL"


def check_responses(result: Any, count: int, decoupled: bool) -> list[Any] | None:
    """Validate what ``execute`` returned; None when responses go through response senders."""
    if decoupled:
        if result is not None:
            raise pb_utils.TritonModelException(
                "Python model in decoupled mode must return None from execute() and send its responses with the "
                f"response sender; it returned {type(result).__name__}"
            )
        return None
    if result is None:
        return None
    if not isinstance(result, (list, tuple)):
        raise pb_utils.TritonModelException(
            f"Expected a list in the execute return, found type '{type(result).__name__}'."
        )
    if len(result) != count:
        raise pb_utils.TritonModelException(
            "Number of InferenceResponse objects do not match the number of InferenceRequest objects. "
            f"InferenceRequest(s) size is:{count}, and InferenceResponse(s) size is:{len(result)}"
        )
    for response in result:
        if response is not None and not isinstance(response, pb_utils.InferenceResponse):
            raise pb_utils.TritonModelException(
                f"Expected an 'InferenceResponse' object in the execute function return list, found type "
                f"'{type(response).__name__}'."
            )
    return list(result)
