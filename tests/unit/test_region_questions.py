"""Region questions answered from where their object is now (python_backends/context/region_questions.py): the rules
alone, the link asking the cloud for the object's box beside the question, and `spotvlm` answering with the cell of
that box tracked to the current frame (fake pb_utils, the cloud's answers filed by hand)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest

from tests.unit import fake_pb_utils

pb = fake_pb_utils.install()

from load_tests.tracking_bench import synthetic_clip  # noqa: E402
from python_backends.context.region_questions import (  # noqa: E402
    REGIONS,
    RegionQuestions,
    carried_region,
    grounded_questions,
    region_at,
    region_of_box,
    parse_region,
)
from python_backends.context.served_context import track_region  # noqa: E402
from python_backends.context.store import CloudResult  # noqa: E402
from python_backends.context.tracking import FrameHistory  # noqa: E402
from python_backends.detections import Detection  # noqa: E402
from python_backends.serving import spotvlm_step  # noqa: E402
from python_backends.serving.spotvlm_config import SpotVLMConfig  # noqa: E402
from tests.unit.test_cloud_questions import reply  # noqa: E402
from tests.unit.test_served_context import _echo, make_step  # noqa: E402
from tests.unit.test_spotvlm_step import FakeCloudLink  # noqa: E402

__all__ = ["make_step"]  # a fixture, used by name

START = 1
WHERE = "Where is the red square?"
LOCATE = "Locate the red square and give its bbox_2d in JSON."
CLIP_SIZE = (240, 320)  # synthetic_clip's frames


# -- the rules ---------------------------------------------------------------------------------------------------------


def test_a_region_question_names_its_object_and_the_grounding_question_asks_for_its_box() -> None:
    rules = RegionQuestions()
    assert rules.object_of(WHERE) == "red square"
    assert rules.object_of("  WHERE is the   big red square ") == "big red square"
    assert rules.grounding_question(WHERE) == LOCATE
    for other in ("What colour is the square?", "How many squares are there?", LOCATE, "Where is the?"):
        assert rules.object_of(other) is None and rules.grounding_question(other) is None


@pytest.mark.parametrize("pattern", ["off", "", " OFF "])
def test_off_turns_region_questions_off(pattern: str) -> None:
    assert RegionQuestions(pattern).grounding_question(WHERE) is None
    assert SpotVLMConfig.from_params({"region_questions": "off"}).region_rules().object_of(WHERE) is None


@pytest.mark.parametrize(
    ("pattern", "prompt", "message"),
    [
        ("where is (", "Locate {object}", "not a regular expression"),
        ("^where is the (.+)$", "Locate {object}", "group named `object`"),
        ("^where is the (?P<object>.+)$", "Locate it", "must contain {object}"),
    ],
)
def test_a_bad_rule_is_refused_with_what_is_wrong(pattern: str, prompt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpotVLMConfig.from_params({"region_questions": pattern, "region_grounding_prompt": prompt})


def test_region_names_and_cells() -> None:
    assert parse_region(" Top-Left. ") == "top left" and parse_region("in the centre") == "center"
    assert parse_region("red circle") is None and parse_region("") is None
    assert [region_at(x, y) for y in (0.1, 0.5, 0.9) for x in (0.1, 0.5, 0.9)] == list(REGIONS)
    assert region_at(-0.5, 1.5) == "bottom left" and region_at(1 / 3, 0.0) == "top center"


def test_the_region_now_is_the_cell_of_the_tracked_box() -> None:
    cloud = (10.0, 10.0, 30.0, 30.0)  # centre (20, 20) of a 120 x 120 image: top left
    # The object went 50 px right in a 240 x 240 frame (twice the cloud's image): its centre is at x = 90 / 240.
    assert carried_region(cloud, (120, 120), (70.0, 20.0, 110.0, 60.0), (240, 240)) == "top center"
    assert carried_region(cloud, (120, 120), (20.0, 20.0, 60.0, 60.0), (240, 240), cloud_text="Top left.") == "top left"


def test_a_box_in_another_cell_than_the_clouds_region_answer_is_not_used() -> None:
    cloud = (20.0, 20.0, 36.0, 36.0)  # centre (28, 28) of 120 x 120: top left
    moved = (100.0, 56.0, 132.0, 88.0)  # in a 240 x 240 frame: top center
    assert carried_region(cloud, (120, 120), moved, (240, 240), cloud_text="center") is None
    assert carried_region(cloud, (120, 120), moved, (240, 240), cloud_text="top left") == "top center"
    assert carried_region(cloud, (120, 120), moved, (240, 240), cloud_text="not a region") == "top center"


def test_a_frame_asks_for_the_box_of_each_region_questions_object_once() -> None:
    rules = RegionQuestions()
    questions = [WHERE, "What colour is the star?", "where is the BLUE circle", LOCATE.lower()]
    assert grounded_questions(questions, rules) == [
        *questions,
        "Locate the BLUE circle and give its bbox_2d in JSON.",  # the red square's is standing already
    ]
    assert grounded_questions(questions, RegionQuestions("off")) == questions


# -- spotvlm -----------------------------------------------------------------------------------------------------------


def _result(frame_id, clip, question, text="", box=None) -> CloudResult:
    detections = () if box is None else (Detection("red square", tuple(float(v) for v in box)),)
    return CloudResult(frame_id, clip.timestamps_ms[frame_id], 0.0, 0.0, text, detections, CLIP_SIZE, question)


def _serve(step, clip, upto, results, **params):
    """Frames 0..upto of `clip`, each asking WHERE; `results` (the cloud's answers about frame 0) are filed after
    frame 0. Returns the last frame's TEXT and CONTEXT."""
    for index in range(upto + 1):
        request = pb.FakeRequest(
            {
                "IMAGE": clip.frames[index][None],
                "PROMPT": np.array([[WHERE.encode()]], dtype=object),
                "TIMESTAMP_MS": np.array([[clip.timestamps_ms[index]]], dtype=np.int64),
            },
            params,
            correlation=1,
            sequence_flags=START if index == 0 else 0,
        )
        (response,) = asyncio.run(step.execute([request]))
        assert response.error is None, response.error.message()
        if index == 0:
            step.store.add_cloud_results(1, results)
    return response.output("TEXT")[0, 0].decode(), json.loads(response.output("CONTEXT")[0, 0])


def test_a_region_question_is_answered_with_the_cell_its_object_was_tracked_to(make_step) -> None:
    pb.set_bls_handler(_echo)
    clip = synthetic_clip(21, shape="square", seed=2)  # from top left to center in 2 s
    before, now = region_of_box(clip.boxes[0], CLIP_SIZE), region_of_box(clip.boxes[20], CLIP_SIZE)
    assert (before, now) == ("top left", "center")
    results = [_result(0, clip, LOCATE, box=clip.boxes[0]), _result(0, clip, WHERE, text=before)]
    text, ctx = _serve(make_step(context_turns=0), clip, 20, results)
    assert (text, ctx["answer_source"], ctx["svlm_model"]) == (now, "cloud_region_tracked", None)


def test_the_box_of_a_standing_grounding_question_answers_a_region_question_without_its_own_answer(make_step):
    pb.set_bls_handler(_echo)
    clip = synthetic_clip(21, shape="square", seed=1)  # from top center to middle right
    text, ctx = _serve(make_step(context_turns=0), clip, 20, [_result(0, clip, LOCATE, box=clip.boxes[0])])
    assert (text, ctx["answer_source"]) == ("middle right", "cloud_region_tracked")


@pytest.mark.parametrize("case", ["lost", "regions off", "tracking off"])
def test_without_a_tracked_box_the_clouds_region_answer_is_carried_as_it_came(make_step, case) -> None:
    pb.set_bls_handler(_echo)
    lost = case == "lost"
    clip = synthetic_clip(21, seed=4, vanish_at=15) if lost else synthetic_clip(21, shape="square", seed=2)
    results = [_result(0, clip, LOCATE, box=clip.boxes[0]), _result(0, clip, WHERE, text="top left")]
    config = {"context_turns": 0, "region_questions": "off" if case == "regions off" else ""}
    params = {"focus_tracking": False} if case == "tracking off" else {}
    text, ctx = _serve(make_step(**config), clip, 20, results, **params)
    if case == "tracking off":  # the paper's method: no answer is carried, the SVLM answers
        assert (text, ctx["answer_source"]) == ("edge", "svlm")
    else:
        assert (text, ctx["answer_source"]) == ("top left", "cloud")


def test_a_frame_sent_to_the_cloud_also_asks_for_the_box_and_each_answer_is_filed(make_step, monkeypatch) -> None:
    monkeypatch.setattr(spotvlm_step, "CloudLink", FakeCloudLink)
    pb.set_bls_handler(_echo)
    clip = synthetic_clip(2, shape="square", seed=2)
    step = make_step(cloud_url="cloud.test:8001", cloud_prompt="{question} Be brief.")
    _serve(step, clip, 1, [])
    job = step.link.jobs[-1]
    assert job.prompts == (f"{WHERE} Be brief.", f"{LOCATE} Be brief.")
    step._on_cloud_reply(reply(job, {f"{WHERE} Be brief.": "top left", f"{LOCATE} Be brief.": "[]"}))
    filed = {(r.question, r.text) for r in step.store.snapshot(1).cloud_results}
    assert filed == {(WHERE, "top left"), (LOCATE, "[]")}
    # The paper's method (tracking off) has no use for the box: the frame asks its question alone.
    _serve(step, clip, 1, [], focus_tracking=False)
    assert step.link.jobs[-1].prompts == (f"{WHERE} Be brief.",)


def test_the_newest_grounding_answer_decides_and_its_box_for_the_object_is_the_one_tracked() -> None:
    clip = synthetic_clip(11, shape="square", seed=2)
    frames = FrameHistory(20)
    for index, image in enumerate(clip.frames):
        frames.add(index, clip.timestamps_ms[index], image)
    boxed = _result(0, clip, LOCATE, box=clip.boxes[0])
    track = track_region(frames, [boxed], 10, WHERE, RegionQuestions())
    assert track is not None and track.box is not None and track.cloud_box == tuple(clip.boxes[0])
    # A newer answer saying the object is not there: nothing to track, whatever an older one said.
    gone = _result(5, clip, LOCATE)
    assert track_region(frames, [boxed, gone], 10, WHERE, RegionQuestions()) is None
    # Of several boxes, the one labelled with the question's object.
    other = Detection("blue circle", (0.0, 0.0, 10.0, 10.0))
    both = replace(boxed, detections=(other, Detection("Red  Square", tuple(float(v) for v in clip.boxes[0]))))
    assert track_region(frames, [both], 10, WHERE, RegionQuestions()).cloud_box == tuple(clip.boxes[0])
    assert track_region(frames, [boxed], 10, "What colour is the square?", RegionQuestions()) is None
