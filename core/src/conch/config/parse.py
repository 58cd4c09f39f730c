"""config.pbtxt text to ``ModelConfig``, with errors that name file, line, column and field.

Parse errors keep protobuf's text but in the C++ wording Triton users see in their logs (``Expected
integer, got: $``), and add a hint for the usual mistakes: a misspelt field or enum value, an unfilled
template placeholder, an unquoted string.
"""

from __future__ import annotations

import bisect
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf import text_format

from conch._proto import POOL
from conch._proto.model_config_pb2 import ModelConfig
from conch.errors import ConchError, ErrorCode

__all__ = ["ConfigError", "FieldLocator", "parse_config_text", "placeholders"]


class ConfigError(ConchError):
    """A bad model configuration: ``path:line:column: field 'f': what is wrong (hint: what to do)``.

    ``path``, ``line``, ``column`` and ``field`` may each be None when unknown; ``field`` is a dotted
    path such as ``input[0].dims``. ``detail`` is the bare message (Triton's text where it has one).
    """

    def __init__(
        self,
        detail: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
        hint: str | None = None,
        code: ErrorCode = ErrorCode.INVALID_ARG,
    ) -> None:
        self.detail = detail
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        self.field = field
        self.hint = hint
        super().__init__(self._format(), code)

    def _format(self) -> str:
        where = self.path or ""
        if self.path is not None and self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        parts = [where] if where else []
        if self.field:
            parts.append(f"field '{self.field}'")
        parts.append(self.detail + (f" (hint: {self.hint})" if self.hint else ""))
        return ": ".join(parts)

    def __repr__(self) -> str:
        return f"ConfigError({self.message!r})"


# --- tokenising, to tell which field a position belongs to -------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<skip>\s+|\#[^\n]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<number>[-+]?[0-9.][0-9A-Za-z_.+-]*)
    |(?P<punct>[{}\[\]<>:,;])
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(slots=True)
class _Token:
    kind: str
    text: str
    offset: int


@dataclass(slots=True)
class _Frame:
    path: str  # "" for the top level, else e.g. "input[0]"
    descriptor: _descriptor.Descriptor | None
    counts: dict[str, int] = field(default_factory=dict)
    current: str | None = None  # the field whose value is being read
    current_fd: _descriptor.FieldDescriptor | None = None
    current_offset: int = 0
    value_offset: int | None = None  # where the current field's (scalar) value was read


def _tokens(text: str) -> list[_Token]:
    return [
        _Token(m.lastgroup or "other", m.group(), m.start()) for m in _TOKEN.finditer(text) if m.lastgroup != "skip"
    ]


