"""Reading a tritonserver log: its last lines, its error lines, and the error that explains a failed start."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

LOG_TAIL_LINES = 60
_GLOG_ERROR = re.compile(r"^E\d{4} ")
# Logged as errors on every CPU-only start; they explain nothing.
_HARMLESS_ERRORS = ("CudaDriverHelper has not been initialized",)


def error_lines(path: Path, limit: int = 20) -> list[str]:
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


def tail_lines(path: Path, n: int) -> str:
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


def start_error(reason: str, command: Sequence[str], log_path: Path, returncode: int | None) -> ServerStartError:
    """The error for a start that failed for ``reason``, with the command and what the log says."""
    tail = tail_lines(log_path, LOG_TAIL_LINES)
    errors = error_lines(log_path)
    message = f"{reason}\ncommand: {shlex.join(command)}\n"
    if errors:
        # With many models the first error can scroll out of the tail.
        message += "--- error lines in the log ---\n" + "\n".join(errors) + "\n"
    message += f"--- last {LOG_TAIL_LINES} lines of {log_path} ---\n{tail}"
    return ServerStartError(message, returncode=returncode, log_tail=tail)
