"""cloud_stale from what the link received: spotvlm's per-stream record of the newest cloud answer to each question
(python_backends.context.received, driven by a fake clock), CONTEXT's `cloud_answer`, and the evaluation's replay
of cloud_stale from it (evaluation.runner.received_cloud_stale_answers). No server."""

from __future__ import annotations

import pytest

from tests.unit import fake_pb_utils

pb = fake_pb_utils.install()

from evaluation.dataset import Example
from evaluation.policies import CLOUD_STALE, CONTEXT_TRANSFER_NO_TRACKING, policy_violations
from evaluation.runner import (
    Answer,
    VideoPlan,
    received_cloud_stale_answers,
    received_cloud_stale_records,
)
from python_backends.context.received import ReceivedAnswers
from python_backends.context.report import CloudAnswerReport, ContextReport
from python_backends.context.store import CloudResult
from python_backends.detections import Detection
from tests.unit.test_spotvlm_step import (
    START,
    FakeCloudLink,
    calls,
    cloud_step,
    context,
    frame,
    make_step,
    reply_for,
    run,
)

__all__ = ["calls", "cloud_step", "make_step"]  # fixtures, used by name

COLOUR_Q, CAR_Q = "What colour is the car?", "Where is the car?"


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def arrival(frame_id: int, question: str | None, text: str, arrived_s: float, boxes=()) -> CloudResult:
    """A cloud answer about frame `frame_id` (captured at 100 ms a frame) that arrived at `arrived_s`."""
    detections = tuple(Detection("car", box) for box in boxes)
    return CloudResult(frame_id, frame_id * 100, arrived_s - 1.0, arrived_s, text, detections, (96, 128), question)


# -- the record spotvlm keeps ------------------------------------------------------------------------------------------


def test_the_newest_frames_answer_to_each_question_is_kept_as_it_arrives() -> None:
    clock = FakeClock()
    received = ReceivedAnswers(clock=clock)
    assert received.report(1, COLOUR_Q, 0) is None, "nothing has arrived"
    clock.now = 1.2
    received.add(1, [arrival(2, COLOUR_Q, "red", 1.2), arrival(2, CAR_Q, "left", 1.2, [(1, 2, 3, 4)])])
    clock.now = 1.5
    report = received.report(1, " what COLOUR is the car? ", frame_timestamp_ms=700)  # the same question
    assert report == CloudAnswerReport(
        frame_id=2, text="red", boxes=[], frame_size=[96, 128], age_ms=500.0, arrived_before_ms=300.0
    )
    assert received.report(1, CAR_Q, 700).boxes == [[1.0, 2.0, 3.0, 4.0]]
    # A late answer about an older frame (a spike, then a fast reply overtook it) does not displace the newer one.
    clock.now = 2.0
    received.add(1, [arrival(1, COLOUR_Q, "blue", 2.0)])
    assert received.report(1, COLOUR_Q, 900).text == "red"
    received.add(1, [arrival(5, COLOUR_Q, "green", 2.0)])
    assert received.report(1, COLOUR_Q, 900).text == "green"
    assert received.report(1, CAR_Q, 900).text == "left", "each question keeps its own newest answer"
    assert received.report(2, COLOUR_Q, 900) is None, "every stream has its own"


def test_the_record_is_bounded_and_forgets_an_ended_run() -> None:
    received = ReceivedAnswers(max_streams=2, max_questions=2, clock=FakeClock(5.0))
    received.add(1, [arrival(0, "a?", "1", 1.0), arrival(0, "b?", "2", 1.0), arrival(1, "c?", "3", 2.0)])
    assert received.newest(1, "a?") is None and received.newest(1, "c?").text == "3", "the first arrival went"
    received.add(1, [arrival(0, None, "about no question", 1.0)])
    assert received.newest(1, "b?").text == "2"
    received.add(2, [arrival(0, "a?", "x", 1.0)])
    received.add(3, [arrival(0, "a?", "y", 1.0)])
    assert len(received) == 2 and received.newest(1, "c?") is None, "the least recently touched stream went"
    received.forget(3)
    assert received.newest(3, "a?") is None and len(received) == 1
    with pytest.raises(ValueError, match="max_questions"):
        ReceivedAnswers(max_questions=0)


