"""The SVLM's context input with tracking (python_backends/context/served_context.py): served by `spotvlm` (fake
pb_utils, context ingested by hand) and built for training by training/examples.py through the same function."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest

from tests.unit import fake_pb_utils

pb = fake_pb_utils.install()

from evaluation.dataset import generate_split, load_dataset  # noqa: E402
from evaluation.questions import QuestionConfig  # noqa: E402
from evaluation.scenes import SceneConfig  # noqa: E402
from load_tests.tracking_bench import iou, synthetic_clip  # noqa: E402
from python_backends.context.focus import FocusMode, focus_box, plan_focus  # noqa: E402
from python_backends.context.replacement import build_history  # noqa: E402
from python_backends.context.served_context import (  # noqa: E402
    ServedContextConfig,
    binned_box,
    build_context_input,
    grounding_text,
    track_answers,
)
from python_backends.context.store import CloudResult, ContextStore, StoreLimits, TurnRecord  # noqa: E402
from python_backends.context.tracking import FrameHistory  # noqa: E402
from python_backends.detections import Detection, parse_detections, scale_box  # noqa: E402
from python_backends.prompts import history_json  # noqa: E402
from python_backends.serving.spotvlm_step import SpotVLMStep  # noqa: E402
from training import tokens  # noqa: E402
from training.examples import MixConfig, build_examples  # noqa: E402
from training.views import ModelView  # noqa: E402

START, END = 1, 2
QUESTION = "Where is the box?"
SVLM_SIDE = 112


async def _echo(call):
    return pb.bls_reply(TEXT="edge", GENERATE_MS=np.array([[1.0]], dtype=np.float32))


@pytest.fixture
def make_step(monkeypatch):
    monkeypatch.delenv("SPOTVLM_CLOUD_URL", raising=False)
    made = []

    def make(**params) -> SpotVLMStep:
        values = {"cloud_url": "off", "svlm_image_size": SVLM_SIDE, **params}
        config = {"parameters": {k: {"string_value": str(v)} for k, v in values.items()}}
        step = SpotVLMStep({"model_config": json.dumps(config), "model_name": "spotvlm"}, pb_utils=pb)
        made.append(step)
        return step

    yield make
    for step in made:
        step.close()


def _send(step, image, timestamp_ms, prompt=QUESTION, flags=0, stream=1, **params):
    # What the SVLM is sent is under test: it answers every frame, tracked box answers or not.
    params.setdefault("carry_answers", False)
    request = pb.FakeRequest(
        {
            "IMAGE": image[None],
            "PROMPT": np.array([[prompt.encode()]], dtype=object),
            "TIMESTAMP_MS": np.array([[timestamp_ms]], dtype=np.int64),
        },
        params,
        correlation=stream,
        sequence_flags=flags,
    )
    (response,) = asyncio.run(step.execute([request]))
    assert response.error is None, response.error.message()
    return json.loads(response.output("CONTEXT")[0, 0])


def _ingest(step, frame_id, detections, frame_size, text="", stream=1):
    record = {"frame_id": frame_id, "text": text, "frame_size": list(frame_size), "detections": detections}
    request = pb.FakeRequest({"INGEST": np.array([[json.dumps(record).encode()]], dtype=object)}, correlation=stream)
    (response,) = asyncio.run(step.execute([request]))
    assert response.error is None, response.error.message()


def _history(call) -> list[dict] | None:
    raw = call.inputs.get("HISTORY")
    return None if raw is None else json.loads(raw[0, 0])


def _serve_clip(step, clip, upto, cloud_frame, box, calls, **params):
    """Frames 0..upto of `clip` to `spotvlm`; the cloud's answer (`box`, the clip's pixels) about `cloud_frame` is
    ingested once that frame was answered. Returns the last frame's CONTEXT and svlm call."""
    for index in range(upto + 1):
        if index == upto:
            calls.clear()
        ctx = _send(step, clip.frames[index], clip.timestamps_ms[index], flags=START if index == 0 else 0, **params)
        if index == cloud_frame:
            _ingest(step, cloud_frame, [{"bbox_2d": list(box), "label": "box"}], clip.frames[0].shape[:2])
    (call,) = calls
    return ctx, call


# -- serving -----------------------------------------------------------------------------------------------------------


