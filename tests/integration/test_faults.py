"""Cloud faults end to end: a real edge linked to a real cloud that is absent, killed, slow, failing or unhelpful.

Every case streams frames over gRPC while the fault happens and checks that the edge answers every frame exactly once
(frame ids 0..n-1 per stream, no restart), without error and within the per-frame deadline (the client timeout), and
that CONTEXT's `cloud_state` tells the fault.

One cloud and one edge serve the whole module. The edge is a repository copy with a short cloud deadline and a short
breaker back-off, so timeouts and recoveries take seconds; the cloud's ports are picked before the edge starts, so the
first test can start the edge with nothing listening there. The tests run in file order: the first needs the cloud
absent, the last swaps it for a cloud that refuses the edge's requests. The breaker is per edge instance (each has its
own link), so every case waits for each of its streams, whichever instance it landed on.
"""

from __future__ import annotations

import json

import pytest
from tritonclient.utils import InferenceServerException

from client.frame_sources import SyntheticSource
from client.launcher import free_ports
from client.streaming import StreamSession
from client.triton_client import ClientError, VLMClient
from tests.integration.conftest import ServeProcess, _require_built
from tests.integration.streams_helpers import (
    FRAME_DEADLINE_S,
    FRAME_SIZE,
    LiveStreams,
    assert_answered_once,
    ingest,
    ingest_tensors,
    metric_value,
    repository_copy,
    wait_for_metric,
)

pytestmark = pytest.mark.integration

DEADLINE_MS = 2000  # the edge's cloud deadline: ~8x the tiny cloud model's round trip, well under its timeouts here
FAILURE_THRESHOLD = 3
EDGE_PARAMS = {
    "cloud_deadline_ms": str(DEADLINE_MS),
    "cloud_failure_threshold": str(FAILURE_THRESHOLD),
    "cloud_backoff_ms": "500",
    "cloud_max_backoff_ms": "2000",
}
CLOUD_MAX_TOKENS = 48  # the edge's default cloud_max_tokens
SLOW_DELAY_MS = 3500  # injected on the link: the cloud answers later than DEADLINE_MS
RECOVERY_S = 60  # generous: a cloud start plus gRPC reconnects on a loaded machine
PROMPT = "What is moving?"
STREAM_PARAMS = {"max_tokens": 4}

CLOUD_ERRORS = "spotvlm_cloud_errors_total"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """The module's cloud, not started: its ports are fixed now so that the edge can point at them first."""
    _require_built()
    server = ServeProcess("cloud", tmp_path_factory.mktemp("fault_cloud_logs"), ports=free_ports(3))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory, cloud):
    repository = repository_copy("edge", tmp_path_factory.mktemp("fault_edge_repo"), "spotvlm", EDGE_PARAMS)
    server = ServeProcess(
        "edge",
        tmp_path_factory.mktemp("fault_edge_logs"),
        repository=repository,
        env={"SPOTVLM_CLOUD_URL": cloud.grpc_url},
    ).start()
    yield server
    server.stop()


@pytest.fixture
def healthy_cloud(cloud):
    """The cloud up with its normal repository, whatever an earlier test left."""
    if cloud.repository is not None:
        cloud.stop()
        cloud.repository = None
    if cloud.process is None or cloud.process.poll() is not None:
        cloud.start()
    return cloud


def _state(*states: str):
    return lambda r: r.context.cloud_state in states


def _ok_with_context_from(first_frame: dict[int, int]):
    """cloud_state ok and the context an LVLM answer to a frame sent at or after `first_frame[stream]`."""
    return lambda r: (
        r.context.cloud_state == "ok" and (r.context.context_frame or -1) >= first_frame.get(r.stream_id, 0)
    )


def test_cloud_absent_at_start_then_started(edge, cloud):
    assert cloud.process is None, "runs first: the edge must start with nothing listening on the cloud's port"
    with LiveStreams(edge.grpc_url, [11, 12], STREAM_PARAMS) as streams:
        streams.wait_for(_state("down"), "cloud_state down", RECOVERY_S)
        cloud.start()
        up = streams.mark()
        recovered = streams.wait_for(_ok_with_context_from({}), "cloud_state ok with context", RECOVERY_S, since=up)
        results = streams.close()
    assert_answered_once(results, streams.sessions)
    for sid, stream in results.items():
        absent = stream[: up[sid]]
        assert not any(r.has_context for r in absent), "no context while there was no cloud"
        # A fresh breaker says "ok" until its first failures; then the frames skip the cloud between probes.
        assert {r.context.cloud_state for r in absent} <= {"ok", "slow", "down"}
        assert "skipped_down" in {r.context.cloud_dispatch for r in absent}
        assert recovered[sid].context.replaced_turns >= 1


