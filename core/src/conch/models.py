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
from conch.classification import read_labels
from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferenceResponse
from conch.overrides import LoadOverrides, OverrideFolder, parse_load_parameters
from conch.repository import ModelLocation, fingerprint
from conch.scheduling import DefaultScheduler, InstanceRunner, Scheduler
from conch.stats import ModelStats
from conch.tensors import config_to_protocol
from conch.validation import Signature, validate
from conch.warmup import run_warmup, warmup_samples

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig
    from conch.plugins import Plugins
    from conch.repository import Repository

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
    poll_secs: int = 15  # poll mode: seconds between polls of the repositories (0: never)
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
        self.source: OverrideFolder | None = None  # the private folder of load-API override files, if any
        self.replaced_by: ModelVersion | None = None  # set when a reload swapped in a new instance of it
        self.labels: dict[str, list[str]] = {}  # class labels by output name (classification extension)
        self.model_dir: Path | None = None  # the folder it was loaded from

    def output_labels(self, name: str) -> list[str] | None:
        """The class labels of output ``name`` (its ``label_filename``), if it has any."""
        return self.labels.get(name)

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

    def submit(self, request: InferenceRequest, checked: bool = False) -> None:
        """Validate (unless ``checked``: validated against this version already) and enqueue; raises
        ConchError for a bad request.

        A request that looked this version up just before a reload swapped it goes to its successor;
        one that looked it up just before an unload gets Triton's unknown-model error.
        """
        if self.state is not ModelState.READY:
            if self.replaced_by is not None:
                return self.replaced_by.submit(request)  # its own signature: validated again
            raise ConchError(f"Request for unknown model: '{self.name}' has no available versions", ErrorCode.NOT_FOUND)
        if not checked:
            validate(request, self.signature)
        request.version_label = self.label
        assert self.scheduler is not None
        self.scheduler.enqueue(request)

    def respond_now(self, request: InferenceRequest) -> InferenceResponse | None:
        """A validated request's response when the scheduler can execute it right here (see
        ``DefaultScheduler.respond_now``); None when it cannot: submit the request instead."""
        if self.state is not ModelState.READY:
            return None
        respond_now = getattr(self.scheduler, "respond_now", None)
        if respond_now is None:
            return None
        request.version_label = self.label
        response: InferenceResponse | None = respond_now(request)
        return response

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
        """Create every instance (in parallel) and start the scheduler (an ensemble has neither instances
        nor a backend: its scheduler sends each step to the composing model's own)."""
        started = time.monotonic()
        if self.backend is None:
            await self._load_ensemble()
            self.load_seconds = time.monotonic() - started
            return
        self.model_dir = model_dir
        self.labels = await asyncio.to_thread(read_labels, self.config, model_dir)
        self.runners = [InstanceRunner(self.backend, ctx, self.stats) for ctx in self._instance_contexts(model_dir, settings)]
        results = await asyncio.gather(*(runner.create() for runner in self.runners), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self._release()
            raise errors[0]
        try:
            samples = await asyncio.to_thread(warmup_samples, self.config, model_dir)
            await run_warmup(self.runners, samples, self.name, self.signature)
        except BaseException:
            await self._release()
            raise
        self.scheduler = self._make_scheduler()
        await self.scheduler.start()
        self.load_seconds = time.monotonic() - started

    async def _load_ensemble(self) -> None:
        from conch.config.ensemble import check_composing
        from conch.scheduling.ensemble import EnsemblePlan, EnsembleScheduler

        manager: ModelManager = self.service.models
        composing = {step.model_name: manager.get(step.model_name, int(step.model_version)).config
                     for step in self.config.ensemble_scheduling.step}  # fmt: skip
        self.decoupled = check_composing(self.config, composing)  # a decoupled step makes the ensemble so
        self.config.model_transaction_policy.decoupled = self.decoupled  # shown in its config, as in Triton
        decoupled_models = {name for name, config in composing.items() if config.model_transaction_policy.decoupled}
        self.scheduler = EnsembleScheduler(EnsemblePlan(self.config, decoupled_models), manager.get, self.stats)
        await self.scheduler.start()

    def _make_scheduler(self) -> Scheduler:
        """The sequence or dynamic batcher when the config asks for one; otherwise Triton's default scheduler."""
        if self.config.HasField("sequence_batching"):
            from conch.scheduling.sequence import SequenceBatcher

            return SequenceBatcher(self.runners, self.config, self.model_dir)
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
        self.fingerprint: tuple[Any, ...] | None = None  # the model folder as last loaded (poll mode)
        self.api_failed = False  # its last load came through the API and left nothing serving

    def ready_versions(self) -> list[int]:
        return sorted(v for v, mv in self.versions.items() if mv.state is ModelState.READY)


class LoadFailed(ConchError):
    """A load that did not leave the model serving what was asked; the message says why (Triton's text)."""


class ModelManager:
    """Loads, unloads and looks up models."""

    def __init__(self, repository: Repository, plugins: Plugins, options: ManagerOptions) -> None:
        self.repository = repository
        self.plugins = plugins
        self.options = options
        self.entries: dict[str, ModelEntry] = {}
        self.service: Any = None  # set by the InferenceService built over this manager
        self._load_slots = asyncio.Semaphore(max(1, options.load_thread_count))
        self._pending: dict[str, tuple[tuple[Any, ...], asyncio.Future[LoadFailed | None]]] = {}
        self._ensembles: dict[str, set[str]] = {}  # ensemble name -> the models its steps call
        self._explicit: set[str] = set()  # loaded for their own sake, not only as an ensemble's dependency
        self._waiting: set[str] = set()  # ensembles unloaded or failed for want of a model: retried when it loads
        self._background: set[asyncio.Future[LoadFailed | None]] = set()

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

    async def load(
        self, name: str, overrides: LoadOverrides | None = None, dependency: bool = False
    ) -> LoadFailed | None:
        """Load (or reload) the versions the policy selects; the failure, if any, is returned, not raised.

        Two loads of the same model with the same overrides at once load it once; loads of a model
        otherwise run one after the other, and loads of different models in parallel up to
        ``load_thread_count``. A reload keeps the old instances serving until the new ones are ready.
        ``dependency``: loaded only because an ensemble needs it (``unload_dependents`` may unload it).
        """
        if not dependency:
            self._explicit.add(name)
        overrides = overrides or LoadOverrides()
        key = overrides.key()
        pending = self._pending.get(name)
        if pending is not None and pending[0] == key:
            return await asyncio.shield(pending[1])
        task = asyncio.ensure_future(self._load_locked(name, overrides))
        self._pending[name] = (key, task)

        def forget(_: object) -> None:
            if self._pending.get(name, (None, None))[1] is task:
                del self._pending[name]

        task.add_done_callback(forget)
        return await asyncio.shield(task)

    async def _load_locked(self, name: str, overrides: LoadOverrides) -> LoadFailed | None:
        entry = self.entries.get(name)
        if entry is None:
            entry = self.entries.setdefault(name, ModelEntry(name, None))
        async with entry.lock, self._load_slots:
            failure = await self._load_entry(entry, overrides)
        if failure is None:
            self._retry_dependents(name)
        return failure

    def _retry_dependents(self, name: str) -> None:
        """``name`` serves now: load again the ensembles that went (or failed) for want of it, as Triton does."""
        for ensemble in sorted(self._waiting):
            if name in self._ensembles.get(ensemble, ()):
                self._waiting.discard(ensemble)
                log.info("model '%s' is available again: loading ensemble '%s'", name, ensemble)
                task = asyncio.ensure_future(self.load(ensemble, dependency=ensemble not in self._explicit))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    def _locate(self, entry: ModelEntry, overrides: LoadOverrides) -> tuple[ModelLocation, OverrideFolder | None]:
        """Where to load from: a private folder of override files, or the model's folder in the repository."""
        name = entry.name
        if overrides.files:
            folder = OverrideFolder(name, overrides.files)
            return ModelLocation(name, folder.path, folder.root), folder
        if self.options.control_mode != "none" or entry.location is None:
            models, unavailable = self.repository.scan()
            if name in unavailable:
                raise ConchError(unavailable[name], ErrorCode.INTERNAL)
            entry.location = models.get(name)
        if entry.location is None:
            raise ConchError("model not found in any model repository", ErrorCode.INTERNAL)
        return entry.location, None

    async def _load_entry(self, entry: ModelEntry, overrides: LoadOverrides) -> LoadFailed | None:
        from conch.config import load_model_config

        name = entry.name
        had_versions = any(mv.state is ModelState.READY for mv in entry.versions.values())
        if not had_versions:
            entry.state, entry.reason = ModelState.LOADING, ""
        folder: OverrideFolder | None = None
        try:
            _check_model_name(name)
            location, folder = await asyncio.to_thread(self._locate, entry, overrides)
            model_dir = location.path
            entry.fingerprint = await asyncio.to_thread(fingerprint, model_dir)
            override = overrides.config()
            config, backend = await asyncio.to_thread(
                load_model_config,
                model_dir,
                plugins=self.plugins,
                auto_complete=self.options.auto_complete,
                config_name=self.options.config_name,
                default_max_batch_size=self.options.default_max_batch_size,
                gpu_count=self.options.gpu_count,
                override=override,
            )
        except Exception as exc:  # noqa: BLE001 - a bad model is UNAVAILABLE, never fatal to others
            if folder is not None:
                folder.remove()
            reason = _reason(exc)
            if not had_versions:
                entry.state, entry.reason = ModelState.UNAVAILABLE, reason
            log.error("failed to load '%s': %s", name, reason)
            return LoadFailed(f"failed to load '{name}', failed to poll from model repository: {reason}", ErrorCode.INTERNAL)
        try:
            available = await asyncio.to_thread(self.repository.versions, model_dir)
            selected = self.repository.select_versions(config, available)
            if backend is None:
                await self._composing_models_ready(name, config)
        except ConchError as exc:
            if folder is not None:
                folder.remove()
            if not had_versions:
                entry.state, entry.reason = ModelState.UNAVAILABLE, exc.message
            log.error("failed to load model '%s': %s", name, exc.message)
            return LoadFailed(f"load failed for model '{name}': {exc.message}", ErrorCode.INVALID_ARG)
        entry.state, entry.reason = ModelState.UNKNOWN, ""
        settings = self._settings_for(backend) if backend is not None else {}
        old = dict(entry.versions)
        failures: list[str] = []
        for version in selected:
            failure = await self._load_version(entry, version, config, backend, model_dir, settings, folder)
            if failure:
                failures.append(f"version {version} is at UNAVAILABLE state: {failure}")
        if len(failures) < len(selected):
            # Something new serves: versions the policy no longer selects go.
            for version in set(old) - set(selected):
                await self._unload_version(entry.versions.pop(version))
        # else a failed reload changes nothing: every version that served before still does.
        self._release_sources(entry)
        if failures:
            return LoadFailed(f"load failed for model '{name}': " + "; ".join(failures), ErrorCode.INVALID_ARG)
        return None

    async def _composing_models_ready(self, name: str, config: ModelConfig) -> None:
        """Wait for (or load) the models an ensemble's steps call; Triton's errors when one cannot serve.

        Runs inside the ensemble's load slot, which it gives up while waiting so that the composing
        models' own loads are never starved by the ensembles waiting for them.
        """
        steps = config.ensemble_scheduling.step
        self._ensembles[name] = {step.model_name for step in steps}
        self._check_cycle(name)
        self._load_slots.release()
        try:
            for dependency in sorted(self._ensembles[name]):
                await self._composing_model_ready(name, dependency)
        except ConchError:
            self._check_cycle(name)  # a dependency that failed because of a cycle through this ensemble
            self._waiting.add(name)  # retried when the dependency loads
            raise
        finally:
            await self._load_slots.acquire()
        for step in steps:
            version = int(step.model_version)
            if version != -1 and version not in self.entries[step.model_name].ready_versions():
                raise ConchError(
                    f"ensemble '{name}' depends on '{step.model_name}' whose required version {version} is not loaded.",
                    ErrorCode.INVALID_ARG,
                )

    async def _composing_model_ready(self, ensemble: str, name: str) -> None:
        pending = self._pending.get(name)
        if pending is not None:
            await asyncio.shield(pending[1])
        entry = self.entries.get(name)
        if (entry is None or (not entry.versions and entry.location is None)) and (
            await asyncio.to_thread(self.repository.find, name) is None
        ):
            raise ConchError(
                f"ensemble {ensemble} contains models that are not available or ambiguous: {name}", ErrorCode.INVALID_ARG
            )
        never_tried = entry is None or (entry.state is ModelState.UNKNOWN and not entry.versions)
        if pending is None and (never_tried or self.options.control_mode == "explicit") and (
            entry is None or not entry.ready_versions()
        ):
            await self.load(name, dependency=True)
            entry = self.entries.get(name)
        if entry is None or not entry.ready_versions():
            reasons = [mv.reason for mv in entry.versions.values() if mv.reason] if entry else []
            reasons = reasons or [(entry.reason if entry else "") or "not loaded"]
            raise ConchError(
                f"ensemble '{ensemble}' depends on '{name}' which has no loaded version. Model '{name}' loading "
                f"failed with error: {reasons[0]}",
                ErrorCode.INVALID_ARG,
            )

    def _check_cycle(self, name: str) -> None:
        from conch.config.ensemble import cycle_error

        error = cycle_error(name, self._ensembles)
        if error is not None:
            raise error

    async def _load_version(
        self,
        entry: ModelEntry,
        version: int,
        config: ModelConfig,
        backend: Backend | None,
        model_dir: Path,
        settings: dict[str, str],
        folder: OverrideFolder | None,
    ) -> str:
        """Load one version beside the one serving (if any) and swap them once ready; the failure reason or ''."""
        previous = entry.versions.get(version)
        serving = previous if previous is not None and previous.state is ModelState.READY else None
        model = ModelVersion(entry, version, config, backend)
        model.service = self.service
        model.source = folder
        self._set_state(model, ModelState.LOADING, "")
        if serving is None:
            entry.versions[version] = model
        try:
            await model.load(model_dir, settings)
        except Exception as exc:  # noqa: BLE001
            self._set_state(model, ModelState.UNAVAILABLE, _reason(exc))
            log.error("failed to load '%s' version %d: %s", entry.name, version, model.reason)
            if serving is None:
                entry.versions[version] = model
            return model.reason
        self._set_state(model, ModelState.READY, "")
        if serving is not None:
            serving.replaced_by = model
        entry.versions[version] = model
        log.info("successfully loaded '%s' version %d", entry.name, version)
        if serving is not None:
            await self._unload_version(serving)
        return ""

    def _release_sources(self, entry: ModelEntry) -> None:
        """Remove override folders that no loaded version of ``entry`` uses any more."""
        live = {id(mv.source) for mv in entry.versions.values() if mv.source is not None and mv.reason != "unloaded"}
        for mv in entry.versions.values():
            if mv.source is not None and id(mv.source) not in live:
                mv.source.remove()
                mv.source = None

    async def unload(self, name: str) -> None:
        """Unload every version; ensembles that call the model are unloaded with it (as in Triton) and
        loaded again once it serves again."""
        entry = self.entries.get(name)
        if entry is None:
            return
        async with entry.lock:
            versions, entry.versions = entry.versions, {}
            await asyncio.gather(*(self._unload_version(model) for model in versions.values()))
            for model in versions.values():
                entry.versions[model.version] = model  # kept for the index as UNAVAILABLE: unloaded
            self._release_sources(entry)
        dependents = [e for e, models in self._ensembles.items() if name in models and e != name and self._serves(e)]
        for ensemble in dependents:
            log.error("ensemble %s contains models that are not available or ambiguous: %s", ensemble, name)
            self._waiting.add(ensemble)
        await asyncio.gather(*(self.unload(ensemble) for ensemble in dependents))

    def _serves(self, name: str) -> bool:
        entry = self.entries.get(name)
        return entry is not None and bool(entry.ready_versions())

    async def _unload_unused_dependencies(self, name: str) -> None:
        """``unload_dependents`` of an ensemble: the models it called that were loaded only for ensembles and
        that no serving ensemble calls any more go too (Triton's cascading removal)."""
        for dependency in sorted(self._ensembles.get(name, ())):
            if dependency in self._explicit or not self._serves(dependency):
                continue
            if any(dependency in models and self._serves(e) for e, models in self._ensembles.items()):
                continue
            await self.unload(dependency)
            await self._unload_unused_dependencies(dependency)

    async def _unload_version(self, model: ModelVersion) -> None:
        if model.state is ModelState.READY:
            self._set_state(model, ModelState.UNLOADING, "")
            await model.unload()
            self._set_state(model, ModelState.UNAVAILABLE, "unloaded")
            log.info("successfully unloaded '%s' version %d", model.name, model.version)
        elif model.state is ModelState.UNAVAILABLE and model.reason != "unloaded":
            model.reason = "unloaded"

    async def load_from_api(self, name: str, parameters: dict[str, Any]) -> None:
        """The repository API's load: raises Triton's errors when the mode forbids it or the load fails."""
        self._check_api_allowed()
        try:
            overrides = parse_load_parameters(parameters)
        except ConchError as exc:
            raise ConchError(f"failed to load '{name}', {exc.message}", ErrorCode.INVALID_ARG) from None
        failure = await self.load(name, overrides)
        entry = self.entries.get(name)
        if entry is not None:
            entry.api_failed = failure is not None and not entry.ready_versions()
        if failure is not None:
            raise failure

    async def unload_from_api(self, name: str, unload_dependents: bool) -> None:
        """The repository API's unload: waits for in-flight requests, then releases the instances."""
        self._check_api_allowed()
        entry = self.entries.get(name)
        if (entry is None or not entry.versions) and self.repository.find(name) is None:
            raise ConchError(
                f"failed to unload '{name}', Model to be unloaded has not been served", ErrorCode.INVALID_ARG
            )
        self._explicit.discard(name)
        self._waiting.discard(name)
        await self.unload(name)
        if unload_dependents:
            await self._unload_unused_dependencies(name)

    def _check_api_allowed(self) -> None:
        if self.options.control_mode != "explicit":
            raise ConchError("explicit model load / unload is not allowed if polling is enabled", ErrorCode.UNAVAILABLE)

    # -- poll mode ----------------------------------------------------------------------------

    async def poll(self) -> None:
        """One poll of the repositories: load added and changed models, unload removed ones."""
        locations, unavailable = await asyncio.to_thread(self.repository.scan)
        changes: list[str] = []
        for name, location in locations.items():
            entry = self.entries.get(name)
            if entry is None:
                self.entries[name] = ModelEntry(name, location)
                changes.append(name)
                continue
            entry.location = location
            if await asyncio.to_thread(fingerprint, location.path) != entry.fingerprint:
                changes.append(name)
        gone = [name for name in self.entries if name not in locations and name not in unavailable]
        for name, reason in unavailable.items():
            entry = self.entries.setdefault(name, ModelEntry(name, None))
            if entry.reason != reason:
                gone.append(name)
        for name in changes:
            log.info("poll: model '%s' is new or changed, loading it", name)
        await asyncio.gather(*(self.load(name) for name in changes), *(self._remove(name, unavailable) for name in gone))

    async def _remove(self, name: str, unavailable: dict[str, str]) -> None:
        """A model whose folder left the repository (or became a duplicate): unload it and forget it."""
        log.info("poll: model '%s' was removed from the repository, unloading it", name)
        await self.unload(name)
        entry = self.entries.get(name)
        if entry is None:
            return
        if name in unavailable:
            entry.state, entry.reason, entry.location = ModelState.UNAVAILABLE, unavailable[name], None
            entry.versions.clear()
        elif not entry.lock.locked():
            del self.entries[name]

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
            latest: ModelVersion | None = None
            for number, candidate in entry.versions.items():  # the highest ready version, without sorting
                if candidate.state is ModelState.READY and (latest is None or number > latest.version):
                    latest = candidate
            if latest is None:
                raise ConchError(f"Request for unknown model: '{name}' has no available versions", ErrorCode.NOT_FOUND)
            return latest
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
        """Strict readiness: every model that should serve has all its versions ready.

        Versions still loading do not count (a load through the API never makes a serving server
        unready), nor do models whose load through the API failed: the caller got the error.
        """
        for entry in self.entries.values():
            if entry.api_failed:
                continue
            if entry.state is ModelState.UNAVAILABLE and not entry.versions:
                return False
            for model in entry.versions.values():
                if model.reason == "unloaded" or model.state is ModelState.LOADING:
                    continue
                if not model.is_ready():
                    return False
        return True

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: one row per version (name only for models never loaded)."""
        if self.options.control_mode == "explicit":
            self._add_new_folders()
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

    def _add_new_folders(self) -> None:
        """List models added to the repository since start-up (explicit mode loads them on request)."""
        try:
            locations, _ = self.repository.scan()
        except ConchError:
            return
        for name, location in locations.items():
            self.entries.setdefault(name, ModelEntry(name, location))

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


def _check_model_name(name: str) -> None:
    """A model name is one folder name: it can never reach outside a repository."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\x00"):
        raise ConchError(f"invalid model name '{name}': a model name is the name of a folder in a model repository")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConchError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
