"""Triton's trace extension in ``triton`` mode: settings (global and per model), sampling, trace files.

A setting object holds the values and the counters of one configuration, as Triton's ``TraceSetting``:
every update replaces it (the counters start over), a model's setting mirrors the global values it
does not specify. A sampled request carries a :class:`Trace`; each timestamp becomes one entry
``{"id":N,"timestamps":[{"name":..,"ns":..}]}`` (``time.monotonic_ns``, Triton's steady clock), and
the request's entry ``{"id","model_name","model_version"[,"request_id"][,"parent_id"]}`` comes just
before its ``REQUEST_START``. A finished trace is buffered by its setting; every ``log_frequency``
traces (and when ``trace_count`` runs out at rate 1) the buffer goes to ``<trace_file>.<n>``; what is
left when the setting is replaced or the server stops goes there too, or with ``log_frequency`` 0 to
``<trace_file>``. Each write leaves a complete JSON array.

With tracing off the frontends pay one attribute check (:attr:`TraceManager.active`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conch.errors import ConchError, ErrorCode

log = logging.getLogger("conch.trace")

#: Trace level bits (``trace_level`` lists the names; OFF is none of them).
TIMESTAMPS = 1
TENSORS = 2
LEVEL_NAMES = {"TIMESTAMPS": TIMESTAMPS, "TENSORS": TENSORS}

MODE = "triton"
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
MIN_COUNT = -1
FILE_FIXED = "trace file location can not be updated through network protocol"

#: The keys a setting update may name, in the order Triton checks them.
UPDATABLE = ("trace_level", "trace_rate", "trace_count", "log_frequency")
_FIELDS = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count", "log_frequency": "log_frequency"}

_ids = itertools.count(1)

#: Whether any request has been traced since start-up: the scheduler's one check per batch.
EVER_SAMPLED = False


def level_names(level: int) -> list[str]:
    """``trace_level`` as Triton answers it: ``["OFF"]`` or the set levels in its order."""
    if not level:
        return ["OFF"]
    return [name for name, bit in LEVEL_NAMES.items() if level & bit]


def parse_levels(names: list[str]) -> int | None:
    """A ``trace_level`` list as Triton reads it: unknown names are skipped, ``OFF`` must be alone;
    None when no name counts (the level is then left as it is)."""
    level: int | None = None
    for name in names:
        if name == "OFF":
            if len(names) != 1:
                raise ConchError("Expect only one trace level 'OFF' is specified", ErrorCode.INVALID_ARG)
            level = 0
        elif name in LEVEL_NAMES:
            level = (level or 0) | LEVEL_NAMES[name]
    return level


def parse_number(key: str, text: str, grpc: bool = False) -> int:
    """A ``trace_rate``/``trace_count``/``log_frequency`` string as Triton reads it (``std::stoi``:
    leading blanks, a sign, digits, the rest ignored; unsigned settings wrap), with its texts (its
    HTTP and gRPC texts for a count below -1 differ by a space)."""
    stripped = text.lstrip(" \t\n\v\f\r")
    start = 1 if stripped[:1] in ("+", "-") else 0
    end = start
    while end < len(stripped) and "0" <= stripped[end] <= "9":
        end += 1
    if end == start:
        raise ConchError(f"Unable to parse '{key}', got: {text}", ErrorCode.INVALID_ARG)
    value = int(stripped[:end])
    low, high = (MIN_COUNT, INT32_MAX) if key == "trace_count" else (0, UINT32_MAX)
    if not -(2**31) <= value <= INT32_MAX:
        raise ConchError(
            f"Unable to parse '{key}', value is out of range [ {low}, {high} ], got: {text}", ErrorCode.INVALID_ARG
        )
    if key != "trace_count":
        return value & UINT32_MAX
    if value < MIN_COUNT:
        space = " " if grpc else ""
        raise ConchError(
            f"Unable to parse '{key}'. Expecting value >= {MIN_COUNT}, got:{space}{text}", ErrorCode.INVALID_ARG
        )
    return value


def _write_whole(name: str, text: str) -> None:
    """Write a file so that a reader never sees it empty or half written (a temporary file, then rename)."""
    temporary = f"{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    Path(temporary).write_text(text)
    os.replace(temporary, name)


class TraceFile:
    """One trace file: a JSON array kept complete after every write, and its numbered siblings."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._index = itertools.count()
        self._written = False
        self._lock = threading.Lock()

    def save(self, entries: list[str], numbered: bool) -> None:
        """Write traces to ``<name>.<n>`` (the next number) or append them to ``<name>``."""
        body = ",".join(entries)
        try:
            if numbered:
                _write_whole(f"{self.name}.{next(self._index)}", f"[{body}]")
                return
            with self._lock:
                if not self._written:
                    _write_whole(self.name, f"[{body}]")
                    self._written = True
                    return
                with open(self.name, "r+b") as out:
                    out.seek(-1, 2)  # over the closing bracket
                    out.write(f",{body}]".encode())
        except OSError as exc:
            log.error("failed creating trace file: %s", exc)


