"""ModelConfig to and from JSON, as Triton's ``ModelConfigToJson`` / ``JsonToModelConfig`` do.

Output is protobuf JSON with proto field names and every field without presence printed; enums are
names. Protobuf renders 64-bit integers as strings; like Triton, they are turned back into numbers
(found by walking the descriptor, so a new int64 field needs no code). Map keys stay strings, as JSON
requires. Input accepts integers given as strings and enum names in any case, like Triton's config
override on ``POST v2/repository/models/<m>/load``.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from conch._proto.model_config_pb2 import ModelConfig
from conch.config.parse import ConfigError

__all__ = ["config_from_json", "config_to_json"]

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


_FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})


def config_to_json(config: ModelConfig) -> dict[str, Any]:
    """The config as Triton's ``GET v2/models/<m>/config`` returns it (a dict ready for ``json.dumps``)."""
    raw = json_format.MessageToDict(config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _fix_message(raw, config.DESCRIPTOR)


def _fix_message(value: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    """Fields in declaration order, 64-bit integers as numbers, recursively."""
    out: dict[str, Any] = {}
    for fd in descriptor.fields:
        if fd.name in value:
            out[fd.name] = _fix_field(value[fd.name], fd)
    return out


def _fix_field(value: Any, fd: FieldDescriptor) -> Any:
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        value_fd = fd.message_type.fields_by_name["value"]
        return {key: _fix_scalar(item, value_fd) for key, item in value.items()}
    if fd.is_repeated:
        return [_fix_scalar(item, fd) for item in value]
    return _fix_scalar(value, fd)


def _fix_scalar(value: Any, fd: FieldDescriptor) -> Any:
    if fd.message_type is not None:
        return _fix_message(value, fd.message_type)
    if fd.type in _INT64_TYPES and isinstance(value, str):
        return int(value)
    if fd.type in _FLOAT_TYPES and isinstance(value, float) and value.is_integer():
        return int(value)  # Triton's printer writes 1.0 as 1 (e.g. "fp32_false_true":[0,1])
    return value


def config_from_json(source: str | bytes | dict[str, Any]) -> ModelConfig:
    """A ModelConfig from JSON text or a dict; raises :class:`ConfigError` with protobuf's reason."""
    if isinstance(source, (str, bytes)):
        try:
            data = json.loads(source)
        except ValueError as exc:
            raise ConfigError(f"failed to parse the model configuration JSON: {exc}") from None
    else:
        data = source
    if not isinstance(data, dict):
        raise ConfigError(f"the model configuration JSON must be an object, got {type(data).__name__}")
    config = ModelConfig()
    try:
        json_format.ParseDict(_upper_enums(data, config.DESCRIPTOR), config, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise ConfigError(str(exc).strip()) from None
    return config


def _upper_enums(value: Any, descriptor: Descriptor) -> Any:
    """Enum names matched case-insensitively, as Triton's ``case_insensitive_enum_parsing``."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        fd = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        out[key] = item if fd is None else _upper_field(item, fd)
    return out


def _upper_field(value: Any, fd: FieldDescriptor) -> Any:
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        value_fd = fd.message_type.fields_by_name["value"]
        if isinstance(value, dict):
            return {key: _upper_one(item, value_fd) for key, item in value.items()}
        return value
    if fd.is_repeated and isinstance(value, list):
        return [_upper_one(item, fd) for item in value]
    return _upper_one(value, fd)


def _upper_one(value: Any, fd: FieldDescriptor) -> Any:
    if fd.message_type is not None:
        return _upper_enums(value, fd.message_type)
    if fd.enum_type is not None and isinstance(value, str) and value not in fd.enum_type.values_by_name:
        upper = value.upper()
        if upper in fd.enum_type.values_by_name:
            return upper
    return value