class FieldLocator:
    """Maps field paths (``input[0].dims``) to their first position in a config text, and back."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._positions: dict[str, int] = {}
        self._walk(None)

    def position(self, path: str) -> tuple[int, int] | None:
        """(line, column), both 1-based, of ``path`` or of its closest enclosing field that appears."""
        while path:
            offset = self._positions.get(path)
            if offset is not None:
                return self.line_column(offset)
            path = _parent(path)
        return None

    def field_at(self, line: int, column: int) -> str | None:
        """The field path an error at (line, column) concerns, or None at the top level."""
        return self._walk(self.offset(line, column))

    def offset(self, line: int, column: int) -> int:
        line = max(1, min(line, len(self._line_starts)))
        return self._line_starts[line - 1] + max(column - 1, 0)

    def line_column(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1

    def _line(self, offset: int) -> int:
        return bisect.bisect_right(self._line_starts, offset)

    def _walk(self, stop: int | None) -> str | None:
        tokens = _tokens(self.text)
        stack = [_Frame("", ModelConfig.DESCRIPTOR)]
        lists: list[int] = []  # stack depths at which a '[' list is open
        for index, token in enumerate(tokens):
            frame = stack[-1]
            following = tokens[index + 1].text if index + 1 < len(tokens) else ""
            is_name = token.kind == "ident" and following in (":", "{", "<", "[")
            if stop is not None and token.offset >= stop:
                if is_name:
                    return _join(frame.path, token.text)
                done = frame.value_offset is not None and self._line(frame.value_offset) != self._line(stop)
                if frame.current is not None and not done:
                    return _join(frame.path, frame.current)
                return frame.path or None
            if is_name:
                frame.current = token.text
                frame.current_offset = token.offset
                frame.value_offset = None
                frame.current_fd = frame.descriptor.fields_by_name.get(token.text) if frame.descriptor else None
                self._positions.setdefault(_join(frame.path, token.text), token.offset)
            elif token.text in ("{", "<"):
                name = frame.current or "?"
                fd = frame.current_fd
                in_list = bool(lists) and lists[-1] == len(stack)
                if in_list or (fd is not None and fd.is_repeated):
                    element = frame.counts.get(name, 0)
                    frame.counts[name] = element + 1
                    path = _join(frame.path, f"{name}[{element}]")
                    self._positions.setdefault(path, token.offset if in_list else frame.current_offset)
                else:
                    path = _join(frame.path, name)
                child = fd.message_type if fd is not None and fd.message_type is not None else None
                stack.append(_Frame(path, child))
            elif token.text in ("}", ">"):
                if len(stack) > 1:
                    stack.pop()
                    stack[-1].current = None if not (lists and lists[-1] == len(stack)) else stack[-1].current
            elif token.text == "[":
                lists.append(len(stack))
            elif token.text == "]":
                if lists:
                    lists.pop()
                frame.current = None
            elif token.kind != "punct" and not (lists and lists[-1] == len(stack)):
                frame.value_offset = token.offset
        if stop is not None:
            frame = stack[-1]
            return _join(frame.path, frame.current) if frame.current else (frame.path or None)
        return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _parent(path: str) -> str:
    """``input[0].dims`` -> ``input[0]`` -> ``input`` -> ``""``."""
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path.rpartition(".")[0]


# --- placeholders and hints ------------------------------------------------------------------------

# ``$$TRITON_MODEL_DIRECTORY`` (Triton's own variable) is not a placeholder.
_PLACEHOLDER = re.compile(r"(?<!\$)\$\{[^}\n]*\}|(?<!\$)\$[A-Za-z_][A-Za-z0-9_]*|\{\{[^\n]*?\}\}|\{%[^\n]*?%\}")
_COMMENT = re.compile(r"#[^\"\n]*$", re.M)


def placeholders(text: str) -> list[str]:
    """Template placeholders (``${x}``, ``$x``, ``{{ x }}``, ``{% x %}``) found outside comments."""
    return _PLACEHOLDER.findall(_COMMENT.sub("", text))


def _closest(word: str, choices: list[str]) -> str | None:
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not matches:
        lowered = {choice.lower(): choice for choice in choices}
        return lowered.get(word.lower())
    return matches[0]


def _field_names(type_name: str) -> list[str]:
    try:
        return [f.name for f in POOL.FindMessageTypeByName(type_name).fields]
    except KeyError:
        return []


def _enum_names(type_name: str) -> list[str]:
    try:
        return [v.name for v in POOL.FindEnumTypeByName(type_name).values]
    except KeyError:
        return []


_REWRITES: list[tuple[re.Pattern[str], Any]] = [
    # Python protobuf wording -> the C++ wording Triton logs (what users search for).
    (re.compile(r"^Couldn't parse integer: (.*)$", re.S), lambda m, f: f"Expected integer, got: {m[1]}"),
    (re.compile(r"^Couldn't parse float: (.*)$", re.S), lambda m, f: f"Expected double, got: {m[1]}"),
    (re.compile(r"^Expected string but found: '?(.*?)'?$", re.S), lambda m, f: f"Expected string, got: {m[1]}"),
    (re.compile(r"^Value out of range: (.*)$", re.S), lambda m, f: f"Integer out of range ({m[1]})"),
    (
        re.compile(r"^Expected identifier or number, got (.*?)\.?$", re.S),
        lambda m, f: f"Expected identifier, got: {m[1]}",
    ),
    (
        re.compile(r'^Enum type "[^"]+" has no value named (\S+?)\.?$', re.S),
        lambda m, f: f'Unknown enumeration value of "{m[1]}" for field "{f}".',
    ),
    (
        re.compile(r'^Message type "[^"]+" should not have multiple "([^"]+)" fields\.$', re.S),
        lambda m, f: f'Non-repeated field "{m[1]}" is specified multiple times.',
    ),
]


def _cpp_wording(detail: str, leaf: str) -> str:
    for pattern, rewrite in _REWRITES:
        match = pattern.match(detail)
        if match:
            return str(rewrite(match, leaf))
    return detail


def _hint(detail: str, line_text: str, text: str) -> str | None:
    line_holders = placeholders(re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', line_text))
    if line_holders or re.search(r"got: (\$|\{)", detail):
        total = max(len(placeholders(text)), 1)
        example = line_holders[0] if line_holders else detail.rpartition("got: ")[2]
        return (
            f"the file looks like an unfilled template: '{example}' is a placeholder "
            f"({total} in this file); fill in the template before loading the model"
        )
    match = re.match(r'^Message type "([^"]+)" has no field named "([^"]+)"', detail)
    if match:
        suggestion = _closest(match[2], _field_names(match[1]))
        if suggestion:
            return f"did you mean '{suggestion}'?"
        return "valid fields are: " + ", ".join(_field_names(match[1]))
    match = re.match(r'^Enum type "([^"]+)" has no value named (\S+?)\.?$', detail)
    if match:
        values = _enum_names(match[1])
        suggestion = _closest(match[2], values)
        if suggestion:
            return f"did you mean {suggestion}?"
        return "valid values are: " + ", ".join(values)
    if detail.startswith("Expected string"):
        return 'string values need double quotes, e.g. name: "my_model"'
    if detail.startswith('Expected "true" or "false"'):
        return "use true or false"
    if 'another member of oneof "scheduling_choice"' in detail:
        return "a model has one scheduler: dynamic_batching, sequence_batching or ensemble_scheduling"
    if "another member of oneof" in detail:
        return "only one of these fields may be given"
    if "should not have multiple" in detail:
        return "remove all but one of them"
    return None


_POSITION_PREFIX = re.compile(r"^\d+:\d+ : ")


def _strip_line_echo(detail: str, line_text: str) -> str:
    """Python's parser echoes the offending line as ``'<line>': message``; drop it."""
    for echoed in (line_text, line_text.strip(), line_text.rstrip("\r\n")):
        prefix = f"'{echoed}': "
        if detail.startswith(prefix):
            return detail[len(prefix) :]
    return detail


