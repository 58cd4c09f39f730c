"""A model folder to a complete, validated ModelConfig and its backend, following Triton's pipeline.

Read ``config.pbtxt`` (or ``configs/<name>.pbtxt``), fill the name and the backend fields, let the
backend auto-complete the rest, normalise, validate. :func:`inspect_model_config` collects every
problem (for ``conch check``); :func:`load_model_config` raises the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from conch._proto.model_config_pb2 import ModelConfig
from conch.backend import Backend, ModelContext
from conch.config.normalize import ENSEMBLE_PLATFORM, PYTHON_FILE, fill_backend_fields, normalize_config
from conch.config.parse import ConfigError, FieldLocator, parse_config_text
from conch.config.validate import validate_config
from conch.errors import ConchError, ErrorCode

if TYPE_CHECKING:
    from conch.plugins import Plugins

__all__ = ["CONFIG_FILE", "ConfigReport", "config_path", "inspect_model_config", "load_model_config"]

CONFIG_FILE = "config.pbtxt"
CUSTOM_CONFIG_FOLDER = "configs"


@dataclass
class ConfigReport:
    """What loading a model's config found: the config (None when unreadable), its backend, the problems."""

    model_dir: Path
    path: Path  # the config file read, or that would have been read
    config: ModelConfig | None = None
    backend: Backend | None = None
    errors: list[ConfigError] = field(default_factory=list)
    file_read: bool = False
    locator: FieldLocator | None = None  # positions of fields in the file read

    def position(self, field: str) -> tuple[int, int] | None:
        """(line, column) of ``field`` (or its closest enclosing field) in the file read."""
        return self.locator.position(field) if self.locator is not None else None


def config_path(model_dir: Path, config_name: str | None = None) -> Path:
    """``<model>/configs/<config_name>.pbtxt`` when it exists, else ``<model>/config.pbtxt`` (Triton's rule)."""
    if config_name:
        custom = model_dir / CUSTOM_CONFIG_FOLDER / f"{config_name}.pbtxt"
        if custom.is_file():
            return custom
    return model_dir / CONFIG_FILE


def load_model_config(
    model_dir: Path,
    *,
    plugins: Plugins,
    auto_complete: bool = True,
    config_name: str | None = None,
    default_max_batch_size: int = 4,
    gpu_count: int = 0,
    override: ModelConfig | None = None,
) -> tuple[ModelConfig, Backend | None]:
    """The model's complete config and its backend (None for an ensemble); raises the first ConfigError.

    ``override`` replaces the config file (Triton's ``config`` load parameter); it is still
    auto-completed, normalised and validated.
    """
    report = inspect_model_config(
        model_dir,
        plugins=plugins,
        auto_complete=auto_complete,
        config_name=config_name,
        default_max_batch_size=default_max_batch_size,
        gpu_count=gpu_count,
        override=override,
    )
    if report.errors:
        raise report.errors[0]
    assert report.config is not None
    return report.config, report.backend


def inspect_model_config(
    model_dir: Path,
    *,
    plugins: Plugins,
    auto_complete: bool = True,
    config_name: str | None = None,
    default_max_batch_size: int = 4,
    gpu_count: int = 0,
    override: ModelConfig | None = None,
) -> ConfigReport:
    """Run the whole pipeline and collect every problem instead of stopping at the first."""
    model_dir = Path(model_dir)
    report = ConfigReport(model_dir=model_dir, path=config_path(model_dir, config_name))
    text = _read(report, auto_complete, override)
    if report.config is None:
        return report
    config = report.config
    report.locator = FieldLocator(text) if text is not None else None

    def error(field: str | None, detail: str, code: ErrorCode = ErrorCode.INVALID_ARG, hint: str | None = None) -> None:
        position = report.position(field) if field else None
        report.errors.append(
            ConfigError(
                detail,
                path=report.path if report.file_read else model_dir,
                line=position[0] if position else None,
                column=position[1] if position else None,
                field=field,
                hint=hint,
                code=code,
            )
        )

    model_name = model_dir.name or model_dir.resolve().name
    if config.name and config.name != model_name:
        error(
            "name",
            f"unexpected directory name '{model_name}' for model '{config.name}', directory name must equal model name",
            hint=f"rename the folder to '{config.name}' or set name: \"{model_name}\"",
        )
    backends = plugins.backends()
    try:
        fill_backend_fields(config, model_name, model_dir, backends)
    except ConfigError as exc:
        error(exc.field, exc.detail, exc.code, exc.hint)
        return report

    backend = _resolve_backend(config, backends, error)
    report.backend = backend
    if auto_complete and backend is not None:
        config = _auto_complete(config, backend, model_dir, default_max_batch_size, error)
        report.config = config
    normalize_config(config, backend=backend, gpu_count=gpu_count)
    for issue in validate_config(config, gpu_count=gpu_count):
        error(issue.field, issue.message, issue.code)
    return report


