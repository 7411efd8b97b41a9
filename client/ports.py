"""Loopback TCP ports: picking free ones, and who listens on one (through psutil)."""

from __future__ import annotations

import collections
import socket
import threading
from collections.abc import Collection
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"

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


def port_in_use(port: int) -> bool:
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


def _listens(connection: Any, port: int) -> bool:  # psutil's sconn or pconn
    return connection.status == psutil.CONN_LISTEN and bool(connection.laddr) and connection.laddr.port == port


def listens_on(pid: int, port: int) -> bool:
    """True if process ``pid`` holds a TCP socket listening on ``port`` (any address, v4 or v6)."""
    try:
        return any(_listens(c, port) for c in psutil.Process(pid).net_connections(kind="tcp"))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def foreign_listeners(port: int, own_pids: Collection[int]) -> list[int | None]:
    """PIDs of the processes other than ``own_pids`` that listen on TCP ``port`` (any address, v4 or v6).

    A listener whose owner this user may not see is listed as ``None``.
    """
    return [c.pid for c in psutil.net_connections(kind="tcp") if _listens(c, port) and c.pid not in own_pids]
