"""The `spotvlm` command as a user types it: ask (both servers, both protocols), the demo, and stream --annotate."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import av
import pytest
from PIL import Image

from client.annotate import FrameAnnotator
from client.frames import sample_frame

pytestmark = pytest.mark.integration

SPOTVLM = str(Path(sys.executable).with_name("spotvlm"))


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SPOTVLM, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "chelsea.jpg"
    Image.fromarray(sample_frame("chelsea")).save(path, quality=92)
    return path


def test_ask_edge(edge_server, photo, protocol):
    result = _run(
        "ask",
        "--image",
        str(photo),
        "--prompt",
        "What animal is this?",
        "--protocol",
        protocol,
        "--url",
        edge_server.url(protocol),
        "--max-tokens",
        "6",
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["text"].strip() and answer["latency_ms"] > 0


def test_ask_cloud_prints_detections(cloud_server, photo, protocol):
    result = _run(
        "ask",
        "--server",
        "cloud",
        "--image",
        str(photo),
        "--prompt",
        "Locate the cat.",
        "--protocol",
        protocol,
        "--url",
        cloud_server.url(protocol),
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert isinstance(answer["detections"], list) and answer["text"].strip()


def test_ask_reports_bad_input_and_exits_nonzero(edge_server, photo):
    result = _run("ask", "--image", str(photo), "--prompt", "x", "--max-tokens", "0", "--url", edge_server.http_url)
    assert result.returncode == 1
    assert "max_tokens must be >= 1" in result.stderr


def test_demo_prints_the_table_and_stops_both_servers():
    result = _run("demo", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "| frame" in out and "edge svlm (latency)" in out and "cloud lvlm (latency)" in out
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        assert name in out
    assert out.count(" ms)") >= 8  # an edge and a cloud latency per frame
    # Benchmark questions with their true answers, each answer marked right or wrong by the benchmark's scorer.
    assert "Benchmark questions (test video 1, 8 questions" in out and "| true answer" in out
    assert re.search(r"edge \d/8 right, cloud \d/8 right", out)
    assert out.rstrip().endswith("Both servers stopped.")


def test_stream_annotate_writes_a_video_of_every_frame(edge_server, tmp_path):
    video = tmp_path / "annotated.mp4"
    result = _run(
        "stream", "--synthetic", "--frames", "4", "--fps", "5", "--url", edge_server.grpc_url,
        "--max-tokens", "8", "--annotate", str(video),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"annotated video: {video}" in result.stdout
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    # The synthetic scene's 320 x 240 frames are drawn at 640 x 480, with the legend and answer panel below.
    assert len(frames) == 4 and frames[0].shape == (480 + FrameAnnotator.panel_height(), 640, 3)
    assert all(frame[480:].mean() < 60 for frame in frames)  # the dark panel, with light text on it
