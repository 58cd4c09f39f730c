"""What a backend is: the base classes a backend plugin subclasses.

A :class:`Backend` is registered once (through the ``conch_register_backends`` hook) and creates one
:class:`ModelInstance` per instance of every model that names it. The scheduler then calls the
instances directly, on a thread of their own, without going through pluggy.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig
    from conch.inference import InferenceRequest, InferenceResponse


class Batching(enum.Enum):
    """How a backend wants a batch of requests handed over."""

    #: ``execute(requests)``: a list of requests, each with its own tensors (Triton's Python backend).
    REQUESTS = "requests"
    #: ``execute_batch(inputs, outputs)``: tensors of all requests concatenated along dimension 0;
    #: the scheduler splits the outputs back per request (framework backends).
    CONCATENATE = "concatenate"


@dataclass(slots=True)
class ModelContext:
    """Everything a backend may want to know about the model version being loaded."""

    name: str
    version: int
    model_dir: Path  # <repository>/<model>
    config: ModelConfig
    backend_settings: dict[str, str] = field(default_factory=dict)
    #: The server's InferenceService (None outside a server), for backends that send requests
    #: themselves (the Python backend's BLS), load and unload models, or register custom metric
    #: families (``server.custom_metrics``, see :mod:`conch.custom_metrics`).
    server: Any = None

    @property
    def version_dir(self) -> Path:
        return self.model_dir / str(self.version)

    @property
    def model_path(self) -> Path:
        """The version's model file (or folder): ``<version>/<default_model_filename>``."""
        return self.version_dir / self.config.default_model_filename

    def parameter(self, key: str, default: str | None = None) -> str | None:
        """A config ``parameters`` string value, or ``default``."""
        if key in self.config.parameters:
            return self.config.parameters[key].string_value
        return default


@dataclass(slots=True)
class InstanceContext:
    """One instance of a model version: which group it belongs to and which device it uses."""

    model: ModelContext
    name: str  # "<group name>_<index within group>", as Triton names instances
    group_name: str
    index: int  # 0-based index across all instances of the model
    kind: str  # "CPU", "GPU" or "MODEL"
    device_id: int = 0


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_thread_count(context: InstanceContext) -> int:
    """A framework's threads per instance by default: this process's cores divided among all instances
    of the model, at least 1, so that N instances do not oversubscribe the cores."""
    instances = sum(max(group.count, 1) for group in context.model.config.instance_group) or 1
    return max(1, usable_cores() // instances)


class ModelInstance:
    """One execution context of a model.

    Implement :meth:`execute` for :attr:`Batching.REQUESTS` backends or :meth:`execute_batch` for
    :attr:`Batching.CONCATENATE` backends. Either may be a plain method (run on the instance's own
    thread, so instances of a model run in parallel) or an ``async def`` (awaited on the server's event
    loop; for backends that wait on another process).
    """

    #: How many executions the default scheduler may hand an ``async`` instance before the first one
    #: finishes, when requests are waiting. An instance that queues them itself and runs them in order
    #: (a worker process reading its socket) sets 2: its next execution is already there when one ends,
    #: so it never waits for a round trip to the server. Idle instances are always served first, and
    #: only instances whose executions usually take under 1 ms get one early (``PIPELINE_MAX_NS``).
    max_inflight: int = 1

    def execute(self, requests: list[InferenceRequest]) -> list[InferenceResponse] | None:
        """Run a batch of requests; return one response per request, in order.

        Return ``None`` when responses are sent through ``request.respond(...)`` instead
        (decoupled models); the last response of each request must have ``final=True``.
        An exception fails every request of the batch with its message.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement execute()")

    def execute_batch(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Run concatenated inputs (dimension 0 is the batch) and return the named outputs."""
        raise NotImplementedError(f"{type(self).__name__} does not implement execute_batch()")

    def is_ready(self) -> bool:
        """Whether the instance can serve; consulted by model readiness."""
        return True

    def not_ready_reason(self) -> str:
        """Why :meth:`is_ready` is false (shown in the repository index); "" when there is nothing to say."""
        return ""

    def unload(self) -> None:
        """Release what the instance holds; called once, when its model version unloads."""


class Backend:
    """A backend: subclass it, set the class attributes, implement :meth:`create_instance`."""

    #: The name a config's ``backend`` field uses, e.g. ``"onnxruntime"``.
    name: ClassVar[str] = ""
    #: Config ``platform`` values this backend serves, e.g. ``("onnxruntime_onnx",)``.
    platforms: ClassVar[tuple[str, ...]] = ()
    #: File (or folder) in a version directory holding the model, e.g. ``"model.onnx"``.
    default_model_filename: ClassVar[str] = ""
    #: How batches are handed over (see :class:`Batching`).
    batching: ClassVar[Batching] = Batching.REQUESTS
    #: Default instance count of a KIND_CPU group (Triton: 2 for onnxruntime and tensorflow).
    default_cpu_instance_count: ClassVar[int] = 1

    def __init__(self) -> None:
        self.settings: dict[str, str] = {}

    def configure(self, settings: dict[str, str]) -> None:
        """Receive ``--backend-config`` settings (global ones merged under this backend's own)."""
        self.settings = dict(settings)

    def auto_complete_config(self, context: ModelContext) -> None:
        """Fill in what ``context.config`` leaves out (inputs, outputs, max_batch_size...) from the model.

        Called at load, before normalisation, unless auto-complete is disabled. Mutate
        ``context.config`` in place. Raise :class:`conch.ConchError` when the config contradicts the
        model; the message should name both sides.
        """

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        """Create and initialise one instance; called on a worker thread, instances in parallel."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What ``conch plugins`` shows about this backend."""
        return {
            "name": self.name,
            "platforms": list(self.platforms),
            "default_model_filename": self.default_model_filename,
            "batching": self.batching.value,
        }
