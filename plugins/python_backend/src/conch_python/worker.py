"""The worker process: one model instance, driven by the server over a socket and shared memory.

Run as ``python -m conch_python.worker <socket fd>``. The main thread runs the model; it reads the
socket itself while it waits for work, and a helper thread reads while it executes and someone needs
the server's answers (see :mod:`conch_python.reading`). Whoever reads answers health pings at once and
routes replies (cancellation, BLS, model control) to the threads waiting for them. When the server goes
away the worker exits.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import socket
import sys
import threading
from typing import Any

import triton_python_backend_utils as pb_utils

from conch_python import execution_env
from conch_python.custom_metrics import WorkerMetrics
from conch_python.loader import ModelSource
from conch_python.modelcall import LoadedModel, check_responses, error_code, error_text, model_request
from conch_python.reading import NOT_WORK, Inbox
from conch_python.shm import Ring, open_region
from conch_python.wire import Channel, ChannelClosed, put_tensors, take_tensors

log = logging.getLogger("conch.python.worker")

#: Request parameters that Triton turns into request fields instead of passing them to the model.
SCHEDULING_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout")


def encode_response(ring: Ring, prefix: str, response: Any) -> tuple[Any, ...] | None:
    """A pb_utils.InferenceResponse as a message part (tensors written into shared memory)."""
    if response is None:
        return None
    error = response.error()
    tensors = [(t.name(), t._datatype, t._array) for t in response.output_tensors()]
    outputs = put_tensors(ring, prefix, tensors) if error is None else []
    err = (error.message(), pb_utils.ERROR_CODE_NAMES.get(error.code(), "INTERNAL")) if error is not None else None
    return (outputs, err, response._parameters)


def decode_response(ring: Ring, desc: tuple[Any, ...] | None) -> Any:
    """A message part back into a pb_utils.InferenceResponse (BLS results)."""
    if desc is None:
        return pb_utils.InferenceResponse()
    outputs, err, parameters = desc
    if err is not None:
        codes = {name: code for code, name in pb_utils.ERROR_CODE_NAMES.items()}
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(err[0], codes.get(err[1], 1)), parameters=parameters)
    tensors = [pb_utils.Tensor._wrap(n, d, a) for n, d, a in take_tensors(ring, outputs)]
    return pb_utils.InferenceResponse(tensors, parameters=parameters)


class _Slot:
    """A reply some thread waits for."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None


