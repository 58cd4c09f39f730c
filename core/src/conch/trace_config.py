"""Start-up trace settings: ``--trace-config [<mode>,]<key>=<value>`` and the deprecated ``--trace-*`` flags."""

from __future__ import annotations

from dataclasses import dataclass

from conch import tracing
from conch.errors import ConchError

#: Triton's warnings for the deprecated flags, which still work in 2.51.
DEPRECATED = {
    "--trace-file": "--trace-config triton,file=<filepath>",
    "--trace-level": "--trace-config level=<OFF|TIMESTAMPS|TENSORS>",
    "--trace-rate": "--trace-config rate=<rate value>",
    "--trace-count": "--trace-config count=<count value>",
    "--trace-log-frequency": "--trace-config triton,log-frequency=<log frequency value>",
}


def deprecation(flag: str) -> str:
    """The warning tritonserver prints for a deprecated trace flag."""
    return (
        f"Warning: '{flag}' has been deprecated and will be removed in future releases. "
        f"Please use '{DEPRECATED[flag]} instead."
    )


@dataclass
class TraceOptions:
    """The trace settings the server starts with (Triton's defaults)."""

    level: int = 0
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""

    def manager(self) -> tracing.TraceManager:
        return tracing.TraceManager(self.level, self.rate, self.count, self.log_frequency, self.file)

    def set_level(self, text: str) -> None:
        """Add a level (``OFF`` clears them all), any case."""
        name = text.upper()
        if name == "OFF":
            self.level = 0
        elif name in tracing.LEVEL_NAMES:
            self.level |= tracing.LEVEL_NAMES[name]
        else:
            raise ValueError(f"invalid value for trace level option: {text.lower()}")

    def set(self, key: str, value: str) -> None:
        """One global or ``triton`` setting by its ``--trace-config`` name."""
        if key == "level":
            self.set_level(value)
        elif key == "file":
            self.file = value
        elif key in ("rate", "count", "log-frequency"):
            name = {"rate": "trace_rate", "count": "trace_count", "log-frequency": "log_frequency"}[key]
            try:
                number = tracing.parse_number(name, value)
            except ConchError as exc:
                raise ValueError(f"invalid value for trace {key} option: {value} ({exc.message})") from None
            if key == "rate":
                self.rate = number
            elif key == "count":
                self.count = number
            else:
                self.log_frequency = number

    def apply(self, text: str) -> None:
        """``--trace-config [<mode>,]<key>=<value>``; raises ValueError with the reason."""
        mode, comma, setting = text.partition(",")
        if not comma:
            mode, setting = "", text
        key, equals, value = setting.partition("=")
        if not equals or not key:
            raise ValueError(f"invalid --trace-config '{text}': expected [<mode>,]<key>=<value>")
        if mode == "opentelemetry" or (not mode and key == "mode" and value != tracing.MODE):
            raise ValueError(f"--trace-config '{text}': Conch traces in 'triton' mode only")
        if mode not in ("", tracing.MODE):
            raise ValueError(f"invalid --trace-config '{text}': unknown trace mode '{mode}'")
        if mode == tracing.MODE and key in ("file", "log-frequency"):
            self.set(key, value)
        elif not mode and key in ("level", "rate", "count"):
            self.set(key, value)
        # Other keys are stored by Triton for its modes and not used by 'triton' tracing.
