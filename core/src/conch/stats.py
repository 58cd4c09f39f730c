"""Per model version inference statistics, in the shape of Triton's statistics extension.

Counters are plain integers updated on the event loop (no locks); a snapshot is taken on demand.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

#: Triton's failure reasons (``nv_inference_request_failure{reason=...}``).
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class ModelStats:
    """Triton's ``$model_stat`` for one model version."""

    keep_samples: ClassVar[bool] = False  # class-wide: set once at start-up when summaries are enabled
    #: Bucket bounds (ms) of the first-response histogram; set once at start-up when it is enabled.
    first_response_buckets_ms: ClassVar[tuple[float, ...] | None] = None

    __slots__ = (
        "last_inference_ms", "inference_count", "execution_count", "success", "fail", "queue",
        "compute_input", "compute_infer", "compute_output", "batches", "failures", "samples",
        "first_response",
    )

    def __init__(self) -> None:
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.batches: dict[int, BatchStats] = {}
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)
        # Recent latencies, kept only when the summary metrics are enabled (``--metrics-config``).
        self.samples: LatencySamples | None = LatencySamples() if ModelStats.keep_samples else None
        buckets = ModelStats.first_response_buckets_ms
        self.first_response: Histogram | None = Histogram(buckets) if buckets else None

    def record_execution(self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One execution of ``requests`` requests holding ``batch_size`` inferences in all.

        As in Triton, the per-request compute durations are cumulative over requests: each request of a
        batch spent the batch's time (``batch_stats`` keep the time once per batch).
        """
        self.execution_count += 1
        self.inference_count += batch_size
        self.last_inference_ms = time.time_ns() // 1_000_000
        # Durations updated in place (no method calls): this runs for every execution.
        duration = self.compute_input
        duration.count += requests
        duration.ns += input_ns * requests
        duration = self.compute_infer
        duration.count += requests
        duration.ns += infer_ns * requests
        duration = self.compute_output
        duration.count += requests
        duration.ns += output_ns * requests
        batch = self.batches.get(batch_size)
        if batch is None:
            batch = self.batches[batch_size] = BatchStats()
        duration = batch.compute_input
        duration.count += 1
        duration.ns += input_ns
        duration = batch.compute_infer
        duration.count += 1
        duration.ns += infer_ns
        duration = batch.compute_output
        duration.count += 1
        duration.ns += output_ns
        if self.samples is not None:
            self.samples.add_execution(input_ns, infer_ns, output_ns)

    def record_request(self, ok: bool, total_ns: int, queue_ns: int) -> None:
        if ok:
            duration = self.success
            duration.count += 1
            duration.ns += total_ns
            duration = self.queue
            duration.count += 1
            duration.ns += queue_ns
            if self.samples is not None:
                self.samples.add_request(total_ns, queue_ns)
            if self.first_response is not None:
                self.first_response.observe(total_ns / 1e6)
        else:
            self.fail.add(total_ns)
            self.failures["BACKEND"] += 1

    def record_failure(self, reason: str, total_ns: int) -> None:
        """A request that failed before execution (``REJECTED``: queue full or timeout; ``CANCELED``)."""
        self.fail.add(total_ns)
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_dict(),
                    "compute_infer": b.compute_infer.as_dict(),
                    "compute_output": b.compute_output.as_dict(),
                }
                for size, b in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }


class Histogram:
    """Counts per bucket (upper bounds, plus +Inf last), their sum and count: a Prometheus histogram."""

    __slots__ = ("bounds", "counts", "total", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, cumulative, ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, None), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound is None else f"{bound:g}", running))
        return out


class LatencySamples:
    """The most recent latencies (ns) per kind, for the summary metrics' quantiles."""

    KINDS = ("request", "queue", "compute_input", "compute_infer", "compute_output")

    def __init__(self, keep: int = 4096) -> None:
        self.recent: dict[str, deque[int]] = {kind: deque(maxlen=keep) for kind in self.KINDS}
        self.totals: dict[str, Duration] = {kind: Duration() for kind in self.KINDS}

    def _add(self, kind: str, ns: int) -> None:
        self.recent[kind].append(ns)
        self.totals[kind].add(ns)

    def add_request(self, total_ns: int, queue_ns: int) -> None:
        self._add("request", total_ns)
        self._add("queue", queue_ns)

    def add_execution(self, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self._add("compute_input", input_ns)
        self._add("compute_infer", infer_ns)
        self._add("compute_output", output_ns)
