"""The launcher (client.server_process.TritonServer) against a real tritonserver (the nvidia-pytriton binary here).

One trivial python-backend model is enough to exercise everything the launcher
owns: readiness, both protocols, a clean stop, cleanup of the python backend's
/dev/shm regions after a crash, and start failures that carry the log.
"""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest

from client.processes import SHM_REGION_PREFIX, descendant_pids, pid_alive
from client.server_log import ServerStartError
from client.server_process import TritonServer
from client.triton_install import TritonNotFoundError, locate_tritonserver

pytestmark = pytest.mark.integration

try:
    locate_tritonserver()
except TritonNotFoundError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"no tritonserver: {exc}", allow_module_level=True)

_CONFIG = textwrap.dedent(
    """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
    instance_group [ { kind: KIND_CPU count: 1 } ]
    """
)

_ECHO = textwrap.dedent(
    """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
            return responses
    """
)

_BROKEN = textwrap.dedent(
    """
    class TritonPythonModel:
        def initialize(self, args):
            raise RuntimeError("spotvlm-test: broken model refuses to initialize")

        def execute(self, requests):
            return []
    """
)

# Bounds that only catch hangs (ready takes seconds here, a clean stop a few more).
READY_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15


def _repository(root: Path, name: str, model_py: str) -> Path:
    version = root / name / "1"
    version.mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(_CONFIG)
    (version / "model.py").write_text(model_py)
    return root


@pytest.fixture
def echo_repo(tmp_path: Path) -> Path:
    return _repository(tmp_path / "repo", "echo", _ECHO)


def _server(repo: Path, tmp_path: Path, name: str) -> TritonServer:
    return TritonServer(repo, log_path=tmp_path / f"{name}.log")


def _infer_http(server: TritonServer, data: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_server_ready() and client.is_model_ready("echo")
        inp = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
        inp.set_data_from_numpy(data)
        return client.infer("echo", [inp]).as_numpy("OUTPUT0")
    finally:
        # An open keep-alive connection holds a SIGTERM'd server for its whole exit timeout.
        client.close()


def _infer_grpc(server: TritonServer, data: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert client.is_server_ready()
        inp = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
        inp.set_data_from_numpy(data)
        return client.infer("echo", [inp]).as_numpy("OUTPUT0")
    finally:
        client.close()


def test_serves_both_protocols_and_stops_clean(echo_repo: Path, tmp_path: Path) -> None:
    server = _server(echo_repo, tmp_path, "echo")
    server.start(ready_timeout_s=READY_TIMEOUT_S)
    try:
        pid = server.pid
        assert pid is not None and server.is_running()
        data = np.arange(5, dtype=np.float32)
        np.testing.assert_array_equal(_infer_http(server, data), data)
        np.testing.assert_array_equal(_infer_grpc(server, data * 2), data * 2)

        stubs = descendant_pids(pid)
        assert stubs, "the python backend stub should run under the server"
        regions = server.shm_regions
        assert regions and all(r.name.startswith(SHM_REGION_PREFIX) for r in regions)
        assert any(r.exists() for r in regions)
        print(f"\nready in {server.ready_time_s:.2f}s; shm regions: {sorted(r.name for r in regions)}")
    finally:
        rc = server.stop(timeout_s=STOP_TIMEOUT_S)
    print(f"stopped in {server.stop_time_s:.2f}s with code {rc}")

    assert rc == 0, server.log_tail()  # a clean exit, not stop()'s SIGKILL after STOP_TIMEOUT_S
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    assert not [p for p in stubs if pid_alive(p)]
    assert not [r for r in server.shm_regions if r.exists()]


def test_crashed_server_regions_are_removed_and_a_neighbour_is_untouched(echo_repo: Path, tmp_path: Path) -> None:
    """SIGKILL leaves the python backend's regions behind; stop() removes ours, only ours."""
    victim = _server(echo_repo, tmp_path, "victim")
    neighbour = _server(echo_repo, tmp_path, "neighbour")
    victim.start(ready_timeout_s=READY_TIMEOUT_S)
    neighbour.start(ready_timeout_s=READY_TIMEOUT_S)
    try:
        ours = {r for r in victim.shm_regions if r.exists()}
        theirs = {r for r in neighbour.shm_regions if r.exists()}
        assert ours and theirs and not ours & theirs
        victim_pid = victim.pid
        assert victim_pid is not None
        stubs = descendant_pids(victim_pid)

        # Server and stubs killed together (as by stop()'s escalation or the OOM
        # killer): nobody is left to unlink the regions. (A stub whose server
        # alone dies notices within ~1.5 s and removes them itself.)
        os.killpg(victim_pid, signal.SIGKILL)
        os.waitid(os.P_PID, victim_pid, os.WEXITED | os.WNOWAIT)  # dead; stop() reaps it below
        assert all(r.exists() for r in ours), "expected the crash to leak the regions"
        assert victim.stop() == -signal.SIGKILL

        assert not [r for r in ours if r.exists()]
        assert not [p for p in stubs if pid_alive(p)]
        assert all(r.exists() for r in theirs)
        data = np.ones(3, dtype=np.float32)
        np.testing.assert_array_equal(_infer_http(neighbour, data), data)
    finally:
        victim.stop()
        neighbour.stop(timeout_s=STOP_TIMEOUT_S)
    assert not [r for r in theirs if r.exists()]


def test_broken_model_fails_start_with_the_log(tmp_path: Path) -> None:
    repo = _repository(tmp_path / "repo", "broken", _BROKEN)
    server = _server(repo, tmp_path, "broken")
    with pytest.raises(ServerStartError) as info:
        server.start(ready_timeout_s=READY_TIMEOUT_S)
    message = str(info.value)
    assert "exited with code" in message and "not ready after" not in message  # failed on the exit, not the timeout
    assert "spotvlm-test: broken model refuses to initialize" in message
    assert "--model-repository=" in message
    assert info.value.returncode not in (None, 0)

    pid = server.pid
    assert pid is not None and not server.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not descendant_pids(pid)
    assert not [r for r in server.shm_regions if r.exists()]