def test_a_tracked_box_replaces_the_clouds_in_the_history_in_svlm_pixels(make_step):
    calls = pb.set_bls_handler(_echo)
    clip = synthetic_clip(21, shape="square", seed=3)  # 240 x 320, about 130 px of travel in 2 s
    ctx, call = _serve_clip(make_step(context_turns=0, focus_mode="crop_only"), clip, 20, 0, clip.boxes[0], calls)
    assert ctx["tracked"] is True and ctx["context_frame"] == 0 and ctx["focus_tracked"] is True
    assert iou(ctx["tracked_box"], clip.boxes[20]) >= 0.5 and iou(clip.boxes[0], clip.boxes[20]) < 0.5
    (turn,) = _history(call)
    assert turn["answer"].startswith("[cloud answer, frame 0, 2.0 s old] [tracked, change ")
    (written,) = parse_detections(turn["answer"])
    now_in_svlm = scale_box(clip.boxes[20], (240, 320), (SVLM_SIDE, SVLM_SIDE))
    assert iou(written.bbox, now_in_svlm) >= 0.5 and all(v % 2 == 0 and 0 <= v <= SVLM_SIDE for v in written.bbox)
    # The crop centres on where the box is now.
    x1, y1, x2, y2 = ctx["focus_box"]
    assert iou((x1, y1, x2, y2), clip.boxes[20]) >= 0.5 and call.model_name == "svlm"


def _answer_clip(step, clip, upto, prompt=QUESTION, params=None, cloud_text="", boxes=True):
    """Frames 0..upto of `clip` (the last asked `prompt`), the cloud's answer about frame 0 (`cloud_text`, and its
    box unless `boxes` is false) ingested after it. Returns the last frame's TEXT and CONTEXT."""
    for index in range(upto + 1):
        request = pb.FakeRequest(
            {
                "IMAGE": clip.frames[index][None],
                "PROMPT": np.array([[(QUESTION if index < upto else prompt).encode()]], dtype=object),
                "TIMESTAMP_MS": np.array([[clip.timestamps_ms[index]]], dtype=np.int64),
            },
            params or {},
            correlation=1,
            sequence_flags=START if index == 0 else 0,
        )
        (response,) = asyncio.run(step.execute([request]))
        assert response.error is None, response.error.message()
        if index == 0:
            detections = [{"bbox_2d": list(clip.boxes[0]), "label": "box"}] if boxes else []
            _ingest(step, 0, detections, clip.frames[0].shape[:2], text=cloud_text)
    return response.output("TEXT")[0, 0].decode(), json.loads(response.output("CONTEXT")[0, 0])


def test_a_tracked_box_answer_to_the_question_itself_answers_it_without_the_svlm(make_step):
    calls = pb.set_bls_handler(_echo)
    clip = synthetic_clip(21, shape="square", seed=3)
    text, ctx = _answer_clip(make_step(context_turns=0), clip, 20)
    assert ctx["answer_source"] == "cloud_tracked" and ctx["svlm_model"] is None and ctx["tracked"] is True
    assert len(calls) == 1  # the SVLM answered frame 0 only, before the cloud's answer came
    (answered,) = parse_detections(text)  # the SVLM's answer format, in its pixels: where the box is now
    now_in_svlm = scale_box(clip.boxes[20], (240, 320), (SVLM_SIDE, SVLM_SIDE))
    assert iou(answered.bbox, now_in_svlm) >= 0.5 and answered.label == "box"


def test_a_text_answer_to_the_question_itself_is_carried_as_the_cloud_gave_it(make_step):
    calls = pb.set_bls_handler(_echo)
    clip = synthetic_clip(11, shape="square", seed=3)
    text, ctx = _answer_clip(make_step(context_turns=0), clip, 10, cloud_text="bottom left", boxes=False)
    assert (text, ctx["answer_source"], ctx["svlm_model"]) == ("bottom left", "cloud", None)
    assert len(calls) == 1 and ctx["context_frame"] == 0


