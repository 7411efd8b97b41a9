"""The shipped trained checkpoints as `make demo` serves them: build --trained copies them (no training), and the
demo's trained path replays a benchmark video through real servers, each answer beside the truth."""

from __future__ import annotations

import re
import subprocess

import pytest

from spotvlm.demo import run_demo, serves_trained_checkpoints
from tests.build_helpers import PROJECT_ROOT, copy_repository_templates

pytestmark = pytest.mark.integration


def test_the_shipped_checkpoints_build_without_training_and_serve_the_trained_demo(tmp_path, capsys):
    repo = copy_repository_templates(tmp_path / "model_repository")
    built = subprocess.run(
        [str(PROJECT_ROOT / "build_engines.sh"), "--trained", "--repository-root", str(repo), "--build-dir",
         str(tmp_path / "build")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert built.stdout.count("has this recipe's key; copied") == 2 and "training for" not in built.stdout
    assert serves_trained_checkpoints(repo)

    assert run_demo(protocol="grpc", repository_root=repo) == 0
    out = capsys.readouterr().out
    assert re.search(r"edge \d/8 right, cloud \d/8 right", out)
    assert "| true answer" in out and "| context transfer" in out and "| answer given" in out
    assert re.search(r"edge alone \d+/\d+ right, with context transfer \d+/\d+", out)
    assert "astronaut" not in out  # the photos are for random weights only
    assert out.rstrip().endswith("Both servers stopped.")