def parse_config_text(text: str, path: Path | str) -> ModelConfig:
    """Parse config.pbtxt text; raise :class:`ConfigError` naming file, line, column, field and a hint."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise _parse_error(exc, text, path) from None
    return config


def _parse_error(exc: text_format.ParseError, text: str, path: Path | str) -> ConfigError:
    line, column = exc.GetLine(), exc.GetColumn()
    detail = _POSITION_PREFIX.sub("", str(exc))
    lines = text.splitlines()
    line_text = lines[line - 1] if line and 0 < line <= len(lines) else ""
    detail = _strip_line_echo(detail, line_text)
    locator = FieldLocator(text)
    field_path = locator.field_at(line, column or 1) if line else None
    match = re.match(r'^Message type "[^"]+" has no field named "([^"]+)"', detail)
    hint: str | None
    if match and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", match[1]):
        # Python reads a stray value as a field name; C++ (Triton) says "Expected identifier".
        hint = "a field name was expected here: a field takes one value (write lists as [a, b])"
        if placeholders(line_text) or match[1] in ("$", "{"):
            hint = _hint(f"got: {match[1]}", line_text, text)
        detail = f"Expected identifier, got: {match[1]}"
    else:
        if match and field_path and field_path.rpartition(".")[2] != match[1]:
            field_path = _join(field_path, match[1])
        hint = _hint(detail, line_text, text)
    leaf = field_path.rpartition(".")[2] if field_path else ""
    leaf = leaf.split("[", 1)[0]
    return ConfigError(_cpp_wording(detail, leaf), path=path, line=line, column=column, field=field_path, hint=hint)
