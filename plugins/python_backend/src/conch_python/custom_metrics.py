"""``pb_utils.MetricFamily`` custom metrics: the server's registry (:mod:`conch.custom_metrics`) seen from a model.

``pb_utils`` talks to a *metrics client* (``runtime.metrics``) with five calls: ``new_family``,
``new_metric``, ``update``, ``value`` and ``release``, plus ``instance_name`` for error texts.

- In a worker process, :class:`WorkerMetrics` sends ``("metric", token, op, args)`` messages. Creating a
  family or a metric and reading a value wait for the server's answer; updates (already checked by
  ``pb_utils``) are sent without one, and since the socket keeps order, a later ``value()`` or scrape
  sees them. The server side is :class:`MetricBridge`, one per worker process: it owns what that worker
  created, and :meth:`MetricBridge.close` drops it all when the worker exits (unload, crash, restart).
- In in-process mode, :class:`InProcessMetrics` calls the registry directly; the instance that is
  initialising or executing on the calling thread owns what is created, and drops it on unload.

Objects the model lets go of are released from ``__del__``, which may run inside any call (even while
a lock is held), so releasing only queues: a worker's releaser thread sends them, the registry drains
its own queue.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from conch.custom_metrics import CustomMetrics, Metric, MetricFamily
from conch.errors import ConchError, ErrorCode

log = logging.getLogger("conch.python")

#: Updates: sent without an answer.
UPDATES = ("increment", "set", "observe")


def _no_registry() -> ConchError:
    return ConchError("custom metrics need a running Conch server", ErrorCode.UNAVAILABLE)


class MetricBridge:
    """Server side of one worker's metrics: its handles by the ids the worker gave them."""

    def __init__(self, registry: CustomMetrics | None, instance: str) -> None:
        self.registry = registry
        self.instance = instance
        self._handles: dict[int, MetricFamily | Metric] = {}

    def handle(self, op: str, args: tuple[Any, ...]) -> tuple[str | None, Any]:
        """Carry out one message; ``(error, result)``."""
        try:
            return None, self._apply(op, args)
        except Exception as exc:  # noqa: BLE001 - a bad message must not take the worker down
            message = exc.message if isinstance(exc, ConchError) else f"{type(exc).__name__}: {exc}"
            if op in UPDATES or not isinstance(exc, ConchError):  # the worker checked it first: worth seeing
                log.warning("Python model instance '%s': metric %s failed: %s", self.instance, op, message)
            return message, None

    def _apply(self, op: str, args: tuple[Any, ...]) -> Any:
        if op in UPDATES:
            metric = self._handles.get(args[0])
            if isinstance(metric, Metric):
                getattr(metric, op)(args[1])
            return None
        if op == "value":
            metric = self._handles.get(args[0])
            if not isinstance(metric, Metric):
                raise ConchError(f"unknown metric {args[0]} of instance '{self.instance}'", ErrorCode.INTERNAL)
            return metric.value()
        if op == "release":
            handle = self._handles.pop(args[0], None)
            if handle is not None:
                handle.release()
            return None
        if op == "family":
            ref, name, description, kind = args
            if self.registry is None:
                raise _no_registry()
            self._handles[ref] = self.registry.family(name, description, kind, owner=self)
            return None
        if op == "metric":
            ref, family_ref, labels, buckets = args
            family = self._handles.get(family_ref)
            if not isinstance(family, MetricFamily):
                raise ConchError(f"unknown metric family {family_ref} of instance '{self.instance}'", ErrorCode.INTERNAL)
            self._handles[ref] = family.metric(labels, buckets)
            return None
        raise ConchError(f"unknown metric operation '{op}'", ErrorCode.INTERNAL)

    def close(self) -> None:
        """The worker is gone: drop everything it created."""
        self._handles.clear()
        if self.registry is not None:
            self.registry.release_owner(self)


class WorkerMetrics:
    """The metrics client inside a worker process."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None], ask: Callable[[Any], Any], instance: str = "") -> None:
        self._send = send
        self._ask = ask
        self.instance = instance
        self._ids = itertools.count(1)
        self._released: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._releaser: threading.Thread | None = None

    def instance_name(self) -> str:
        return self.instance

    def new_family(self, name: str, description: str, kind: str) -> int:
        if self._releaser is None:  # started here, never from __del__
            self._releaser = threading.Thread(target=self._release_forever, name="conch-python-metrics", daemon=True)
            self._releaser.start()
        return self._create("family", name, description, kind)

    def new_metric(self, family: int, labels: dict[str, str], buckets: list[float] | None) -> int:
        return self._create("metric", family, labels, buckets)

    def update(self, metric: int, op: str, value: float) -> None:
        self._send(("metric", 0, op, (metric, value)))

    def value(self, metric: int) -> float:
        error, result = self._ask(lambda token: ("metric", token, "value", (metric,)))
        if error is not None:
            raise ConchError(error, ErrorCode.INVALID_ARG)
        return float(result)

    def release(self, ref: int) -> None:
        self._released.put(ref)  # SimpleQueue.put is safe inside __del__

    def _create(self, op: str, *args: Any) -> int:
        ref = next(self._ids)
        error, _ = self._ask(lambda token: ("metric", token, op, (ref, *args)))
        if error is not None:
            raise ConchError(error, ErrorCode.INVALID_ARG)
        return ref

    def _release_forever(self) -> None:
        while True:
            ref = self._released.get()
            try:
                self._send(("metric", 0, "release", (ref,)))
            except Exception:  # noqa: BLE001 - the server is gone; so are the metrics
                return


class InProcessMetrics:
    """The metrics client of in-process models: the registry itself, owned by the current instance."""

    def __init__(self, registry: Callable[[], CustomMetrics | None]) -> None:
        self._registry = registry
        self._current = threading.local()

    def enter(self, owner: Any, name: str) -> None:
        """Make ``owner`` (an instance called ``name``) own what the calling thread creates."""
        self._current.owner = owner
        self._current.name = name

    def leave(self) -> None:
        self._current.owner = None
        self._current.name = ""

    def instance_name(self) -> str:
        return str(getattr(self._current, "name", ""))

    def new_family(self, name: str, description: str, kind: str) -> MetricFamily:
        registry = self._registry()
        if registry is None:
            raise _no_registry()
        return registry.family(name, description, kind, owner=getattr(self._current, "owner", None))

    def new_metric(self, family: MetricFamily, labels: dict[str, str], buckets: list[float] | None) -> Metric:
        return family.metric(labels, buckets)

    def update(self, metric: Metric, op: str, value: float) -> None:
        getattr(metric, op)(value)

    def value(self, metric: Metric) -> float:
        return metric.value()

    def release(self, handle: MetricFamily | Metric) -> None:
        registry = self._registry()
        if registry is not None:
            registry.release_later(handle)

    def release_owner(self, owner: Any) -> None:
        registry = self._registry()
        if registry is not None:
            registry.release_owner(owner)
