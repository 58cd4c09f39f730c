"""Triton's error codes and the one exception type that carries them to the frontends."""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """TRITONSERVER_Error_Code, with the HTTP status and gRPC status name each maps to."""

    UNKNOWN = ("UNKNOWN", 400, "UNKNOWN")
    INTERNAL = ("INTERNAL", 500, "INTERNAL")
    NOT_FOUND = ("NOT_FOUND", 404, "NOT_FOUND")
    INVALID_ARG = ("INVALID_ARG", 400, "INVALID_ARGUMENT")
    UNAVAILABLE = ("UNAVAILABLE", 503, "UNAVAILABLE")
    UNSUPPORTED = ("UNSUPPORTED", 501, "UNIMPLEMENTED")
    ALREADY_EXISTS = ("ALREADY_EXISTS", 400, "ALREADY_EXISTS")
    CANCELLED = ("CANCELLED", 400, "CANCELLED")

    def __init__(self, label: str, http_status: int, grpc_status: str) -> None:
        self.label = label
        self.http_status = http_status
        self.grpc_status = grpc_status


class ConchError(Exception):
    """An error with a Triton error code; its message is what the client sees, verbatim."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_ARG) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __repr__(self) -> str:
        return f"ConchError({self.message!r}, {self.code.label})"


def invalid_arg(message: str) -> ConchError:
    return ConchError(message, ErrorCode.INVALID_ARG)
