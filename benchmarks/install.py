"""Install what the suite needs, each in its own virtual environment under ``.bench/`` (git-ignored).

Nothing here touches Conch's ``.venv``:

- ``tools``: perf_analyzer's CUDA runtime library (no GPU needed) and matplotlib for the plots;
- ``perf_analyzer``: the binary of the tritonclient 2.51.0 wheel (the ``perf-analyzer`` package on PyPI
  is a placeholder on glibc 2.36, and later wheels' binaries need glibc 2.38); it also needs Debian's
  ``libb64-0d``;
- ``triton``: the ``nvidia-pytriton`` 0.7.0 wheel, which carries a tritonserver 2.51 binary with the
  Python backend only;
- ``mlserver``: MLServer 1.7 (its workers need ``uvloop<0.22`` here).

Each environment is created once; a stamp file holds its requirements, so a change reinstalls it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("CONCH_BENCH_HOME", ROOT / ".bench"))
REQUIREMENTS = Path(__file__).with_name("requirements.txt")

TRITON_REQUIREMENTS = ["nvidia-pytriton==0.7.0", "numpy", "onnxruntime"]
MLSERVER_REQUIREMENTS = ["mlserver==1.7.1", "uvloop<0.22", "numpy", "onnxruntime"]
TRITONCLIENT_WHEEL = "tritonclient==2.51.0"


class InstallError(RuntimeError):
    """Something the suite needs could not be installed; the message says what and why."""


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def base_python() -> str:
    """The interpreter the environments are made from: the one under any virtual environment."""
    return getattr(sys, "_base_executable", None) or sys.executable


def environment(name: str, requirements: list[str]) -> Path:
    """``.bench/<name>``, a virtual environment holding ``requirements``; its ``bin/python``."""
    where = HOME / name
    python = where / "bin" / "python"
    stamp = where / ".requirements"
    wanted = hashlib.sha1("\n".join(requirements).encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    say(f"installing {name} into {where} ({', '.join(requirements)}) ...")
    if not python.exists():
        run([base_python(), "-m", "venv", str(where)], f"create {where}")
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
        f"pip install {' '.join(requirements)}")  # fmt: skip
    stamp.write_text(wanted)
    return python


def run(args: list[str], what: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise InstallError(f"{what} failed:\n{tail}")
    return done.stdout


def purelib(python: Path) -> Path:
    """An environment's site-packages."""
    return Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], "site").strip())


def tools() -> Path:
    """The tools environment's python (matplotlib, the CUDA runtime perf_analyzer links)."""
    lines = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    return environment("tools", [line for line in lines if line])


# -- perf_analyzer --------------------------------------------------------------------------------


def perf_analyzer() -> Path:
    """A runnable perf_analyzer: ``$PERF_ANALYZER`` when set, else ``.bench/bin/perf_analyzer``, installed here."""
    if os.environ.get("PERF_ANALYZER"):
        return Path(os.environ["PERF_ANALYZER"])
    wrapper = HOME / "bin" / "perf_analyzer"
    if wrapper.exists() and subprocess.run([str(wrapper), "--version"], capture_output=True).returncode == 0:
        return wrapper
    libb64()
    python = tools()
    binary = HOME / "tools" / "perf_analyzer.bin"
    if not binary.exists():
        say(f"downloading {TRITONCLIENT_WHEEL} for its perf_analyzer binary ...")
        download = HOME / "tools" / "dl"
        run([str(python), "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(download),
             "--platform", "manylinux1_x86_64", "--python-version", "3.11", TRITONCLIENT_WHEEL],
            f"pip download {TRITONCLIENT_WHEEL}")  # fmt: skip
        wheel = next(download.glob("tritonclient-2.51.0-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            binary.write_bytes(archive.read("tritonclient-2.51.0.data/data/bin/perf_analyzer"))
        binary.chmod(0o755)
    cudart = run([str(python), "-c", "import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], 'lib'))"],
                 "locate libcudart").strip()  # fmt: skip
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(
        "#!/bin/sh\n# perf_analyzer from the tritonclient 2.51.0 wheel, written by benchmarks/install.py\n"
        f'LD_LIBRARY_PATH="{cudart}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" exec "{binary}" "$@"\n'
    )
    wrapper.chmod(0o755)
    check = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True)
    if check.returncode != 0:
        raise InstallError(f"perf_analyzer does not start: {(check.stdout + check.stderr).strip()[-500:]}")
    return wrapper


def libb64() -> None:
    """Debian's libb64-0d, which the perf_analyzer binary links; installed with apt-get when missing."""
    if "libb64.so.0d" in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout:
        return
    if not shutil.which("apt-get"):
        raise InstallError("perf_analyzer needs libb64.so.0d (Debian/Ubuntu package libb64-0d); install it first")
    say("installing libb64-0d with apt-get ...")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "libb64-0d"]
    if subprocess.run(install, capture_output=True, env=env).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-q"], capture_output=True, env=env)
        done = subprocess.run(install, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise InstallError(f"apt-get install libb64-0d failed: {done.stderr.strip()[-500:]}")


# -- peers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """How to start a peer: the argument list before the server's own flags, and its environment."""

    args: list[str]
    env: dict[str, str]


def triton() -> Command:
    """tritonserver 2.51 from the nvidia-pytriton wheel, with its Python backend and this Python's stub."""
    python = environment("triton", TRITON_REQUIREMENTS)
    site = purelib(python)
    dist = site / "pytriton" / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise InstallError(f"nvidia-pytriton 0.7.0 has no Python backend stub for Python {version}")
    backend = HOME / "triton" / "backends" / "python"  # the wheel's backend folder, plus the stub for this Python
    backend.mkdir(parents=True, exist_ok=True)
    for source in [*(dist / "backends" / "python").iterdir(), stub]:
        link = backend / source.name
        if source.name != "__pycache__" and not link.exists():
            link.symlink_to(source)
    libdir = sysconfig.get_config_var("LIBDIR") or ""  # the stub links libpython of this version
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libdir, str(site / "nvidia_pytriton.libs"),
                                                         os.environ.get("LD_LIBRARY_PATH", "")])),
        "PYTHONPATH": str(site),
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }  # fmt: skip
    args = [str(dist / "bin" / "tritonserver"), f"--backend-directory={backend.parent}",
            f"--cache-directory={dist / 'caches'}"]  # fmt: skip
    return Command(args, env)


def mlserver() -> Command:
    """``mlserver start`` from its own environment, through ``mlserver_shim.py``."""
    python = environment("mlserver", MLSERVER_REQUIREMENTS)
    shim = Path(__file__).with_name("mlserver_shim.py")  # perf_analyzer's needs (config, binary tensors)
    return Command([str(python), str(shim)], {"PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}"})
