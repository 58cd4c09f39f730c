"""``conch check``: every problem in one or more model repositories, without stopping at the first.

Runs what a server start runs for each model (repository scan, config pipeline, version selection)
and reports each problem as ``path:line:column: message``, like a compiler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from conch.config.loader import ConfigReport, inspect_model_config
from conch.errors import ConchError
from conch.repository import ModelLocation, Repository, resolve_versions, scan_versions

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig
    from conch.plugins import Plugins

__all__ = ["Problem", "check_repositories", "format_problems"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem; ``severity`` is "error" (the model would not load) or "warning" (it would, with this)."""

    path: str
    line: int | None
    column: int | None
    field: str | None
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}: {prefix}{self.message}"


def check_repositories(
    roots: list[Path],
    plugins: Plugins,
    auto_complete: bool = True,
    *,
    config_name: str | None = None,
    default_max_batch_size: int = 4,
    gpu_count: int = 0,
) -> list[Problem]:
    """Every problem in ``roots``: missing repositories, duplicate models, config errors, versions."""
    problems: list[Problem] = []
    models: dict[str, list[ModelLocation]] = {}
    reports: dict[str, ConfigReport] = {}
    for root in roots:
        repository = Repository([root])
        try:
            found, _ = repository.scan()
        except ConchError as exc:
            problems.append(Problem(str(root), None, None, None, exc.message))
            continue
        for name, location in found.items():
            models.setdefault(name, []).append(location)
    for name, locations in sorted(models.items()):
        if len(locations) > 1:
            paths = ", ".join(str(location.path) for location in locations)
            for location in locations:
                message = f"model '{name}' is unavailable: model appears in two or more repositories: {paths}"
                problems.append(Problem(str(location.path), None, None, None, message))
            continue
        location = locations[0]
        report = inspect_model_config(
            location.path,
            plugins=plugins,
            auto_complete=auto_complete,
            config_name=config_name,
            default_max_batch_size=default_max_batch_size,
            gpu_count=gpu_count,
        )
        for error in report.errors:
            path = error.path or str(location.path)
            problems.append(Problem(path, error.line, error.column, error.field, _strip_location(error)))
        problems.extend(_version_problems(location.path, report))
        reports[name] = report
    problems.extend(_ensemble_problems(reports))
    return problems


def _ensemble_problems(reports: dict[str, ConfigReport]) -> list[Problem]:
    """Each ensemble against the models its steps call, as a load would check it once they are loaded."""
    problems: list[Problem] = []
    ensembles = {
        name: report.config
        for name, report in reports.items()
        if report.config is not None and not report.errors and report.config.HasField("ensemble_scheduling")
    }
    for name, config in sorted(ensembles.items()):
        message = _ensemble_problem(name, config, reports, ensembles)
        if message is None:
            continue
        report = reports[name]
        position = report.position("ensemble_scheduling")
        line, column = position if position else (None, None)
        path = str(report.path) if report.file_read else name
        problems.append(Problem(path, line, column, "ensemble_scheduling", message))
    return problems


def _ensemble_problem(
    name: str, config: ModelConfig, reports: dict[str, ConfigReport], ensembles: dict[str, ModelConfig]
) -> str | None:
    """What would stop ``name`` from loading once its composing models are loaded, or None."""
    from conch.config.ensemble import check_composing, cycle_error

    called = sorted({step.model_name for step in config.ensemble_scheduling.step})
    missing = [model for model in called if model not in reports]
    if missing:
        return f"ensemble {name} contains models that are not available or ambiguous: {', '.join(missing)}"
    cycle = cycle_error(name, {e: {s.model_name for s in c.ensemble_scheduling.step} for e, c in ensembles.items()})
    if cycle is not None:
        return cycle.message
    composing: dict[str, ModelConfig] = {}
    for model in called:
        composed = reports[model].config
        if composed is None or reports[model].errors:
            return f"ensemble '{name}' depends on '{model}' whose configuration has errors (see above)"
        composing[model] = composed
    try:
        check_composing(config, composing)
    except ConchError as exc:
        return exc.message
    return None


def _strip_location(error: ConchError) -> str:
    """The message without the ``path:line:col:`` prefix that :class:`Problem` prints itself."""
    field = getattr(error, "field", None)
    detail = getattr(error, "detail", error.message)
    hint = getattr(error, "hint", None)
    text = f"field '{field}': {detail}" if field else detail
    return text + (f" (hint: {hint})" if hint else "")


def _version_problems(model_dir: Path, report: ConfigReport) -> list[Problem]:
    problems: list[Problem] = []
    scan = scan_versions(model_dir)
    for folder, warning in scan.ignored:
        problems.append(Problem(str(model_dir / folder), None, None, None, warning, "warning"))
    config = report.config
    if config is None or report.errors:
        return problems
    path = str(report.path) if report.file_read else str(model_dir)
    position = report.position("version_policy")
    line, column = position if position else (None, None)
    selected, missing = resolve_versions(config, scan.versions)
    for version in missing:
        message = f"version {version} is specified for model '{config.name}', but the version directory is not present"
        problems.append(Problem(path, line, column, "version_policy", message, "warning"))
    if not selected:
        message = f"at least one version must be available under the version policy of model '{config.name}'"
        problems.append(Problem(path, line, column, "version_policy", message))
    return problems


def format_problems(problems: list[Problem]) -> str:
    """One line per problem and a summary line, e.g. ``2 errors, 1 warning``; "no problems found" if none."""
    if not problems:
        return "no problems found"
    errors = sum(1 for problem in problems if problem.severity == "error")
    warnings = len(problems) - errors
    summary = f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}"
    return "\n".join([*(str(problem) for problem in problems), summary])
