"""Schedulers: how requests queued for a model version reach its instances."""

from conch.scheduling.base import Scheduler
from conch.scheduling.default import DefaultScheduler
from conch.scheduling.runner import InstanceRunner

__all__ = ["DefaultScheduler", "InstanceRunner", "Scheduler"]
