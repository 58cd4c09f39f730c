"""The plugin contract: every hook Conch calls, documented.

Hooks are coarse. They run at start-up, at shutdown and when a model changes state; nothing here is
called per request. Backends are found through :func:`conch_register_backends`; the per-request path
then calls the backend's model instances directly.

Plugins implement hooks with ``@conch.hookimpl`` on module-level functions or methods, and are found
through the ``conch.backends`` entry-point group. A test fails when a hook here has no docstring, or
when ``docs/plugins.md`` does not document it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from conch.backend import Backend
    from conch.models import ModelVersion
    from conch.server import Server

hookspec = pluggy.HookspecMarker("conch")


@hookspec
def conch_register_backends() -> Sequence[Backend]:
    """Return the backends this plugin provides.

    Called once per server start, after every plugin is registered and before any model loads.

    :return: a sequence of :class:`conch.Backend` instances. Each declares its ``name`` (what a
        config's ``backend`` field selects), the ``platforms`` it serves, its
        ``default_model_filename``, its ``batching`` style (concatenated tensors or a list of
        requests), and implements ``auto_complete_config`` and ``create_instance``. A backend name
        given by two plugins is reported and the first registration wins.
    """


@hookspec
def conch_configure_backend(backend: Backend, settings: dict[str, str]) -> None:
    """Called once per registered backend with its ``--backend-config`` settings.

    Called after :func:`conch_register_backends` and before any model loads; the built-in
    implementation calls ``backend.configure(settings)``. A plugin may implement it to adjust another
    backend's settings.

    :param backend: the backend being configured.
    :param settings: the ``--backend-config=<backend>,<key>=<value>`` pairs for this backend merged
        over the global ones (``--backend-config=<key>=<value>``), as strings.
    """


@hookspec
def conch_server_started(server: Server) -> None:
    """Called once when the server has loaded its start-up models and its frontends listen.

    :param server: the running :class:`conch.server.Server`; ``server.models`` is the model manager.
    """


@hookspec
def conch_server_stopping(server: Server) -> None:
    """Called once when shutdown begins, before in-flight requests are drained and models unloaded.

    :param server: the :class:`conch.server.Server` that is stopping.
    """


@hookspec
def conch_model_state_changed(model: ModelVersion, state: str, reason: str) -> None:
    """Called whenever a model version changes state.

    Called from the model manager's event loop; implementations must not block.

    :param model: the :class:`conch.models.ModelVersion` (``model.name``, ``model.version``,
        ``model.config``).
    :param state: the new state, one of ``LOADING``, ``READY``, ``UNLOADING``, ``UNAVAILABLE``.
    :param reason: why, for ``UNAVAILABLE`` (the load error, ``unloaded``); empty otherwise.
    """


@hookspec
def conch_plugin_info() -> dict[str, Any]:
    """Return extra facts about this plugin for ``conch plugins`` and ``GET /conch/plugins``.

    Called when the plugin list is shown; optional.

    :return: a JSON-serialisable dict, shown under the plugin's ``info`` key.
    """
