"""Tests of client/launcher.py that need no tritonserver.

The pure helpers are tested directly. The process lifecycle (readiness, stop
escalation, process-group and shm cleanup, serve_forever) is tested against a
small fake server script that answers /v2/health/ready, so every failure mode
can be provoked on purpose in a second or two.
"""

from __future__ import annotations

import mmap
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

from client import launcher
from client.launcher import (
    SHM_DIR,
    SHM_REGION_PREFIX,
    ServerStartError,
    TritonInstall,
    TritonNotFoundError,
    TritonServer,
    build_backend_directory,
    build_command,
    build_env,
    descendant_pids,
    find_shm_regions,
    free_port,
    free_ports,
    locate_tritonserver,
    serve_forever,
)

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _fake_wheel(root: Path, versions: tuple[str, ...] = ("3.11",)) -> Path:
    """A directory laid out like the nvidia-pytriton wheel; returns the pytriton dir."""
    pytriton = root / "site-packages" / "pytriton"
    ts = pytriton / "tritonserver"
    (ts / "bin").mkdir(parents=True)
    (ts / "bin" / "tritonserver").write_text("#!/bin/sh\n")
    (ts / "backends" / "python").mkdir(parents=True)
    (ts / "backends" / "python" / "libtriton_python.so").write_bytes(b"\x7fELF")
    (ts / "backends" / "python" / "triton_python_backend_utils.py").write_text("")
    for v in versions:
        (ts / "python_backend_stubs" / v).mkdir(parents=True)
        (ts / "python_backend_stubs" / v / "triton_python_backend_stub").write_bytes(b"\x7fELF")
    (ts / "caches" / "local").mkdir(parents=True)
    (root / "site-packages" / "nvidia_pytriton.libs").mkdir()
    return pytriton


def _alive(pid: int) -> bool:
    return launcher._pid_alive(pid)


def _wait_gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


@pytest.fixture
def shm_name() -> Iterator[Path]:
    """A unique /dev/shm path with the python-backend prefix, removed afterwards."""
    path = SHM_DIR / f"{SHM_REGION_PREFIX}spotvlm-unit-{uuid.uuid4()}"
    yield path
    path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# locating the server
# --------------------------------------------------------------------------------------


def test_locate_prefers_tritonserver_on_path(tmp_path: Path) -> None:
    binary = tmp_path / "tritonserver"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    install = locate_tritonserver(search_path=str(tmp_path))
    assert install.binary == binary
    assert not install.from_wheel
    assert install.python_backend_files == ()
    # The NGC server keeps its own default backend dir: none is built or passed.
    assert build_backend_directory(install, tmp_path / "b") is None
    cmd = build_command(install, repository=tmp_path, http_port=1, grpc_port=2, metrics_port=3)
    assert not any(a.startswith("--backend-directory") for a in cmd)


