"""The worker's reading role (conch_python.reading): main thread while idle, helper thread when needed."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from conch_python.reading import NOT_WORK, Inbox


class FakeChannel:
    """Messages a test feeds; records which thread read each one."""

    def __init__(self) -> None:
        self.incoming: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.readers: list[tuple[str, str]] = []

    def recv(self) -> tuple[Any, ...]:
        message = self.incoming.get()
        self.readers.append((message[0], threading.current_thread().name))
        return message


def make_inbox() -> tuple[Inbox, FakeChannel, dict[int, Any], list[tuple[Any, ...]]]:
    channel = FakeChannel()
    pending: dict[int, Any] = {}
    dispatched: list[tuple[Any, ...]] = []

    def take(message: tuple[Any, ...]) -> Any:
        if message[0] == "exec":
            return message[1]
        if message[0] == "fin":
            return None
        dispatched.append(message)
        if message[0] == "reply":
            pending.pop(message[1], None)
        return NOT_WORK

    inbox = Inbox(channel, take, pending)  # type: ignore[arg-type]
    threading.Thread(target=inbox.help_forever, name="helper", daemon=True).start()
    return inbox, channel, pending, dispatched


def later(channel: FakeChannel, message: tuple[Any, ...]) -> None:
    """Feed ``message`` a little later, once the main thread waits for work."""
    threading.Timer(0.05, channel.incoming.put, args=(message,)).start()


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_an_idle_main_thread_reads_its_own_work() -> None:
    inbox, channel, _, dispatched = make_inbox()
    for message in (("ping",), ("exec", 1), ("exec", 2), ("fin",)):
        channel.incoming.put(message)
    assert inbox.next_work() == 1
    inbox.done()
    assert inbox.next_work() == 2
    inbox.done()
    assert inbox.next_work() is None
    assert dispatched == [("ping",)]
    assert {name for _, name in channel.readers} == {"MainThread"}


def test_answers_needed_during_an_execution_are_read_by_the_helper_then_reading_comes_back() -> None:
    inbox, channel, pending, dispatched = make_inbox()
    channel.incoming.put(("exec", 1))
    assert inbox.next_work() == 1
    # The execution waits for an answer: the helper reads it.
    pending[7] = object()
    inbox.need_reader()
    channel.incoming.put(("reply", 7))
    wait_for(lambda: not pending)
    assert channel.readers[-1] == ("reply", "helper")
    inbox.done()
    # The helper still reads; the next execution comes through it, with the reading role.
    later(channel, ("exec", 2))
    assert inbox.next_work() == 2
    inbox.done()
    assert channel.readers[-1] == ("exec", "helper")
    later(channel, ("exec", 3))
    assert inbox.next_work() == 3
    assert channel.readers[-1] == ("exec", "MainThread")
    assert dispatched == [("reply", 7)]


def test_a_long_execution_still_has_its_pings_read() -> None:
    inbox, channel, _, dispatched = make_inbox()
    channel.incoming.put(("exec", 1))
    assert inbox.next_work() == 1
    channel.incoming.put(("ping",))  # nobody asked for a reader: the helper notices the long execution
    wait_for(lambda: dispatched == [("ping",)])
    assert channel.readers[-1] == ("ping", "helper")
    # Work the helper reads while the main thread is still busy waits in the queue, in order.
    channel.incoming.put(("exec", 2))
    channel.incoming.put(("exec", 3))
    wait_for(lambda: len(channel.readers) == 4)
    inbox.done()
    assert inbox.next_work() == 2
    inbox.done()
    assert inbox.next_work() == 3
    inbox.done()


def test_answers_still_due_keep_the_helper_reading() -> None:
    inbox, channel, pending, _ = make_inbox()
    pending[1] = object()  # e.g. a decoupled BLS stream that outlives its execution
    inbox.need_reader()
    channel.incoming.put(("exec", 1))
    assert inbox.next_work() == 1
    inbox.done()
    later(channel, ("exec", 2))
    assert inbox.next_work() == 2
    inbox.done()
    assert [name for _, name in channel.readers] == ["helper", "helper"]
    pending.clear()
    later(channel, ("exec", 3))
    assert inbox.next_work() == 3  # handed over now that nothing is due
    inbox.done()
    later(channel, ("exec", 4))
    assert inbox.next_work() == 4
    assert channel.readers[-1] == ("exec", "MainThread")
