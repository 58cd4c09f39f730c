"""The dynamic batcher's queue: priority levels, each with Triton's queue policy (timeouts, size limit).

Order of service is level 1 (highest) first; within a level, requests in arrival order, then the
requests whose timeout expired under the DELAY action. A request that has waited longer than the
aging limit moves ahead of every level, so no level starves forever (Conch's addition; Triton's
priorities are strict).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelDynamicBatching, ModelQueuePolicy

_DELAY_ACTION = 1  # ModelQueuePolicy.TimeoutAction.DELAY


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ``ModelQueuePolicy`` for one priority level."""

    delay_on_timeout: bool = False  # timeout_action DELAY; REJECT otherwise
    default_timeout_us: int = 0  # 0: no timeout
    allow_timeout_override: bool = False
    max_queue_size: int = 0  # 0: unlimited

    @classmethod
    def from_proto(cls, policy: ModelQueuePolicy) -> QueuePolicy:
        return cls(
            delay_on_timeout=policy.timeout_action == _DELAY_ACTION,
            default_timeout_us=int(policy.default_timeout_microseconds),
            allow_timeout_override=bool(policy.allow_timeout_override),
            max_queue_size=int(policy.max_queue_size),
        )

    def timeout_us(self, requested_us: int) -> int:
        """The timeout a request gets: a request may shorten the default (when allowed), never lengthen it."""
        if self.allow_timeout_override and 0 < requested_us < self.default_timeout_us:
            return requested_us
        return self.default_timeout_us


@dataclass(slots=True, eq=False)
class Entry:
    """A queued request and what the batcher needs to know about it."""

    request: InferenceRequest
    size: int  # rows it adds to a batch: max(batch size, 1)
    shape_key: Any  # requests batch together only when their keys are equal
    enqueued_ns: int
    deadline_ns: int  # 0: none
    level: int
    aged: bool = False  # moved ahead of every level by the aging rule


class _Level:
    __slots__ = ("policy", "queue", "delayed")

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self.queue: deque[Entry] = deque()
        self.delayed: deque[Entry] = deque()

    def __len__(self) -> int:
        return len(self.queue) + len(self.delayed)


def _int_parameter(request: InferenceRequest, key: str) -> int:
    value = request.parameters.get(key, 0)
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


class PriorityQueue:
    """Every queued request of one model version, by priority level."""

    def __init__(self, batching: ModelDynamicBatching | None = None, aging_ns: int = 0) -> None:
        default = QueuePolicy.from_proto(batching.default_queue_policy) if batching is not None else QueuePolicy()
        self.level_count = int(batching.priority_levels) if batching is not None else 0
        default_level = int(batching.default_priority_level) if batching is not None else 0
        if self.level_count and not 1 <= default_level <= self.level_count:
            default_level = self.level_count
        self.default_level = default_level if self.level_count else 0
        levels = range(1, self.level_count + 1) if self.level_count else [0]
        specific = dict(batching.priority_queue_policy) if batching is not None else {}
        self._levels = {
            level: _Level(QueuePolicy.from_proto(specific[level]) if level in specific else default) for level in levels
        }
        self._order = sorted(self._levels)
        self._aged: deque[Entry] = deque()
        self.aging_ns = aging_ns
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def level_of(self, request: InferenceRequest) -> int:
        """Triton's rule: priority 0, or one beyond the configured levels, means the default level."""
        if not self.level_count:
            return 0
        priority = _int_parameter(request, "priority")
        return priority if 1 <= priority <= self.level_count else self.default_level

    def push(self, request: InferenceRequest, size: int, shape_key: Any, now_ns: int) -> Entry:
        """Queue a request; a full level raises Triton's ``Exceeds maximum queue size`` (UNAVAILABLE)."""
        level_number = self.level_of(request)
        level = self._levels[level_number]
        policy = level.policy
        if policy.max_queue_size and len(level) >= policy.max_queue_size:
            raise ConchError(f"{request.log_prefix}Exceeds maximum queue size", ErrorCode.UNAVAILABLE)
        timeout_us = policy.timeout_us(_int_parameter(request, "timeout"))
        deadline = now_ns + timeout_us * 1000 if timeout_us else 0
        entry = Entry(request, size, shape_key, now_ns, deadline, level_number)
        level.queue.append(entry)
        self._size += 1
        return entry

    def apply_policies(self, now_ns: int) -> tuple[list[Entry], list[Entry]]:
        """Drop cancelled requests and act on expired timeouts; returns (rejected, cancelled)."""
        rejected: list[Entry] = []
        cancelled: list[Entry] = []
        for number in self._order:
            level = self._levels[number]
            if not level.queue:
                continue
            kept: deque[Entry] = deque()
            for entry in level.queue:
                stream = entry.request.stream
                if stream is not None and stream.cancelled:
                    cancelled.append(entry)
                elif entry.deadline_ns and now_ns > entry.deadline_ns:
                    if level.policy.delay_on_timeout:
                        entry.deadline_ns = 0
                        level.delayed.append(entry)
                    else:
                        rejected.append(entry)
                elif self.aging_ns and number != self._order[0] and now_ns - entry.enqueued_ns > self.aging_ns:
                    entry.aged = True
                    self._aged.append(entry)
                else:
                    kept.append(entry)
            level.queue = kept
        for number in self._order:
            level = self._levels[number]
            if level.delayed:
                level.delayed = _without_cancelled(level.delayed, cancelled)
        if self._aged:
            self._aged = _without_cancelled(self._aged, cancelled)
        self._size -= len(rejected) + len(cancelled)
        return rejected, cancelled

    def ordered(self) -> Iterator[Entry]:
        """Every queued request in order of service."""
        yield from self._aged
        for number in self._order:
            level = self._levels[number]
            yield from level.queue
            yield from level.delayed

    def take(self, count: int) -> list[Entry]:
        """Remove and return the first ``count`` requests in order of service."""
        taken: list[Entry] = []
        sources = [self._aged]
        for number in self._order:
            sources += [self._levels[number].queue, self._levels[number].delayed]
        for source in sources:
            while source and len(taken) < count:
                taken.append(source.popleft())
            if len(taken) == count:
                break
        self._size -= len(taken)
        return taken

    def next_deadline(self) -> int:
        """The earliest timeout or aging point among queued requests (0: none)."""
        soonest = 0
        for number in self._order:
            level = self._levels[number]
            if not level.queue:
                continue
            for entry in level.queue:
                if entry.deadline_ns and (not soonest or entry.deadline_ns < soonest):
                    soonest = entry.deadline_ns
            if self.aging_ns and number != self._order[0]:
                aging_at = level.queue[0].enqueued_ns + self.aging_ns + 1
                if not soonest or aging_at < soonest:
                    soonest = aging_at
        return soonest


def _without_cancelled(entries: deque[Entry], cancelled: list[Entry]) -> deque[Entry]:
    """``entries`` minus those whose client cancelled; those are appended to ``cancelled``."""
    kept: deque[Entry] = deque()
    for entry in entries:
        stream = entry.request.stream
        (cancelled if stream is not None and stream.cancelled else kept).append(entry)
    return kept
