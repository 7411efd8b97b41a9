"""The launcher against processes it starts: small fake tritonserver scripts and helper children.

The process helpers (descendants, process groups, /dev/shm regions) are checked on children made for the purpose;
the lifecycle (readiness, stop escalation, process-group and shm cleanup, serve_forever) against a fake server script
that answers /v2/health/ready, so every failure mode can be provoked on purpose in a second or two.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.processes import (
    SHM_DIR,
    SHM_REGION_PREFIX,
    descendant_pids,
    find_shm_regions,
    group_members,
    pid_alive,
)
from client.serve import serve_forever
from client.server_log import ServerStartError
from client.server_process import TritonServer
from client.triton_install import TritonInstall


def _wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    """True once ``pid`` is gone or a zombie; the bound only catches a process that never dies."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


@pytest.fixture
def shm_name() -> Iterator[Path]:
    """A unique /dev/shm path with the python-backend prefix, removed afterwards."""
    path = SHM_DIR / f"{SHM_REGION_PREFIX}spotvlm-unit-{uuid.uuid4()}"
    yield path
    path.unlink(missing_ok=True)


def test_libdir_survives_servers_started_from_many_threads() -> None:
    """CI lost LIBDIR from one of two servers started together (sysconfig's lazy cache is not thread-safe before
    3.13); in a fresh interpreter, where the cache is still empty, every thread must get it."""
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        pytest.skip("this interpreter has no LIBDIR")
    script = textwrap.dedent(
        """
        import threading
        from client.triton_install import python_libdir
        barrier, seen = threading.Barrier(8), []
        def one():
            barrier.wait()
            seen.append(python_libdir())
        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads: thread.start()
        for thread in threads: thread.join()
        print("\\n".join(seen))
        """
    )
    root = Path(__file__).resolve().parents[2]
    for _ in range(3):  # unlocked, 5 to 7 of 8 threads got None in every one of 10 tries
        out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
        assert out.stdout.splitlines() == [libdir] * 8, out.stdout + out.stderr


# --------------------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------------------


def test_descendant_pids_sees_children_and_grandchildren() -> None:
    # sh backgrounds a sleep (the grandchild) and reports its pid.
    child = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        mine = descendant_pids(os.getpid())
        assert child.pid in mine and grandchild in mine
        assert mine.index(child.pid) < mine.index(grandchild)  # children first
        assert descendant_pids(child.pid) == [grandchild]
        assert descendant_pids(grandchild) == []
    finally:
        os.kill(grandchild, signal.SIGKILL)
        child.wait(timeout=5)


def test_group_members_lists_a_new_session_and_skips_zombies() -> None:
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert group_members(child.pid) == [child.pid]
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, and left a zombie until we reap it below
        assert group_members(child.pid) == []
    finally:
        child.kill()
        child.wait(timeout=5)


