"""Custom metric families: counters, gauges and histograms that backends create while serving.

The server keeps one :class:`CustomMetrics` registry, ``InferenceService.custom_metrics``; a backend
reaches it as ``ModelContext.server.custom_metrics``. Its families appear on the metrics endpoint
(``GET /metrics``) after the server's own, with their HELP and TYPE lines.

The rules are those of Triton's ``TRITONSERVER_MetricFamily`` / ``TRITONSERVER_Metric`` API (and of the
prometheus-cpp registry under it), with Triton's error texts:

- a family name may be registered again with the same kind, which returns the same family (the first
  description stays); with another kind it is an error;
- a metric (one series: a family plus its labels) may be created again with the same labels, which
  shares the series (a histogram keeps its first buckets); a series lives while a handle to it does;
- counters only go up, gauges are set or incremented, histograms are observed;
- a family with no series is not shown.

Every family or metric handle belongs to an *owner* (any hashable, e.g. a model instance):
:meth:`CustomMetrics.release_owner` drops all of an owner's handles at once, which a backend calls
when the instance unloads or its process dies. Handles may also be released one by one, and
:meth:`CustomMetrics.release_later` does that from a ``__del__`` (it never blocks or takes a lock).

Example::

    registry = context.model.server.custom_metrics
    family = registry.family("requests_total", "Requests seen by my backend", MetricKind.COUNTER, owner=self)
    family.metric({"model": context.model.name}).increment(1)
    ...
    registry.release_owner(self)  # on unload
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
import queue
import re
import threading
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from conch.errors import ConchError, ErrorCode

__all__ = [
    "CustomMetrics",
    "FamilySnapshot",
    "Metric",
    "MetricFamily",
    "MetricKind",
    "SeriesSnapshot",
    "update_error",
]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = tuple[tuple[str, str], ...]


class MetricKind(str, enum.Enum):
    """A family's Prometheus type."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"

    @property
    def triton_name(self) -> str:
        """``TRITONSERVER_METRIC_KIND_COUNTER`` and so on, as Triton's messages name them."""
        return f"TRITONSERVER_METRIC_KIND_{self.name}"


#: Operations on a metric, each allowed on some kinds (Triton's ``Increment``, ``Set``, ``Observe``, ``Value``).
_ALLOWED = {
    "increment": (MetricKind.COUNTER, MetricKind.GAUGE),
    "set": (MetricKind.GAUGE,),
    "observe": (MetricKind.HISTOGRAM,),
    "value": (MetricKind.COUNTER, MetricKind.GAUGE),
}
_TRITON_OP = {"increment": "Increment", "set": "Set", "observe": "Observe", "value": "Value"}


def update_error(kind: MetricKind, op: str, value: float, metric: str) -> str | None:
    """Why ``op`` (``increment``, ``set``, ``observe``, ``value``) with ``value`` is refused on a metric of
    ``kind``, in Triton's words followed by the metric's name; None when it is allowed.

    Backends whose models run in another process call this before sending an update, so that updates can
    travel without an answer.
    """
    if op not in _ALLOWED:
        return f"unknown metric operation '{op}' (metric {metric})"
    if kind not in _ALLOWED[op]:
        return f"{kind.triton_name} does not support {_TRITON_OP[op]} (metric {metric})"
    if kind is MetricKind.COUNTER and op == "increment" and value < 0:
        return (
            f"{kind.triton_name} can only be incremented monotonically by non-negative values. "
            f"(metric {metric}, value {value:g})"
        )
    return None


def describe(name: str, labels: Labels) -> str:
    """``requests_total{model="m"}``: a series as the metrics endpoint shows it."""
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"'{name}{{{inner}}}'" if inner else f"'{name}'"


@dataclass(eq=False)
class _Series:
    """One series of a family: its value (counter, gauge) or its buckets (histogram)."""

    labels: Labels
    buckets: tuple[float, ...] = ()
    refs: int = 0
    value: float = 0.0
    counts: list[int] = field(default_factory=list)  # one per bucket, then +Inf; not cumulative
    sum: float = 0.0
    count: int = 0


@dataclass(eq=False)
class _Family:
    name: str
    description: str
    kind: MetricKind
    refs: int = 0
    series: dict[Labels, _Series] = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesSnapshot:
    """One series at scrape time; ``buckets`` holds (upper bound, cumulative count) pairs for histograms."""

    labels: Labels
    value: float = 0.0
    buckets: tuple[tuple[float, int], ...] = ()
    sum: float = 0.0
    count: int = 0


@dataclass(frozen=True)
class FamilySnapshot:
    """One family at scrape time, its series sorted by labels."""

    name: str
    description: str
    kind: MetricKind
    series: tuple[SeriesSnapshot, ...]


