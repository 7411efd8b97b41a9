"""client/server_process.py without a process: a start that loses a picked port retries on fresh ports."""

from __future__ import annotations

import pytest

from client.ports import free_ports
from client.server_log import ServerStartError
from client.server_process import TritonServer


def _fail_first_start(monkeypatch, server, message):
    calls = []

    def start_once(ready_timeout_s):
        calls.append((server.http_port, server.grpc_port, server.metrics_port))
        if len(calls) == 1:
            raise ServerStartError(message)
        return server

    monkeypatch.setattr(server, "_start_once", start_once)
    return calls


def test_start_retries_on_fresh_ports_when_a_picked_port_was_taken(monkeypatch, tmp_path):
    server = TritonServer(tmp_path)
    calls = _fail_first_start(monkeypatch, server, "metrics port 1234 is held by another process")
    assert server.start() is server
    assert len(calls) == 2 and calls[0] != calls[1]


def test_start_does_not_retry_ports_the_caller_chose(monkeypatch, tmp_path):
    ports = free_ports(3)
    server = TritonServer(tmp_path, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])
    calls = _fail_first_start(monkeypatch, server, "metrics port 1234 is held by another process")
    with pytest.raises(ServerStartError):
        server.start()
    assert len(calls) == 1


def test_start_does_not_retry_other_failures(monkeypatch, tmp_path):
    server = TritonServer(tmp_path)
    calls = _fail_first_start(monkeypatch, server, "tritonserver exited with code 1 before becoming ready")
    with pytest.raises(ServerStartError):
        server.start()
    assert len(calls) == 1
