"""client/triton_install.py: finding the server, its backend folder, argv and environment (no process started)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from client.processes import SHM_REGION_PREFIX
from client.triton_install import (
    TritonInstall,
    TritonNotFoundError,
    build_backend_directory,
    build_command,
    build_env,
    locate_tritonserver,
    shm_prefix_from_args,
)


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
    assert shm_prefix_from_args(args) == prefix