class Metric:
    """A handle on one series; made by :meth:`MetricFamily.metric`."""

    __slots__ = ("_registry", "family", "_series", "released")

    def __init__(self, registry: CustomMetrics, family: MetricFamily, series: _Series) -> None:
        self._registry = registry
        self.family = family
        self._series = series
        self.released = False

    @property
    def name(self) -> str:
        """The series as the endpoint shows it, for messages: ``'requests_total{model="m"}'``."""
        return describe(self.family.name, self._series.labels)

    def increment(self, value: float) -> None:
        """Add ``value`` (a counter: not negative)."""
        self._update("increment", value)

    def set(self, value: float) -> None:
        """Set a gauge."""
        self._update("set", value)

    def observe(self, value: float) -> None:
        """Count ``value`` in a histogram (in the first bucket whose bound is at least ``value``)."""
        self._update("observe", value)

    def value(self) -> float:
        """The current value of a counter or gauge."""
        with self._registry.lock:
            self._check("value", 0.0)
            return self._series.value

    def release(self) -> None:
        """Drop this handle; the series goes when no handle to it is left."""
        with self._registry.lock:
            self._registry._release_metric(self)

    def _update(self, op: str, value: float) -> None:
        value = float(value)
        series = self._series
        with self._registry.lock:
            self._check(op, value)
            if op == "increment":
                series.value += value
            elif op == "set":
                series.value = value
            else:
                series.counts[bisect.bisect_left(series.buckets, value)] += 1
                series.sum += value
                series.count += 1

    def _check(self, op: str, value: float) -> None:
        if self.family.released:
            raise ConchError(
                "Invalid metric operation as the corresponding 'MetricFamily' has been deleted. The "
                "'MetricFamily' object should be deleted AFTER its corresponding 'Metric' objects have been "
                f"deleted. (metric {self.name})",
                ErrorCode.INVALID_ARG,
            )
        if self.released:
            raise ConchError(f"metric {self.name} has been released", ErrorCode.INVALID_ARG)
        kind = self.family.kind
        if update_error(kind, op, value, "") is not None:  # the series' name only when it is needed
            raise ConchError(update_error(kind, op, value, self.name) or "", ErrorCode.INVALID_ARG)


class MetricFamily:
    """A handle on a family; made by :meth:`CustomMetrics.family`."""

    __slots__ = ("_registry", "_state", "owner", "released", "_metrics")

    def __init__(self, registry: CustomMetrics, state: _Family, owner: Hashable) -> None:
        self._registry = registry
        self._state = state
        self.owner = owner
        self.released = False
        self._metrics: set[Metric] = set()

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def description(self) -> str:
        return self._state.description

    @property
    def kind(self) -> MetricKind:
        return self._state.kind

    def metric(self, labels: Mapping[str, str] | None = None, buckets: Iterable[float] | None = None) -> Metric:
        """A series of this family: ``labels`` name it; a histogram needs ``buckets`` (strictly increasing
        upper bounds, +Inf is implied), the other kinds take none."""
        pairs = self._labels(labels or {})
        bounds = self._buckets(buckets)
        with self._registry.lock:
            self._registry._drain()
            if self.released:
                raise ConchError(f"metric family '{self.name}' has been released", ErrorCode.INVALID_ARG)
            series = self._state.series.get(pairs)
            if series is None:
                series = _Series(pairs, bounds or (), counts=[0] * (len(bounds) + 1) if bounds is not None else [])
                self._state.series[pairs] = series
            series.refs += 1
            metric = Metric(self._registry, self, series)
            self._metrics.add(metric)
            return metric

    def release(self) -> None:
        """Drop this handle and the metrics made from it; the family goes when no handle to it is left."""
        with self._registry.lock:
            self._registry._release_family(self)

    def _labels(self, labels: Mapping[str, str]) -> Labels:
        if not isinstance(labels, Mapping):
            raise ConchError(
                f"labels of a metric of family '{self.name}' must be a mapping of strings, got {type(labels).__name__}",
                ErrorCode.INVALID_ARG,
            )
        for key, value in labels.items():
            if not isinstance(key, str) or not _LABEL.fullmatch(key) or key.startswith("__"):
                raise ConchError(
                    f"Invalid label name {key!r} (metric family '{self.name}'): expected letters, digits and "
                    "underscores, not starting with a digit or '__'",
                    ErrorCode.INVALID_ARG,
                )
            if not isinstance(value, str):
                raise ConchError(
                    f"Invalid label value for {key!r} (metric family '{self.name}'): expected a string, got "
                    f"{type(value).__name__}",
                    ErrorCode.INVALID_ARG,
                )
        return tuple(sorted(labels.items()))

    def _buckets(self, buckets: Iterable[float] | None) -> tuple[float, ...] | None:
        if self.kind is not MetricKind.HISTOGRAM:
            if buckets is not None:
                raise ConchError(
                    f"Unexpected buckets found: metric family '{self.name}' is a {self.kind.value}, only "
                    "histograms have buckets",
                    ErrorCode.INVALID_ARG,
                )
            return None
        if buckets is None:
            raise ConchError(
                f"Missing required buckets: metric family '{self.name}' is a histogram", ErrorCode.INVALID_ARG
            )
        try:
            bounds = tuple(float(b) for b in buckets)
        except (TypeError, ValueError):
            raise ConchError(
                f"buckets of histogram family '{self.name}' must be numbers, got {buckets!r}", ErrorCode.INVALID_ARG
            ) from None
        if any(b >= c for b, c in itertools.pairwise(bounds)) or any(math.isnan(b) for b in bounds):
            raise ConchError(
                f"Bucket Boundaries must be strictly sorted (histogram family '{self.name}', buckets "
                f"{list(bounds)})",
                ErrorCode.INVALID_ARG,
            )
        return bounds