def test_locate_falls_back_to_the_wheel(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    install = locate_tritonserver(search_path=str(empty))
    assert install.from_wheel
    assert install.binary.name == "tritonserver" and install.binary.is_file()
    names = [p.name for p in install.python_backend_files]
    assert names == ["libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"]
    stub = install.python_backend_files[2]
    assert stub.parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert all(p.is_file() for p in install.python_backend_files)


def test_locate_fake_wheel_layout(tmp_path: Path) -> None:
    pytriton = _fake_wheel(tmp_path, versions=("3.10", "3.11"))
    empty = tmp_path / "empty"
    empty.mkdir()
    install = locate_tritonserver(search_path=str(empty), python_version=(3, 10), pytriton_dir=pytriton)
    stub = pytriton / "tritonserver" / "python_backend_stubs" / "3.10" / "triton_python_backend_stub"
    assert install.python_backend_files[2] == stub
    assert install.library_dirs == (tmp_path / "site-packages" / "nvidia_pytriton.libs",)
    assert install.cache_directory == pytriton / "tritonserver" / "caches"


def test_locate_reports_missing_stub_version(tmp_path: Path) -> None:
    pytriton = _fake_wheel(tmp_path, versions=("3.11", "3.12"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TritonNotFoundError, match=r"Python 2\.7 \(available: 3\.11, 3\.12\)"):
        locate_tritonserver(search_path=str(empty), python_version=(2, 7), pytriton_dir=pytriton)


# --------------------------------------------------------------------------------------
# backend folder, command, environment
# --------------------------------------------------------------------------------------


def test_backend_directory_holds_symlinks_that_resolve(tmp_path: Path) -> None:
    install = locate_tritonserver(search_path=str(tmp_path))  # empty dir: the wheel
    dest = build_backend_directory(install, tmp_path / "backends")
    assert dest == tmp_path / "backends"
    links = sorted((dest / "python").iterdir())
    assert [p.name for p in links] == sorted(p.name for p in install.python_backend_files)
    for link in links:
        assert link.is_symlink(), f"{link} must be a symlink, not a copy"
        target = next(p for p in install.python_backend_files if p.name == link.name)
        assert link.resolve() == target.resolve()
        assert link.resolve().is_file()
    # Rebuilding in place (a restart) replaces the links instead of failing.
    assert build_backend_directory(install, dest) == dest
    assert all(p.is_symlink() for p in (dest / "python").iterdir())


@pytest.fixture
def wheel_install(tmp_path: Path) -> TritonInstall:
    pytriton = _fake_wheel(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    return locate_tritonserver(search_path=str(empty), python_version=(3, 11), pytriton_dir=pytriton)


def test_command_binds_loopback_with_strict_flags(wheel_install: TritonInstall, tmp_path: Path) -> None:
    cmd = build_command(
        wheel_install,
        repository=tmp_path / "repo",
        http_port=8000,
        grpc_port=8001,
        metrics_port=8002,
        backend_directory=tmp_path / "backends",
        log_verbose=1,
        exit_timeout_s=7,
    )
    assert cmd[0] == str(wheel_install.binary)
    for flag in (
        f"--model-repository={tmp_path / 'repo'}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--http-port=8000",
        "--grpc-port=8001",
        "--metrics-port=8002",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--model-control-mode=none",
        "--log-verbose=1",
        "--exit-timeout-secs=7",
        f"--backend-directory={tmp_path / 'backends'}",
    ):
        assert flag in cmd
    # No response cache configured: the cache directory is not needed.
    assert not any(a.startswith("--cache-directory") for a in cmd)


def test_command_extra_args_come_last_and_win(wheel_install: TritonInstall, tmp_path: Path) -> None:
    extra = ["--model-control-mode=explicit", "--load-model=echo"]
    cmd = build_command(wheel_install, repository=tmp_path, http_port=1, grpc_port=2, metrics_port=3, extra_args=extra)
    assert cmd[-2:] == extra


def test_command_backend_directory_from_extra_args_is_not_duplicated(
    wheel_install: TritonInstall, tmp_path: Path
) -> None:
    cmd = build_command(
        wheel_install,
        repository=tmp_path,
        http_port=1,
        grpc_port=2,
        metrics_port=3,
        backend_directory=tmp_path / "ours",
        extra_args=["--backend-directory=/opt/custom"],
    )
    assert [a for a in cmd if a.startswith("--backend-directory")] == ["--backend-directory=/opt/custom"]


@pytest.mark.parametrize(
    ("extra", "expect_cache_dir"),
    [
        ((), False),
        (("--cache-config=local,size=1048576",), True),
        (("--cache-config=local,size=1048576", "--cache-directory=/x"), False),
    ],
)
def test_cache_directory_only_when_a_cache_is_configured(
    wheel_install: TritonInstall, tmp_path: Path, extra: tuple[str, ...], expect_cache_dir: bool
) -> None:
    cmd = build_command(wheel_install, repository=tmp_path, http_port=1, grpc_port=2, metrics_port=3, extra_args=extra)
    ours = f"--cache-directory={wheel_install.cache_directory}"
    assert (ours in cmd) is expect_cache_dir


def test_env_puts_libdir_and_venv_bin_first(wheel_install: TritonInstall) -> None:
    base = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/existing", "KEEP": "1"}
    env = build_env(
        wheel_install,
        base_env=base,
        executable="/venv/bin/python",
        libdir="/pyenv/lib",
        overrides={"EXTRA": "x"},
    )
    wheel_libs = str(wheel_install.library_dirs[0])
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == ["/pyenv/lib", "/opt/existing", wheel_libs]
    assert env["PATH"].split(os.pathsep) == ["/venv/bin", "/usr/bin", "/bin"]
    assert env["KEEP"] == "1" and env["EXTRA"] == "x"
    assert base == {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/existing", "KEEP": "1"}


def test_env_defaults_use_the_running_interpreter(wheel_install: TritonInstall) -> None:
    import sysconfig

    env = build_env(wheel_install, base_env={})
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == sysconfig.get_config_var("LIBDIR")
    # The venv's bin, not the resolved base interpreter's: the stub must find the venv.
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


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
        from client.launcher import python_libdir
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


def test_env_dedupes_and_overrides_win(wheel_install: TritonInstall) -> None:
    env = build_env(
        wheel_install,
        base_env={"PATH": "/venv/bin:/usr/bin", "LD_LIBRARY_PATH": "/pyenv/lib::"},
        executable="/venv/bin/python",
        libdir="/pyenv/lib",
        overrides={"PATH": "/only"},
    )
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == ["/pyenv/lib", str(wheel_install.library_dirs[0])]
    assert env["PATH"] == "/only"


@pytest.mark.parametrize(
    ("args", "prefix"),
    [
        ((), SHM_REGION_PREFIX),
        (("--backend-config=python,shm-region-prefix-name=edge_",), "edge_"),
        (("--backend-config", "python,shm-region-prefix-name=cloud_"), "cloud_"),
        (("--backend-config=python,shm-default-byte-size=1048576",), SHM_REGION_PREFIX),
    ],
)
def test_shm_prefix_follows_backend_config(args: tuple[str, ...], prefix: str) -> None:
    assert launcher._shm_prefix_from_args(args) == prefix


# --------------------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------------------


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


def test_port_in_use_and_listening_inodes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert launcher._port_in_use(port)
        inodes = launcher._listening_inodes(port)
        assert inodes and inodes <= launcher._socket_inodes(os.getpid())
    assert not launcher._port_in_use(port)
    assert launcher._listening_inodes(port) == set()


def test_disabled_endpoints_are_not_claimed(tmp_path: Path) -> None:
    s = TritonServer(tmp_path, extra_args=["--allow-metrics=false"])
    assert set(s.ports) == {"http", "grpc"}
    with pytest.raises(ValueError, match="allow-http"):
        TritonServer(tmp_path, extra_args=["--allow-http=false"])


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
        assert launcher._group_members(child.pid) == [child.pid]
        child.kill()
        deadline = time.monotonic() + 5
        while launcher._group_members(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert launcher._group_members(child.pid) == []  # a zombie until we reap it below
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


def test_find_shm_regions_ignores_unlinked_and_dead(shm_name: Path) -> None:
    with open(shm_name, "wb") as f:
        f.truncate(4096)
    fd = os.open(shm_name, os.O_RDWR)
    try:
        m = mmap.mmap(fd, 4096)
        assert find_shm_regions([os.getpid()]) == {shm_name}
        shm_name.unlink()  # now "(deleted)": nothing left to clean
        assert find_shm_regions([os.getpid()]) == set()
        m.close()
    finally:
        os.close(fd)
    assert find_shm_regions([2**22 + 12345]) == set()  # no such pid


# --------------------------------------------------------------------------------------
# log helpers
# --------------------------------------------------------------------------------------


def test_tail_lines_reads_from_the_end(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("".join(f"line {i} " + "x" * 2000 + "\n" for i in range(500)))
    tail = launcher._tail_lines(log, 60).splitlines()
    assert len(tail) == 60
    assert tail[0].startswith("line 440 ") and tail[-1].startswith("line 499 ")
    assert launcher._tail_lines(tmp_path / "missing", 10) == ""


def test_error_lines_skip_harmless_cpu_noise(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text(
        'E1125 19:16:33.546973 3655 server.cc:241] "CudaDriverHelper has not been initialized."\n'
        'I1125 19:16:34.0 1 x.cc:1] "fine"\n'
        "E1125 19:16:48.032365 3858 model_lifecycle.cc:642] \"failed to load 'broken'\"\n"
    )
    expected = "E1125 19:16:48.032365 3858 model_lifecycle.cc:642] \"failed to load 'broken'\""
    assert launcher._error_lines(log) == [expected]


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
        assert server.ready_time_s is not None and server.ready_time_s < 10
        pid = server.pid
        assert pid is not None
        assert "fake ready" in server.log_tail(5)
        assert "--http-address=127.0.0.1" in server.command
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
    assert not server.is_running()
    assert server.returncode == 0
    assert server.stop() == 0  # idempotent
    assert not _alive(pid)


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
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        server.start(ready_timeout_s=30)
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert "exited with code 3" in msg
    assert str(fake_install.binary) in msg  # the command
    assert "fake: boom, model failed to load" in msg  # the log tail
    assert info.value.returncode == 3
    assert not server.is_running()


def test_start_times_out_and_kills_a_hung_server(tmp_path: Path, fake_install: TritonInstall) -> None:
    server = _fake(tmp_path, fake_install, "hang")
    with pytest.raises(ServerStartError, match=r"not ready after 1s") as info:
        server.start(ready_timeout_s=1)
    assert "fake tritonserver starting" in str(info.value)
    assert server.pid is not None and not _alive(server.pid)


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
        t0 = time.monotonic()
        rc = server.stop(timeout_s=0.5)
        assert rc == -signal.SIGKILL
        assert time.monotonic() - t0 < 5
        assert not _alive(pid)
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


def test_serve_forever_second_signal_kills_at_once(tmp_path: Path, fake_install: TritonInstall) -> None:
    server = _fake(tmp_path, fake_install, "ignore_term", FAKE_SHM=f"{SHM_REGION_PREFIX}spotvlm-unit-{uuid.uuid4()}")

    def impatient(s: TritonServer) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    t0 = time.monotonic()
    assert serve_forever(server, on_ready=impatient, poll_interval_s=0.05) == 0
    assert time.monotonic() - t0 < 10  # not the 30 s graceful wait of a server ignoring signals
    assert server.returncode == -signal.SIGKILL
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


def _fail_first_start(monkeypatch, server, message):
    calls = []

    def start_once(ready_timeout_s):
        calls.append((server.http_port, server.grpc_port, server.metrics_port))
        if len(calls) == 1:
            raise launcher.ServerStartError(message)
        return server

    monkeypatch.setattr(server, "_start_once", start_once)
    return calls


def test_start_retries_on_fresh_ports_when_a_picked_port_was_taken(monkeypatch, tmp_path):
    server = launcher.TritonServer(tmp_path)
    calls = _fail_first_start(monkeypatch, server, "metrics port 1234 is held by another process")
    assert server.start() is server
    assert len(calls) == 2 and calls[0] != calls[1]


def test_start_does_not_retry_ports_the_caller_chose(monkeypatch, tmp_path):
    ports = launcher.free_ports(3)
    server = launcher.TritonServer(tmp_path, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])
    calls = _fail_first_start(monkeypatch, server, "metrics port 1234 is held by another process")
    with pytest.raises(launcher.ServerStartError):
        server.start()
    assert len(calls) == 1


def test_start_does_not_retry_other_failures(monkeypatch, tmp_path):
    server = launcher.TritonServer(tmp_path)
    calls = _fail_first_start(monkeypatch, server, "tritonserver exited with code 1 before becoming ready")
    with pytest.raises(launcher.ServerStartError):
        server.start()
    assert len(calls) == 1