class WorkerRuntime:
    """What pb_utils talks to inside the worker: responses, cancellation, BLS, model control."""

    def __init__(
        self, channel: Channel, inbound: Ring, outbound: Ring, prefix: str, decoupled: bool, instance: str = ""
    ) -> None:
        self.channel = channel
        self.inbound = inbound  # server -> worker tensors
        self.outbound = outbound  # worker -> server tensors
        self.prefix = prefix
        self.decoupled = decoupled
        self.model: LoadedModel | None = None
        self._tokens = itertools.count(1)
        self._waiting: dict[int, Any] = {}
        self.metrics = WorkerMetrics(channel.send, self._ask, instance)  # pb_utils.MetricFamily
        self.inbox = Inbox(channel, self._take, self._waiting)

    # -- sending ---------------------------------------------------------------------------------

    def send_with_tensors(self, build: Any) -> None:
        """Allocate tensor space and send under one lock, so the server frees ring space in order."""
        with self.outbound.lock:
            self.channel.send(build())

    def send(self, request: Any, response: Any, flags: int) -> None:
        """A ResponseSender's response (or final flag) for a request."""
        self.send_with_tensors(
            lambda: ("resp", request._key, encode_response(self.outbound, self.prefix, response), flags)
        )

    def is_cancelled(self, request: Any) -> bool:
        return bool(self._ask(lambda token: ("cancelled?", token, request._key)))

    def _ask(self, build: Any) -> Any:
        token = next(self._tokens)
        slot = _Slot()
        self._waiting[token] = slot
        self.channel.send(build(token))
        self.inbox.need_reader()
        slot.event.wait()
        return slot.value

    # -- BLS and model control -------------------------------------------------------------------

    def _bls_message(self, token: int, request: Any, decoupled: bool) -> tuple[Any, ...]:
        inputs = [(t.name(), t._datatype, t._array) for t in request.inputs()]
        descs = put_tensors(self.outbound, self.prefix, inputs)
        body = (
            request.model_name(),
            request.model_version(),
            request.request_id(),
            request.requested_output_names(),
            descs,
            request.parameters(),
            request.correlation_id(),
            request.flags(),
            request.timeout(),
        )
        return ("bls", token, body, decoupled)

    def bls(self, request: Any, decoupled: bool) -> Any:
        token = next(self._tokens)
        replies: queue.Queue[tuple[Any, bool]] = queue.Queue()
        self._waiting[token] = replies
        self.send_with_tensors(lambda: self._bls_message(token, request, decoupled))
        self.inbox.need_reader()
        if not decoupled:
            response, _ = replies.get()
            return response
        return pb_utils._ResponseIterator(replies.get, lambda: self.channel.send(("bls_cancel", token)))

    def bls_async(self, request: Any, decoupled: bool) -> Any:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise pb_utils.TritonModelException(
                "async_exec() must be awaited inside 'async def execute'; use exec() in a synchronous execute"
            ) from None
        token = next(self._tokens)
        if decoupled:
            replies: queue.Queue[tuple[Any, bool]] = queue.Queue()
            self._waiting[token] = replies
            self.send_with_tensors(lambda: self._bls_message(token, request, True))
            self.inbox.need_reader()
            future: asyncio.Future[Any] = loop.create_future()
            future.set_result(pb_utils._ResponseIterator(replies.get, lambda: self.channel.send(("bls_cancel", token))))
            return future
        future = loop.create_future()
        self._waiting[token] = (loop, future)
        self.send_with_tensors(lambda: self._bls_message(token, request, False))
        self.inbox.need_reader()
        return future

    def _rpc(self, op: str, *args: Any) -> Any:
        error, result = self._ask(lambda token: ("rpc", token, op, args))
        if error is not None:
            raise pb_utils.TritonModelException(error)
        return result

    def load_model(self, name: str, config: str, files: Any) -> None:
        self._rpc("load_model", name, config, files)

    def unload_model(self, name: str, unload_dependents: bool) -> None:
        self._rpc("unload_model", name, unload_dependents)

    def is_model_ready(self, name: str, version: str) -> bool:
        return bool(self._rpc("is_model_ready", name, version))

    # -- receiving -------------------------------------------------------------------------------

    def read_forever(self) -> None:
        """The helper thread: read while the main thread cannot; exit the process when the server is gone."""
        try:
            self.inbox.help_forever()
        except ChannelClosed:
            pass
        except BaseException:  # noqa: BLE001 - a broken reader must not leave a silent worker behind
            log.exception("worker reader failed")
        os._exit(0)

    def _take(self, message: tuple[Any, ...]) -> Any:
        """Work for the main thread (an execution; None: finalize), or NOT_WORK once dispatched."""
        kind = message[0]
        if kind == "exec":
            return (message[1], [self._request(r) for r in message[2]])
        if kind == "fin":
            return None
        self._dispatch(message)
        return NOT_WORK

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ping":
            self.channel.send(("pong", message[1]))
        elif kind == "ready?":
            threading.Thread(target=self._answer_ready, args=(message[1],), daemon=True).start()
        elif kind in ("cancelled", "rpc_resp"):
            slot = self._waiting.pop(message[1], None)
            if slot is not None:
                slot.value = message[2]
                slot.event.set()
        elif kind == "bls_resp":
            self._bls_reply(message[1], message[2], message[3])

    def _bls_reply(self, token: int, desc: Any, final: bool) -> None:
        waiter = self._waiting.get(token)
        if final:
            self._waiting.pop(token, None)
        response = decode_response(self.inbound, desc)
        if isinstance(waiter, tuple):
            loop, future = waiter
            self._waiting.pop(token, None)
            loop.call_soon_threadsafe(_resolve, future, response)
        elif waiter is not None:
            waiter.put((response, final))

    def _request(self, desc: tuple[Any, ...]) -> Any:
        key, request_id, correlation_id, flags, parameters, inputs, outputs, timeout = desc
        tensors = [pb_utils.Tensor._wrap(n, d, a) for n, d, a in take_tensors(self.inbound, inputs)]
        return model_request(
            self, key, self.decoupled, tensors, outputs, request_id, correlation_id, flags, timeout, parameters
        )

    def _answer_ready(self, token: int) -> None:
        assert self.model is not None
        try:
            ready, error = self.model.is_ready(), None
        except Exception as exc:  # noqa: BLE001
            ready, error = False, error_text(exc)
        self.channel.send(("ready", token, ready, error))

    # -- executing -------------------------------------------------------------------------------

    def execute_forever(self) -> None:
        """The main thread: run batches until told to finalize."""
        assert self.model is not None
        while True:
            try:
                item = self.inbox.next_work()
            except ChannelClosed:
                os._exit(0)
            except BaseException:  # noqa: BLE001 - a broken reader must not leave a silent worker behind
                log.exception("worker reader failed")
                os._exit(0)
            if item is None:
                break
            batch, requests = item
            try:
                result = check_responses(self.model.execute(requests), len(requests), self.decoupled)
            except Exception as exc:  # noqa: BLE001 - the model's failure fails its requests
                failure = (error_text(exc), error_code(exc))
                self.channel.send(("done", batch, None, failure))
                continue
            finally:
                self.inbox.done()
            if result is None:
                self.channel.send(("done", batch, None, None))
            else:
                self.send_with_tensors(
                    lambda result=result, batch=batch: (
                        "done",
                        batch,
                        [encode_response(self.outbound, self.prefix, r) for r in result],
                        None,
                    )
                )
        try:
            self.model.finalize()
        except Exception:  # noqa: BLE001 - logged, as Triton does
            log.exception("finalize of the model failed")
        self.channel.send(("fin_ok",))


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    channel = Channel(sock)
    kind, spec = channel.recv()
    assert kind == "init", kind
    from conch.log import configure

    configure(verbose=spec["log_verbose"], log_format=spec["log_format"], log_file=spec.get("log_file"))
    logging.getLogger("conch").setLevel(spec["log_level"])
    execution_env.use_site_packages()
    inbound = Ring(open_region(spec["to_worker"]))
    outbound = Ring(open_region(spec["to_server"]))
    instance = spec["args"]["model_instance_name"]
    runtime = WorkerRuntime(channel, inbound, outbound, spec["prefix"], spec["decoupled"], instance)
    pb_utils._set_runtime(runtime)
    source = ModelSource(spec["path"], spec["package_dir"])
    # Reading starts before initialize(), which may wait for the server's answers (metrics, load_model).
    threading.Thread(target=runtime.read_forever, name="conch-python-reader", daemon=True).start()
    try:
        runtime.model = LoadedModel(source, spec["args"])
    except BaseException as exc:  # noqa: BLE001 - reported to the server, which fails the load
        channel.send(("init_err", error_text(exc), error_code(exc)))
        sys.exit(1)
    channel.send(("init_ok", os.getpid(), runtime.model.has_is_ready))
    runtime.execute_forever()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