# Malformed LVLM results for `context_ingest`: (what, tensors changed from a valid call, words the error must hold).
BAD_FRAME = 10_000  # newer than any frame of the stream: stored, it would be the context of the next frame
BAD_INGESTS = [
    ("not JSON", {"detections": b"{not json"}, "DETECTIONS is not a JSON list"),
    ("empty", {"detections": b""}, "DETECTIONS is not a JSON list"),
    ("an object, not a list", {"detections": b'{"bbox_2d": [1, 2, 3, 4], "label": "car"}'}, "must be a JSON list"),
    ("a string, not a list", {"detections": b'"car"'}, "must be a JSON list"),
    ("a box of 3 numbers", {"detections": b'[{"bbox_2d": [1, 2, 3], "label": "car"}]'}, "not a detection"),
    ("a box of words", {"detections": b'[{"bbox_2d": ["a", 2, 3, 4], "label": "car"}]'}, "not a detection"),
    ("a NaN corner", {"detections": b'[{"bbox_2d": [1, 2, NaN, 4], "label": "car"}]'}, "not a detection"),
    ("no box", {"detections": b'[{"label": "car"}]'}, "not a detection"),
    ("a number for a detection", {"detections": b"[7]"}, "not a detection: 7"),
    ("not UTF-8", {"detections": b"\xff[]"}, "DETECTIONS is not valid UTF-8"),
    ("too many boxes", {"detections": json.dumps([{"bbox_2d": [1, 1, 9, 9]}] * 257).encode()}, "limit of 256"),
    ("TEXT not UTF-8", {"text": b"\xff"}, "TEXT is not valid UTF-8"),
    ("a zero frame height", {"frame_size": (0, 320)}, "FRAME_SIZE must be [height, width] with both > 0"),
    ("three frame sizes", {"frame_size": (240, 320, 3)}, "FRAME_SIZE"),
    ("a negative frame id", {"frame_id": -1}, "FRAME_ID must be >= 0"),
    ("stream id 0", {"stream_id": 0}, "STREAM_ID must be the stream's non-zero sequence id"),
]


def test_malformed_ingest_is_refused_and_leaves_the_store_untouched(edge):
    stream_id = 31
    frames = iter(SyntheticSource(seed=stream_id, size=FRAME_SIZE))
    session = StreamSession(edge.grpc_url, "grpc", stream_id, PROMPT, params=STREAM_PARAMS, timeout_s=FRAME_DEADLINE_S)
    sent = [session.send(next(frames), start=True, end=False)]
    try:
        valid = {
            "stream_id": stream_id,
            "frame_id": BAD_FRAME,
            "detections": b'[{"bbox_2d": [10, 20, 110, 120], "label": "car"}]',
            "frame_size": FRAME_SIZE,
            "text": "a car",
        }
        refused = []
        for what, changes, words in BAD_INGESTS:
            with pytest.raises(InferenceServerException) as info:
                ingest_tensors(edge.grpc_url, **{**valid, **changes})
            refused.append((what, info.value.status(), info.value.message()))
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT", refused[-1]
            assert words in info.value.message(), refused[-1]

        sent.append(session.send(next(frames), start=False, end=False))
        assert sent[-1].context.context_frame != BAD_FRAME, "a refused result reached the store"

        status = ingest(
            edge.grpc_url, stream_id, BAD_FRAME, [{"bbox_2d": [10, 20, 110, 120], "label": "car"}], FRAME_SIZE, "a car"
        )
        assert status == {"stream_id": stream_id, "frame_id": BAD_FRAME, "stored": True}
        sent.append(session.send(next(frames), start=False, end=False))
        assert sent[-1].context.context_frame == BAD_FRAME and sent[-1].context.context_detections == 1
    finally:
        sent.append(session.send(next(frames), start=False, end=True))
        session.close()
    assert_answered_once({stream_id: sent}, {stream_id: session})


def test_cloud_text_without_detections_is_context_without_focus(edge, healthy_cloud):
    stream_id = 21
    frame, _ = SyntheticSource(seed=stream_id, size=FRAME_SIZE).frame_at(0)
    # The premise, asked of the cloud directly as the edge asks it: the random-weight LVLM answers text, no boxes.
    with VLMClient(healthy_cloud.grpc_url, "grpc") as client:
        answer = client.ask_lvlm(frame, PROMPT, max_tokens=CLOUD_MAX_TOKENS, jpeg_quality=85)
    assert answer.text.strip() and answer.detections == []

    with LiveStreams(edge.grpc_url, [stream_id], {**STREAM_PARAMS, "focus": "crop_and_frame"}) as streams:
        streams.wait_for(lambda r: r.has_context and r.context.replaced_turns >= 1, "context", RECOVERY_S)
        streams.wait_for(lambda r: True, "one more frame", RECOVERY_S, since=streams.mark())
        results = streams.close()
    assert_answered_once(results, streams.sessions)
    used = [r.context for r in results[stream_id] if r.has_context]
    assert used and all(c.cloud_state == "ok" and c.replaced_turns >= 1 for c in used)
    assert {c.context_detections for c in used} == {0}, "the cloud's answers had no boxes"
    assert all(c.focus_mode == "off" and c.focus_box is None for c in used)
    # The cloud's text to the question asked is carried as the answer (carry_answers), else the SVLM answers.
    assert all(c.svlm_model == "svlm" if c.answer_source == "svlm" else c.answer_source == "cloud" for c in used)