def test_of_one_frames_answers_to_standing_questions_the_one_to_the_question_asked_is_carried(make_step):
    """A frame sent with the stream's standing questions comes back with one answer to each: the box answer to the
    question asked is tracked and carried, though a text answer to another question arrived with it."""
    pb.set_bls_handler(_echo)
    clip = synthetic_clip(11, shape="square", seed=3)
    step = make_step(context_turns=0)
    other = "How many boxes are there?"
    for index in range(11):
        ctx = _send(
            step, clip.frames[index], clip.timestamps_ms[index], flags=START if index == 0 else 0, carry_answers=True
        )
        if index == 0:
            box = {"bbox_2d": list(clip.boxes[0]), "label": "box"}
            for question, detections, text in ((QUESTION, [box], ""), (other, [], "1")):  # the other arrives later
                step.store.add_cloud_results(
                    1,
                    [
                        CloudResult(
                            0,
                            clip.timestamps_ms[0],
                            0.0,
                            0.0,
                            text,
                            tuple(Detection(d["label"], tuple(float(v) for v in d["bbox_2d"])) for d in detections),
                            clip.frames[0].shape[:2],
                            question,
                        )
                    ],
                )
    assert ctx["answer_source"] == "cloud_tracked" and ctx["tracked"] is True
    assert iou(ctx["tracked_box"], clip.boxes[10]) >= 0.5


@pytest.mark.parametrize("case", ["another question", "switched off"])
def test_the_svlm_answers_when_the_cloud_answered_another_question_or_carrying_is_off(make_step, case):
    calls = pb.set_bls_handler(_echo)
    clip = synthetic_clip(21, shape="square", seed=3)
    prompt = "What colour is the box?" if case == "another question" else QUESTION
    params = {"carry_answers": False} if case == "switched off" else None
    text, ctx = _answer_clip(make_step(context_turns=0), clip, 20, prompt=prompt, params=params)
    assert ctx["answer_source"] == "svlm" and ctx["svlm_model"] in ("svlm", "svlm_focus") and text == "edge"
    if case == "switched off":
        assert len(calls) == 21  # every frame asked the SVLM


def test_a_lost_box_answer_is_carried_where_the_cloud_saw_it(make_step):
    """The tiny SVLM cannot draw a box; the cloud's, where it saw the object, may still overlap it."""
    pb.set_bls_handler(_echo)
    clip = synthetic_clip(21, seed=4, vanish_at=15)
    text, ctx = _answer_clip(make_step(context_turns=0), clip, 20)
    assert (ctx["answer_source"], ctx["tracked"], ctx["svlm_model"]) == ("cloud", False, None)
    (answered,) = parse_detections(text)
    seen = scale_box(clip.boxes[0], (240, 320), (SVLM_SIDE, SVLM_SIDE))
    assert list(answered.bbox) == binned_box(seen, (SVLM_SIDE, SVLM_SIDE), 2)


def test_a_lost_track_is_said_and_focus_falls_back_to_the_age_margin(make_step):
    calls = pb.set_bls_handler(_echo)
    clip = synthetic_clip(21, seed=4, vanish_at=15)
    ctx, call = _serve_clip(make_step(context_turns=0, focus_mode="crop_only"), clip, 20, 0, clip.boxes[0], calls)
    assert ctx["tracked"] is False and ctx["tracked_box"] is None and ctx["focus_tracked"] is False
    (turn,) = _history(call)
    assert "[lost, change " in turn["answer"]
    (written,) = parse_detections(turn["answer"])  # where the cloud saw it, in the SVLM's pixels
    assert list(written.bbox) == binned_box(scale_box(clip.boxes[0], (240, 320), (SVLM_SIDE,) * 2), (SVLM_SIDE,) * 2, 2)
    expected = focus_box([Detection("box", clip.boxes[0])], (240, 320), (240, 320), 2000)
    assert ctx["focus_box"] == list(expected)


def test_tracking_off_keeps_the_papers_input_byte_for_byte(make_step):
    clip = synthetic_clip(11, seed=5)
    cloud_box = clip.boxes[0]
    inputs = {}
    for label, params, request in (
        ("config off", {"focus_tracking": "false"}, {}),
        ("request off", {}, {"focus_tracking": "false"}),
    ):
        calls = pb.set_bls_handler(_echo)
        ctx, call = _serve_clip(make_step(**params), clip, 10, 0, cloud_box, calls, **request)
        assert ctx["tracked"] is None and ctx["focus_tracked"] is None and ctx["region_change"] is None, label
        inputs[label] = {name: np.asarray(value) for name, value in call.inputs.items()}
    assert inputs["config off"].keys() == inputs["request off"].keys()
    for name, value in inputs["config off"].items():
        assert np.array_equal(value, inputs["request off"][name]), name
    # What the paper's method gives: build_history and plan_focus as spotvlm called them before tracking.
    result = CloudResult(0, 0, 0.0, 0.0, "", (Detection("box", cloud_box),), (240, 320), QUESTION)
    config = ServedContextConfig()
    turns = [TurnRecord(i, clip.timestamps_ms[i], QUESTION, "edge") for i in range(10)]
    history = build_history(turns, [result], 1000, config.replacement, question=QUESTION)
    plan = plan_focus(clip.frames[10], result.detections, (240, 320), QUESTION, 1000, FocusMode.CROP_AND_FRAME)
    served = inputs["config off"]
    assert served["HISTORY"][0, 0] == history_json(history.turns).encode()
    assert np.array_equal(served["FOCUS_IMAGE"][0], plan.images[1]) and np.array_equal(
        served["IMAGE"][0], plan.images[0]
    )


