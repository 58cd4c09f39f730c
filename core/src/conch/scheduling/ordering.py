"""``preserve_ordering``: responses leave in the order their requests were dispatched.

Each dispatched request's stream is replaced by a stand-in that hands responses to the orderer; the
orderer forwards a request's responses once every earlier request has sent its final response.
"""

from __future__ import annotations

import asyncio

from conch.inference import InferenceRequest, InferenceResponse, ResponseStream, call_on_loop


class _OrderedStream(ResponseStream):
    """Stands in for a request's stream; responses go through the orderer."""

    def __init__(self, inner: ResponseStream, ticket: int, orderer: ResponseOrderer) -> None:  # noqa: D107
        # The base class's queue is not used: responses reach the inner stream the frontend awaits.
        self.inner = inner
        self.ticket = ticket
        self.orderer = orderer

    @property
    def cancelled(self) -> bool:
        return self.inner.cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        self.inner.cancelled = value

    def send(self, response: InferenceResponse) -> None:
        call_on_loop(self.orderer.loop, self.orderer.deliver, self.ticket, response)


class ResponseOrderer:
    """Holds back responses of later requests until earlier ones are complete."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._next_ticket = 0
        self._head = 0
        self._streams: dict[int, ResponseStream] = {}
        self._held: dict[int, list[InferenceResponse]] = {}

    def attach(self, request: InferenceRequest) -> None:
        """Give a request its place in the order (call in dispatch order, on the loop)."""
        assert request.stream is not None
        ticket = self._next_ticket
        self._next_ticket += 1
        self._streams[ticket] = request.stream
        request.stream = _OrderedStream(request.stream, ticket, self)

    def deliver(self, ticket: int, response: InferenceResponse) -> None:
        if ticket != self._head:
            self._held.setdefault(ticket, []).append(response)
            return
        self._streams[ticket].send(response)
        if response.final:
            self._advance()

    def _advance(self) -> None:
        del self._streams[self._head]
        self._head += 1
        while self._head in self._held:
            responses = self._held.pop(self._head)
            stream = self._streams[self._head]
            finished = False
            for response in responses:
                stream.send(response)
                finished = finished or response.final
            if not finished:
                return
            del self._streams[self._head]
            self._head += 1