def _read(report: ConfigReport, auto_complete: bool, override: ModelConfig | None) -> str | None:
    """Set ``report.config`` from the override, the file, or empty (auto-complete on); the text read."""
    if override is not None:
        report.config = ModelConfig()
        report.config.CopyFrom(override)
        return None
    path = report.path
    if not path.exists():
        if auto_complete:
            report.config = ModelConfig()
            return None
        report.errors.append(
            ConfigError(
                f"failed to open text file for read {path}: No such file or directory",
                path=path,
                hint="auto-complete is disabled (--disable-auto-complete-config), so every model needs a config.pbtxt",
            )
        )
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        report.errors.append(
            ConfigError(f"failed to read text proto from {path}: not UTF-8 text ({exc.reason})", path=path)
        )
        return None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        report.errors.append(ConfigError(f"failed to open text file for read {path}: {reason}", path=path))
        return None
    try:
        report.config = parse_config_text(text, path)
    except ConfigError as exc:
        report.errors.append(exc)
        return None
    report.file_read = True
    return text


def _resolve_backend(config: ModelConfig, backends: dict[str, Backend], error: _ErrorFn) -> Backend | None:
    """The registered backend the config names; python-based backends (``runtime: "model.py"``) use python."""
    if config.platform == ENSEMBLE_PLATFORM or not config.backend:
        return None
    backend = backends.get(config.backend)
    if backend is None and config.runtime == PYTHON_FILE:
        backend = backends.get("python")
    if backend is None:
        installed = ", ".join(sorted(backends)) or "none"
        error(
            "backend",
            f"unable to find backend library for backend '{config.backend}', try specifying runtime on the model "
            "configuration.",
            hint=f"installed backends: {installed}; install the Conch plugin that provides '{config.backend}'",
        )
    return backend


def _auto_complete(
    config: ModelConfig, backend: Backend, model_dir: Path, default_max_batch_size: int, error: _ErrorFn
) -> ModelConfig:
    """Let the backend fill what the config leaves out; its errors are reported, not raised."""
    settings = dict(backend.settings)
    settings.setdefault("default-max-batch-size", str(default_max_batch_size))
    context = ModelContext(
        name=config.name,
        version=_latest_version(model_dir),
        model_dir=model_dir,
        config=config,
        backend_settings=settings,
    )
    try:
        backend.auto_complete_config(context)
    except ConchError as exc:
        error(None, exc.message, exc.code)
    except Exception as exc:  # noqa: BLE001 - a backend's or model's bug must become a load error
        error(
            None,
            f"auto-complete of model '{config.name}' by backend '{backend.name}' failed: {type(exc).__name__}: {exc}",
        )
    return context.config


def _latest_version(model_dir: Path) -> int:
    """The highest numeric version folder, or 1 when there is none."""
    versions = []
    try:
        for entry in model_dir.iterdir():
            name = entry.name
            if name.isascii() and name.isdigit() and (name == "0" or name[0] != "0") and entry.is_dir():
                versions.append(int(name))
    except OSError:
        pass
    return max(versions, default=1)


class _ErrorFn(Protocol):
    """How the pipeline steps report a problem."""

    def __call__(
        self, field: str | None, detail: str, code: ErrorCode = ErrorCode.INVALID_ARG, hint: str | None = None
    ) -> None: ...
