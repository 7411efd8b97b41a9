"""Where a ``tritonserver`` is and how to start it: the binary, its backend folder, its argv and its environment.

Two ways to get a server binary are supported:

* a ``tritonserver`` on ``PATH`` (inside the NGC container): it is used as is,
  with its own default backend directory;
* otherwise the binary shipped in the ``nvidia-pytriton`` wheel. That binary only
  works with a ``python/`` backend folder of *symlinks* (a copied stub cannot
  find its libraries and the server hangs without ever becoming ready),
  ``LD_LIBRARY_PATH`` pointing at the running interpreter's ``LIBDIR``
  (otherwise the stub mixes the system libpython with another stdlib and
  multiprocessing crashes), and the venv's ``bin`` first on ``PATH`` (the stub
  finds its Python environment through ``python3``).

Everything here is pure (no process is started), so it is tested without a server.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path

from client.ports import LOOPBACK
from client.processes import SHM_REGION_PREFIX

logger = logging.getLogger("spotvlm.launcher")

# Files the python backend folder must hold; names are fixed by Triton's loader.
PYTHON_BACKEND_LIB = "libtriton_python.so"
PYTHON_BACKEND_UTILS = "triton_python_backend_utils.py"
PYTHON_BACKEND_STUB = "triton_python_backend_stub"


class TritonNotFoundError(RuntimeError):
    """No usable tritonserver binary (or no stub for this Python) was found."""


@dataclass(frozen=True)
class TritonInstall:
    """Where a tritonserver lives and what it needs to run.

    ``python_backend_files`` is empty for a PATH install (the NGC container has
    its backends under ``/opt/tritonserver/backends`` already); for the wheel it
    lists the three files a ``python/`` backend folder must link to.
    """

    binary: Path
    from_wheel: bool
    python_backend_files: tuple[Path, ...] = ()
    library_dirs: tuple[Path, ...] = ()
    cache_directory: Path | None = None

    @property
    def needs_backend_directory(self) -> bool:
        return bool(self.python_backend_files)


def _python_tag(version: tuple[int, int] | None) -> str:
    major, minor = version if version is not None else sys.version_info[:2]
    return f"{major}.{minor}"


def locate_tritonserver(
    *,
    search_path: str | None = None,
    python_version: tuple[int, int] | None = None,
    pytriton_dir: Path | None = None,
) -> TritonInstall:
    """Find a tritonserver: PATH first, then the ``nvidia-pytriton`` wheel.

    ``search_path`` is handed to :func:`shutil.which` (``None`` means ``$PATH``);
    ``python_version`` picks the stub (default: the running interpreter);
    ``pytriton_dir`` overrides where the ``pytriton`` package is looked up.
    """
    on_path = shutil.which("tritonserver", path=search_path)
    if on_path:
        logger.debug("using tritonserver from PATH: %s", on_path)
        return TritonInstall(binary=Path(on_path), from_wheel=False)

    if pytriton_dir is None:
        # find_spec on a top-level package does not import it: pytriton's
        # __init__ pulls in far more than we need here.
        spec = importlib_util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonNotFoundError("no tritonserver on PATH and the nvidia-pytriton package is not installed")
        pytriton_dir = Path(next(iter(spec.submodule_search_locations)))

    root = pytriton_dir / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonNotFoundError(f"nvidia-pytriton has no server binary at {binary}")

    backend_src = root / "backends" / "python"
    tag = _python_tag(python_version)
    stub = root / "python_backend_stubs" / tag / PYTHON_BACKEND_STUB
    if not stub.is_file():
        available = sorted(p.name for p in (root / "python_backend_stubs").glob("*") if p.is_dir())
        raise TritonNotFoundError(
            f"nvidia-pytriton ships no python backend stub for Python {tag} "
            f"(available: {', '.join(available) or 'none'})"
        )
    files = (backend_src / PYTHON_BACKEND_LIB, backend_src / PYTHON_BACKEND_UTILS, stub)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise TritonNotFoundError(f"nvidia-pytriton is incomplete, missing: {', '.join(missing)}")

    # The binaries carry an RPATH to this folder, but $ORIGIN is not resolved
    # through our symlinks for the stub, so it goes on LD_LIBRARY_PATH as a fallback.
    libs = pytriton_dir.parent / "nvidia_pytriton.libs"
    caches = root / "caches"
    return TritonInstall(
        binary=binary,
        from_wheel=True,
        python_backend_files=files,
        library_dirs=(libs,) if libs.is_dir() else (),
        cache_directory=caches if caches.is_dir() else None,
    )


def build_backend_directory(install: TritonInstall, dest: Path) -> Path | None:
    """Create ``dest/python/`` holding symlinks to the wheel's python backend.

    Returns the folder to pass as ``--backend-directory`` (``dest``), or ``None``
    for a PATH install, whose server default already has its backends.
    Symlinks, not copies: the stub resolves its libraries relative to its real
    location, and a copied stub leaves the server hanging before ready.
    """
    if not install.needs_backend_directory:
        return None
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for target in install.python_backend_files:
        link = python_dir / target.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve())
    return dest


def has_option(args: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def option_disabled(args: Sequence[str], option: str) -> bool:
    """True if ``args`` turn a boolean option off (``--allow-grpc=false``); the last one wins."""
    disabled = False
    for a in args:
        if a.startswith(option + "="):
            disabled = a.partition("=")[2].strip().lower() in ("false", "0", "off", "no")
    return disabled


def shm_prefix_from_args(args: Sequence[str]) -> str:
    """Honour ``--backend-config=python,shm-region-prefix-name=X`` if given."""
    for i, arg in enumerate(args):
        value = arg.partition("=")[2] if arg.startswith("--backend-config=") else None
        if arg == "--backend-config" and i + 1 < len(args):
            value = args[i + 1]
        if value and value.startswith("python,shm-region-prefix-name="):
            return value.partition("shm-region-prefix-name=")[2]
    return SHM_REGION_PREFIX


def build_command(
    install: TritonInstall,
    *,
    repository: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    backend_directory: Path | None = None,
    log_verbose: int = 0,
    model_control_mode: str = "none",
    exit_timeout_s: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The tritonserver argv. Options in ``extra_args`` come last, so they win.

    Every endpoint binds loopback only: these servers are for this host's
    clients (and an edge/cloud pair on one machine), never for the network.
    """
    cmd = [
        str(install.binary),
        f"--model-repository={repository}",
        f"--http-address={LOOPBACK}",
        f"--http-port={http_port}",
        f"--grpc-address={LOOPBACK}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={LOOPBACK}",
        f"--metrics-port={metrics_port}",
        # A model that fails to load must fail start(), not leave a half server.
        "--exit-on-error=true",
        # Ready only once every model is loaded, so /v2/health/ready means "serve now".
        "--strict-readiness=true",
        f"--model-control-mode={model_control_mode}",
        f"--log-verbose={int(log_verbose)}",
    ]
    if exit_timeout_s is not None:
        cmd.append(f"--exit-timeout-secs={int(exit_timeout_s)}")
    if backend_directory is not None and not has_option(extra_args, "--backend-directory"):
        cmd.append(f"--backend-directory={backend_directory}")
    # The wheel's response cache lives outside the server's default cache dir;
    # the flag only matters when a cache is configured at all.
    if (
        install.cache_directory is not None
        and has_option(extra_args, "--cache-config")
        and not has_option(extra_args, "--cache-directory")
    ):
        cmd.append(f"--cache-directory={install.cache_directory}")
    cmd.extend(extra_args)
    return cmd


