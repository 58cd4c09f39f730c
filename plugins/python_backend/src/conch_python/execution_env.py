"""``EXECUTION_ENV_PATH``: a model's own Python packages, as Triton's Python backend takes them.

A model config may name an environment its ``model.py`` needs::

    parameters: { key: "EXECUTION_ENV_PATH", value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }

The value is a conda-pack archive (``.tar.gz``/``.tgz``/``.tar``) or an unpacked environment folder;
``$$TRITON_MODEL_DIRECTORY`` stands for the model's folder. An archive is unpacked once per archive
(path, size and modification time) into a cache folder, safely (no absolute paths, no links leaving
it). The worker processes of the model run the server's interpreter with the environment in front:
its ``lib/pythonX.Y/site-packages`` first on ``sys.path`` (so the model's versions of its packages win),
its ``lib`` first on ``LD_LIBRARY_PATH``, its ``bin`` first on ``PATH``, ``CONDA_PREFIX`` set. As in
Triton, whose stub must match the environment's Python, the environment's ``X.Y`` must be the
server's; anything else fails the load with a message that says which.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from conch.errors import ConchError, ErrorCode

PARAMETER = "EXECUTION_ENV_PATH"
MODEL_DIRECTORY = "$$TRITON_MODEL_DIRECTORY"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
#: Set in a worker's environment to the site-packages folder whose ``.pth`` files it processes.
SITE_VARIABLE = "CONCH_EXECUTION_ENV_SITE"
_lock = threading.Lock()  # instances of a model load in parallel: one unpacks, the others wait


@dataclass(frozen=True)
class ExecutionEnv:
    """An unpacked environment and what a worker's process environment gets from it."""

    root: Path
    site_packages: Path

    def apply(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` (a copy of ``os.environ``) with this environment in front."""
        out = dict(env)
        out["PYTHONPATH"] = _front(str(self.site_packages), env.get("PYTHONPATH", ""))
        out["LD_LIBRARY_PATH"] = _front(str(self.root / "lib"), env.get("LD_LIBRARY_PATH", ""))
        out["PATH"] = _front(str(self.root / "bin"), env.get("PATH", ""))
        out["CONDA_PREFIX"] = str(self.root)
        out[SITE_VARIABLE] = str(self.site_packages)  # the worker also reads its .pth files
        return out


def from_parameter(value: str, model_dir: Path, model: str) -> ExecutionEnv | None:
    """The environment a model's ``EXECUTION_ENV_PATH`` value names (unpacked if needed), or None for ""."""
    value = value.strip()
    if not value:
        return None
    return prepare(value.replace(MODEL_DIRECTORY, str(model_dir)), model)


def prepare(location: str, model: str) -> ExecutionEnv:
    """Unpack (once) or take the environment at ``location`` and check its Python version."""
    path = Path(location)
    where = f"model '{model}': parameter {PARAMETER} '{location}'"
    if path.is_dir():
        root = path
    elif path.is_file():
        if not location.endswith(_ARCHIVE_SUFFIXES):
            raise ConchError(
                f"{where}: expected a conda-pack archive (.tar.gz, .tgz, .tar) or an environment folder",
                ErrorCode.INVALID_ARG,
            )
        root = _unpacked(path, where)
    else:
        raise ConchError(f"{where}: no such file or folder", ErrorCode.INVALID_ARG)
    wanted = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = sorted(p.parent.name for p in (root / "lib").glob("python3*/site-packages") if p.is_dir())
    if wanted not in found:
        have = ", ".join(found) if found else "no lib/python3.*/site-packages"
        raise ConchError(
            f"{where}: the environment must have the server's Python ({wanted}, lib/{wanted}/site-packages), "
            f"it has {have}; pack it with the same Python version as the server's",
            ErrorCode.INVALID_ARG,
        )
    return ExecutionEnv(root, root / "lib" / wanted / "site-packages")


def cache_root() -> Path:
    """Where archives are unpacked: ``$CONCH_ENV_CACHE``, else ``<tmp>/conch-python-envs``."""
    return Path(os.environ.get("CONCH_ENV_CACHE") or Path(tempfile.gettempdir()) / "conch-python-envs")


def _unpacked(archive: Path, where: str) -> Path:
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    target = cache_root() / key
    done = target / ".conch-unpacked"
    with _lock:
        if done.exists():
            return target
        work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=_made(cache_root())))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(work, filter="data")  # refuses absolute paths and links out of the folder
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise ConchError(f"{where}: could not unpack it: {exc}", ErrorCode.INVALID_ARG) from None
        (work / ".conch-unpacked").write_text(str(archive))
        try:
            work.rename(target)  # whole or not at all
        except OSError:
            shutil.rmtree(work, ignore_errors=True)  # another server unpacked it meanwhile
            if not done.exists():
                raise
        return target


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def use_site_packages() -> None:
    """In a worker: process the ``.pth`` files of the environment's site-packages (already first on
    ``sys.path`` through ``PYTHONPATH``)."""
    folder = os.environ.get(SITE_VARIABLE)
    if folder:
        site.addsitedir(folder)


def _front(first: str, rest: str) -> str:
    return f"{first}{os.pathsep}{rest}" if rest else first
