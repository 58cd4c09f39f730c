"""When a run may stay on the server's event loop instead of hopping to the instance's thread.

Handing a batch to a worker thread and the result back costs about 100 µs on a busy machine, twenty
times what a small graph takes to run. So an instance whose recent runs were short (under
``max_us``, 100 µs unless the config's ``inline_max_us`` parameter or the
``--backend-config=onnxruntime,inline_max_us=<n>`` setting says otherwise; 0 turns this off) runs
small batches right on the event loop. Anything bigger, or any model that turns out slower, runs on
the instance's own thread, where instances of a model run in parallel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from conch import ConchError, ErrorCode

DEFAULT_MAX_US = 100
#: Batches with more input bytes than this never run inline, whatever recent runs took.
MAX_INLINE_BYTES = 256 * 1024
_WEIGHT = 0.25  # of the newest run in the moving average


class InlinePolicy:
    """A moving average of run times and the rule built on it."""

    __slots__ = ("max_ns", "recent_ns")

    def __init__(self, max_us: int) -> None:
        self.max_ns = max_us * 1000
        self.recent_ns = math.inf  # unknown until a run was timed: the first runs use the thread

    def allows(self, inputs: Mapping[str, np.ndarray]) -> bool:
        if self.recent_ns >= self.max_ns:
            return False
        size = 0
        for array in inputs.values():
            size += array.nbytes
        return size <= MAX_INLINE_BYTES

    def observe(self, elapsed_ns: int) -> None:
        recent = self.recent_ns
        self.recent_ns = elapsed_ns if recent == math.inf else recent + _WEIGHT * (elapsed_ns - recent)


def inline_max_us(model: str, params: Mapping[str, str], settings: Mapping[str, str]) -> int:
    """The ``inline_max_us`` threshold from the config's parameters, else the backend settings, else 100."""
    text = params.get("inline_max_us", settings.get("inline_max_us", str(DEFAULT_MAX_US)))
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ConchError(
            f"model '{model}': 'inline_max_us' must be a non-negative integer, got '{text}'", ErrorCode.INVALID_ARG
        )
    return value