def _prepend_paths(first: Iterable[str], existing: str | None, last: Iterable[str] = ()) -> str:
    """Join path lists in order, dropping empties and repeats (first wins)."""
    out: list[str] = []
    for part in [*first, *(existing.split(os.pathsep) if existing else []), *last]:
        if part and part not in out:
            out.append(part)
    return os.pathsep.join(out)


_SYSCONFIG_LOCK = threading.Lock()


def python_libdir() -> str:
    """The running interpreter's LIBDIR (where its libpython lives), or "" when it has none.

    Under a lock: before Python 3.13, sysconfig fills its config-var cache lazily without one, and a thread that
    asks while another fills it gets None. Two servers started from two threads then lost LIBDIR from one's
    LD_LIBRARY_PATH at random; that stub loaded the system libpython with this interpreter's stdlib and failed to
    import `ssl` (undefined symbol _PyModule_Add) in CI.
    """
    with _SYSCONFIG_LOCK:
        return sysconfig.get_config_var("LIBDIR") or ""


def build_env(
    install: TritonInstall,
    *,
    base_env: Mapping[str, str] | None = None,
    executable: str | None = None,
    libdir: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The server's environment: ``base_env`` (default ``os.environ``) plus
    the interpreter's LIBDIR first on ``LD_LIBRARY_PATH`` and its ``bin`` first
    on ``PATH``; ``overrides`` are applied last.
    """
    env = dict(os.environ if base_env is None else base_env)
    # Not resolved: a venv's python3 is a symlink to the base interpreter, and
    # the stub must see the venv's bin to pick up the venv's site-packages.
    exe = executable if executable is not None else sys.executable
    bin_dir = str(Path(exe).parent)
    if libdir is None:
        libdir = python_libdir()
    env["LD_LIBRARY_PATH"] = _prepend_paths(
        [libdir], env.get("LD_LIBRARY_PATH"), [str(p) for p in install.library_dirs]
    )
    env["PATH"] = _prepend_paths([bin_dir], env.get("PATH", os.defpath))
    if overrides:
        env.update(overrides)
    return env
