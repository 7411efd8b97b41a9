"""The edge `svlm` ensemble and the cloud `lvlm` on real tritonservers, over HTTP and gRPC."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from client.frames import sample_frame
from client.launcher import find_shm_regions
from client.triton_client import ClientError, VLMClient, text_tensor

pytestmark = pytest.mark.integration

EDGE_MODELS = [
    "spotvlm",
    "context_ingest",
    "svlm",
    "svlm_focus",
    "svlm_preprocess",
    "svlm_vision",
    "svlm_generate",
    "svlm_postprocess",
]


@pytest.fixture(scope="module")
def frames():
    return {name: sample_frame(name) for name in ("astronaut", "coffee", "chelsea", "rocket")}


def test_every_model_is_ready(edge_server, cloud_server, protocol):
    with (
        VLMClient(edge_server.url(protocol), protocol) as edge,
        VLMClient(cloud_server.url(protocol), protocol) as cloud,
    ):
        assert edge.is_ready() and cloud.is_ready()
        assert edge.model_states() == {name: "READY" for name in EDGE_MODELS}
        assert cloud.model_states() == {"lvlm": "READY"}


def test_svlm_answers_and_is_greedy(edge_server, frames, protocol):
    with VLMClient(edge_server.url(protocol), protocol) as client:
        first = client.ask_svlm(frames["astronaut"], "What is the person wearing?")
        second = client.ask_svlm(frames["astronaut"], "What is the person wearing?")
    assert first.text.strip() != ""
    assert second.text == first.text


def test_http_and_grpc_give_the_same_answer(edge_server, frames):
    answers = set()
    for protocol in ("http", "grpc"):
        with VLMClient(edge_server.url(protocol), protocol) as client:
            answers.add(client.ask_svlm(frames["coffee"], "What is on the table?", max_tokens=6).text)
    assert len(answers) == 1


def test_max_tokens_bounds_the_answer(edge_server, frames):
    with VLMClient(edge_server.http_url) as client:
        long = client.infer(
            "svlm",
            {"IMAGE": frames["rocket"][None], "PROMPT": text_tensor("Describe.")},
            ["TEXT"],
            parameters={"max_tokens": 16},
        )
        short = client.ask_svlm(frames["rocket"], "Describe.", max_tokens=2)
    assert len(short.text) < len(long["TEXT"][0, 0].decode())


@pytest.mark.parametrize("as_bytes", [True, False])
def test_lvlm_returns_parseable_detections(cloud_server, frames, protocol, as_bytes):
    with VLMClient(cloud_server.url(protocol), protocol) as client:
        answer = client.ask_lvlm(frames["chelsea"], "Locate the cat.", jpeg_quality=90 if as_bytes else None)
    assert answer.text.strip() != ""
    assert isinstance(answer.detections, list)
    height, width = frames["chelsea"].shape[:2]
    for detection in answer.detections:
        x1, y1, x2, y2 = detection["bbox_2d"]
        assert isinstance(detection["label"], str)
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


def test_eight_concurrent_requests_get_eight_answers_and_one_bad_fails_alone(edge_server, frames, protocol):
    names = list(frames)
    jobs = [(frames[names[i % 4]], f"Question number {i}?") for i in range(8)]
    jobs[5] = (np.zeros((0, 0, 3), np.uint8), "bad frame")

    def ask(job):
        image, prompt = job
        with VLMClient(edge_server.url(protocol), protocol) as client:
            try:
                return client.ask_svlm(image, prompt, max_tokens=8).text
            except ClientError as exc:
                return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(ask, jobs))
    assert len(results) == 8
    assert isinstance(results[5], ClientError) and results[5].invalid_argument and "IMAGE is empty" in str(results[5])
    good = [r for i, r in enumerate(results) if i != 5]
    assert all(isinstance(r, str) and r.strip() for r in good)
    # Greedy decoding: the same request alone gives the same answer as inside a concurrent batch.
    with VLMClient(edge_server.url(protocol), protocol) as client:
        assert client.ask_svlm(*jobs[0], max_tokens=8).text == results[0]


def _bad_inputs(frame):
    prompt = text_tensor("What is this?")
    return {
        "wrong dtype": ({"IMAGE": frame[None].astype(np.float32), "PROMPT": prompt}, "data-type is 'FP32'"),
        "empty image": ({"IMAGE": np.zeros((1, 0, 0, 3), np.uint8), "PROMPT": prompt}, "IMAGE is empty"),
        "missing prompt": ({"IMAGE": frame[None]}, "missing required input(s) ['PROMPT']"),
        "empty prompt": ({"IMAGE": frame[None], "PROMPT": text_tensor("  ")}, "PROMPT is empty"),
        "wrong rank": ({"IMAGE": frame[None, :, :, :1], "PROMPT": prompt}, "IMAGE"),
        "invalid utf-8": ({"IMAGE": frame[None], "PROMPT": np.array([[b"\xff\xfe"]], dtype=object)}, "not valid UTF-8"),
    }


@pytest.mark.parametrize(
    "case", ["wrong dtype", "empty image", "missing prompt", "empty prompt", "wrong rank", "invalid utf-8"]
)
def test_bad_input_is_invalid_arg_naming_the_problem(edge_server, frames, protocol, case):
    inputs, message = _bad_inputs(frames["coffee"][:64, :64])[case]
    with VLMClient(edge_server.url(protocol), protocol) as client:
        with pytest.raises(ClientError) as raised:
            client.infer("svlm", inputs, ["TEXT"])
        assert raised.value.invalid_argument, raised.value.status
        assert message in str(raised.value)
        assert client.is_ready()
        assert client.ask_svlm(frames["coffee"], "Still there?", max_tokens=4).text.strip()


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"PROMPT": text_tensor("q")}, "missing image"),
        ({"IMAGE_BYTES": np.array([[b"not an image"]], dtype=object), "PROMPT": text_tensor("q")}, "not a decodable"),
    ],
)
def test_lvlm_bad_image_is_invalid_arg(cloud_server, inputs, message):
    with VLMClient(cloud_server.http_url) as client:
        with pytest.raises(ClientError) as raised:
            client.infer("lvlm", inputs, ["TEXT", "DETECTIONS"])
        assert raised.value.invalid_argument and message in str(raised.value)
        assert client.is_ready()


def test_shutdown_leaves_no_process_and_no_shm(tmp_path_factory):
    """A server of its own, stopped with SIGTERM like a user's Ctrl-C."""
    from tests.integration.conftest import ServeProcess

    server = ServeProcess("cloud", tmp_path_factory.mktemp("shutdown")).start()
    with VLMClient(server.http_url) as client:
        assert client.ask_lvlm(sample_frame("rocket"), "Locate the rocket.", max_tokens=4).text is not None
    pids, regions = set(server.server_pids), set(server.shm_regions)
    assert pids and regions, "the server and its python stub were seen running with their shm region"
    assert server.stop() == 0, server.logs()
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert alive == []
    assert [r for r in regions if r.exists()] == []
    assert find_shm_regions(pids) == set()


def test_latency_script_reports_both_protocols(edge_server):
    from load_tests.svlm_latency import measure

    result = measure(edge_server.http_url, edge_server.grpc_url, requests=4, warmup=1, max_tokens=4, progress=False)
    for key in ("svlm_http", "svlm_grpc", "baseline_http_live"):
        assert result[key]["n"] == 4 and 0 < result[key]["p50_ms"] <= result[key]["p99_ms"]
    assert result["grpc_over_http_p50_ratio"] > 0
