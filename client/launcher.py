"""Start and stop a real ``tritonserver`` process for SpotVLM.

Two ways to get a server binary are supported:

* a ``tritonserver`` on ``PATH`` (inside the NGC container): it is used as is,
  with its own default backend directory;
* otherwise the binary shipped in the ``nvidia-pytriton`` wheel. That binary only
  works when set up this way: a ``python/`` backend folder of
  *symlinks* (a copied stub cannot find its libraries and the server hangs
  without ever becoming ready), ``LD_LIBRARY_PATH`` pointing at the running
  interpreter's ``LIBDIR`` (otherwise the stub mixes the system libpython with
  another stdlib and multiprocessing crashes), and the venv's ``bin`` first on
  ``PATH`` (the stub finds its Python environment through ``python3``).

The pieces that decide *how* to start the server (:func:`locate_tritonserver`,
:func:`build_backend_directory`, :func:`build_command`, :func:`build_env`) are
pure so they can be tested without a server. :class:`TritonServer` owns one
process: it starts it in its own session, waits for ``/v2/health/ready``, and
on stop signals only the PID it started (then its process group if needed). It
never looks processes up by name, so several servers (and other people's) can
share a host.

The python backend keeps its IPC buffers in ``/dev/shm`` and only removes them
on a clean shutdown; a killed server leaks them. We therefore record the
regions that *our* server and its stubs map while they run, and unlink the
recorded ones that survive the process.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import http.client
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path
from types import FrameType
from typing import Any

logger = logging.getLogger("spotvlm.launcher")

__all__ = [
    "LOOPBACK",
    "SHM_DIR",
    "SHM_REGION_PREFIX",
    "ServerStartError",
    "TritonInstall",
    "TritonNotFoundError",
    "TritonServer",
    "build_backend_directory",
    "build_command",
    "build_env",
    "descendant_pids",
    "find_shm_regions",
    "free_port",
    "free_ports",
    "locate_tritonserver",
    "serve_forever",
]

LOOPBACK = "127.0.0.1"
SHM_DIR = Path("/dev/shm")
# Default of the python backend's `shm-region-prefix-name` backend config
# (libtriton_python.so builds it as "triton_" + "python" + "_backend_shm_region_").
SHM_REGION_PREFIX = "triton_python_backend_shm_region_"

# Files the python backend folder must hold; names are fixed by Triton's loader.
PYTHON_BACKEND_LIB = "libtriton_python.so"
PYTHON_BACKEND_UTILS = "triton_python_backend_utils.py"
PYTHON_BACKEND_STUB = "triton_python_backend_stub"

LOG_TAIL_LINES = 60
# Triton waits up to --exit-timeout-secs (its default: 30) for in-flight requests
# AND for open client connections: one idle keep-alive HTTP client holds a
# SIGTERM'd server for the full time. Keep it well under stop()'s SIGKILL timeout
# so a graceful exit (which also frees the backend's shm) stays the normal case.
DEFAULT_EXIT_TIMEOUT_S = 10
_READY_POLL_S = 0.1
# Walking /proc costs a few ms; during startup that is cheap enough to do twice a second.
_SHM_SNAPSHOT_EVERY_S = 0.5
# After the server exits, its stubs should be gone too; give stragglers this long.
_GROUP_GRACE_S = 2.0


class TritonNotFoundError(RuntimeError):
    """No usable tritonserver binary (or no stub for this Python) was found."""


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time.

    The message holds the command line and the tail of the server log, because
    that is where Triton explains what went wrong (a model's traceback, a port
    already in use, a missing backend).
    """

    def __init__(self, message: str, *, returncode: int | None = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail


# --------------------------------------------------------------------------------------
# Locating the server
# --------------------------------------------------------------------------------------


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


def _has_option(args: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def _option_disabled(args: Sequence[str], option: str) -> bool:
    """True if ``args`` turn a boolean option off (``--allow-grpc=false``); the last one wins."""
    disabled = False
    for a in args:
        if a.startswith(option + "="):
            disabled = a.partition("=")[2].strip().lower() in ("false", "0", "off", "no")
    return disabled


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
    if backend_directory is not None and not _has_option(extra_args, "--backend-directory"):
        cmd.append(f"--backend-directory={backend_directory}")
    # The wheel's response cache lives outside the server's default cache dir;
    # the flag only matters when a cache is configured at all.
    if (
        install.cache_directory is not None
        and _has_option(extra_args, "--cache-config")
        and not _has_option(extra_args, "--cache-directory")
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


# --------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------

_issued_ports: collections.deque[int] = collections.deque(maxlen=256)
_issued_lock = threading.Lock()


def free_port() -> int:
    """A TCP port that is free on loopback now.

    The kernel may hand the same ephemeral port to two back-to-back binds, so
    ports recently returned by this process are skipped. The port can still be
    taken by someone else before the server binds it; that is the usual race.
    """
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        with _issued_lock:
            if port not in _issued_ports:
                _issued_ports.append(port)
                return port
    raise RuntimeError("could not find a free loopback port not recently issued")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all bound at once, then released)."""
    socks: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
            with _issued_lock:
                if port in _issued_ports:
                    continue  # keep it bound so the kernel moves on
                _issued_ports.append(port)
            ports.append(port)
        return ports
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------------------


def _read_ppid_map(proc: Path = Path("/proc")) -> dict[int, list[int]]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # comm may contain spaces and parentheses; the fields after the last ')' are fixed.
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 2:
            children[int(fields[1])].append(int(entry.name))
    return children


def descendant_pids(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children first), from ``/proc/*/stat``."""
    children = _read_ppid_map()
    out: list[int] = []
    seen = {pid}
    queue = collections.deque(children.get(pid, ()))
    while queue:
        p = queue.popleft()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        queue.extend(children.get(p, ()))
    return out


def _shm_path(text: str, prefix: str | None) -> Path | None:
    text = text.strip()
    if not text.startswith(f"{SHM_DIR}/") or text.endswith("(deleted)"):
        return None  # an unlinked region needs no cleanup
    path = Path(text)
    if prefix is not None and not path.name.startswith(prefix):
        return None
    return path


def find_shm_regions(pids: Iterable[int], prefix: str | None = SHM_REGION_PREFIX) -> set[Path]:
    """``/dev/shm`` files mapped or held open by ``pids``.

    Only names starting with ``prefix`` count (``None``: any): a server also maps
    regions that clients register through the shared-memory API, and those
    belong to the clients.
    """
    found: set[Path] = set()
    for pid in pids:
        base = Path("/proc") / str(pid)
        try:
            with open(base / "maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and (p := _shm_path(parts[5], prefix)) is not None:
                        found.add(p)
        except OSError:
            pass  # process gone or not ours to read
        try:
            fds = list((base / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if (p := _shm_path(target, prefix)) is not None:
                found.add(p)
    return found


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``.

    Zombies are skipped: once the server is gone its stubs are reparented to
    init, which may take a while to reap them, and they hold nothing.
    """
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp.
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie is only waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"]


def _socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds open."""
    inodes: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _listening_inodes(port: int) -> set[int]:
    """Inodes of every TCP socket listening on ``port`` (any address, v4 and v6)."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def _port_in_use(port: int) -> bool:
    """True if binding ``port`` on loopback fails now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: connections of a just-stopped server linger in TIME_WAIT
        # and must not count; a live listener still makes the bind fail.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


_GLOG_ERROR = re.compile(r"^E\d{4} ")
# Logged as errors on every CPU-only start; they explain nothing.
_HARMLESS_ERRORS = ("CudaDriverHelper has not been initialized",)


def _error_lines(path: Path, limit: int = 20) -> list[str]:
    """Triton's glog error lines (``E1125 19:16:48...``), the first ``limit`` of them."""
    out: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if _GLOG_ERROR.match(line) and not any(h in line for h in _HARMLESS_ERRORS):
                    out.append(line.rstrip("\n"))
                    if len(out) >= limit:
                        break
    except OSError:
        pass
    return out


def _tail_lines(path: Path, n: int) -> str:
    """The last ``n`` lines of ``path``, read from the end (verbose logs get large)."""
    if n <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            pos = f.tell()
            data = b""
            while pos > 0 and data.count(b"\n") <= n:
                step = min(65536, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------

# Safety net: a server left running when the interpreter exits (a crashed test,
# an uncaught exception) is stopped rather than orphaned in its own session.
_live_servers: weakref.WeakSet[TritonServer] = weakref.WeakSet()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live_servers):
        try:
            server.stop(timeout_s=10)
        except Exception:  # best effort at exit
            logger.exception("failed to stop %r at exit", server)


def _shm_prefix_from_args(args: Sequence[str]) -> str:
    """Honour ``--backend-config=python,shm-region-prefix-name=X`` if given."""
    for i, arg in enumerate(args):
        value = arg.partition("=")[2] if arg.startswith("--backend-config=") else None
        if arg == "--backend-config" and i + 1 < len(args):
            value = args[i + 1]
        if value and value.startswith("python,shm-region-prefix-name="):
            return value.partition("shm-region-prefix-name=")[2]
    return SHM_REGION_PREFIX


class TritonServer:
    """One tritonserver process on loopback ports.

    Ports left as ``None`` are picked free at construction, so the URLs are
    known before :meth:`start`. Use as a context manager, or call
    :meth:`start` / :meth:`stop`; :meth:`stop` is idempotent.
    """

    def __init__(
        self,
        repository: Path | str,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_path: Path | str | None = None,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        env_overrides: Mapping[str, str] | None = None,
        model_control_mode: str = "none",
        exit_timeout_s: int | None = DEFAULT_EXIT_TIMEOUT_S,
        install: TritonInstall | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        if _option_disabled(extra_args, "--allow-http"):
            raise ValueError("TritonServer waits for readiness over HTTP; --allow-http=false is not supported")
        wanted = [p for p in (http_port, grpc_port, metrics_port) if p is None]
        # Ports we picked may be re-picked if another process takes one before the server binds it.
        self._auto_ports = (http_port is None, grpc_port is None, metrics_port is None)
        picked = iter(free_ports(len(wanted)))
        self.http_port = http_port if http_port is not None else next(picked)
        self.grpc_port = grpc_port if grpc_port is not None else next(picked)
        self.metrics_port = metrics_port if metrics_port is not None else next(picked)
        self.log_verbose = log_verbose
        self.extra_args = tuple(extra_args)
        self.env_overrides = dict(env_overrides or {})
        self.model_control_mode = model_control_mode
        self.exit_timeout_s = exit_timeout_s
        self.install = install
        # Per-server scratch dir for the backend symlinks (and the default log),
        # never shared since another server may be cleaning up its own. Made
        # lazily so servers that are only configured leave nothing in /tmp.
        self._workdir: Path | None = None
        self._log_path: Path | None = Path(log_path).resolve() if log_path is not None else None
        self._shm_prefix = _shm_prefix_from_args(self.extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._command: list[str] = []
        self._shm_seen: set[Path] = set()
        self._finished = False
        self._lock = threading.RLock()
        self.ready_time_s: float | None = None
        self.stop_time_s: float | None = None

    # ---- properties -----------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{LOOPBACK}:{self.metrics_port}"

    def _ensure_workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="spotvlm-triton-"))
        return self._workdir

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            self._log_path = self._ensure_workdir() / "tritonserver.log"
        return self._log_path

    @property
    def command(self) -> list[str]:
        """The argv of the last start (empty before)."""
        return list(self._command)

    @property
    def shm_regions(self) -> set[Path]:
        """The ``/dev/shm`` regions seen mapped by this server or its stubs."""
        return set(self._shm_seen)

    @property
    def ports(self) -> dict[str, int]:
        """The endpoints this server listens on (those not disabled in ``extra_args``)."""
        ports = {"http": self.http_port}
        if not _option_disabled(self.extra_args, "--allow-grpc"):
            ports["grpc"] = self.grpc_port
        if not _option_disabled(self.extra_args, "--allow-metrics"):
            ports["metrics"] = self.metrics_port
        return ports

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        return _tail_lines(self.log_path, n)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"TritonServer(pid={self.pid}, http={self.http_url}, grpc={self.grpc_url}, {state})"

    # ---- lifecycle ------------------------------------------------------------------

    def start(self, ready_timeout_s: float = 120, port_attempts: int = 3) -> TritonServer:
        """Start the server and block until ``/v2/health/ready`` answers 200.

        Raises :class:`ServerStartError` (after cleaning up) if the process
        exits first or readiness takes longer than ``ready_timeout_s``.

        A free port is only reserved once the server binds it, and Triton binds
        its metrics port after the models load (seconds later). When another
        process takes a port that this object picked itself in that window, the
        start is tried again on freshly picked ports, up to ``port_attempts``.
        """
        for attempt in range(1, port_attempts + 1):
            try:
                return self._start_once(ready_timeout_s)
            except ServerStartError as exc:
                lost_port = "held by another process" in str(exc) or "already in use" in str(exc)
                if attempt == port_attempts or not lost_port or not any(self._auto_ports):
                    raise
                logger.warning("a picked port was taken by another process; retrying on new ports: %s", exc)
                self._repick_ports()
        raise AssertionError("unreachable")

    def _repick_ports(self) -> None:
        with self._lock:
            self._proc = None
            self._finished = False
            self._command = []
        fresh = iter(free_ports(sum(self._auto_ports)))
        http_auto, grpc_auto, metrics_auto = self._auto_ports
        self.http_port = next(fresh) if http_auto else self.http_port
        self.grpc_port = next(fresh) if grpc_auto else self.grpc_port
        self.metrics_port = next(fresh) if metrics_auto else self.metrics_port

    def _start_once(self, ready_timeout_s: float) -> TritonServer:
        with self._lock:
            if self._proc is not None:
                raise RuntimeError(f"{self!r} was already started; create a new TritonServer")
            busy = [p for p in self.ports.values() if _port_in_use(p)]
            if busy:
                # Checked up front: the server itself only notices after its
                # models load (seconds), and not at all for the metrics port.
                raise ServerStartError(f"port(s) already in use on {LOOPBACK}: {busy}")
            install = self.install or locate_tritonserver()
            backend_dir = None
            if not _has_option(self.extra_args, "--backend-directory"):
                backend_dir = build_backend_directory(install, self._ensure_workdir() / "backends")
            self._command = build_command(
                install,
                repository=self.repository,
                http_port=self.http_port,
                grpc_port=self.grpc_port,
                metrics_port=self.metrics_port,
                backend_directory=backend_dir,
                log_verbose=self.log_verbose,
                model_control_mode=self.model_control_mode,
                exit_timeout_s=self.exit_timeout_s,
                extra_args=self.extra_args,
            )
            env = build_env(install, overrides=self.env_overrides)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            logger.info("starting tritonserver: %s", shlex.join(self._command))
            logger.debug("tritonserver log: %s", self.log_path)
            started = time.monotonic()
            with open(self.log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    self._command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    # Own session and process group: a Ctrl-C in the terminal
                    # reaches us, not the server, so shutdown order stays ours,
                    # and the group lets us kill stubs the server leaves behind.
                    start_new_session=True,
                    close_fds=True,
                )
            _live_servers.add(self)

        try:
            self._wait_ready(ready_timeout_s, started)
        except BaseException:
            # Whatever interrupted us (timeout, exit, Ctrl-C), leave nothing behind.
            self.stop(timeout_s=10)
            raise
        self.ready_time_s = time.monotonic() - started
        self._record_shm()
        logger.info(
            "tritonserver pid %d ready in %.2fs (http %s, grpc %s, metrics %s)",
            self.pid,
            self.ready_time_s,
            self.http_url,
            self.grpc_url,
            self.metrics_url,
        )
        return self

    def _wait_ready(self, timeout_s: float, started: float) -> None:
        assert self._proc is not None
        url = f"http://{self.http_url}/v2/health/ready"
        # An http_proxy in the environment would otherwise swallow loopback requests.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = started + timeout_s
        next_snapshot = 0.0
        while True:
            now = time.monotonic()
            if now >= next_snapshot:
                # Stubs create their regions while models load; a model that then
                # fails may kill the server before we ever see it ready.
                self._record_shm()
                next_snapshot = now + _SHM_SNAPSHOT_EVERY_S
            rc = self._proc.poll()
            if rc is not None:
                self._raise_start_error(f"tritonserver exited with code {rc} before becoming ready", rc)
            try:
                # Only ask once our process listens on the port: until then a
                # 200 could come from another server that holds the port.
                if _listening_inodes(self.http_port) & _socket_inodes(self._proc.pid):
                    with opener.open(url, timeout=1.0) as resp:
                        if resp.status == 200:
                            self._check_ports_exclusive()
                            return
            except urllib.error.HTTPError:
                pass  # 400 while models are still loading
            except (OSError, http.client.HTTPException):
                pass  # not listening yet
            if time.monotonic() >= deadline:
                self._raise_start_error(f"tritonserver was not ready after {timeout_s:g}s", None)
            time.sleep(_READY_POLL_S)

    def _check_ports_exclusive(self) -> None:
        """Fail if another process holds one of our ports.

        tritonserver exits when its HTTP or gRPC port is taken, but a taken
        metrics port is only logged and the server runs on without metrics.
        """
        assert self._proc is not None
        ours = _socket_inodes(self._proc.pid)
        for name, port in self.ports.items():
            foreign = _listening_inodes(port) - ours
            if foreign:
                self._raise_start_error(f"{name} port {port} is held by another process", None)

    def _raise_start_error(self, reason: str, returncode: int | None) -> None:
        # Stop first so the log is complete (a dying server flushes its last words).
        self.stop(timeout_s=10)
        tail = self.log_tail(LOG_TAIL_LINES)
        errors = _error_lines(self.log_path)
        message = f"{reason}\ncommand: {shlex.join(self._command)}\n"
        if errors:
            # With many models the first error can scroll out of the tail.
            message += "--- error lines in the log ---\n" + "\n".join(errors) + "\n"
        message += f"--- last {LOG_TAIL_LINES} lines of {self.log_path} ---\n{tail}"
        if returncode is None:
            returncode = self.returncode
        raise ServerStartError(message, returncode=returncode, log_tail=tail)

    def _record_shm(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        pids = [proc.pid, *descendant_pids(proc.pid)]
        new = find_shm_regions(pids, prefix=self._shm_prefix) - self._shm_seen
        if new:
            logger.debug("tritonserver pid %d maps shm regions: %s", proc.pid, sorted(map(str, new)))
            self._shm_seen |= new

    def stop(self, timeout_s: float = 30, sig: int = signal.SIGTERM) -> int | None:
        """Stop the server: ``sig`` to its PID, then SIGKILL to its process group
        after ``timeout_s``. Unlinks our leftover shm regions. Idempotent;
        returns the exit code (``None`` if never started).
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return None
            if self._finished:
                return proc.returncode
            begun = time.monotonic()
            if proc.poll() is None:
                self._record_shm()
                logger.info("stopping tritonserver pid %d (%s)", proc.pid, signal.Signals(sig).name)
                # send_signal checks the child is not reaped yet, so this can
                # never hit a recycled PID.
                proc.send_signal(sig)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "tritonserver pid %d still running after %gs; killing its process group",
                        proc.pid,
                        timeout_s,
                    )
                    self._kill_group(proc.pid)
                    proc.wait()
            self._reap_group(proc.pid)
            self._cleanup_shm()
            self._cleanup_workdir()
            self._finished = True
            _live_servers.discard(self)
            self.stop_time_s = time.monotonic() - begun
            logger.info(
                "tritonserver pid %d exited with code %s after %.2fs",
                proc.pid,
                proc.returncode,
                self.stop_time_s,
            )
            return proc.returncode

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def _reap_group(self, pgid: int) -> None:
        """Kill stubs that outlived the server.

        The group's ID stays reserved while any member lives, so signalling it
        after the leader is reaped still only reaches processes we started.
        """
        deadline = time.monotonic() + _GROUP_GRACE_S
        while members := _group_members(pgid):
            if time.monotonic() >= deadline:
                logger.warning("pids %s of tritonserver group %d outlived it; killing them", members, pgid)
                self._kill_group(pgid)
                return
            time.sleep(0.05)

    def _cleanup_shm(self) -> None:
        for region in sorted(self._shm_seen):
            try:
                region.unlink()
                logger.info("removed leftover shm region %s", region)
            except FileNotFoundError:
                pass  # the backend removed it on a clean shutdown
            except OSError as exc:
                logger.warning("could not remove shm region %s: %s", region, exc)

    def _cleanup_workdir(self) -> None:
        if self._workdir is None:
            return
        # Keep the scratch dir when the log lives there: it explains the exit.
        if self.log_path.is_relative_to(self._workdir):
            shutil.rmtree(self._workdir / "backends", ignore_errors=True)
        else:
            shutil.rmtree(self._workdir, ignore_errors=True)

    # ---- context manager ------------------------------------------------------------

    def __enter__(self) -> TritonServer:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------
# Foreground serving (``spotvlm serve``)
# --------------------------------------------------------------------------------------


class _ShutdownRequested(BaseException):
    """Raised from a signal handler to abort a start() in progress."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _exit_code(rc: int | None) -> int:
    if rc is None:
        return 1
    if rc < 0:
        return 128 - rc  # shell convention for "killed by signal"
    return rc or 1  # it was meant to serve forever: exiting at all is a failure


def serve_forever(
    server: TritonServer,
    on_ready: Callable[[TritonServer], None] | None = None,
    *,
    ready_timeout_s: float = 120,
    poll_interval_s: float = 0.5,
) -> int:
    """Run ``server`` in the foreground until SIGINT/SIGTERM or until it dies.

    Returns 0 after a requested shutdown (the signal is forwarded to the
    server; a second signal kills it at once), 1 if it failed to start, or the
    server's own non-zero code if it died by itself (its log tail is printed to
    stderr). ``on_ready(server)`` runs once the server is ready.
    """
    requested: list[int] = []
    wake = threading.Event()
    # While start() blocks, a signal must abort it (by exception, as SIGINT's
    # KeyboardInterrupt would); once serving, the handler only wakes the loop.
    state = {"starting": True}

    def handler(signum: int, _frame: FrameType | None) -> None:
        requested.append(signum)
        wake.set()
        if state["starting"]:
            state["starting"] = False  # raise once; a second signal must not interrupt the cleanup
            raise _ShutdownRequested(signum)
        if len(requested) > 1 and server.pid is not None and server.is_running():
            # A second Ctrl-C means "now": skip the graceful wait.
            logger.warning("second %s; killing tritonserver pid %d", signal.Signals(signum).name, server.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)

    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:
        # Not the main thread: signals cannot be caught here, the caller must stop us.
        logger.warning("serve_forever is not on the main thread; SIGINT/SIGTERM are not handled")

    try:
        try:
            server.start(ready_timeout_s=ready_timeout_s)
        except ServerStartError as exc:
            print(f"tritonserver failed to start: {exc}", file=sys.stderr, flush=True)
            return 1
        state["starting"] = False
        if requested:
            raise _ShutdownRequested(requested[0])
        print(
            f"tritonserver ready: http={server.http_url} grpc={server.grpc_url} "
            f"metrics={server.metrics_url} pid={server.pid} log={server.log_path}",
            flush=True,
        )
        if on_ready is not None:
            on_ready(server)
        while not requested:
            if not server.is_running():
                rc = server.stop()
                print(
                    f"tritonserver exited on its own with code {rc}; last lines of {server.log_path}:\n"
                    f"{server.log_tail(LOG_TAIL_LINES)}",
                    file=sys.stderr,
                    flush=True,
                )
                return _exit_code(rc)
            wake.wait(poll_interval_s)
        signum = requested[0]
        logger.info("received %s; stopping tritonserver", signal.Signals(signum).name)
        server.stop(sig=signum)
        return 0
    except _ShutdownRequested as req:
        logger.info("%s during startup; stopping tritonserver", signal.Signals(req.signum).name)
        server.stop(sig=req.signum)
        return 0
    finally:
        state["starting"] = False
        server.stop()  # no-op when already stopped; covers exceptions from on_ready
        for signum_, old in previous.items():
            signal.signal(signum_, old)
