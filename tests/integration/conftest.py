"""Real edge and cloud tritonservers, each started with `spotvlm serve` on free loopback ports.

The servers are stopped by the PIDs these fixtures started (SIGTERM, as a user's Ctrl-C would), and a failed start
shows the server's log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client.launcher import descendant_pids, find_shm_regions, free_ports
from client.model_repository import unrendered_templates

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 240


def _require_built() -> None:
    missing = unrendered_templates(PROJECT_ROOT / "model_repository")
    if missing:
        pytest.fail(f"model repositories not built ({missing[0]}); run ./build_engines.sh (make test does)")


@dataclass
class ServeProcess:
    """`spotvlm serve <side>` as a child process."""

    side: str
    log_dir: Path
    repository: Path | None = None  # default: model_repository/<side>
    env: dict[str, str] = field(default_factory=dict)  # e.g. SPOTVLM_CLOUD_URL for the edge's cloud link
    process: subprocess.Popen | None = None
    ports: list[int] = field(default_factory=list)  # kept across stop/start, so a restarted server has the same URL
    shm_regions: set[Path] = field(default_factory=set)
    server_pids: set[int] = field(default_factory=set)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    @property
    def server_log(self) -> Path:
        return self.log_dir / f"{self.side}_server.log"

    @property
    def cli_log(self) -> Path:
        return self.log_dir / f"{self.side}_cli.log"

    def url(self, protocol: str) -> str:
        return self.http_url if protocol == "http" else self.grpc_url

    def logs(self) -> str:
        parts = []
        for path in (self.cli_log, self.server_log):
            if path.exists():
                parts.append(
                    f"--- {path.name} (last 80 lines) ---\n"
                    + "\n".join(path.read_text(errors="replace").splitlines()[-80:])
                )
        return "\n".join(parts)

    def start(self) -> ServeProcess:
        # A free port can be taken between picking it and the server binding it (client sockets draw from the same
        # ephemeral range): picked ports get a fresh pick and another try. Ports given by the caller do not.
        picked = not self.ports
        for attempt in range(3):
            self.ports = free_ports(3) if picked else self.ports
            if self._launch(final=attempt == 2 or not picked):
                return self
        raise AssertionError("unreachable")

    def _launch(self, final: bool) -> bool:
        spotvlm = Path(sys.executable).with_name("spotvlm")
        command = [
            str(spotvlm),
            "serve",
            self.side,
            "--http-port",
            str(self.ports[0]),
            "--grpc-port",
            str(self.ports[1]),
            "--metrics-port",
            str(self.ports[2]),
            "--log-file",
            str(self.server_log),
            "--ready-timeout",
            str(READY_TIMEOUT_S),
        ]
        if self.repository is not None:
            command += ["--repository", str(self.repository)]
        with open(self.cli_log, "a") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env={**os.environ, **self.env}
            )
        deadline = time.monotonic() + READY_TIMEOUT_S + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                logs = self.logs()
                if not final and "held by another process" in logs:
                    return False
                pytest.fail(f"spotvlm serve {self.side} exited with {self.process.returncode}\n{logs}")
            if self._ready():
                self.record_resources()
                return True
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"spotvlm serve {self.side} not ready in {READY_TIMEOUT_S} s\n{self.logs()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def record_resources(self) -> None:
        """The tritonserver and stub PIDs under our CLI process, and the shm regions they hold."""
        pids = descendant_pids(self.process.pid)
        self.server_pids |= set(pids)
        self.shm_regions |= find_shm_regions(pids)

    def stop(self, timeout_s: float = 60) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.record_resources()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # The CLI did not shut its server down: kill it and the server processes it started, by PID.
            self.process.kill()
            for pid in self.server_pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait(timeout=10)
            pytest.fail(f"spotvlm serve {self.side} did not stop within {timeout_s} s\n{self.logs()}")

    def kill(self, timeout_s: float = 60) -> int:
        """A crash: SIGKILL to the tritonserver and backend stubs under our CLI (the live ones, found now, so no old
        PID that may have been reused is signalled). The CLI sees its server die, cleans up and exits; its code is
        returned. `start()` then brings the server back on the same ports."""
        assert self.process is not None and self.process.poll() is None, f"spotvlm serve {self.side} is not running"
        self.record_resources()
        for pid in descendant_pids(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            pytest.fail(f"spotvlm serve {self.side} did not exit within {timeout_s} s of its server's kill")


def _start(side: str, tmp_path_factory, **options) -> ServeProcess:
    _require_built()
    return ServeProcess(side, tmp_path_factory.mktemp(f"{side}_logs"), **options).start()


@pytest.fixture(scope="session")
def cloud_server(tmp_path_factory):
    server = _start("cloud", tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def edge_server(tmp_path_factory):
    # The shared edge has no cloud link: tests of context transfer start their own linked pair.
    server = _start("edge", tmp_path_factory, env={"SPOTVLM_CLOUD_URL": "off"})
    yield server
    server.stop()


@pytest.fixture(params=["http", "grpc"])
def protocol(request) -> str:
    return request.param