@dataclass(eq=False)
class TraceSetting:
    """The values of one configuration, which of them were given, and its sampling counters."""

    level: int
    rate: int
    count: int
    log_frequency: int
    file: TraceFile
    specified: frozenset[str] = frozenset()
    sampled: int = 0
    collected: int = 0
    buffer: list[str] = field(default_factory=list)
    retired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def reason(self) -> str:
        """Why this setting samples nothing (Triton's texts), or ""."""
        if not self.level:
            return "tracing is disabled"
        if self.rate == 0:
            return "sample rate must be non-zero"
        if not self.file.name:
            return "trace file name is not given"
        return ""

    def valid(self) -> bool:
        return not self.reason and self.count != 0

    def values(self) -> dict[str, Any]:
        """The settings as ``GET .../trace/setting`` answers them, every value a string."""
        return {
            "trace_level": level_names(self.level),
            "trace_rate": str(self.rate),
            "trace_count": str(self.count),
            "log_frequency": str(self.log_frequency),
            "trace_file": self.file.name,
            "trace_mode": MODE,
        }

    def sample(self) -> bool:
        """Whether the next request is traced: every ``rate``-th one while ``count`` lasts."""
        with self.lock:
            if not self.valid():
                return False
            self.sampled += 1
            if self.sampled % self.rate:
                return False
            if self.count > 0:
                self.count -= 1
            return True

    def collect(self, entries: list[str]) -> None:
        """Keep a finished trace; write the buffer when ``log_frequency`` or the count says so."""
        with self.lock:
            self.buffer.append(",".join(entries))
            self.collected += 1
            # As Triton: a used-up count writes at once only when every request was traced (rate 1).
            due = (self.count == 0 and self.collected == self.sampled) or (
                self.log_frequency != 0 and len(self.buffer) >= self.log_frequency
            )
            if not (due or self.retired):
                return
            pending, self.buffer = self.buffer, []
        self.file.save(pending, numbered=due or self.log_frequency != 0)

    def close(self) -> None:
        """No longer current (replaced or shutting down): write what is buffered, as Triton does."""
        with self.lock:
            self.retired = True
            pending, self.buffer = self.buffer, []
        if pending:
            self.file.save(pending, numbered=self.log_frequency != 0)


