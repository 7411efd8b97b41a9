"""The real locust loads the project's locustfile: gevent patching, grpc's gevent mode, the user and its options
(`locust --list` in a child process, no server)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from load_tests import load_run as lr

pytestmark = pytest.mark.integration


def run_locust_list(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(lr.LOCUSTFILE), "--list", *options],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=lr.PROJECT_ROOT,
    )


def test_the_real_locust_loads_the_locustfile_and_its_options():
    """locust imports the locustfile (gevent patching, grpc's gevent mode), finds the user and parses its options."""
    result = run_locust_list(
        "--protocol", "http", "--fps", "2", "--prompt", "Where?", "--max-tokens", "4", "--cloud-delay", "1500"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SpotVLMStream" in result.stdout


def test_the_real_locust_refuses_a_bad_fps():
    result = run_locust_list("--fps", "0")
    assert result.returncode != 0
    assert "--fps: must be > 0" in result.stderr