_HOLDER = textwrap.dedent(
    """
    import mmap, os, sys, time
    path, mode = sys.argv[1], sys.argv[2]
    fd = os.open(path, os.O_RDWR)
    if mode in ("map", "both"):
        m = mmap.mmap(fd, 4096)
    if mode == "map":
        os.close(fd)  # only the mapping keeps it
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("mode", ["fd", "map", "both"])
def test_find_shm_regions_of_a_holding_child(shm_name: Path, mode: str) -> None:
    other = SHM_DIR / f"spotvlm-unit-unprefixed-{uuid.uuid4()}"
    for path in (shm_name, other):
        with open(path, "wb") as f:
            f.truncate(4096)
    holders = [
        subprocess.Popen([sys.executable, "-c", _HOLDER, str(p), mode], stdout=subprocess.PIPE, text=True)
        for p in (shm_name, other)
    ]
    try:
        for h in holders:
            assert h.stdout is not None and h.stdout.readline().strip() == "ready"
        pids = [h.pid for h in holders]
        assert find_shm_regions(pids) == {shm_name}
        assert find_shm_regions(pids, prefix=None) == {shm_name, other}
        # Ours holds nothing: a region is attributed only to the pids that map it.
        assert find_shm_regions([os.getpid()]) == set()
        # Through the process tree, as TritonServer does it.
        assert shm_name in find_shm_regions(descendant_pids(os.getpid()))
    finally:
        for h in holders:
            h.kill()
            h.wait(timeout=5)
        other.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# lifecycle, against a fake server
# --------------------------------------------------------------------------------------

# Parses the same flags as tritonserver and behaves per FAKE_MODE:
#   ok           serve /v2/health/ready, exit 0 on SIGTERM
#   exit         print an error and exit 3 before listening
#   hang         never listen
#   ignore_term  serve, map a python-backend-like shm region, ignore SIGTERM
#   orphan       serve, start a SIGTERM-ignoring child (a stuck stub), exit 0 on SIGTERM
#   die          serve for 0.5 s, then exit 7
_FAKE_SERVER = textwrap.dedent(
    """
    import http.server, mmap, os, signal, subprocess, sys, threading, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    mode = os.environ.get("FAKE_MODE", "ok")
    print("fake tritonserver starting", " ".join(sys.argv[1:]), flush=True)
    if mode == "exit":
        print("E0000 fake: boom, model failed to load", flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(600)
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        path = "/dev/shm/" + os.environ["FAKE_SHM"]
        with open(path, "wb") as f:
            f.truncate(4096)
        fd = os.open(path, os.O_RDWR)
        region = mmap.mmap(fd, 4096)
    else:
        signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    if mode == "orphan":
        stuck = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        child = subprocess.Popen([sys.executable, "-c", stuck])
        print("CHILD", child.pid, flush=True)

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/v2/health/ready" else 404)
            self.end_headers()
        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer((args["http-address"], int(args["http-port"])), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("fake ready", flush=True)
    if mode == "die":
        time.sleep(0.5)
        print("fake: dying on my own", flush=True)
        os._exit(7)
    while True:
        time.sleep(1)
    """
)


@pytest.fixture
def fake_install(tmp_path: Path) -> TritonInstall:
    script = tmp_path / "fake_tritonserver"
    script.write_text(f"#!{sys.executable}\n{_FAKE_SERVER}")
    script.chmod(0o755)
    return TritonInstall(binary=script, from_wheel=False)


def _fake(tmp_path: Path, install: TritonInstall, mode: str, **env: str) -> TritonServer:
    return TritonServer(
        tmp_path / "repo",
        log_path=tmp_path / f"{mode}.log",
        install=install,
        env_overrides={"FAKE_MODE": mode, **env},
    )


def test_start_stop_lifecycle(tmp_path: Path, fake_install: TritonInstall) -> None:
    server = _fake(tmp_path, fake_install, "ok")
    assert server.stop() is None and not server.is_running()  # never started
    with server:
        assert server.is_running()
        assert server.ready_time_s is not None
        pid = server.pid
        assert pid is not None
        assert "fake ready" in server.log_tail(5)
        assert "--http-address=127.0.0.1" in server.command
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
    assert not server.is_running()
    assert server.returncode == 0
    assert server.stop() == 0  # idempotent
    assert not pid_alive(pid)


def test_default_log_is_kept_and_backends_removed(tmp_path: Path, fake_install: TritonInstall) -> None:
    server = TritonServer(tmp_path / "repo", install=fake_install, env_overrides={"FAKE_MODE": "ok"})
    assert server._workdir is None  # configuring a server leaves nothing in /tmp
    server.start(ready_timeout_s=30)
    workdir = server.log_path.parent
    try:
        assert workdir.name.startswith("spotvlm-triton-")
        (workdir / "backends").mkdir(exist_ok=True)  # as a wheel install would have it
        server.stop()
        assert server.log_path.is_file() and "fake ready" in server.log_tail()
        assert not (workdir / "backends").exists()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_start_fails_fast_when_the_server_exits(tmp_path: Path, fake_install: TritonInstall) -> None:
    server = _fake(tmp_path, fake_install, "exit")
    with pytest.raises(ServerStartError) as info:
        server.start(ready_timeout_s=30)
    msg = str(info.value)
    assert "exited with code 3" in msg
    assert "not ready after" not in msg  # failed on the exit, not on the timeout
    assert str(fake_install.binary) in msg  # the command
    assert "fake: boom, model failed to load" in msg  # the log tail
    assert info.value.returncode == 3
    assert not server.is_running()


def test_start_times_out_and_kills_a_hung_server(tmp_path: Path, fake_install: TritonInstall) -> None:
    server = _fake(tmp_path, fake_install, "hang")
    with pytest.raises(ServerStartError, match=r"not ready after 1s") as info:
        server.start(ready_timeout_s=1)
    assert "fake tritonserver starting" in str(info.value)
    assert server.pid is not None and not pid_alive(server.pid)


def test_start_refuses_a_busy_port(tmp_path: Path, fake_install: TritonInstall) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = TritonServer(tmp_path, http_port=port, install=fake_install, log_path=tmp_path / "l")
        with pytest.raises(ServerStartError, match=f"already in use.*{port}"):
            server.start()
        assert server.pid is None


def test_stop_escalates_to_sigkill_and_removes_our_shm(
    tmp_path: Path, fake_install: TritonInstall, shm_name: Path
) -> None:
    # A region with the same prefix that this server never maps must survive.
    foreign = SHM_DIR / f"{SHM_REGION_PREFIX}spotvlm-unit-foreign-{uuid.uuid4()}"
    foreign.write_bytes(b"\0" * 16)
    try:
        server = _fake(tmp_path, fake_install, "ignore_term", FAKE_SHM=shm_name.name)
        server.start(ready_timeout_s=30)
        assert shm_name in server.shm_regions
        assert foreign not in server.shm_regions
        pid = server.pid
        assert pid is not None
        rc = server.stop(timeout_s=0.5)
        assert rc == -signal.SIGKILL
        assert not pid_alive(pid)
        assert not shm_name.exists()  # leaked by the killed process, removed by us
        assert foreign.exists()
    finally:
        foreign.unlink(missing_ok=True)


def test_stop_kills_processes_that_outlive_the_server(tmp_path: Path, fake_install: TritonInstall) -> None:
    server = _fake(tmp_path, fake_install, "orphan")
    server.start(ready_timeout_s=30)
    pid = server.pid
    assert pid is not None
    children = descendant_pids(pid)
    assert children, server.log_tail()
    assert server.stop(timeout_s=5) == 0
    for child in children:
        assert _wait_gone(child), f"pid {child} survived the stop"


def test_serve_forever_stops_on_sigterm(
    tmp_path: Path, fake_install: TritonInstall, capsys: pytest.CaptureFixture[str]
) -> None:
    server = _fake(tmp_path, fake_install, "ok")
    before = signal.getsignal(signal.SIGTERM)
    seen: list[int | None] = []

    def on_ready(s: TritonServer) -> None:
        seen.append(s.pid)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill <our pid>` from a shell

    assert serve_forever(server, on_ready=on_ready, poll_interval_s=0.05) == 0
    assert seen == [server.pid]
    assert not server.is_running() and server.returncode == 0
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    out = capsys.readouterr().out
    assert f"http={server.http_url}" in out and f"grpc={server.grpc_url}" in out


def test_serve_forever_second_signal_kills_at_once(
    tmp_path: Path, fake_install: TritonInstall, caplog: pytest.LogCaptureFixture
) -> None:
    server = _fake(tmp_path, fake_install, "ignore_term", FAKE_SHM=f"{SHM_REGION_PREFIX}spotvlm-unit-{uuid.uuid4()}")

    def impatient(s: TritonServer) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    with caplog.at_level("WARNING", logger="spotvlm.launcher"):
        assert serve_forever(server, on_ready=impatient, poll_interval_s=0.05) == 0
    assert server.returncode == -signal.SIGKILL
    # Killed by the second signal, not by stop()'s escalation after the graceful wait of a server ignoring signals.
    assert "second SIGINT" in caplog.text
    assert "still running after" not in caplog.text
    assert not [r for r in server.shm_regions if r.exists()]


def test_serve_forever_returns_the_code_of_a_dying_server(
    tmp_path: Path, fake_install: TritonInstall, capsys: pytest.CaptureFixture[str]
) -> None:
    server = _fake(tmp_path, fake_install, "die")
    assert serve_forever(server, poll_interval_s=0.05) == 7
    assert "fake: dying on my own" in capsys.readouterr().err


def test_serve_forever_reports_a_failed_start(
    tmp_path: Path, fake_install: TritonInstall, capsys: pytest.CaptureFixture[str]
) -> None:
    server = _fake(tmp_path, fake_install, "exit")
    assert serve_forever(server) == 1
    assert "fake: boom" in capsys.readouterr().err