def test_context_carries_the_newest_received_answer_to_the_frames_question(cloud_step, calls) -> None:
    clock = FakeClock(10.0)
    cloud_step.received = ReceivedAnswers(clock=clock)
    (first,) = run(cloud_step, [frame(1, flags=START, prompt=CAR_Q, timestamp=10_000)])
    assert context(first)["cloud_answer"] is None, "nothing has arrived before the first frame"
    assert isinstance(cloud_step.link, FakeCloudLink)
    job = cloud_step.link.jobs[-1]
    reply = reply_for(job, text="On the left.")
    cloud_step._on_cloud_reply(reply)
    clock.now = reply.arrived_s + 0.25
    (second,) = run(cloud_step, [frame(1, prompt=CAR_Q, timestamp=10_400)])
    received = context(second)["cloud_answer"]
    assert received["frame_id"] == 0 and received["text"] == "On the left."
    assert received["boxes"] == [[16.0, 24.0, 48.0, 64.0], [90.0, 10.0, 120.0, 80.0]]
    assert received["frame_size"] == [96, 128] and received["age_ms"] == 400.0
    assert received["arrived_before_ms"] == 250.0
    (other,) = run(cloud_step, [frame(1, prompt=COLOUR_Q, timestamp=10_500)])
    assert context(other)["cloud_answer"] is None, "no answer to this question has arrived"
    # A new run of the stream starts with nothing received.
    (restarted,) = run(cloud_step, [frame(1, flags=START, prompt=CAR_Q, timestamp=20_000)])
    assert context(restarted)["cloud_answer"] is None


# -- the evaluation's replay of cloud_stale ---------------------------------------------------------------------------


def example(frame_index: int, question: str = COLOUR_Q, answer="red", task="recognition", answer_type="text"):
    return Example(
        id=f"v-{frame_index:04d}-0",
        split="test",
        video="v",
        frame_index=frame_index,
        time_s=frame_index / 10,
        question=question,
        answer=answer,
        task=task,
        answer_type=answer_type,
    )


def transfer_answer(received: CloudAnswerReport | None, error: str | None = None) -> Answer:
    return Answer("the edge's own", 25.0, error, ContextReport(cloud_answer=received))


def test_cloud_stale_shows_what_the_link_had_received_else_the_edge_answer() -> None:
    ground = example(3, "Locate the red car.", (100.0, 50.0, 140.0, 90.0), "grounding", "box")
    video = VideoPlan("v", (example(0), example(1), example(2), ground, example(4)))
    e0, e1, e2, e3, e4 = video.examples
    transfer = {
        e0.id: transfer_answer(None),  # nothing arrived yet
        e1.id: transfer_answer(CloudAnswerReport(0, "red", [], [96, 128], 100.0, 5.0)),
        e2.id: transfer_answer(CloudAnswerReport(1, "blue", [], [96, 128], 100.0, 1.0)),
        # The cloud's box in the pixels of the image it saw (half the frame's size), moved to the frame's.
        e3.id: transfer_answer(CloudAnswerReport(2, "[50, 25, 70, 45]", [[50, 25, 70, 45]], [120, 160], 100.0, 2.0)),
        e4.id: transfer_answer(None, error="timeout"),
    }
    edge = {e.id: Answer("red", 20.0 + i) for i, e in enumerate(video.examples)}
    answers = received_cloud_stale_answers(video.examples, transfer, edge, frame_size=(240, 320))
    assert answers[e0.id] == edge[e0.id]
    assert answers[e1.id] == Answer("red", 21.0)
    assert answers[e2.id] == Answer("blue", 22.0)
    assert answers[e3.id].box == pytest.approx((100.0, 50.0, 140.0, 90.0))
    assert answers[e4.id].error and "context_transfer" in answers[e4.id].error
    records = received_cloud_stale_records(video, "2s", transfer, edge, frame_size=(240, 320))
    assert [r.correct for r in records] == [True, True, False, True, False]
    assert {r.policy for r in records} == {CLOUD_STALE} and [r.example_id for r in records] == [
        e.id for e in video.examples
    ]
    # No frame size: the box as the cloud gave it.
    assert received_cloud_stale_answers([e3], transfer, edge)[e3.id].box == (50.0, 25.0, 70.0, 45.0)


def test_no_tracking_is_checked_from_context() -> None:
    assert policy_violations(CONTEXT_TRANSFER_NO_TRACKING, ContextReport(focus_mode="crop_only")) == []
    tracked = ContextReport(focus_mode="crop_only", tracked=True, focus_tracked=True)
    assert "expected focus_tracking off" in policy_violations(CONTEXT_TRANSFER_NO_TRACKING, tracked)[0]
