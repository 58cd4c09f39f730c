"""How the config's tensors meet ``forward()``: which argument each input feeds, which result each output is.

Inputs, as Triton's PyTorch backend binds them:

- by name: every config input is named after an argument of ``forward()``;
- by position: every config input is named ``<anything>__<index>`` and feeds argument ``index``;
- a ``forward()`` of one ``Dict[str, Tensor]`` argument gets every input, keyed by its config name.

Outputs: a tensor result is output 0; a tuple or list result gives output ``<anything>__<index>`` its
element ``index`` (a name without the suffix takes its position in the config's ``output`` list); a dict
result gives each output the entry under its config name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conch import ConchError, ErrorCode

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig

_INDEXED = re.compile(r"^.*__(\d+)$")


@dataclass(frozen=True)
class Argument:
    """One ``forward()`` argument (``self`` left out)."""

    name: str
    type_text: str
    has_default: bool


@dataclass(frozen=True)
class Binding:
    """Where each config input goes and where each config output comes from."""

    #: "positional": ``order`` lists input names by argument position; "dict": one dict argument.
    mode: str
    order: tuple[str, ...]
    #: Config output name → its index in a tuple/list result.
    output_index: dict[str, int]


def forward_arguments(module: Any) -> list[Argument]:
    """The arguments of the TorchScript module's ``forward`` method, without ``self``."""
    schema = module.forward.schema
    arguments = []
    for arg in schema.arguments:
        if arg.name == "self":
            continue
        arguments.append(Argument(arg.name, str(arg.type), arg.default_value is not None))
    return arguments


def bind(config: ModelConfig, arguments: list[Argument]) -> Binding:
    """Match ``config``'s inputs and outputs to ``forward()``; a mismatch is INVALID_ARG naming both sides."""
    model = config.name
    inputs = [tensor.name for tensor in config.input]
    arg_names = [arg.name for arg in arguments]
    if len(arguments) == 1 and arguments[0].type_text.replace(" ", "") in ("Dict[str,Tensor]", "Dict(str,Tensor)"):
        mode, order = "dict", tuple(inputs)
    elif inputs and all(name in arg_names for name in inputs):
        mode, order = "positional", _by_name(model, inputs, arguments)
    elif inputs and all(_INDEXED.match(name) for name in inputs):
        mode, order = "positional", _by_index(model, inputs, arguments)
    elif not inputs and not [arg for arg in arguments if not arg.has_default]:
        mode, order = "positional", ()
    else:
        raise _invalid(
            f"unable to load model '{model}': input names must either be the names of forward() arguments "
            f"({_names(arg_names)}) or follow the '<name>__<index>' convention; the configuration has {_names(inputs)}"
        )
    return Binding(mode, order, _outputs(config))


def _by_name(model: str, inputs: list[str], arguments: list[Argument]) -> tuple[str, ...]:
    listed = set(inputs)
    order: list[str] = []
    for arg in arguments:
        if arg.name in listed:
            order.append(arg.name)
        elif not arg.has_default and len(order) < len(inputs):
            raise _invalid(
                f"unable to load model '{model}': forward() argument '{arg.name}' ({arg.type_text}) has no "
                f"default and the configuration lists no input of that name (inputs: {_names(inputs)})"
            )
        else:
            break  # later arguments keep their defaults
    if len(order) != len(inputs):
        raise _invalid(
            f"unable to load model '{model}': inputs {_names(inputs)} must be the leading arguments of forward() "
            f"({_names(a.name for a in arguments)}), with no argument between them left out"
        )
    return tuple(order)


def _by_index(model: str, inputs: list[str], arguments: list[Argument]) -> tuple[str, ...]:
    slots: dict[int, str] = {}
    for name in inputs:
        match = _INDEXED.match(name)
        assert match is not None
        index = int(match.group(1))
        if index in slots:
            raise _invalid(f"unable to load model '{model}': inputs '{slots[index]}' and '{name}' share index {index}")
        slots[index] = name
    if sorted(slots) != list(range(len(slots))):
        raise _invalid(
            f"unable to load model '{model}': input indices must run 0..{len(slots) - 1} without gaps, the "
            f"configuration has {_names(inputs)}"
        )
    required = len([arg for arg in arguments if not arg.has_default])
    if not required <= len(slots) <= len(arguments):
        raise _invalid(
            f"unable to load model '{model}': forward() takes {len(arguments)} argument(s) "
            f"({_names(a.name for a in arguments)}, {required} without default) but the configuration "
            f"lists {len(slots)} input(s)"
        )
    return tuple(slots[i] for i in range(len(slots)))


def _outputs(config: ModelConfig) -> dict[str, int]:
    indices: dict[str, int] = {}
    for position, tensor in enumerate(config.output):
        match = _INDEXED.match(tensor.name)
        indices[tensor.name] = int(match.group(1)) if match else position
    return indices


def _names(names: Iterable[str]) -> str:
    listed = [f"'{n}'" for n in names]
    return ", ".join(listed) if listed else "none"


def _invalid(message: str) -> ConchError:
    return ConchError(message, ErrorCode.INVALID_ARG)
