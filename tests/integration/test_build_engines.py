"""build_engines.sh as a user runs it with their own checkpoints, then a real server on what it built."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from client.frames import sample_frame
from client.launcher import TritonServer
from client.triton_client import VLMClient
from engines.tiny_checkpoint import CLOUD_SPEC, EDGE_SPEC, build_tiny_checkpoint
from tests.build_helpers import PROJECT_ROOT, copy_repository_templates

pytestmark = pytest.mark.integration


def _build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROJECT_ROOT / "build_engines.sh"), *args], capture_output=True, text=True, timeout=600)


def test_own_checkpoints_at_another_resolution_serve_end_to_end(tmp_path):
    # Stand-ins for a user's local Qwen2.5-VL folders: same architecture, other weights, 224 px edge tower.
    edge = build_tiny_checkpoint(tmp_path / "my_edge", replace(EDGE_SPEC, seed=7, image_size=224))
    cloud = build_tiny_checkpoint(tmp_path / "my_cloud", replace(CLOUD_SPEC, seed=8))
    repo = copy_repository_templates(tmp_path / "repo")
    args = [
        "--edge-checkpoint",
        str(edge),
        "--cloud-checkpoint",
        str(cloud),
        "--edge-image-size",
        "224",
        "--repository-root",
        str(repo),
        "--build-dir",
        str(tmp_path / "build"),
    ]

    first = _build(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    for number in range(1, 6):
        assert f"[{number}/5]" in first.stdout
    assert "max |ORT - torch| =" in first.stdout
    vision = (repo / "edge" / "svlm_vision" / "config.pbtxt").read_text()
    assert "dims: [ 256, 1176 ]" in vision and "dims: [ 64, 64 ]" in vision
    assert str(edge) in (repo / "edge" / "svlm_generate" / "config.pbtxt").read_text()

    again = _build(*args)
    assert again.returncode == 0 and "vision ONNX: up to date" in again.stdout

    server = TritonServer(repo / "edge").start(ready_timeout_s=240)
    try:
        with VLMClient(server.grpc_url, "grpc") as client:
            answer = client.ask_svlm(sample_frame("coffee"), "What is on the table?", max_tokens=6)
    finally:
        server.stop()
    assert answer.text.strip()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--edge-checkpoint", "/nonexistent/ckpt"], "no config.json there"),
        (["--edge-image-size", "100"], "must be a multiple of 28"),
    ],
)
def test_bad_options_fail_with_a_clear_message(tmp_path, args, message):
    result = _build(
        *args,
        "--repository-root",
        str(copy_repository_templates(tmp_path / "repo")),
        "--build-dir",
        str(tmp_path / "build"),
    )
    assert result.returncode != 0
    assert message in result.stderr
