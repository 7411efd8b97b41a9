"""client/ports.py: free loopback ports and who listens on one; the ports a TritonServer claims."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from client.ports import foreign_listeners, free_port, free_ports, listens_on, port_in_use
from client.server_process import TritonServer


def test_free_port_never_repeats() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports[:3]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_free_ports_are_distinct_and_fresh() -> None:
    first = free_ports(3)
    second = free_ports(3)
    assert len(set(first)) == 3 and len(set(second)) == 3
    assert not set(first) & set(second)


def test_server_picks_three_distinct_ports(tmp_path: Path) -> None:
    servers = [TritonServer(tmp_path) for _ in range(5)]
    ports = [p for s in servers for p in (s.http_port, s.grpc_port, s.metrics_port)]
    assert len(set(ports)) == len(ports)
    s = servers[0]
    assert s.http_url == f"127.0.0.1:{s.http_port}"
    assert s.grpc_url == f"127.0.0.1:{s.grpc_port}"
    assert s.metrics_url == f"127.0.0.1:{s.metrics_port}"


def test_port_in_use_and_who_listens() -> None:
    me = os.getpid()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert not listens_on(me, port)  # bound is not listening
        s.listen()
        assert port_in_use(port)
        assert listens_on(me, port)
        assert foreign_listeners(port, {me}) == []
        assert foreign_listeners(port, set()) == [me]
    assert not port_in_use(port)
    assert not listens_on(me, port)
    assert foreign_listeners(port, set()) == []
    assert not listens_on(2**22 + 12345, port)  # no such pid


def test_disabled_endpoints_are_not_claimed(tmp_path: Path) -> None:
    s = TritonServer(tmp_path, extra_args=["--allow-metrics=false"])
    assert set(s.ports) == {"http", "grpc"}
    with pytest.raises(ValueError, match="allow-http"):
        TritonServer(tmp_path, extra_args=["--allow-http=false"])
