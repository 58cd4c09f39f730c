"""JSON in and out, fast, with Triton's (RapidJSON's) behaviour where clients can see it.

Parsing tries orjson first. RapidJSON, which Triton uses, also accepts ``NaN``/``Infinity`` and strings
holding bytes that are not UTF-8; those documents fall back to the standard library, decoding with
``surrogateescape`` so BYTES data keeps its exact bytes (:func:`text_bytes` turns such a string back).
A document neither accepts gets Triton's error, ``failed to parse the request JSON buffer: <RapidJSON
message> at <byte offset>``, whose INTERNAL code makes it a 500 as in Triton.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import orjson

from conch.errors import ConchError, ErrorCode

MAX_NESTING_DEPTH = 100
NESTING_ERROR = f"JSON nesting depth exceeds maximum allowed limit ({MAX_NESTING_DEPTH})"

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def loads(buffer: bytes | bytearray | memoryview) -> Any:
    """Parse a request JSON document; raises :class:`ConchError` with Triton's text."""
    try:
        return orjson.loads(buffer)
    except orjson.JSONDecodeError:
        pass
    text = bytes(buffer).decode("utf-8", "surrogateescape")
    # RapidJSON reads a NUL as the end of the document (a document "ends" there, valid or not).
    text = text.split("\x00", 1)[0]
    try:
        return json.loads(text)
    except RecursionError:
        raise ConchError(f"failed to parse the request JSON buffer: {NESTING_ERROR}", ErrorCode.INVALID_ARG) from None
    except json.JSONDecodeError as exc:
        message, offset = _rapidjson_error(text, exc)
        raise ConchError(
            f"failed to parse the request JSON buffer: {message} at {offset}", ErrorCode.INTERNAL
        ) from None


def text_bytes(text: str) -> bytes:
    """The bytes a parsed JSON string stood for (undoing the ``surrogateescape`` fallback)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def dumps(value: Any) -> bytes:
    """Compact JSON; numpy arrays allowed. Strings holding escaped non-UTF-8 bytes come out raw."""
    try:
        return orjson.dumps(value, option=_DUMPS_OPTIONS)
    except TypeError:
        return dumps_slow(value)


def dumps_fast(value: Any) -> bytes:
    """:func:`dumps` without the fallback: raises TypeError where orjson cannot write ``value``."""
    return orjson.dumps(value, option=_DUMPS_OPTIONS)


def dumps_slow(value: Any) -> bytes:
    """The standard library's encoder: ``NaN``/``Infinity`` as RapidJSON writes them, raw bytes kept."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_default)
    return text.encode("utf-8", "surrogateescape")


def _default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_EXPONENT = re.compile(rb"(-?)([0-9])(?:\.([0-9]+))?e([+-]?)([0-9]+)")


def float_array(values: np.ndarray) -> bytes:
    """A flat float64 array as a JSON array, each number as RapidJSON (Triton) writes it.

    RapidJSON uses plain notation for 1e-6 <= |v| < 1e21 and ``1.5e-7`` / ``1e21`` (no ``+``)
    otherwise, and writes ``NaN``/``Infinity``; orjson switches to exponents at 1e-5 and 1e16. orjson
    writes the array; the numbers whose text would differ, found with numpy, are written here.
    """
    if not np.isfinite(values).all():
        return b"[" + b",".join(map(rapidjson_float, values.tolist())) + b"]"
    magnitude = np.abs(values)
    differs = np.flatnonzero((magnitude >= 1e16) | ((magnitude >= 1e-6) & (magnitude < 1e-5)))
    if differs.size == 0:
        return orjson.dumps(values, option=_DUMPS_OPTIONS)
    pieces: list[bytes | memoryview] = []
    done = 0
    for index in differs.tolist():
        if index > done:
            pieces.append(memoryview(orjson.dumps(values[done:index], option=_DUMPS_OPTIONS))[1:-1])
        pieces.append(rapidjson_float(float(values[index])))
        done = index + 1
    if done < len(values):
        pieces.append(memoryview(orjson.dumps(values[done:], option=_DUMPS_OPTIONS))[1:-1])
    return b"[" + b",".join(pieces) + b"]"


def rapidjson_float(value: float) -> bytes:
    """One double as RapidJSON writes it (``NaN``/``Infinity`` included)."""
    if value != value:
        return b"NaN"
    if value in (float("inf"), float("-inf")):
        return b"Infinity" if value > 0 else b"-Infinity"
    text = repr(value).encode()
    return _rapidjson_number(text) if b"e" in text else text


