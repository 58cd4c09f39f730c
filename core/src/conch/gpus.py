"""How many CUDA GPUs this machine has, for instance-group defaults (KIND_AUTO, KIND_GPU without gpus)."""

from __future__ import annotations

import functools
import os


@functools.cache
def gpu_count() -> int:
    """GPUs visible to this process: ``CONCH_GPU_COUNT`` if set, else NVML's count, else 0 (no error)."""
    override = os.environ.get("CONCH_GPU_COUNT")
    if override is not None:
        return max(0, int(override))
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001 - no driver, no GPU: that is an answer, not a failure
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    return count
