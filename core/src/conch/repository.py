"""Model repositories on disk: which models exist, their version folders, and which versions to serve.

Follows Triton's model repository manager and ``VersionsToLoad``: every sub-folder of a repository is a
model; a name found in two repositories is unavailable; version folders are numeric; the version
policy picks among them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from conch._proto.model_config_pb2 import ModelConfig
from conch.errors import ConchError, ErrorCode

__all__ = [
    "DUPLICATE_REASON",
    "ModelLocation",
    "Repository",
    "VersionScan",
    "fingerprint",
    "resolve_versions",
    "scan_versions",
    "select_versions",
]

log = logging.getLogger("conch.repository")

#: Triton's repository-index reason for a model found in more than one repository.
DUPLICATE_REASON = "model appears in two or more repositories"
#: Folders of a model that are never versions (core ``VersionsToLoad``).
NOT_VERSIONS = frozenset({"warmup", "initial_state", "configs"})


@dataclass(frozen=True, slots=True)
class ModelLocation:
    """A model folder: ``path`` is ``<repository>/<name>``."""

    name: str
    path: Path
    repository: Path


@dataclass(frozen=True, slots=True)
class VersionScan:
    """The numeric version folders of a model, and the folders ignored with the warning given for each."""

    versions: list[int]
    ignored: list[tuple[str, str]]  # (folder name, warning)


def scan_versions(model_dir: Path) -> VersionScan:
    """Version folders of ``model_dir`` without logging; hidden entries and files are skipped silently."""
    versions: list[int] = []
    ignored: list[tuple[str, str]] = []
    for entry in sorted(model_dir.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.startswith(".") or name in NOT_VERSIONS or not entry.is_dir():
            continue
        if len(name) > 1 and name[0] == "0":
            ignored.append(
                (name, f"ignore version directory '{name}' which contains leading zeros in its directory name")
            )
        elif name.isascii() and name.isdigit():
            versions.append(int(name))
        else:
            ignored.append((name, f"ignore version directory '{name}' which fails to convert to integral number"))
    return VersionScan(sorted(versions), ignored)


def resolve_versions(config: ModelConfig, available: list[int]) -> tuple[list[int], list[int]]:
    """(versions the version policy serves among ``available`` ascending, ``specific`` versions with no folder)."""
    present = sorted(set(available))
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific":
        wanted = [int(version) for version in policy.specific.versions]
        return sorted({v for v in wanted if v in present}), [v for v in wanted if v not in present]
    if choice == "all":
        return present, []
    count = policy.latest.num_versions if choice == "latest" else 1
    return (present[len(present) - count :] if count > 0 else []), []


def select_versions(config: ModelConfig, available: list[int]) -> list[int]:
    """The versions ``config.version_policy`` serves among ``available``, ascending (core ``VersionsToLoad``).

    A ``specific`` version with no folder is logged and skipped; no version at all is an error.
    """
    selected, missing = resolve_versions(config, available)
    for version in missing:
        log.error(
            "version %d is specified for model '%s', but the version directory is not present", version, config.name
        )
    if not selected:
        raise ConchError(
            f"at least one version must be available under the version policy of model '{config.name}'",
            ErrorCode.INVALID_ARG,
        )
    return selected


def fingerprint(model_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """What poll mode compares: every file and folder of a model (path, size, mtime), hidden ones skipped.

    It changes when config.pbtxt, a label file or a model file changes, or a version folder comes or goes.
    """
    found: list[tuple[str, int, int]] = []
    for folder, dirs, files in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(folder)
        for name in [*dirs, *sorted(f for f in files if not f.startswith("."))]:
            try:
                stat = (base / name).stat()
            except OSError:
                continue  # removed while we looked: the next poll sees the result
            is_dir = name in dirs
            found.append((str((base / name).relative_to(model_dir)), 0 if is_dir else stat.st_size, 0 if is_dir else stat.st_mtime_ns))
    return tuple(found)


class Repository:
    """One or more repository roots (``--model-repository``, repeatable)."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(root) for root in roots]

    def scan(self) -> tuple[dict[str, ModelLocation], dict[str, str]]:
        """(models by name, reasons by name for models that cannot be served).

        Raises :class:`ConchError` naming a root that does not exist or is not a folder.
        """
        found: dict[str, list[ModelLocation]] = {}
        for root in self.roots:
            for entry in self._models_in(root):
                found.setdefault(entry.name, []).append(entry)
        models: dict[str, ModelLocation] = {}
        unavailable: dict[str, str] = {}
        for name, locations in sorted(found.items()):
            if len(locations) == 1:
                models[name] = locations[0]
            else:
                paths = ", ".join(str(location.path) for location in locations)
                unavailable[name] = f"{DUPLICATE_REASON}: {paths}"
                log.error("failed to poll model '%s': not unique across all model repositories (%s)", name, paths)
        return models, unavailable

    def find(self, name: str) -> ModelLocation | None:
        """The model's location, or None when absent or not unique."""
        models, _ = self.scan()
        return models.get(name)

    @staticmethod
    def _models_in(root: Path) -> list[ModelLocation]:
        if not root.exists():
            raise ConchError(
                f"failed to open directory {root}: model repository '{root}' does not exist", ErrorCode.INTERNAL
            )
        if not root.is_dir():
            raise ConchError(
                f"failed to open directory {root}: model repository '{root}' is not a directory", ErrorCode.INTERNAL
            )
        return [
            ModelLocation(entry.name, entry, root)
            for entry in sorted(root.iterdir(), key=lambda p: p.name)
            if entry.is_dir() and not entry.name.startswith(".")
        ]

    @staticmethod
    def versions(path: Path) -> list[int]:
        """Numeric version folders of a model, ascending; other folders are logged and ignored (as Triton)."""
        scan = scan_versions(path)
        for _, warning in scan.ignored:
            log.warning("%s", warning)
        return scan.versions

    @staticmethod
    def select_versions(config: ModelConfig, available: list[int]) -> list[int]:
        """See :func:`select_versions`."""
        return select_versions(config, available)
