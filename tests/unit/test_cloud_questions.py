"""The cloud answers what the stream asks: a stream's standing questions (the store), the frame sent to the cloud
asking all of them (spotvlm's dispatch), and the reply filed as one cloud answer per question."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.unit import fake_pb_utils

pb = fake_pb_utils.install()

from python_backends.cloud.link import CloudReply
from python_backends.cloud.request import PromptAnswer
from python_backends.context.store import CloudResult, ContextStore, StoreLimits
from python_backends.detections import Detection
from python_backends.serving.spotvlm_config import SpotVLMConfig
from tests.unit.test_spotvlm_step import (  # fixtures and helpers of the spotvlm step's own tests
    CAR,
    FRAME,
    START,
    TREE,
    FakeCloudLink,
    calls,
    cloud_step,
    context,
    frame,
    history_of,
    make_step,
    run,
)

__all__ = ["calls", "cloud_step", "make_step"]  # fixtures, used by name

CAR_Q, COLOUR_Q, COUNT_Q = "Where is the car?", "What colour is the car?", "How many cars are there?"


def cloud_result(frame_id: int, question: str | None, text: str = "cloud") -> CloudResult:
    return CloudResult(frame_id, frame_id * 100, 1.0, 2.0, text, (), (96, 128), question=question)


# -- the store's standing questions ------------------------------------------------------------------------------------


def test_standing_questions_are_the_recent_distinct_questions_most_recent_first() -> None:
    store = ContextStore(StoreLimits(max_questions=3))
    assert store.ask(1, "a?") == ("a?",), "the current frame's question, on a stream not yet seen"
    assert store.ask(1, "b?") == ("b?", "a?")
    assert store.ask(1, "a?") == ("a?", "b?"), "asked again: moved to the front, not repeated"
    assert store.ask(1, "c?") == ("c?", "a?", "b?")
    assert store.ask(1, "d?") == ("d?", "c?", "a?"), "bounded: the least recently asked goes"
    assert store.ask(1, "  B? ") == ("  B? ", "d?", "c?"), "the same question whatever its case and spacing"
    assert store.ask(1, "b?") == ("b?", "d?", "c?"), "the latest wording is kept"
    assert store.ask(2, "z?") == ("z?",), "every stream has its own"


def test_one_standing_question_is_the_current_one() -> None:
    store = ContextStore(StoreLimits(max_questions=1))
    assert store.ask(1, "a?") == ("a?",)
    assert store.ask(1, "b?") == ("b?",)


def test_standing_questions_start_afresh_with_the_stream_and_are_clipped() -> None:
    store = ContextStore(StoreLimits(max_questions=4, max_text_chars=5))
    store.ask(1, "a?")
    store.start_stream(1)
    assert store.ask(1, "longer than five") == ("longe",)
    store.end_stream(1)
    assert store.ask(1, "b?") == ("b?",)


def test_standing_questions_count_in_the_memory_estimate() -> None:
    store = ContextStore(StoreLimits(max_questions=4))
    store.ask(1, "q")
    before = store.memory_bytes()
    for index in range(10):
        store.ask(1, f"question number {index:03d} " + "x" * 200)
    grown = store.memory_bytes()
    assert grown > before + 4 * 200, "the questions' text is counted"
    for index in range(10, 40):
        store.ask(1, f"question number {index:03d} " + "x" * 200)
    assert store.memory_bytes() == grown, "and bounded: four questions of the same length, whichever"


def test_a_bad_question_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_questions"):
        StoreLimits(max_questions=0)


def test_a_frames_answers_are_filed_together_and_not_for_a_gone_stream() -> None:
    store = ContextStore()
    store.start_stream(1)
    answers = [cloud_result(3, COLOUR_Q), cloud_result(3, CAR_Q)]
    assert store.add_cloud_results(1, answers)
    assert store.snapshot(1).cloud_results == tuple(answers)
    assert store.add_cloud_results(9, answers) is False and not store.has_stream(9)


def test_cloud_questions_sets_the_store_limits() -> None:
    limits = SpotVLMConfig.from_params({"cloud_questions": "6"}).store_limits()
    # The answer to every question and to its object's grounding question, on two frames.
    assert limits.max_questions == 6 and limits.max_cloud_results == 24
    assert SpotVLMConfig().store_limits().max_questions == 4
    assert SpotVLMConfig().store_limits().max_cloud_results == 16
    with pytest.raises(ValueError, match="cloud_questions"):
        SpotVLMConfig.from_params({"cloud_questions": "0"})


# -- spotvlm: the frame asks every standing question, the reply files an answer to each ------------------------------


def reply(job, texts: dict[str, str], detections=(CAR, TREE), frame_size=(96, 128)) -> CloudReply:
    """The cloud's reply to every prompt of `job`, the text of each looked up by its prompt."""
    first, *others = [PromptAnswer(texts[p], tuple(detections)) for p in job.prompts]
    return CloudReply(
        job=job,
        text=first.text,
        detections=first.detections,
        other_answers=tuple(others),
        frame_size=frame_size,
        sent_s=1.0,
        arrived_s=1.5,
    )


