"""The scheduler interface every scheduling policy implements."""

from __future__ import annotations

import abc

from conch.inference import InferenceRequest


class Scheduler(abc.ABC):
    """Owns a model version's queue and hands requests to its instances."""

    @abc.abstractmethod
    def enqueue(self, request: InferenceRequest) -> None:
        """Accept a validated request; its responses go to ``request.stream``. Never blocks."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start dispatching (called once the instances exist)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Finish what is queued and executing, then stop dispatching."""

    @property
    @abc.abstractmethod
    def pending(self) -> int:
        """Requests queued and not yet executing."""
