"""Watched objects: the list's rules, and spotvlm asking the cloud for them and answering a new question about one
with the cloud's box tracked to the frame before its own first answer."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tests.unit import fake_pb_utils

pb = fake_pb_utils.install()

from load_tests.tracking_bench import synthetic_clip  # noqa: E402
from python_backends.cloud.link import CloudReply  # noqa: E402
from python_backends.context.region_questions import region_of_box  # noqa: E402
from python_backends.context.store import with_new_questions  # noqa: E402
from python_backends.context.watch_list import WatchList  # noqa: E402
from python_backends.detections import Detection  # noqa: E402
from python_backends.serving import spotvlm_step  # noqa: E402
from python_backends.serving.spotvlm_config import SpotVLMConfig  # noqa: E402
from tests.unit.test_cloud_questions import reply  # noqa: E402
from tests.unit.test_served_context import _echo, make_step  # noqa: E402
from tests.unit.test_spotvlm_step import FakeCloudLink  # noqa: E402

__all__ = ["make_step"]  # a fixture, used by name

START = 1
PROMPT = "Locate the {object} and give its bbox_2d in JSON."
COLOUR_Q = "What colour is the square?"
COUNT_Q = "How many squares are there?"
WHERE = "Where is the red square?"
LOCATE_SQUARE = "Locate the red square and give its bbox_2d in JSON."
LOCATE_CIRCLE = "Locate the blue circle and give its bbox_2d in JSON."
CLIP_SIZE = (240, 320)


# -- the list ----------------------------------------------------------------------------------------------------------


def test_the_list_is_comma_separated_names_each_asked_once_in_its_order() -> None:
    watch = WatchList.parse(" red square,blue   circle , Red Square", PROMPT)
    assert watch.objects == ("red square", "blue circle") and watch.enabled
    assert watch.questions() == [LOCATE_SQUARE, LOCATE_CIRCLE]


def test_watched_questions_are_semicolon_separated_asked_as_written_after_the_objects() -> None:
    watch = WatchList.parse(
        "red square", PROMPT, questions=" How many cars are there? ;Is the door open?; how many CARS are there?"
    )
    assert watch.extra_questions == ("How many cars are there?", "Is the door open?")
    assert watch.questions() == [LOCATE_SQUARE, "How many cars are there?", "Is the door open?"]
    assert WatchList.parse("off", PROMPT, questions="Is it raining?").enabled, "questions alone are a watch list"


@pytest.mark.parametrize("text", ["", "  ", "off", "OFF"])
def test_empty_or_off_watches_nothing(text: str) -> None:
    watch = WatchList.parse(text, PROMPT, questions=text)
    assert watch.objects == watch.extra_questions == () and not watch.enabled and watch.questions() == []
    assert not watch.due(None, 100.0), "nothing to ask is never due"


@pytest.mark.parametrize("text", ["red square,,blue circle", "red square,", ",red square"])
def test_an_empty_name_or_question_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="empty name"):
        WatchList.parse(text, PROMPT)
    with pytest.raises(ValueError, match="empty question"):
        WatchList.parse("off", PROMPT, questions=text.replace(",", ";"))


def test_a_prompt_without_the_object_or_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="{object}"):
        WatchList.parse("red square", "Locate it.")
    with pytest.raises(ValueError, match="interval"):
        WatchList.parse("red square", PROMPT, interval_s=-1.0)
    assert WatchList.parse("off", "Locate it.").objects == (), "no prompt is needed with nothing watched"


def test_the_list_is_due_once_an_interval() -> None:
    watch = WatchList.parse("red square", PROMPT, interval_s=1.0)
    assert watch.due(None, 5.0), "never sent: due"
    assert not watch.due(5.0, 5.9) and watch.due(5.0, 6.0)
    assert WatchList.parse("red square", PROMPT, interval_s=0.0).due(5.0, 5.0), "0: every frame sent"


def test_watched_questions_follow_the_frames_own_and_are_not_asked_twice() -> None:
    asked = [WHERE, " locate the RED square and give its bbox_2d in json."]
    assert with_new_questions(asked, [LOCATE_SQUARE, LOCATE_CIRCLE]) == [*asked, LOCATE_CIRCLE]
    assert with_new_questions(asked, []) == asked


def test_the_config_reads_the_list_and_counts_it_in_the_prompts_a_frame_asks() -> None:
    config = SpotVLMConfig.from_params(
        {
            "cloud_watch": "red square, blue circle",
            "cloud_watch_questions": COLOUR_Q,
            "cloud_watch_interval_ms": "250",
        }
    )
    watch = config.watch_list()
    assert watch.questions() == [LOCATE_SQUARE, LOCATE_CIRCLE, COLOUR_Q] and watch.interval_s == 0.25
    assert config.prompts_per_frame() == SpotVLMConfig().prompts_per_frame() + 3
    # The store files only the stream's own questions' answers: its window does not grow with the list.
    assert config.store_limits().max_cloud_results == SpotVLMConfig().store_limits().max_cloud_results
    assert SpotVLMConfig().watch_list().objects == (), "nothing watched by default"
    with pytest.raises(ValueError, match="empty name"):
        SpotVLMConfig.from_params({"cloud_watch": "red square,,"})
    with pytest.raises(ValueError, match="interval"):
        SpotVLMConfig.from_params({"cloud_watch_interval_ms": "-5"})


# -- spotvlm -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def watching_step(make_step, monkeypatch):
    monkeypatch.setattr(spotvlm_step, "CloudLink", FakeCloudLink)
    pb.set_bls_handler(_echo)

    def make(**params):
        values = {"cloud_url": "cloud.test:8001", "cloud_watch": "red square, blue circle", "context_turns": 0}
        return make_step(**{**values, **params})

    return make


def _send(step, image, timestamp_ms, prompt, flags=0, **params):
    request = pb.FakeRequest(
        {
            "IMAGE": image[None],
            "PROMPT": np.array([[prompt.encode()]], dtype=object),
            "TIMESTAMP_MS": np.array([[timestamp_ms]], dtype=np.int64),
        },
        params,
        correlation=1,
        sequence_flags=flags,
    )
    (response,) = asyncio.run(step.execute([request]))
    assert response.error is None, response.error.message()
    return response.output("TEXT")[0, 0].decode(), json.loads(response.output("CONTEXT")[0, 0])


def _reply(job, box, detections=True) -> CloudReply:
    """The cloud's answer to every prompt of `job`: the red square's box, for whichever question (or no box)."""
    detections = (Detection("red square", tuple(float(v) for v in box)),) if detections else ()
    return reply(job, {p: f"answer to {p}" for p in job.prompts}, detections, frame_size=CLIP_SIZE)


def test_a_frame_asks_the_watch_list_once_an_interval_and_again_when_the_stream_restarts(watching_step) -> None:
    step = watching_step(cloud_watch_interval_ms="60000", cloud_watch_questions=f"{COUNT_Q}; {COLOUR_Q}")
    image = synthetic_clip(1).frames[0]
    _send(step, image, 0, COLOUR_Q, flags=START)
    _send(step, image, 100, COLOUR_Q)
    step.link.outcome = "skipped_busy"
    _send(step, image, 200, COLOUR_Q, flags=START)  # skipped: it did not ask, so the next frame sent does
    step.link.outcome = "sent"
    _send(step, image, 300, COLOUR_Q)
    # Restarted, so the list is due again; but the paper's method (tracking off) is reproduced as it was: no list.
    _send(step, image, 400, COLOUR_Q, flags=START, focus_tracking=False)
    watched = (LOCATE_SQUARE, LOCATE_CIRCLE, COUNT_Q)  # the colour question is the frame's own: asked once
    asked = [job.prompts for job in step.link.jobs]  # the link is handed every frame, the skipped one too
    assert asked == [(COLOUR_Q, *watched), (COLOUR_Q,), (COLOUR_Q, *watched), (COLOUR_Q, *watched), (COLOUR_Q,)]


def test_a_watch_list_that_went_unanswered_is_asked_again_by_the_next_frame_sent(watching_step) -> None:
    step = watching_step(cloud_watch_interval_ms="60000")
    image = synthetic_clip(1).frames[0]
    _send(step, image, 0, COLOUR_Q, flags=START)
    _send(step, image, 100, COLOUR_Q)
    step._on_cloud_error(step.link.jobs[-1], "timeout")  # a frame without the list failed: nothing to ask again
    _send(step, image, 200, COLOUR_Q)
    step._on_cloud_error(step.link.jobs[0], "timeout")  # the frame that asked it failed
    _send(step, image, 300, COLOUR_Q)
    _send(step, image, 400, COLOUR_Q)
    watched = (LOCATE_SQUARE, LOCATE_CIRCLE)
    asked = [job.prompts for job in step.link.jobs]
    assert asked == [(COLOUR_Q, *watched), (COLOUR_Q,), (COLOUR_Q,), (COLOUR_Q, *watched), (COLOUR_Q,)]


def test_a_watched_question_is_answered_with_the_clouds_answer_the_first_time_it_is_asked(watching_step) -> None:
    step = watching_step(cloud_watch_questions=COUNT_Q)
    clip = synthetic_clip(6, shape="square", seed=1)
    _send(step, clip.frames[0], clip.timestamps_ms[0], COLOUR_Q, flags=START)
    step._on_cloud_reply(_reply(step.link.jobs[-1], clip.boxes[0], detections=False))
    for index in range(1, 5):
        _send(step, clip.frames[index], clip.timestamps_ms[index], COLOUR_Q)
    text, context = _send(step, clip.frames[5], clip.timestamps_ms[5], COUNT_Q)
    assert (text, context["answer_source"]) == (f"answer to {COUNT_Q}", "cloud")
    assert context["cloud_answer"]["frame_id"] == 0


def test_watched_answers_are_received_but_kept_out_of_the_svlms_history(watching_step) -> None:
    step = watching_step()
    clip = synthetic_clip(2, shape="square", seed=1)
    _send(step, clip.frames[0], clip.timestamps_ms[0], COLOUR_Q, flags=START)
    step._on_cloud_reply(_reply(step.link.jobs[-1], clip.boxes[0]))
    assert [r.question for r in step.store.snapshot(1).cloud_results] == [COLOUR_Q]
    for question in (LOCATE_SQUARE, LOCATE_CIRCLE):
        received = step.received.newest(1, question)
        assert received is not None and received.frame_id == 0 and received.text == f"answer to {question}"


def test_a_new_question_about_a_watched_object_is_answered_with_its_box_tracked_to_the_frame(watching_step) -> None:
    """The stream asks about colour; the watch list's answer on frame 0 holds the red square's box. Asked 2 s later
    where the square is, or for its box (neither asked before, no answer of their own), spotvlm answers with that box
    tracked to the frame, and the SVLM is not asked."""
    step = watching_step()
    clip = synthetic_clip(21, shape="square", seed=1)  # from top center to middle right
    _send(step, clip.frames[0], clip.timestamps_ms[0], COLOUR_Q, flags=START)
    step._on_cloud_reply(_reply(step.link.jobs[-1], clip.boxes[0]))
    for index in range(1, 20):
        _send(step, clip.frames[index], clip.timestamps_ms[index], COLOUR_Q)
    assert region_of_box(clip.boxes[0], CLIP_SIZE) == "top center"
    text, context = _send(step, clip.frames[20], clip.timestamps_ms[20], WHERE)
    assert (text, context["answer_source"]) == ("middle right", "cloud_region_tracked")

    step2 = watching_step()
    _send(step2, clip.frames[0], clip.timestamps_ms[0], COLOUR_Q, flags=START)
    step2._on_cloud_reply(_reply(step2.link.jobs[-1], clip.boxes[0]))
    for index in range(1, 20):
        _send(step2, clip.frames[index], clip.timestamps_ms[index], COLOUR_Q)
    text, context = _send(step2, clip.frames[20], clip.timestamps_ms[20], LOCATE_SQUARE)
    assert context["answer_source"] == "cloud_tracked" and context["svlm_model"] is None
    assert context["cloud_answer"]["frame_id"] == 0, "cloud_stale would show the watch list's answer too"
    (answer,) = json.loads(text)
    assert answer["label"] == "red square"
    # Written in the SVLM's square input's pixels, as it answers: back in the frame's pixels it is near the square now.
    side = SpotVLMConfig.from_params({"svlm_image_size": str(step2.svlm_image_size)}).svlm_side()
    x1, y1, x2, y2 = (v * s / side for v, s in zip(answer["bbox_2d"], (320, 240, 320, 240), strict=True))
    tx1, ty1, tx2, ty2 = clip.boxes[20]
    overlap = max(0, min(x2, tx2) - max(x1, tx1)) * max(0, min(y2, ty2) - max(y1, ty1))
    union = (x2 - x1) * (y2 - y1) + (tx2 - tx1) * (ty2 - ty1) - overlap
    assert overlap / union > 0.5, (answer["bbox_2d"], clip.boxes[20])