def test_a_frame_asks_the_cloud_every_standing_question_its_own_first(make_step, calls) -> None:
    step = make_step(cloud_url="cloud.test:8001", cloud_questions="2", cloud_prompt="{question} Give boxes.")
    run(step, [frame(1, flags=START, prompt=CAR_Q, timestamp=0)])
    run(step, [frame(1, prompt=COLOUR_Q, timestamp=100)])
    run(step, [frame(1, prompt=COUNT_Q, timestamp=200)])
    run(step, [frame(1, prompt=CAR_Q, timestamp=300)])
    assert [job.prompts for job in step.link.jobs] == [
        (f"{CAR_Q} Give boxes.",),
        (f"{COLOUR_Q} Give boxes.", f"{CAR_Q} Give boxes."),
        (f"{COUNT_Q} Give boxes.", f"{COLOUR_Q} Give boxes."),
        (f"{CAR_Q} Give boxes.", f"{COUNT_Q} Give boxes."),
    ]


def test_a_busy_stream_still_records_its_question(make_step, calls) -> None:
    step = make_step(cloud_url="cloud.test:8001")
    run(step, [frame(1, flags=START, prompt=CAR_Q)])
    step.link.outcome = "skipped_busy"
    run(step, [frame(1, prompt=COLOUR_Q)])
    step.link.outcome = "sent"
    run(step, [frame(1, prompt=CAR_Q)])
    assert step.link.jobs[-1].prompts == (CAR_Q, COLOUR_Q)


def test_the_reply_files_an_answer_to_every_question_and_each_question_gets_its_own(cloud_step, calls) -> None:
    step = cloud_step
    run(step, [frame(1, flags=START, prompt=CAR_Q, timestamp=10_000)])
    (first,) = run(step, [frame(1, prompt=COLOUR_Q, timestamp=10_100)])
    assert context(first)["cloud_questions"] == 0
    job = step.link.jobs[-1]
    assert job.frame_id == 1 and job.prompts == (COLOUR_Q, CAR_Q)
    step._on_cloud_reply(reply(job, {COLOUR_Q: "The car is red.", CAR_Q: "The car is on the left."}))
    filed = step.store.snapshot(1).cloud_results
    assert {(r.frame_id, r.question, r.text) for r in filed} == {
        (1, COLOUR_Q, "The car is red."),
        (1, CAR_Q, "The car is on the left."),
    }
    assert filed[-1].question == COLOUR_Q, "the frame's own question is filed last: the later arrival for its frame"

    calls.clear()
    (asked_car,) = run(step, [frame(1, prompt=CAR_Q, timestamp=10_500)])
    (asked_colour,) = run(step, [frame(1, prompt=COLOUR_Q, timestamp=10_600)])
    car_history, colour_history = history_of(calls[0]), history_of(calls[1])
    assert context(asked_car)["cloud_questions"] == 2 and context(asked_car)["context_frame"] == 1
    assert [t["question"] for t in car_history][-1] == CAR_Q
    assert "The car is on the left." in car_history[-1]["answer"]
    assert not any("red" in t["answer"] for t in car_history), "no answer to another question"
    assert "The car is red." in colour_history[-1]["answer"] and context(asked_colour)["context_frame"] == 1


