"""The plugin manager: built-ins registered as plugins, entry points loaded one by one.

A plugin that fails to import, or whose ``conch_register_backends`` raises, is recorded with its
error and logged; every other plugin still loads.
"""

from __future__ import annotations

import importlib
import logging
import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from conch import hookspecs
from conch.backend import Backend

log = logging.getLogger("conch.plugins")

ENTRY_POINT_GROUP = "conch.backends"
#: Set to 1 to load no entry-point plugins (built-ins still load).
DISABLE_AUTOLOAD_ENV = "CONCH_DISABLE_PLUGIN_AUTOLOAD"
#: Modules registered as plugins before any entry point, exactly like third-party ones.
BUILTIN_PLUGINS = ("conch.backends.identity", "conch.backends.configure")


@dataclass
class PluginRecord:
    """What ``conch plugins`` and ``GET /conch/plugins`` show about one plugin."""

    name: str
    module: str
    source: str  # "builtin" or "entry point"
    distribution: str = ""
    version: str = ""
    status: str = "loaded"  # "loaded", "failed" or "blocked"
    error: str = ""
    backends: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "source": self.source,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "backends": self.backends,
            "info": self.info,
        }


class Plugins:
    """Owns the pluggy manager, the plugin records and the backend table."""

    def __init__(self, blocked: set[str] | None = None) -> None:
        self.pm = pluggy.PluginManager("conch")
        self.pm.add_hookspecs(hookspecs)
        self.records: list[PluginRecord] = []
        self.blocked = set(blocked or ())
        self._backends: dict[str, Backend] | None = None

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def load(self, autoload: bool | None = None) -> None:
        """Register built-ins, then every ``conch.backends`` entry point (unless autoload is off)."""
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self.pm.register(module, name=module_name)
            self.records.append(PluginRecord(name=module_name.rsplit(".", 1)[-1], module=module_name, source="builtin"))
        if autoload is None:
            autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("1", "true", "yes")
        if autoload:
            for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
                self._load_entry_point(entry_point)

    def _load_entry_point(self, entry_point: metadata.EntryPoint) -> None:
        dist = entry_point.dist
        record = PluginRecord(
            name=entry_point.name,
            module=entry_point.value,
            source="entry point",
            distribution=dist.name if dist else "",
            version=dist.version if dist else "",
        )
        self.records.append(record)
        if entry_point.name in self.blocked:
            record.status = "blocked"
            log.info("plugin '%s' blocked by configuration", entry_point.name)
            return
        if self.pm.has_plugin(entry_point.name):
            record.status = "failed"
            record.error = f"a plugin named '{entry_point.name}' is already registered"
            log.error("plugin '%s' from '%s' not loaded: %s", entry_point.name, record.distribution, record.error)
            return
        try:
            plugin: ModuleType | Any = entry_point.load()
            self.pm.register(plugin, name=entry_point.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must never stop the others
            record.status = "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            log.error(
                "failed to load plugin '%s' (package '%s', %s): %s",
                entry_point.name,
                record.distribution or "?",
                entry_point.value,
                record.error,
            )
            log.debug("%s", traceback.format_exc())

    def backends(self) -> dict[str, Backend]:
        """Backends by name, from every plugin's ``conch_register_backends``; computed once."""
        if self._backends is not None:
            return self._backends
        table: dict[str, Backend] = {}
        for impl in reversed(self.pm.hook.conch_register_backends.get_hookimpls()):
            record = self._record_for(impl.plugin_name)
            try:
                provided: list[Any] = list(impl.function() or [])  # type: ignore[call-overload]
            except Exception as exc:  # noqa: BLE001
                if record:
                    record.status = "failed"
                    record.error = f"conch_register_backends raised {type(exc).__name__}: {exc}"
                log.error("plugin '%s' failed to register its backends: %s", impl.plugin_name, exc)
                continue
            for backend in provided:
                if not isinstance(backend, Backend) or not backend.name:
                    log.error("plugin '%s' returned %r, which is not a named conch.Backend", impl.plugin_name, backend)
                    continue
                if backend.name in table:
                    log.error(
                        "backend '%s' from plugin '%s' ignored: already provided by another plugin",
                        backend.name,
                        impl.plugin_name,
                    )
                    continue
                table[backend.name] = backend
                if record:
                    record.backends.append(backend.name)
        self._backends = table
        return table

    def _record_for(self, plugin_name: str) -> PluginRecord | None:
        for record in self.records:
            if record.module == plugin_name or record.name == plugin_name:
                return record
        return None

    def describe(self) -> list[dict[str, Any]]:
        """Every plugin record, with each loaded plugin's ``conch_plugin_info``."""
        backends = self.backends()
        out = []
        for record in self.records:
            plugin = self.pm.get_plugin(record.module if record.source == "builtin" else record.name)
            if plugin is not None and hasattr(plugin, "conch_plugin_info"):
                try:
                    record.info = plugin.conch_plugin_info() or {}
                except Exception as exc:  # noqa: BLE001
                    record.info = {"error": str(exc)}
            entry = record.as_dict()
            entry["backend_details"] = [backends[name].describe() for name in record.backends if name in backends]
            out.append(entry)
        return out
