"""Start and stop a real ``tritonserver`` for SpotVLM: the names a program imports, gathered from their modules.

:mod:`client.triton_install` finds the binary and builds its backend folder, argv and environment;
:mod:`client.ports` picks free loopback ports; :mod:`client.processes` reads the server's processes and their
``/dev/shm`` regions through psutil; :mod:`client.server_process` holds :class:`TritonServer`, one server process, and
:mod:`client.server_log` the :class:`ServerStartError` its log explains; :mod:`client.serve` runs one in the
foreground (``spotvlm serve``).
"""

from __future__ import annotations

from client.ports import LOOPBACK, free_port, free_ports
from client.processes import SHM_DIR, SHM_REGION_PREFIX, descendant_pids, find_shm_regions
from client.serve import serve_forever
from client.server_log import ServerStartError
from client.server_process import TritonServer
from client.triton_install import (
    TritonInstall,
    TritonNotFoundError,
    build_backend_directory,
    build_command,
    build_env,
    locate_tritonserver,
)

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