def test_a_reply_for_an_ended_run_is_not_filed(cloud_step, calls) -> None:
    run(cloud_step, [frame(1, flags=START, prompt=CAR_Q)])
    (job,) = cloud_step.link.jobs
    run(cloud_step, [frame(1, flags=START, prompt=COLOUR_Q)])
    cloud_step._on_cloud_reply(reply(job, {CAR_Q: "old run"}))
    assert cloud_step.store.snapshot(1).cloud_results == ()


def test_one_question_is_one_prompt_as_before(cloud_step, calls) -> None:
    run(cloud_step, [frame(1, flags=START, prompt=CAR_Q), frame(2, prompt=CAR_Q)])
    run(cloud_step, [frame(1, prompt=" where is THE car? ")])
    assert [job.prompts for job in cloud_step.link.jobs] == [(CAR_Q,), (CAR_Q,), (" where is THE car? ",)]
    assert all(job.other_prompts == () for job in cloud_step.link.jobs)
    assert isinstance(cloud_step.link, FakeCloudLink) and np.array_equal(
        cloud_step.link.jobs[0].image, frame().inputs["IMAGE"][0]
    )


def test_focus_takes_of_one_frames_answers_the_one_to_the_question_asked_now() -> None:
    from dataclasses import replace

    from python_backends.context.focus import focus_source

    car_answer = replace(cloud_result(4, CAR_Q), detections=(CAR,))
    colour_answer = replace(cloud_result(4, COLOUR_Q), detections=(Detection("car", (0.0, 0.0, 5.0, 5.0)),))
    for filed in ([car_answer, colour_answer], [colour_answer, car_answer]):
        assert focus_source(filed, " what colour is the CAR?") is colour_answer
        assert focus_source(filed, CAR_Q) is car_answer
    newer = replace(cloud_result(5, COLOUR_Q), detections=(CAR,))
    assert focus_source([car_answer, newer], CAR_Q) is newer, "a newer frame still comes first"


# -- lvlm: n prompts on one frame --------------------------------------------------------------------------------------


def make_lvlm(checkpoint, **params):
    from python_backends.serving.lvlm_step import LvlmStep

    config = {"checkpoint": checkpoint, "default_max_tokens": 6, "max_input_pixels": 10**6, "max_prompts": 3, **params}
    return LvlmStep(
        {"model_config": json.dumps({"parameters": {k: {"string_value": str(v)} for k, v in config.items()}})}
    )


@pytest.fixture(scope="module")
def lvlm(tiny_cloud_checkpoint):
    return make_lvlm(tiny_cloud_checkpoint)


def lvlm_request(*prompts: bytes, image: np.ndarray = FRAME) -> fake_pb_utils.FakeRequest:
    return pb.FakeRequest({"IMAGE": image[None], "PROMPT": np.array([list(prompts)], dtype=object)})


def answers(response, name: str = "TEXT") -> list[str]:
    assert response.error is None, response.error.message()
    output = response.output(name)
    assert output.shape[0] == 1
    return [value.decode() for value in output[0]]


def test_lvlm_answers_every_prompt_of_a_request_on_one_image_encoding(lvlm, monkeypatch):
    prompts = (b"Where is the car?", b"What colour is it?", b"How many trees?")
    alone = [answers(r) for r in lvlm.execute([lvlm_request(p) for p in prompts])]
    encodings = []
    encode = lvlm.generator.model.get_image_features
    monkeypatch.setattr(
        lvlm.generator.model, "get_image_features", lambda *a, **k: encodings.append(1) or encode(*a, **k)
    )
    (together,) = lvlm.execute([lvlm_request(*prompts)])
    assert len(encodings) == 1, "the image is encoded once for all its prompts"
    assert answers(together) == [text for (text,) in alone], "each prompt answered as if asked alone"
    assert all(isinstance(json.loads(d), list) for d in answers(together, "DETECTIONS"))
    assert together.output("TEXT").shape == together.output("DETECTIONS").shape == (1, 3)


