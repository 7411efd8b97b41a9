"""``spotvlm serve``: one tritonserver in the foreground until SIGINT/SIGTERM or until it dies."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from client.server_log import LOG_TAIL_LINES, ServerStartError
from client.server_process import TritonServer

logger = logging.getLogger("spotvlm.launcher")


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
