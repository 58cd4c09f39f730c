"""The model manager: model versions, their states, loading and unloading, and lookup for requests.

Each model name has a :class:`ModelEntry`; each loaded version a :class:`ModelVersion` with its
instances and scheduler. Loading reads and completes the config, creates instances in parallel and
starts the scheduler; a failure leaves the version UNAVAILABLE with its reason while every other
model serves. The control mode decides which models load at start-up and whether the repository API
may load and unload; the same ``load``/``unload`` serve all modes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conch.backend import Backend, InstanceContext, ModelContext
from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest
from conch.scheduling import DefaultScheduler, InstanceRunner, Scheduler
from conch.stats import ModelStats
from conch.tensors import config_to_protocol
from conch.validation import Signature, validate

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig
    from conch.plugins import Plugins
    from conch.repository import ModelLocation, Repository

log = logging.getLogger("conch.models")

KIND_NAMES = {1: "GPU", 2: "CPU", 3: "MODEL"}


class ModelState(str, enum.Enum):
    UNKNOWN = "UNKNOWN"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ManagerOptions:
    control_mode: str = "none"  # none | explicit | poll
    startup_models: list[str] = field(default_factory=list)  # --load-model
    auto_complete: bool = True
    config_name: str | None = None
    load_thread_count: int = 4
    default_max_batch_size: int = 4
    gpu_count: int = 0
    backend_settings: dict[str, dict[str, str]] = field(default_factory=dict)  # "" holds global keys


class ModelVersion:
    """One version of a model: config, instances, scheduler, state."""

    def __init__(self, entry: ModelEntry, version: int, config: ModelConfig, backend: Backend | None) -> None:
        self.entry = entry
        self.name = entry.name
        self.version = version
        self.label = str(version)
        self.config = config
        self.backend = backend
        self.signature = Signature.from_config(config)
        self.decoupled = config.model_transaction_policy.decoupled
        self.state = ModelState.UNKNOWN
        self.reason = ""
        self.runners: list[InstanceRunner] = []
        self.scheduler: Scheduler | None = None
        self.load_seconds = 0.0
        self.stats = ModelStats()
        self.service: Any = None  # the InferenceService, handed to backends through ModelContext.server

    def is_ready(self) -> bool:
        return self.state is ModelState.READY and all(runner.is_ready() for runner in self.runners)

    def not_ready_reason(self) -> str:
        """Why a READY version's instances are not ready (e.g. a worker being restarted)."""
        reasons = [
            runner.instance.not_ready_reason()
            for runner in self.runners
            if runner.instance is not None and not runner.is_ready()
        ]
        return "; ".join(r for r in reasons if r)

    def submit(self, request: InferenceRequest) -> None:
        """Validate and enqueue; raises ConchError for a bad request."""
        validate(request, self.signature)
        request.version_label = self.label
        assert self.scheduler is not None
        self.scheduler.enqueue(request)

    def metadata(self) -> dict[str, Any]:
        config = self.config
        batch = [-1] if config.max_batch_size > 0 else []

        def tensor(t: Any) -> dict[str, Any]:
            return {"name": t.name, "datatype": config_to_protocol(t.data_type), "shape": batch + [int(d) for d in t.dims]}

        return {
            "name": self.name,
            "versions": [str(v) for v in self.entry.ready_versions()],
            "platform": config.platform or config.backend,
            "inputs": [tensor(t) for t in config.input],
            "outputs": [tensor(t) for t in config.output],
        }

    def _instance_contexts(self, model_dir: Path, settings: dict[str, str]) -> list[InstanceContext]:
        model = ModelContext(self.name, self.version, model_dir, self.config, settings, server=self.service)
        contexts: list[InstanceContext] = []
        for group in self.config.instance_group:
            kind = KIND_NAMES.get(group.kind, "CPU")
            devices = list(group.gpus) if kind == "GPU" and group.gpus else [0]
            for device in devices:
                for _ in range(group.count):
                    index = len(contexts)
                    name = f"{group.name}_{index}"
                    contexts.append(InstanceContext(model, name, group.name, index, kind, device))
        return contexts

    async def load(self, model_dir: Path, settings: dict[str, str]) -> None:
        """Create every instance (in parallel) and start the scheduler."""
        started = time.monotonic()
        assert self.backend is not None
        self.runners = [InstanceRunner(self.backend, ctx, self.stats) for ctx in self._instance_contexts(model_dir, settings)]
        results = await asyncio.gather(*(runner.create() for runner in self.runners), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self._release()
            raise errors[0]
        self.scheduler = self._make_scheduler()
        await self.scheduler.start()
        self.load_seconds = time.monotonic() - started

    def _make_scheduler(self) -> Scheduler:
        """The dynamic batcher when the config asks for it; otherwise Triton's default scheduler."""
        if self.config.HasField("dynamic_batching") and self.backend is not None:
            from conch.backend import Batching
            from conch.scheduling.dynamic import DynamicBatcher

            concatenate = self.backend.batching is Batching.CONCATENATE
            return DynamicBatcher(self.runners, self.config, self.stats, concatenate=concatenate)
        return DefaultScheduler(self.runners)

    async def unload(self) -> None:
        """Finish queued and executing requests, then release the instances."""
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self._release()

    async def _release(self) -> None:
        runners, self.runners = self.runners, []
        await asyncio.gather(*(runner.unload() for runner in runners))


class ModelEntry:
    """A model name: where it lives and its versions."""

    def __init__(self, name: str, location: ModelLocation | None) -> None:
        self.name = name
        self.location = location
        self.versions: dict[int, ModelVersion] = {}
        self.state = ModelState.UNKNOWN  # the model's own state when no version could be created
        self.reason = ""
        self.lock = asyncio.Lock()  # one load or unload of a model at a time

    def ready_versions(self) -> list[int]:
        return sorted(v for v, mv in self.versions.items() if mv.state is ModelState.READY)


class ModelManager:
    """Loads, unloads and looks up models."""

    def __init__(self, repository: Repository, plugins: Plugins, options: ManagerOptions) -> None:
        self.repository = repository
        self.plugins = plugins
        self.options = options
        self.entries: dict[str, ModelEntry] = {}
        self.service: Any = None  # set by the InferenceService built over this manager
        self._load_slots = asyncio.Semaphore(max(1, options.load_thread_count))

    # -- start-up and shutdown ----------------------------------------------------------------

    async def load_startup_models(self) -> None:
        """Scan the repositories and load what the control mode says, in parallel."""
        locations, unavailable = self.repository.scan()
        for name, reason in unavailable.items():
            entry = self.entries.setdefault(name, ModelEntry(name, None))
            entry.state, entry.reason = ModelState.UNAVAILABLE, reason
        for name, location in locations.items():
            self.entries.setdefault(name, ModelEntry(name, location))
        if self.options.control_mode == "explicit":
            wanted = self.options.startup_models
            names = sorted(locations) if wanted == ["*"] else wanted
        else:
            names = sorted(locations)
        await asyncio.gather(*(self.load(name) for name in names))

    async def unload_all(self) -> None:
        await asyncio.gather(*(self.unload(name) for name in list(self.entries)))

    # -- load and unload ----------------------------------------------------------------------

    async def load(self, name: str) -> ModelEntry:
        """Load (or reload) every version the policy selects; failures are recorded, not raised."""
        entry = self.entries.get(name)
        if entry is None or entry.location is None:
            entry = self.entries.setdefault(name, ModelEntry(name, None))
            if not entry.reason:
                entry.state, entry.reason = ModelState.UNAVAILABLE, f"failed to load '{name}', no model in repository"
            return entry
        async with entry.lock, self._load_slots:
            await self._load_entry(entry)
        return entry

    async def _load_entry(self, entry: ModelEntry) -> None:
        from conch.config import load_model_config

        assert entry.location is not None
        model_dir = entry.location.path
        entry.state, entry.reason = ModelState.LOADING, ""
        try:
            config, backend = await asyncio.to_thread(
                load_model_config,
                model_dir,
                plugins=self.plugins,
                auto_complete=self.options.auto_complete,
                config_name=self.options.config_name,
                default_max_batch_size=self.options.default_max_batch_size,
                gpu_count=self.options.gpu_count,
            )
            if backend is None:
                raise ConchError(f"ensemble models are not supported yet (model '{entry.name}')", ErrorCode.UNSUPPORTED)
            available = await asyncio.to_thread(self.repository.versions, model_dir)
            selected = self.repository.select_versions(config, available)
        except Exception as exc:  # noqa: BLE001 - a bad model is UNAVAILABLE, never fatal to others
            entry.state, entry.reason = ModelState.UNAVAILABLE, _reason(exc)
            log.error("failed to load '%s': %s", entry.name, entry.reason)
            return
        entry.state = ModelState.UNKNOWN
        settings = self._settings_for(backend)
        old = entry.versions
        entry.versions = dict(old)
        for version in selected:
            await self._load_version(entry, version, config, backend, model_dir, settings)
        for version in set(old) - set(selected):
            await self._unload_version(entry.versions.pop(version))

    async def _load_version(
        self,
        entry: ModelEntry,
        version: int,
        config: ModelConfig,
        backend: Backend,
        model_dir: Path,
        settings: dict[str, str],
    ) -> None:
        previous = entry.versions.get(version)
        model = ModelVersion(entry, version, config, backend)
        model.service = self.service
        self._set_state(model, ModelState.LOADING, "")
        if previous is None:
            entry.versions[version] = model
        try:
            await model.load(model_dir, settings)
        except Exception as exc:  # noqa: BLE001
            self._set_state(model, ModelState.UNAVAILABLE, _reason(exc))
            log.error("failed to load '%s' version %d: %s", entry.name, version, model.reason)
            if previous is None:
                entry.versions[version] = model
            return
        entry.versions[version] = model
        self._set_state(model, ModelState.READY, "")
        log.info("successfully loaded '%s' version %d", entry.name, version)
        if previous is not None and previous is not model:
            await self._unload_version(previous)

    async def unload(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is None:
            return
        async with entry.lock:
            versions, entry.versions = entry.versions, {}
            await asyncio.gather(*(self._unload_version(model) for model in versions.values()))
            for model in versions.values():
                entry.versions[model.version] = model  # kept for the index as UNAVAILABLE: unloaded

    async def _unload_version(self, model: ModelVersion) -> None:
        if model.state is ModelState.READY:
            self._set_state(model, ModelState.UNLOADING, "")
            await model.unload()
            self._set_state(model, ModelState.UNAVAILABLE, "unloaded")
            log.info("successfully unloaded '%s' version %d", model.name, model.version)

    async def load_from_api(self, name: str, parameters: dict[str, Any]) -> None:
        if self.options.control_mode != "explicit":
            raise ConchError("explicit model load / unload is not allowed if polling is enabled", ErrorCode.UNAVAILABLE)
        await self.load(name)

    async def unload_from_api(self, name: str, unload_dependents: bool) -> None:
        if self.options.control_mode != "explicit":
            raise ConchError("explicit model load / unload is not allowed if polling is enabled", ErrorCode.UNAVAILABLE)
        await self.unload(name)

    def _set_state(self, model: ModelVersion, state: ModelState, reason: str) -> None:
        model.state, model.reason = state, reason
        try:
            self.plugins.hook.conch_model_state_changed(model=model, state=state.value, reason=reason)
        except Exception:  # noqa: BLE001 - a plugin's listener must not break loading
            log.exception("a conch_model_state_changed hook failed")

    def _settings_for(self, backend: Backend) -> dict[str, str]:
        merged = dict(self.options.backend_settings.get("", {}))
        merged.update(self.options.backend_settings.get(backend.name, {}))
        return merged

    # -- lookup -------------------------------------------------------------------------------

    def get(self, name: str, version: int = -1, require_ready: bool = True) -> ModelVersion:
        """The version a request names, with Triton's ``Request for unknown model`` errors."""
        entry = self.entries.get(name)
        if entry is None or (not entry.versions and entry.location is None and not entry.reason):
            raise ConchError(f"Request for unknown model: '{name}' is not found", ErrorCode.NOT_FOUND)
        if version == -1:
            ready = entry.ready_versions()
            if not ready:
                raise ConchError(f"Request for unknown model: '{name}' has no available versions", ErrorCode.NOT_FOUND)
            return entry.versions[ready[-1]]
        model = entry.versions.get(version)
        if model is None:
            raise ConchError(
                f"Request for unknown model: '{name}' version {version} is not found", ErrorCode.NOT_FOUND
            )
        if require_ready and model.state is not ModelState.READY:
            raise ConchError(
                f"Request for unknown model: '{name}' version {version} is not at ready state",
                ErrorCode.UNAVAILABLE,
            )
        return model

    def all_ready(self) -> bool:
        """Strict readiness: every model that should serve has all its versions ready."""
        for entry in self.entries.values():
            if entry.state is ModelState.UNAVAILABLE and not entry.versions:
                return False
            for model in entry.versions.values():
                if model.reason == "unloaded":
                    continue
                if not model.is_ready():
                    return False
        return True

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: one row per version (name only for models never loaded)."""
        rows: list[dict[str, str]] = []
        for name in sorted(self.entries):
            entry = self.entries[name]
            if entry.versions:
                for version in sorted(entry.versions):
                    model = entry.versions[version]
                    if ready_only and model.state is not ModelState.READY:
                        continue
                    row = {"name": name, "version": model.label, "state": model.state.value}
                    if model.reason:
                        row["reason"] = model.reason
                    elif model.state is ModelState.READY and not model.is_ready():
                        row["reason"] = model.not_ready_reason() or "not ready"
                    rows.append(row)
            elif not ready_only:
                row = {"name": name}
                if entry.state is not ModelState.UNKNOWN:
                    row.update({"state": entry.state.value, "reason": entry.reason})
                rows.append(row)
        return rows

    def statistics(self, name: str = "", version: int = -1) -> list[dict[str, Any]]:
        """Triton's ``model_stats`` list: every loaded version, or one model's (a version, or all)."""
        if not name:
            chosen = [mv for e in self.entries.values() for mv in e.versions.values() if mv.state is ModelState.READY]
        else:
            entry = self.entries.get(name)
            ready = [mv for mv in (entry.versions.values() if entry else ()) if mv.state is ModelState.READY]
            if version != -1:
                ready = [mv for mv in ready if mv.version == version]
            if not ready:
                raise ConchError(f"requested model '{name}' is not available", ErrorCode.INVALID_ARG)
            chosen = ready
        chosen.sort(key=lambda mv: (mv.name, mv.version))
        return [mv.stats.as_dict(mv.name, mv.label) for mv in chosen]

    def table(self) -> list[tuple[str, str, str]]:
        """(Model, Version, Status) rows for the start-up table."""
        out = []
        for row in self.index():
            status = row.get("state", "UNKNOWN")
            if status != "READY" and row.get("reason"):
                status = f"{status}: {row['reason']}"
            out.append((row["name"], row.get("version", "-"), status))
        return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConchError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
