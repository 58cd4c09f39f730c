"""The marker plugins use to implement hooks: ``@conch.hookimpl``."""

import pluggy

hookimpl = pluggy.HookimplMarker("conch")
