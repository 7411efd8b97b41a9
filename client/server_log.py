"""Reading a tritonserver log: its last lines, and the error lines that explain a failed start."""

from __future__ import annotations

import os
import re
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
