"""Tiny TorchScript models scripted at test time, and repositories of them with their configs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

#: Protocol datatype → (config type, torch dtype), for the identity models.
DATATYPES = {
    "BOOL": ("TYPE_BOOL", torch.bool),
    "UINT8": ("TYPE_UINT8", torch.uint8),
    "INT8": ("TYPE_INT8", torch.int8),
    "INT16": ("TYPE_INT16", torch.int16),
    "INT32": ("TYPE_INT32", torch.int32),
    "INT64": ("TYPE_INT64", torch.int64),
    "FP16": ("TYPE_FP16", torch.float16),
    "FP32": ("TYPE_FP32", torch.float32),
    "FP64": ("TYPE_FP64", torch.float64),
}


class AddSub(torch.nn.Module):
    """Triton's add_sub: OUTPUT__0 = INPUT__0 + INPUT__1, OUTPUT__1 = INPUT__0 - INPUT__1."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, a - b


class Named(torch.nn.Module):
    """Arguments bound by name, in an order unlike the config's: y = x * scale + offset."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return x * scale + offset


class DictOut(torch.nn.Module):
    """A dict of named outputs: ``sum`` and ``max`` of each row."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": x.sum(dim=1, keepdim=True), "max": x.max(dim=1, keepdim=True).values}


class DictIn(torch.nn.Module):
    """One ``Dict[str, Tensor]`` argument holding every input."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["A"] * inputs["B"]


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Raises(torch.nn.Module):
    """Fails when any element is negative, with a message of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise RuntimeError("negative values are not allowed")
        return x * 2


class Linear(torch.nn.Module):
    """A 16 → 4 linear layer with fixed weights: real arithmetic, rows independent."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 4)
        with torch.no_grad():
            self.layer.weight.copy_(torch.arange(64, dtype=torch.float32).reshape(4, 16) / 64)
            self.layer.bias.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.layer(x))


def save(repo: Path, name: str, module: torch.nn.Module, config: str) -> Path:
    """Script ``module`` into ``<repo>/<name>/1/model.pt`` and write the config."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(version / "model.pt"))
    (repo / name / "config.pbtxt").write_text(config)
    return repo / name


def config(name: str, inputs: list[tuple[str, str, str]], outputs: list[tuple[str, str, str]], extra: str = "") -> str:
    """A pytorch_libtorch config; tensors as (name, TYPE_x, dims text)."""

    def tensors(rows: list[tuple[str, str, str]]) -> str:
        return ", ".join(f'{{ name: "{n}" data_type: {t} dims: {d} }}' for n, t, d in rows)

    return (
        f'name: "{name}"\nplatform: "pytorch_libtorch"\ninput [ {tensors(inputs)} ]\n'
        f"output [ {tensors(outputs)} ]\n{extra}\n"
    )


@pytest.fixture(scope="session")
def models() -> SimpleNamespace:
    """The model classes and helpers, for tests (test modules cannot import this conftest)."""
    return SimpleNamespace(
        AddSub=AddSub,
        Named=Named,
        DictOut=DictOut,
        DictIn=DictIn,
        Identity=Identity,
        Raises=Raises,
        Linear=Linear,
        DATATYPES=DATATYPES,
        save=save,
        config=config,
    )
