"""One tritonserver process on free loopback ports: :class:`TritonServer`.

It starts the server in its own session, waits for ``/v2/health/ready``, and
on stop signals only the PID it started (then its process group if needed). It
never looks processes up by name, so several servers (and other people's) can
share a host. The python backend's ``/dev/shm`` regions that the server's
processes held and that survive it are unlinked on stop.
"""

from __future__ import annotations

import atexit
import http.client
import logging
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

from client.ports import LOOPBACK, foreign_listeners, free_ports, listens_on, port_in_use
from client.processes import descendant_pids, find_shm_regions, kill_group, reap_group, unlink_regions
from client.server_log import LOG_TAIL_LINES, ServerStartError, start_error, tail_lines
from client.triton_install import (
    TritonInstall,
    build_backend_directory,
    build_command,
    build_env,
    has_option,
    locate_tritonserver,
    option_disabled,
    shm_prefix_from_args,
)

logger = logging.getLogger("spotvlm.launcher")

# Triton waits up to --exit-timeout-secs (its default: 30) for in-flight requests
# AND for open client connections: one idle keep-alive HTTP client holds a
# SIGTERM'd server for the full time. Keep it well under stop()'s SIGKILL timeout
# so a graceful exit (which also frees the backend's shm) stays the normal case.
DEFAULT_EXIT_TIMEOUT_S = 10
_READY_POLL_S = 0.1
# Reading the open files of the server and its stubs costs a few ms; during startup that is cheap enough twice a second.
_SHM_SNAPSHOT_EVERY_S = 0.5
# After the server exits, its stubs should be gone too; give stragglers this long.
_GROUP_GRACE_S = 2.0


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
        if option_disabled(extra_args, "--allow-http"):
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
        self._shm_prefix = shm_prefix_from_args(self.extra_args)
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
        if not option_disabled(self.extra_args, "--allow-grpc"):
            ports["grpc"] = self.grpc_port
        if not option_disabled(self.extra_args, "--allow-metrics"):
            ports["metrics"] = self.metrics_port
        return ports

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        return tail_lines(self.log_path, n)

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
            busy = [p for p in self.ports.values() if port_in_use(p)]
            if busy:
                # Checked up front: the server itself only notices after its
                # models load (seconds), and not at all for the metrics port.
                raise ServerStartError(f"port(s) already in use on {LOOPBACK}: {busy}")
            install = self.install or locate_tritonserver()
            backend_dir = None
            if not has_option(self.extra_args, "--backend-directory"):
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
        self._record_shm(mapped=False)
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
                # fails may kill the server before we ever see it ready. Stubs hold
                # their regions open: the open files suffice (memory maps cost 30x more).
                self._record_shm(mapped=False)
                next_snapshot = now + _SHM_SNAPSHOT_EVERY_S
            rc = self._proc.poll()
            if rc is not None:
                self._raise_start_error(f"tritonserver exited with code {rc} before becoming ready", rc)
            try:
                # Only ask once our process listens on the port: until then a
                # 200 could come from another server that holds the port.
                if listens_on(self._proc.pid, self.http_port):
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
        ours = {self._proc.pid, *descendant_pids(self._proc.pid)}
        for name, port in self.ports.items():
            if foreign_listeners(port, ours):
                self._raise_start_error(f"{name} port {port} is held by another process", None)

    def _raise_start_error(self, reason: str, returncode: int | None) -> None:
        # Stop first so the log is complete (a dying server flushes its last words).
        self.stop(timeout_s=10)
        raise start_error(
            reason, self._command, self.log_path, returncode if returncode is not None else self.returncode
        )

    def _record_shm(self, *, mapped: bool) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        pids = [proc.pid, *descendant_pids(proc.pid)]
        new = find_shm_regions(pids, prefix=self._shm_prefix, mapped=mapped) - self._shm_seen
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
                # Once, thoroughly: also regions only mapped, no longer open.
                self._record_shm(mapped=True)
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
                    kill_group(proc.pid)
                    proc.wait()
            reap_group(proc.pid, _GROUP_GRACE_S)
            unlink_regions(self._shm_seen)
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
