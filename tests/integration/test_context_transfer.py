"""Context transfer end to end: a real edge linked to a real cloud, streams as Triton sequences.

The module starts its own pair (the shared edge has no cloud link), with a short sequence idle time so the idle-drop
test does not wait long. The cloud-restart test stops and restarts this module's cloud, so it runs last.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.frame_sources import SyntheticSource
from client.model_repository import read_model_config, set_model_parameter, write_model_config
from client.streaming import FrameResult, StreamSession, run_streams
from python_backends.context.focus import focus_box
from python_backends.detections import Detection
from load_tests.tracking_bench import iou, synthetic_clip
from load_tests.triton_metrics import read_metrics_text
from tests.integration.conftest import PROJECT_ROOT, ServeProcess, _require_built
from tests.integration.streams_helpers import ingest as _ingest
from tests.integration.streams_helpers import ingest_tensors as _ingest_tensors

IDLE_S = 3.0
CLOUD_DELAY_MS = 1500
# Cloud compute and scheduling on a loaded 2-core machine, on top of the injected delay.
AGE_TOLERANCE_MS = 2500
FRAME_SIZE = (240, 320)


@pytest.fixture(scope="module")
def short_idle_edge_repository(tmp_path_factory) -> Path:
    """A copy of the built edge repository whose `spotvlm` drops idle streams after IDLE_S seconds."""
    _require_built()
    dest = tmp_path_factory.mktemp("edge_repo") / "edge"
    shutil.copytree(PROJECT_ROOT / "model_repository" / "edge", dest, ignore=shutil.ignore_patterns("__pycache__"))
    path = dest / "spotvlm" / "config.pbtxt"
    config = read_model_config(path)
    config.sequence_batching.max_sequence_idle_microseconds = int(IDLE_S * 1e6)
    set_model_parameter(config, "store_ttl_s", str(IDLE_S))
    write_model_config(config, path)
    return dest


@pytest.fixture(scope="module")
def linked_cloud(tmp_path_factory):
    _require_built()
    server = ServeProcess("cloud", tmp_path_factory.mktemp("linked_cloud_logs")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def linked_edge(tmp_path_factory, linked_cloud, short_idle_edge_repository):
    server = ServeProcess(
        "edge",
        tmp_path_factory.mktemp("linked_edge_logs"),
        repository=short_idle_edge_repository,
        env={"SPOTVLM_CLOUD_URL": linked_cloud.grpc_url},
    ).start()
    yield server
    server.stop()


def _by_frame(results: list[FrameResult]) -> dict[int, FrameResult]:
    return {r.context.frame_id: r for r in results}


def test_two_streams_get_their_own_delayed_context(linked_edge, tmp_path):
    out = tmp_path / "results.jsonl"
    results = run_streams(
        [SyntheticSource(seed=1, size=FRAME_SIZE), SyntheticSource(seed=2, size=FRAME_SIZE)],
        url=linked_edge.grpc_url,
        protocol="grpc",
        fps=5,
        duration_s=6,
        prompt="What is moving?",
        params={"cloud_delay": str(CLOUD_DELAY_MS), "max_tokens": 8},
        out_path=out,
        progress=io.StringIO(),
        stream_ids=[11, 12],
    )
    assert len(results) == 60, "2 streams x 5 fps x 6 s"
    assert [r.error for r in results if r.error] == []
    assert len(out.read_text().splitlines()) == 60

    for stream_id in (11, 12):
        stream = sorted((r for r in results if r.stream_id == stream_id), key=lambda r: r.context.frame_id)
        assert [r.context.frame_id for r in stream] == list(range(30))
        frames = _by_frame(stream)
        t0 = stream[0].sent_at_ms
        early = [r for r in stream if r.sent_at_ms - t0 < CLOUD_DELAY_MS]
        assert early and all(r.context.context_frame is None for r in early), "no context before the delay"
        with_context = [r for r in stream if r.context.context_frame is not None]
        assert len(with_context) >= 10, f"stream {stream_id}: only {len(with_context)} frames had context"
        assert stream[-1].context.context_frame is not None
        first_use: dict[int, int] = {}
        for r in with_context:
            context_frame = r.context.context_frame
            assert context_frame < r.context.frame_id
            # The age is measured against THIS stream's frame: a context from the other stream (whose frames are
            # staggered in time) would not match its timestamp.
            assert r.context.context_age_ms == r.sent_at_ms - frames[context_frame].sent_at_ms
            assert r.context.context_age_ms >= CLOUD_DELAY_MS
            first_use.setdefault(context_frame, r.context.context_age_ms)
            assert r.context.replaced_turns >= 1
        # When a cloud answer is first used, its age is the injected delay plus the cloud's own time.
        assert all(age <= CLOUD_DELAY_MS + AGE_TOLERANCE_MS for age in first_use.values()), first_use
        assert {r.context.cloud_state for r in stream} <= {"ok", "slow"}


def test_custom_metrics_count_cloud_traffic(linked_edge):
    # Runs after the streams above on the same server.
    text = read_metrics_text(f"127.0.0.1:{linked_edge.ports[2]}", timeout_s=10)
    # Each series by its exact label set, as Triton's text names it.
    series = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        key = (name, frozenset({"model": "spotvlm", **labels}.items()))
        assert key in series, f"{name}{labels} not in /metrics"
        return series[key]

    assert value("spotvlm_cloud_requests_total") >= 2
    assert value("spotvlm_frames_total", cloud_context="yes") >= 10
    assert value("spotvlm_context_age_ms_count") >= 10
    assert value("spotvlm_cloud_rtt_ms_count") >= 2
    assert value("spotvlm_cloud_frames_skipped_total", reason="busy") >= 1
    assert "spotvlm_cloud_inflight" in text and "spotvlm_focus_applied_total" in text
    assert 'spotvlm_cloud_errors_total{kind="timeout",model="spotvlm"}' in text


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ingested_detections_give_the_focus_box(linked_edge, protocol):
    # The streams' own cloud answers are held back well past the test, so only the ingested result is context; the
    # paper's focus (the cloud's box widened by the age margin), not tracked.
    params = {"cloud_delay": "8000", "focus": "crop_only", "max_tokens": 4, "focus_tracking": False}
    target = 201 if protocol == "http" else 211
    source = SyntheticSource(seed=3, size=FRAME_SIZE)
    frames = iter(source)
    session = StreamSession(linked_edge.url(protocol), protocol, target, "Where is the car?", params=params)
    bystander = StreamSession(linked_edge.url(protocol), protocol, target + 1, "Where is the car?", params=params)
    try:
        first = session.send(next(frames), start=True, end=False)
        assert first.ok, first.error
        assert bystander.send(next(frames), start=True, end=False).ok

        detections = [{"bbox_2d": [100, 60, 260, 180], "label": "car"}, {"bbox_2d": [0, 0, 20, 20], "label": "tree"}]
        status = _ingest(linked_edge.grpc_url, target, first.context.frame_id, detections, (480, 640), "a red car")
        assert status == {"stream_id": target, "frame_id": first.context.frame_id, "stored": True}

        second = session.send(next(frames), start=False, end=False)
        assert second.ok, second.error
        context = second.context
        assert context.context_frame == first.context.frame_id
        assert context.focus_mode == "crop_only" and context.svlm_model == "svlm"
        assert context.focus_labels == ["car"], "only the box the question is about"
        expected = focus_box(
            [Detection("car", (100.0, 60.0, 260.0, 180.0))], (480, 640), FRAME_SIZE, context.context_age_ms
        )
        assert context.focus_box == list(expected)
        assert context.context_age_ms == second.sent_at_ms - first.sent_at_ms

        session.params = {**params, "focus": "crop_and_frame"}
        third = session.send(next(frames), start=False, end=False)
        assert third.ok and third.context.svlm_model == "svlm_focus"
        assert third.context.focus_mode == "crop_and_frame"

        other = bystander.send(next(frames), start=False, end=False)
        assert other.ok
        assert other.context.context_frame is None and other.context.focus_box is None, "stream B saw A's"
    finally:
        session.send(next(frames), start=False, end=True)
        bystander.send(next(frames), start=False, end=True)
        session.close()
        bystander.close()


def test_a_moving_object_is_tracked_to_the_frame_answered(linked_edge):
    clip = synthetic_clip(11, size=FRAME_SIZE, seed=3)  # a textured square crossing a textured background
    params = {"cloud_delay": "8000", "focus": "crop_only", "max_tokens": 4}
    session = StreamSession(linked_edge.grpc_url, "grpc", 501, "Where is the box?", params=params)
    try:
        first = session.send(clip.frames[0], start=True, end=False)
        assert first.ok, first.error
        box = [{"bbox_2d": list(clip.boxes[0]), "label": "box"}]
        _ingest(linked_edge.grpc_url, 501, first.context.frame_id, box, FRAME_SIZE, "a box")
        for image in clip.frames[1:]:
            time.sleep(0.1)  # at least the clip's 10 fps: the tracker's search window grows with the frames' age
            last = session.send(image, start=False, end=False)
            assert last.ok, last.error
    finally:
        session.send(clip.frames[-1], start=False, end=True)
        session.close()
    context = last.context
    assert context.context_frame == 0 and context.tracked is True and context.focus_tracked is True
    assert iou(context.tracked_box, clip.boxes[10]) >= 0.5 and iou(clip.boxes[0], clip.boxes[10]) < 0.5


def test_ingest_refuses_bad_json_and_unknown_streams(linked_edge):
    with pytest.raises(Exception, match="DETECTIONS is not a JSON list"):
        _ingest_tensors(linked_edge.grpc_url, 5, 0, b"{not json", (10, 10), "text")
    with pytest.raises(Exception, match="not active"):
        _ingest(linked_edge.grpc_url, 999_999, 0, [], (10, 10), "x")


def test_idle_stream_is_restarted_without_losing_the_frame(linked_edge):
    params = {"cloud_delay": "8000", "max_tokens": 4}
    frames = iter(SyntheticSource(seed=4, size=FRAME_SIZE))
    session = StreamSession(linked_edge.grpc_url, "grpc", 301, "Where is the ball?", params=params)
    try:
        first = session.send(next(frames), start=True, end=False)
        assert first.ok, first.error
        _ingest(linked_edge.grpc_url, 301, 0, [{"bbox_2d": [1, 1, 50, 50], "label": "ball"}], FRAME_SIZE, "a ball")
        second = session.send(next(frames), start=False, end=False)
        assert second.ok and second.context.context_frame == 0

        time.sleep(IDLE_S + 1.5)  # Triton drops the sequence; the model's store expires it too

        third = session.send(next(frames), start=False, end=False)
        assert third.ok, third.error
        assert third.restarted and session.restarts == 1
        assert third.context.frame_id == 0, "a new sequence"
        assert third.context.context_frame is None and third.context.history_turns == 0, "old state purged"
    finally:
        session.send(next(frames), start=False, end=True)
        session.close()


def _send_until(session: StreamSession, frames, condition, timeout_s: float, fps: float = 5.0) -> list[FrameResult]:
    """Sends frames at `fps` until `condition(result)` holds; returns them all (the last one met it)."""
    results = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        started = time.monotonic()
        result = session.send(next(frames), start=False, end=False)
        results.append(result)
        if condition(result):
            return results
        time.sleep(max(0.0, 1.0 / fps - (time.monotonic() - started)))
    raise AssertionError(
        f"condition not met in {timeout_s} s; last context: {results[-1].context if results else None}"
    )


def test_edge_keeps_answering_while_the_cloud_is_down_and_recovers(linked_edge, linked_cloud):
    frames = iter(SyntheticSource(seed=5, size=FRAME_SIZE))
    session = StreamSession(linked_edge.grpc_url, "grpc", 401, "What is moving?", params={"max_tokens": 4})
    answered: list[FrameResult] = [session.send(next(frames), start=True, end=False)]
    try:
        answered += _send_until(session, frames, lambda r: r.context.context_frame is not None, 30)
        assert answered[-1].context.cloud_state == "ok"

        # The frames keep coming while the cloud shuts down (it takes seconds), as they would from a camera.
        stopping = threading.Thread(target=linked_cloud.stop)
        stopping.start()
        down = _send_until(session, frames, lambda r: r.context.cloud_state == "down", 30)
        down += _send_until(session, frames, lambda r: not stopping.is_alive(), 60)
        for _ in range(10):
            down.append(session.send(next(frames), start=False, end=False))
            time.sleep(0.2)
        answered += down
        assert all(r.context.cloud_state == "down" for r in down[-10:]), [
            (r.context.cloud_state, r.context.cloud_dispatch) for r in down
        ]
        assert {r.context.cloud_dispatch for r in down[-10:]} <= {"skipped_down", "sent"}
        last_frame_while_down = max(r.context.frame_id for r in down)

        starting = threading.Thread(target=linked_cloud.start)
        starting.start()
        answered += _send_until(
            session,
            frames,
            lambda r: r.context.cloud_state == "ok" and (r.context.context_frame or -1) > last_frame_while_down,
            90,
        )
        starting.join(timeout=60)
    finally:
        answered.append(session.send(next(frames), start=False, end=True))
        session.close()
    assert [r.error for r in answered if r.error] == [], "every frame answered while the cloud was away"
    assert session.restarts == 0
    ids = [r.context.frame_id for r in answered]
    assert ids == list(range(len(ids))), "no frame lost"