class Trace:
    """The trace of one sampled request: its entries in the order they happened."""

    __slots__ = ("id", "setting", "entries", "parent_id")

    def __init__(self, setting: TraceSetting, parent_id: int = 0) -> None:
        global EVER_SAMPLED
        EVER_SAMPLED = True
        self.id = next(_ids)
        self.setting = setting
        self.entries: list[str] = []
        self.parent_id = parent_id

    def stamp(self, name: str, ns: int | None = None) -> None:
        """Record a timestamp (now, unless ``ns`` is given)."""
        when = time.monotonic_ns() if ns is None else ns
        self.entries.append(f'{{"id":{self.id},"timestamps":[{{"name":"{name}","ns":{when}}}]}}')

    def start_request(self, model_name: str, model_version: int, request_id: str) -> None:
        """The request's entry, then ``REQUEST_START``."""
        text = f'{{"id":{self.id},"model_name":{json.dumps(model_name)},"model_version":{model_version}'
        if request_id:
            text += f',"request_id":{json.dumps(request_id)}'
        if self.parent_id:
            text += f',"parent_id":{self.parent_id}'
        self.entries.append(text + "}")
        self.stamp("REQUEST_START")

    def finish(self) -> None:
        """Hand the complete trace to its setting (once)."""
        entries, self.entries = self.entries, []
        if entries:
            self.setting.collect(entries)


class TraceManager:
    """Global and per-model trace settings, and the sampling of requests."""

    def __init__(
        self, level: int = 0, rate: int = 1000, count: int = -1, log_frequency: int = 0, file: str = ""
    ) -> None:
        self._files: dict[str, TraceFile] = {file: TraceFile(file)}
        self._default = TraceSetting(level, rate, count, log_frequency, self._files[file])
        self._global = TraceSetting(level, rate, count, log_frequency, self._files[file])
        self._models: dict[str, TraceSetting] = {}
        self._mirroring: set[str] = set()  # models whose setting takes some values from the global one
        #: Whether any setting may sample: the one check a request pays when tracing is off.
        self.active = self._global.valid()

    def settings(self, model: str = "") -> dict[str, Any]:
        """The setting that applies to ``model`` (the global one for "")."""
        return self._models.get(model, self._global).values()

    def update(self, model: str, changes: dict[str, int | None]) -> None:
        """Apply checked changes (``None`` clears a value back to the fallback), as Triton does:
        a model's update that leaves nothing specified drops its own setting; a global update
        refreshes the models that mirror it."""
        self._update(model, changes)
        if not model:
            for name in sorted(self._mirroring):
                self._update(name, {})
        self._refresh()

    def _refresh(self) -> None:
        self.active = self._global.valid() or any(s.valid() for s in self._models.values())

    def _update(self, model: str, changes: dict[str, int | None]) -> None:
        current = self._models.get(model) if model else self._global
        fallback = self._global if model else self._default
        specified = set(current.specified) if current is not None else set()
        values = {attr: getattr(fallback, attr) for attr in _FIELDS.values()}
        for key, attr in _FIELDS.items():
            if key in changes and changes[key] is None:
                specified.discard(attr)
            elif key in changes:
                specified.add(attr)
                values[attr] = changes[key]
            elif attr in specified and current is not None:
                values[attr] = getattr(current, attr)
        if model:
            if not specified:
                old = self._models.pop(model, None)
                self._mirroring.discard(model)
                if old is not None:
                    old.close()
                return
            if specified == set(_FIELDS.values()):
                self._mirroring.discard(model)
            else:
                self._mirroring.add(model)
        setting = TraceSetting(file=fallback.file, specified=frozenset(specified), **values)
        if setting.level and not setting.valid():
            raise ConchError(f"Attempting to set invalid trace setting :{setting.reason}", ErrorCode.INVALID_ARG)
        old = current
        if model:
            self._models[model] = setting
        else:
            self._global = setting
        if old is not None:
            old.close()

    def sample(self, model: str) -> Trace | None:
        """A trace for the next request to ``model`` if it is to be traced, else None."""
        setting = self._models.get(model, self._global)
        if not setting.level & TIMESTAMPS or not setting.sample():
            return None
        if setting.count == 0:
            self._refresh()
        return Trace(setting)

    def close(self) -> None:
        """Write every buffered trace (at shutdown)."""
        for setting in (self._global, *self._models.values()):
            setting.close()