def test_only_the_boxes_the_question_is_about_are_tracked_and_at_most_the_budget():
    clip = synthetic_clip(6, seed=6)
    frames = FrameHistory(10)
    for index, image in enumerate(clip.frames):
        frames.add(index, clip.timestamps_ms[index], image)
    boxes = tuple(Detection("box", (float(10 * i), 0.0, float(10 * i + 40), 40.0)) for i in range(6))
    other = Detection("tree", (200.0, 100.0, 240.0, 140.0))
    result = CloudResult(0, 0, 0.0, 0.0, "", boxes + (other,), (240, 320), QUESTION)
    (tracking,) = track_answers(frames, [result], 5, QUESTION, max_boxes=4).values()
    assert [b.detection for b in tracking.boxes] == list(boxes[:4]), "the tree is not asked about; 4 at most"
    assert track_answers(frames, [result], 5, QUESTION, max_boxes=0)[0].boxes == ()


def test_a_text_answer_gets_the_whole_frames_change_and_no_tracked_state():
    clip = synthetic_clip(6, seed=7)
    frames = FrameHistory(10)
    for index, image in enumerate(clip.frames):
        frames.add(index, clip.timestamps_ms[index], image)
    result = CloudResult(0, 0, 0.0, 0.0, "two", (), (240, 320), "How many boxes?")
    tracking = track_answers(frames, [result], 5, "How many boxes?")
    context = build_context_input(clip.frames[5], "How many boxes?", 500, [], [result], tracking, FocusMode.OFF)
    (turn,) = context.history.turns
    change = int(round(tracking[0].region_change * 100))
    assert tracking[0].tracked is None and 0 < change < 100
    assert turn.answer == f"[cloud answer, frame 0, 0.5 s old] [change {change}] two"


def test_the_edge_writes_boxes_as_training_taught_it():
    for box, size, step in (((3.2, 7.9, 50.1, 60.0), (112, 112), 2), ((0.2, 0.4, 0.6, 0.9), (56, 56), 4)):
        assert binned_box(box, size, step) == tokens.binned_box(box, size, step)
    assert grounding_text([([2, 4, 50, 60], "red circle")]) == tokens.grounding_answer([2, 4, 50, 60], "red circle")


# -- memory ------------------------------------------------------------------------------------------------------------


def test_frame_history_memory_is_bounded_counted_and_dropped_with_the_stream():
    store = ContextStore(StoreLimits(max_streams=2, max_frames=5, frame_side=160))
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    assert store.add_frame(1, 0, 0, frame) is None, "an unknown stream is not created"
    store.start_stream(1)
    empty = store.memory_bytes()
    for index in range(20):
        frames = store.add_frame(1, index, index * 100, frame)
    assert len(frames) == 5 and frames.nbytes == 5 * 160 * 120 * 3
    assert store.memory_bytes() - empty >= frames.nbytes
    assert store.memory_bytes() - empty <= frames.nbytes + 5 * 1024, "a frame's record costs well under 1 KiB"
    store.end_stream(1)
    store.start_stream(1)
    assert len(store.add_frame(1, 0, 0, frame)) == 1, "END dropped the frames"
    store.start_stream(2)
    store.start_stream(3)  # evicts stream 1, the least recently used
    assert store.add_frame(1, 1, 100, frame) is None
    assert ContextStore(StoreLimits()).limits.max_frames == 0


# -- served equals trained -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> list:
    """One 1 s generated video (10 frames at 10 fps, 240 x 320), four questions per frame."""
    folder = tmp_path_factory.mktemp("split")
    return load_dataset(generate_split("train", [1000], folder, SceneConfig(seconds=1.0), QuestionConfig(per_frame=4)))


