"""Who reads the worker's control socket: the main thread while it waits for work, else a helper thread.

An execution should start on the main thread straight from the socket, without a hand-over between
threads (a thread wake-up and a GIL transfer per request). So the main thread reads the socket itself
whenever it has nothing to execute. While it executes, nobody reads, unless someone waits for an answer
from the server (BLS, cancellation, model control, metrics: see :meth:`Inbox.need_reader`) or the
execution runs long enough that health pings must be answered: then the helper thread reads. It queues
the executions it reads for the main thread, and gives the reading back with the next execution once
the main thread is idle and no answer is pending.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sized
from typing import Any

from conch_python.wire import Channel

#: How often the idle helper looks whether a long execution leaves pings unanswered (seconds).
WATCH_S = 0.1

_MAIN, _HELPER, _NOBODY = "main", "helper", "nobody"

#: What ``take`` returns for a message that is not work for the main thread (it was dispatched).
NOT_WORK: Any = object()


class Inbox:
    """The reading role and the queue of executions between the helper and the main thread.

    ``take(message)`` turns a message into work for the main thread (an execution, or None to finish)
    or dispatches it and returns :data:`NOT_WORK`; ``pending`` holds the answers someone waits for.
    """

    def __init__(self, channel: Channel, take: Callable[[tuple[Any, ...]], Any], pending: Sized) -> None:
        self.channel = channel
        self.take = take
        self.pending = pending
        self.work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._reader = _NOBODY
        self._main_waiting = False
        self._wake = threading.Event()
        self._busy_since = 0.0  # when the main thread's current execution began (0: idle)

    def need_reader(self) -> None:
        """Someone is about to wait for the server's answer: make sure some thread reads."""
        with self._lock:
            if self._reader is _NOBODY:
                self._reader = _HELPER
                self._wake.set()

    # -- the main thread ----------------------------------------------------------------------------

    def next_work(self) -> Any:
        """The next execution for the main thread, read from the socket itself when it may."""
        while True:
            with self._lock:
                if not self.work.empty():
                    item = self.work.get_nowait()
                    reading = False
                elif self._reader is _HELPER:
                    self._main_waiting = True
                    item = NOT_WORK
                    reading = False
                else:
                    self._reader = _MAIN
                    reading = True
            if not reading:
                if item is NOT_WORK:
                    item = self.work.get()
                    with self._lock:
                        self._main_waiting = False
                return self._begin(item)
            item = self.take(self.channel.recv())
            if item is not NOT_WORK:
                with self._lock:
                    if self.pending:  # answers still due while the main thread executes: the helper reads
                        self._reader = _HELPER
                        self._wake.set()
                    else:
                        self._reader = _NOBODY
                return self._begin(item)

    def _begin(self, item: Any) -> Any:
        self._busy_since = time.monotonic()
        return item

    def done(self) -> None:
        """The main thread finished an execution."""
        self._busy_since = 0.0

    # -- the helper thread ------------------------------------------------------------------------

    def help_forever(self) -> None:
        """The helper thread: read while needed; raises ChannelClosed when the server is gone."""
        while True:
            self._wake.wait(WATCH_S)
            with self._lock:
                self._wake.clear()
                busy = self._busy_since
                if self._reader is _NOBODY and busy and time.monotonic() - busy > WATCH_S:
                    self._reader = _HELPER  # a long execution: pings must still be answered
                if self._reader is not _HELPER:
                    continue
            self._read_while_needed()

    def _read_while_needed(self) -> None:
        while True:
            item = self.take(self.channel.recv())
            if item is NOT_WORK:
                continue
            with self._lock:
                self.work.put(item)
                if self._main_waiting and not self.pending:
                    self._reader = _NOBODY  # the main thread reads again after this execution
                    return