class CustomMetrics:
    """The server's registry of custom metric families."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        #: Guards every family and series; handles take it for each operation.
        self.lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self._owned: dict[Hashable, list[MetricFamily]] = {}
        self._reserved = set(reserved)
        self._later: queue.SimpleQueue[MetricFamily | Metric] = queue.SimpleQueue()

    def reserve(self, names: Iterable[str]) -> None:
        """Names of the server's own families, which custom families may not take."""
        with self.lock:
            self._reserved.update(names)

    def family(self, name: str, description: str, kind: MetricKind | str, owner: Hashable = None) -> MetricFamily:
        """Register a family (or take the existing one of that name and kind); raises ConchError."""
        try:
            kind = MetricKind(kind)
        except ValueError:
            raise ConchError(
                f"Unsupported kind passed to MetricFamily constructor: {kind!r} (metric family '{name}'); expected "
                "counter, gauge or histogram",
                ErrorCode.INVALID_ARG,
            ) from None
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConchError(
                f"Invalid metric name {name!r}: expected letters, digits, underscores and colons, not starting "
                "with a digit",
                ErrorCode.INVALID_ARG,
            )
        with self.lock:
            self._drain()
            if name in self._reserved:
                raise ConchError(
                    f"Family name already exists: '{name}' is one of the server's own metric families",
                    ErrorCode.ALREADY_EXISTS,
                )
            state = self._families.get(name)
            if state is None:
                state = self._families[name] = _Family(name, str(description), kind)
            elif state.kind is not kind:
                raise ConchError(
                    f"Family name already exists with different type: metric family '{name}' is a "
                    f"{state.kind.value}, not a {kind.value}",
                    ErrorCode.INVALID_ARG,
                )
            state.refs += 1
            handle = MetricFamily(self, state, owner)
            self._owned.setdefault(owner, []).append(handle)
            return handle

    def release_owner(self, owner: Hashable) -> None:
        """Drop every family (and metric) handle of ``owner``."""
        with self.lock:
            self._drain()
            for handle in self._owned.pop(owner, []):
                self._release_family(handle)

    def release_later(self, handle: MetricFamily | Metric) -> None:
        """Release a handle soon; safe to call from ``__del__`` or a signal handler (takes no lock)."""
        self._later.put(handle)

    def collect(self) -> list[FamilySnapshot]:
        """Every family with at least one series, by name, for the metrics endpoint."""
        out: list[FamilySnapshot] = []
        with self.lock:
            self._drain()
            for name in sorted(self._families):
                state = self._families[name]
                if not state.series:
                    continue
                rows = [_snapshot(state.series[labels]) for labels in sorted(state.series)]
                out.append(FamilySnapshot(name, state.description, state.kind, tuple(rows)))
        return out

    # -- under the lock ------------------------------------------------------------------------------

    def _drain(self) -> None:
        while not self._later.empty():
            handle = self._later.get_nowait()
            if isinstance(handle, Metric):
                self._release_metric(handle)
            else:
                self._release_family(handle)

    def _release_metric(self, metric: Metric) -> None:
        if metric.released:
            return
        metric.released = True
        metric.family._metrics.discard(metric)
        series = metric._series
        series.refs -= 1
        state = metric.family._state
        if series.refs <= 0 and state.series.get(series.labels) is series:
            del state.series[series.labels]

    def _release_family(self, family: MetricFamily) -> None:
        if family.released:
            return
        for metric in list(family._metrics):
            self._release_metric(metric)
        family.released = True
        owned = self._owned.get(family.owner)
        if owned is not None and family in owned:
            owned.remove(family)
            if not owned:
                del self._owned[family.owner]
        state = family._state
        state.refs -= 1
        if state.refs <= 0 and self._families.get(state.name) is state:
            del self._families[state.name]


def _snapshot(series: _Series) -> SeriesSnapshot:
    if not series.counts:
        return SeriesSnapshot(series.labels, value=series.value)
    running = 0
    buckets: list[tuple[float, int]] = []
    for bound, count in zip((*series.buckets, math.inf), series.counts, strict=True):
        running += count
        buckets.append((bound, running))
    return SeriesSnapshot(series.labels, buckets=tuple(buckets), sum=series.sum, count=series.count)
