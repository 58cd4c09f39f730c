"""Built-in plugin: hands each backend its ``--backend-config`` settings."""

from __future__ import annotations

from conch.backend import Backend
from conch.hookimpl import hookimpl


@hookimpl
def conch_configure_backend(backend: Backend, settings: dict[str, str]) -> None:
    backend.configure(settings)