def test_cloud_killed_mid_stream_then_restarted(edge, healthy_cloud):
    # SIGKILL, not SIGTERM: the stop/restart test in test_context_transfer.py covers the graceful shutdown, where
    # Triton drains its requests and closes its port; a crash drops the connection under a request in flight.
    cloud = healthy_cloud
    with LiveStreams(edge.grpc_url, [41, 42], STREAM_PARAMS) as streams:
        streams.wait_for(_ok_with_context_from({}), "context before the kill", RECOVERY_S)
        killed = streams.mark()
        exit_code = cloud.kill()
        leftover_shm = [r for r in cloud.shm_regions if r.exists()]
        streams.wait_for(_state("down"), "cloud_state down after the kill", RECOVERY_S, since=killed)
        cloud.start()
        streams.wait_for(_ok_with_context_from(killed), "context from the restarted cloud", RECOVERY_S)
        results = streams.close()
    assert exit_code == 128 + 9, "`spotvlm serve` reports its server killed"
    assert leftover_shm == [], "the CLI removed the killed server's shm regions"
    assert_answered_once(results, streams.sessions)


def test_cloud_slower_than_the_deadline(edge, healthy_cloud):
    timeouts = metric_value(edge.ports[2], CLOUD_ERRORS, kind="timeout")
    with LiveStreams(edge.grpc_url, [51, 52], {**STREAM_PARAMS, "cloud_delay": str(SLOW_DELAY_MS)}) as streams:
        streams.wait_for(_state("down"), "cloud_state down after timeouts", RECOVERY_S)
        wait_for_metric(edge.ports[2], CLOUD_ERRORS, timeouts + FAILURE_THRESHOLD, RECOVERY_S, kind="timeout")
        # The delay lifted, the breaker's next trial request gets an answer in time.
        lifted = streams.mark()
        streams.set_params(STREAM_PARAMS)
        streams.wait_for(_ok_with_context_from(lifted), "context once the cloud is fast again", RECOVERY_S)
        results = streams.close()
    assert_answered_once(results, streams.sessions)
    states = set()
    for sid, stream in results.items():
        states |= {r.context.cloud_state for r in stream[: lifted[sid]]}
        # Frames sent before the lift all timed out (their delay is fixed at dispatch): none may be context.
        assert all(r.context.context_frame >= lifted[sid] for r in stream if r.has_context)
    assert "slow" in states and states <= {"ok", "slow", "down"}, states


def test_cloud_errors_open_the_breaker(edge, cloud, tmp_path_factory):
    # The cloud is redeployed on the same ports with a token limit below what the edge asks for: its model refuses
    # every request of the edge with INVALID_ARG.
    limit = 16
    repository = repository_copy(
        "cloud", tmp_path_factory.mktemp("fault_cloud_repo"), "lvlm", {"max_tokens_limit": str(limit)}
    )
    cloud.stop()
    cloud.repository = repository
    cloud.start()
    frame, _ = SyntheticSource(seed=1, size=FRAME_SIZE).frame_at(0)
    with VLMClient(cloud.grpc_url, "grpc") as client, pytest.raises(ClientError) as refused:
        client.ask_lvlm(frame, PROMPT, max_tokens=CLOUD_MAX_TOKENS)
    assert refused.value.invalid_argument and f"over the limit of {limit}" in str(refused.value)

    errors = metric_value(edge.ports[2], CLOUD_ERRORS, kind="server")
    with LiveStreams(edge.grpc_url, [61, 62], STREAM_PARAMS) as streams:
        streams.wait_for(_state("down"), "cloud_state down after the cloud's errors", RECOVERY_S)
        wait_for_metric(edge.ports[2], CLOUD_ERRORS, errors + FAILURE_THRESHOLD, RECOVERY_S, kind="server")
        results = streams.close()
    assert_answered_once(results, streams.sessions)
    for stream in results.values():
        assert not any(r.has_context for r in stream)
        first_down = next(i for i, r in enumerate(stream) if r.context.cloud_state == "down")
        assert all(r.context.cloud_state == "ok" for r in stream[:first_down]), "errors are not slowness"
        assert all(r.context.cloud_state == "down" for r in stream[first_down:]), "no trial request succeeds"