def _rapidjson_number(token: bytes) -> bytes:
    match = _EXPONENT.fullmatch(token)
    if match is None:
        return token
    sign, lead, fraction, exponent_sign, exponent = match.groups()
    digits = lead + (fraction or b"")
    if fraction is not None:
        digits = digits.rstrip(b"0") or b"0"
    length = len(digits)
    kk = (-1 if exponent_sign == b"-" else 1) * int(exponent) + 1  # 10^(kk-1) <= |v| < 10^kk
    if length <= kk <= 21:
        return sign + digits + b"0" * (kk - length) + b".0"
    if 0 < kk <= 21:
        return sign + digits[:kk] + b"." + digits[kk:]
    if -6 < kk <= 0:
        return sign + b"0." + b"0" * -kk + digits
    mantissa = digits[:1] + (b"." + digits[1:] if length > 1 else b"")
    return sign + mantissa + b"e" + str(kk - 1).encode()


def error_body(message: str) -> bytes:
    """``{"error": message}`` as Triton writes it."""
    try:
        return orjson.dumps({"error": message})
    except TypeError:
        return dumps_slow({"error": message})


# -- RapidJSON's parse errors -------------------------------------------------------------------

_EMPTY = "The document is empty."
_INVALID_VALUE = "Invalid value."
_ROOT_NOT_SINGULAR = "The document root must not be followed by other values."
_MISS_NAME = "Missing a name for object member."
_MISS_COLON = "Missing a colon after a name of object member."
_MISS_COMMA_OBJECT = "Missing a comma or '}' after an object member."
_MISS_COMMA_ARRAY = "Missing a comma or ']' after an array element."
_BAD_HEX = "Incorrect hex digit after \\u escape in string."
_BAD_ESCAPE = "Invalid escape character in string."
_MISS_QUOTE = "Missing a closing quotation mark in string."
_BAD_ENCODING = "Invalid encoding in string."
_MISS_FRACTION = "Miss fraction part in number."
_MISS_EXPONENT = "Miss exponent in number."

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")


def _rapidjson_error(text: str, exc: json.JSONDecodeError) -> tuple[str, int]:
    """Translate the standard library's error into RapidJSON's message and (byte) offset."""
    pos = exc.pos
    msg = exc.msg
    if msg == "Expecting value":
        if not text[pos:].strip(" \t\r\n"):
            message = _EMPTY if not text.strip(" \t\r\n") else _INVALID_VALUE
        else:
            message, pos = _INVALID_VALUE, pos + _literal_prefix(text, pos)
    elif msg.startswith("Expecting property name"):
        message = _MISS_NAME
    elif msg == "Expecting ':' delimiter":
        message = _MISS_COLON
    elif msg == "Expecting ',' delimiter":
        message, pos = _after_value(text, pos)
    elif msg == "Extra data":
        message, pos = _extra_data(text, pos)
    elif msg.startswith("Unterminated string"):
        message, pos = _MISS_QUOTE, len(text)
    elif msg == "Invalid \\uXXXX escape":
        message, pos = _BAD_HEX, max(pos - 1, 0)
    elif msg.startswith("Invalid \\escape"):
        message = _BAD_ESCAPE
    elif msg.startswith("Invalid control character"):
        message = _BAD_ENCODING
    else:
        message = _INVALID_VALUE
    return message, len(text[:pos].encode("utf-8", "surrogateescape"))


def _literal_prefix(text: str, pos: int) -> int:
    """How far RapidJSON reads into a broken literal (``tru``, ``-x``) before it gives up."""
    if text.startswith("-", pos) and not text.startswith("-Infinity", pos):
        return 1
    best = 0
    for literal in _LITERALS:
        matched = 0
        while matched < len(literal) and text.startswith(literal[matched], pos + matched):
            matched += 1
        best = max(best, matched)
    return best


def _after_value(text: str, pos: int) -> tuple[str, int]:
    """A value was not followed by ``,`` or the closing bracket: a broken number, or which container."""
    if text.startswith(".", pos):
        return _MISS_FRACTION, pos + 1
    if text.startswith(("e", "E"), pos):
        pos += 1
        if text.startswith(("+", "-"), pos):
            pos += 1
        return _MISS_EXPONENT, pos
    return (_MISS_COMMA_OBJECT if _innermost(text, pos) == "{" else _MISS_COMMA_ARRAY), pos


def _extra_data(text: str, pos: int) -> tuple[str, int]:
    """Trailing text after the root value; a root number with a broken fraction or exponent first."""
    if text.startswith(".", pos):
        return _MISS_FRACTION, pos + 1
    if text.startswith(("e", "E"), pos) and text[:pos].strip(" \t\r\n")[-1:].isdigit():
        return _after_value(text, pos)
    return _ROOT_NOT_SINGULAR, pos


def _innermost(text: str, pos: int) -> str:
    """The innermost container open at ``pos``: ``{`` or ``[``."""
    stack: list[str] = []
    for match in _BRACKET.finditer(_STRING.sub("", text[:pos])):
        char = match.group()
        if char in "[{":
            stack.append(char)
        elif stack:
            stack.pop()
    return stack[-1] if stack else "["
