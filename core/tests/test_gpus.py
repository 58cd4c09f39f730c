"""GPU counting: an override, and no error on a machine without NVML."""

from __future__ import annotations

import pytest

from conch import gpus


def test_override_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus.gpu_count.cache_clear()
    monkeypatch.setenv("CONCH_GPU_COUNT", "2")
    assert gpus.gpu_count() == 2
    gpus.gpu_count.cache_clear()
    monkeypatch.delenv("CONCH_GPU_COUNT")
    assert gpus.gpu_count() >= 0  # NVML absent or without a GPU answers 0, never raises
    gpus.gpu_count.cache_clear()