def test_a_batch_is_generated_in_parts_of_at_most_max_generation_prompts_with_the_same_answers(
    lvlm, tiny_cloud_checkpoint, monkeypatch
):
    parted = make_lvlm(tiny_cloud_checkpoint, max_generation_prompts=2)
    sizes = []
    generate = parted.generator.generate_from_images
    monkeypatch.setattr(
        parted.generator, "generate_from_images", lambda requests: sizes.append(len(requests)) or generate(requests)
    )
    batch = [lvlm_request(b"Where is the car?"), lvlm_request(b"a?", b"b?", b"Where is the car?")]
    whole = [answers(r) for r in lvlm.execute(batch)]
    assert [answers(r) for r in parted.execute(batch)] == whole
    assert sizes == [2, 2], "four prompts in parts of two"
    with pytest.raises(ValueError, match="max_generation_prompts"):
        make_lvlm(tiny_cloud_checkpoint, max_generation_prompts=0)


def test_lvlm_batches_requests_of_different_prompt_counts(lvlm):
    one, three = lvlm.execute([lvlm_request(b"Where is the car?"), lvlm_request(b"a?", b"b?", b"Where is the car?")])
    assert one.output("TEXT").shape == (1, 1) and three.output("TEXT").shape == (1, 3)
    assert answers(one)[0] == answers(three)[2]


@pytest.mark.parametrize(
    "prompts, message",
    [
        ((b"Where is the car?", b"  "), "prompt 1 of 2: PROMPT is empty"),
        ((b"a?", b"b?", b"c?", b"d?"), "PROMPT holds 4 prompts, over the limit of 3"),
    ],
)
def test_a_bad_prompt_among_several_fails_its_request_alone(lvlm, prompts, message):
    bad, good = lvlm.execute([lvlm_request(*prompts), lvlm_request(b"Where is the car?", b"What colour is it?")])
    assert bad.error.code() == pb.TritonError.INVALID_ARG and message in bad.error.message()
    assert len(answers(good)) == 2


def test_lvlm_refuses_prompts_of_more_than_one_request_row(lvlm):
    request = pb.FakeRequest({"IMAGE": FRAME[None], "PROMPT": np.array([[b"a?"], [b"b?"]], dtype=object)})
    (response,) = lvlm.execute([request])
    assert response.error.code() == pb.TritonError.INVALID_ARG and "PROMPT must be [1, n]" in response.error.message()


def test_a_question_asked_again_finds_the_clouds_last_answer_the_window_dropped(make_step, calls) -> None:
    """The store keeps the newest few answers by arrival; a question asked again after several others still finds
    the newest answer the link received to it, and with carrying on answers with it."""
    step = make_step(cloud_url="cloud.test:8001", cloud_questions="1", focus_tracking="true")
    run(step, [frame(1, flags=START, prompt=COUNT_Q, timestamp=0)])
    step._on_cloud_reply(reply(step.link.jobs[-1], {COUNT_Q: "3"}, detections=()))
    others = [f"How many trees of kind {k} are there?" for k in range(StoreLimits.max_cloud_results)]
    for index, question in enumerate(others, start=1):
        run(step, [frame(1, prompt=question, timestamp=100 * index)])
        step._on_cloud_reply(reply(step.link.jobs[-1], {question: "0"}, detections=()))
    assert COUNT_Q not in {r.question for r in step.store.snapshot(1).cloud_results}, "the window dropped it"
    (response,) = run(step, [frame(1, prompt=COUNT_Q, timestamp=100 * (len(others) + 1))])
    assert response.output("TEXT")[0, 0].decode() == "3"
    assert context(response)["answer_source"] == "cloud"