def _serve_example(make_step, example, earlier_index, frames_of, cloud_text, detections, **params):
    """`spotvlm` fed the example's video up to its frame, asked its question each time, with the cloud's answer
    about `earlier_index` ingested; returns the svlm call for the example's frame."""
    calls = pb.set_bls_handler(_echo)
    step = make_step(context_turns=0, **params)
    step_s = example.time_s / example.frame_index
    for index in range(example.frame_index + 1):
        if index == example.frame_index:
            calls.clear()
        timestamp = int(round(step_s * index * 1000))
        _send(step, frames_of(index), timestamp, prompt=example.question, flags=START if index == 0 else 0)
        if index == earlier_index:
            _ingest(step, index, detections, frames_of(index).shape[:2], text=cloud_text)
    (call,) = calls
    return call


@pytest.mark.parametrize("tracking", [True, False])
def test_the_training_example_is_what_spotvlm_sends_the_svlm(make_step, split, tracking):
    from evaluation.dataset import load_frame

    view = ModelView(SVLM_SIDE, keep_aspect=False)
    mix = MixConfig(coordinate_bin=2)
    examples = build_examples(split, view, mix, seed=0, fixed_age_s=0.5, tracking=tracking)
    by_id = {e.id: e for e in split}
    grounding = [e for e in examples if e.history and e.task == "grounding"]
    assert grounding, "the split asks grounding questions of frames 5..9"
    example = grounding[0]
    source = by_id[example.example_id]
    earlier_index = source.frame_index - 5

    def frames_of(index):
        return load_frame(replace(source, frame_index=index))

    label, cloud_box = _earlier_box(source, earlier_index)
    # The cloud's answer as spotvlm gets it: its box in the frame's pixels, and a text that tracking rewrites; without
    # tracking the text is used as it came, so it is what training's ideal cloud says (the box in the edge's pixels).
    seen = (SVLM_SIDE, SVLM_SIDE)
    text = tokens.grounding_answer(tokens.binned_box(scale_box(cloud_box, (240, 320), seen), seen, 2), label)
    call = _serve_example(
        make_step,
        source,
        earlier_index,
        frames_of,
        text if not tracking else "a box",
        [{"bbox_2d": list(cloud_box), "label": label}],
        focus_mode="off",
        focus_tracking=str(tracking).lower(),
    )
    served = _history(call)
    assert served == [{"question": t.question, "answer": t.answer} for t in example.history]
    assert ("[tracked" in served[0]["answer"] or "[lost" in served[0]["answer"]) == tracking


def _earlier_box(example, earlier_index):
    """(label, box) of the grounding example's object at the earlier frame, from the dataset's truth."""
    from evaluation.staleness import TruthIndex, answer_at

    truth = TruthIndex().frames(example.video)[earlier_index]
    earlier = answer_at(example.question, truth, 320, 240)
    return example.question.split("Locate the ", 1)[1].split(" and give", 1)[0], tuple(earlier.answer)


def test_the_training_focus_crop_is_what_spotvlm_sends_the_svlm(make_step, split):
    from evaluation.dataset import load_frame

    view = ModelView(SVLM_SIDE, keep_aspect=False)
    mix = MixConfig(history_fraction=0.0, focus_fraction=1.0, latencies_s=(0.5,))
    examples = build_examples(split, view, mix, seed=0, tracking=True)
    by_id = {e.id: e for e in split}
    focused = [e for e in examples if e.context == "focus"]
    assert focused
    example = focused[0]
    source = by_id[example.example_id]
    step_s = source.time_s / source.frame_index
    earlier_index = source.frame_index - int(round(example.context_age_s / step_s))
    from evaluation.staleness import TruthIndex

    truth = TruthIndex().frames(source.video)[earlier_index]
    targets = [o for o in truth if o.object_id in source.meta.get("target_ids", [])]
    detections = [{"bbox_2d": [float(v) for v in o.box], "label": o.label} for o in targets]
    call = _serve_example(
        make_step,
        source,
        earlier_index,
        lambda index: load_frame(replace(source, frame_index=index)),
        "",
        detections,
        focus_mode="crop_only",
    )
    assert call.model_name == "svlm"
    assert np.array_equal(view.resize(call.inputs["IMAGE"][0]), example.images[0])
