"""The public edge model `spotvlm` in process, with a fake pb_utils: BLS calls to svlm/svlm_focus go to a test
handler, and the cloud link is either off or a fake whose late replies the tests deliver by hand."""

import asyncio
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.unit import fake_pb_utils

pb = fake_pb_utils.install()

from python_backends.cloud.breaker import CloudState
from python_backends.cloud.delay import DelayInjector
from python_backends.cloud.link import CloudReply
from python_backends.context.focus import FocusMode, FocusPlan
from python_backends.context.replacement import ReplacedHistory, WordBudget
from python_backends.context.token_budget import TokenizerBudget
from python_backends.detections import Detection
from python_backends.errors import InputError
from python_backends.prompts import MAX_HISTORY_TURNS, Turn, history_json, parse_history
from python_backends.serving import spotvlm_step
from python_backends.serving.spotvlm_step import (
    FrameRequest,
    PreparedFrame,
    SpotVLMStep,
    SvlmReply,
    _latency,
    read_stream_id,
)
from python_backends.serving.svlm_steps import GenerateStep
from python_backends.triton_io import bool_parameter

START, END = 1, 2
FRAME = np.random.default_rng(0).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
CAR = Detection("car", (16.0, 24.0, 48.0, 64.0))
TREE = Detection("tree", (90.0, 10.0, 120.0, 80.0))
CLOUD_TEXT = "A red car is parked on the left, next to a tree."


def _args(params: dict) -> dict:
    config = {"parameters": {k: {"string_value": str(v)} for k, v in params.items()}}
    return {"model_config": json.dumps(config), "model_name": "spotvlm", "model_version": "1", "model_repository": ""}


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def frame(
    stream=1, prompt="Where is the car?", flags=0, image=FRAME, timestamp=None, image_bytes=None, **params
) -> fake_pb_utils.FakeRequest:
    inputs = {"PROMPT": np.array([[prompt.encode()]], dtype=object)}
    if image is not None:
        inputs["IMAGE"] = image[None]
    if image_bytes is not None:
        inputs["IMAGE_BYTES"] = np.array([[image_bytes]], dtype=object)
    if timestamp is not None:
        inputs["TIMESTAMP_MS"] = np.array([[timestamp]], dtype=np.int64)
    return pb.FakeRequest(inputs, params, correlation=stream, sequence_flags=flags)


def ingest(stream: int, record: dict) -> fake_pb_utils.FakeRequest:
    return pb.FakeRequest({"INGEST": np.array([[json.dumps(record).encode()]], dtype=object)}, correlation=stream)


def run(step: SpotVLMStep, requests: list) -> list:
    responses = asyncio.run(step.execute(requests))
    assert len(responses) == len(requests)
    return responses


def context(response) -> dict:
    assert response.error is None, response.error.message()
    return json.loads(response.output("CONTEXT")[0, 0])


def text(response) -> str:
    return response.output("TEXT")[0, 0].decode()


def history_of(call: fake_pb_utils.BlsCall) -> list[dict] | None:
    raw = call.inputs.get("HISTORY")
    return None if raw is None else json.loads(raw[0, 0])


async def _echo(call: fake_pb_utils.BlsCall) -> fake_pb_utils.BlsResponse:
    prompt = call.inputs["PROMPT"][0, 0].decode()
    return pb.bls_reply(TEXT=f"svlm: {prompt}", GENERATE_MS=np.array([[5.0]], dtype=np.float32))


@pytest.fixture
def calls() -> list[fake_pb_utils.BlsCall]:
    """The BLS calls of the test; svlm answers "svlm: <prompt>"."""
    return pb.set_bls_handler(_echo)


class FakeCloudLink:
    """Stands in for CloudLink: records the jobs; the test decides the dispatch outcome and delivers replies."""

    def __init__(self, url: str, **kwargs) -> None:
        self.url, self.kwargs = url, kwargs
        self.jobs: list = []
        self.cancelled: list[int] = []
        self.outcome = "sent"
        self.state = CloudState.OK
        self.inflight = 0
        self.next_drain: dict = {}
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True

    def submit(self, job) -> str:
        self.jobs.append(job)
        return self.outcome

    def cancel_stream(self, stream_id: int) -> None:
        self.cancelled.append(stream_id)

    def stats(self) -> dict:
        return {"inflight": self.inflight, "state": self.state.value}

    def drain_stats(self) -> dict:
        drained, self.next_drain = self.next_drain, {}
        return {**drained, "inflight": self.inflight}


@pytest.fixture
def make_step(monkeypatch):
    """SpotVLMStep factory; cloud_url defaults to off, and the environment cannot override the parameters. Tracking
    is off unless a test turns it on: these tests pin the paper's method (test_served_context.py tests tracking)."""
    monkeypatch.delenv("SPOTVLM_CLOUD_URL", raising=False)
    monkeypatch.delenv("SPOTVLM_CLOUD_DELAY", raising=False)
    monkeypatch.setattr(spotvlm_step, "CloudLink", FakeCloudLink)
    made = []

    def make(**params) -> SpotVLMStep:
        step = SpotVLMStep(_args({"cloud_url": "off", "focus_tracking": "false", **params}), pb_utils=pb)
        made.append(step)
        return step

    yield make
    for step in made:
        step.close()


@pytest.fixture
def cloud_step(make_step) -> SpotVLMStep:
    step = make_step(cloud_url="cloud.test:8001")
    assert isinstance(step.link, FakeCloudLink) and step.link.started
    return step


def reply_for(job, text=CLOUD_TEXT, detections=(CAR, TREE), frame_size=(96, 128)) -> CloudReply:
    return CloudReply(
        job=job, text=text, detections=tuple(detections), frame_size=frame_size, sent_s=1.0, arrived_s=1.5
    )


# -- bad requests fail alone -------------------------------------------------------------------------------------------


def _without_prompt():
    request = frame(5)
    del request.inputs["PROMPT"]
    return request


def _bad_ingest():
    return pb.FakeRequest({"INGEST": np.array([[b"{not json"]], dtype=object)}, correlation=1)


BAD_REQUESTS = {
    "missing PROMPT": (_without_prompt, "missing input tensor PROMPT"),
    "empty prompt": (lambda: frame(5, prompt="   "), "PROMPT is empty"),
    "zero correlation id": (lambda: frame(0), "missing sequence id"),
    "string correlation id": (lambda: frame("cam-1"), "sequence id must be an unsigned integer"),
    "IMAGE and IMAGE_BYTES": (lambda: frame(5, image_bytes=_png(FRAME)), "not both"),
    "no image": (lambda: frame(5, image=None), "missing image"),
    "float IMAGE": (lambda: frame(5, image=FRAME.astype(np.float32)), "IMAGE must be UINT8"),
    "undecodable IMAGE_BYTES": (lambda: frame(5, image=None, image_bytes=b"GIF89a no"), "not a decodable"),
    "unknown focus mode": (lambda: frame(5, focus="sideways"), "focus must be one of"),
    "bad cloud_delay": (lambda: frame(5, cloud_delay="soon"), "request parameter cloud_delay"),
    "bad use_context": (lambda: frame(5, use_context="maybe"), "use_context must be a boolean"),
    "bad text_context": (lambda: frame(5, text_context="maybe"), "text_context must be a boolean"),
    "max_tokens 0": (lambda: frame(5, max_tokens=0), "max_tokens must be >= 1, got 0"),
    "max_tokens over limit": (lambda: frame(5, max_tokens=10_000), "over the limit of 256"),
    "INGEST not JSON": (_bad_ingest, "INGEST is not valid JSON"),
    "INGEST for unknown stream": (lambda: ingest(9, {"frame_id": 0, "frame_size": [96, 128]}), "stream 9 has no"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_fails_alone_and_names_the_problem(make_step, calls, case):
    make_bad, message = BAD_REQUESTS[case]
    step = make_step()
    good_1, bad, good_2 = run(step, [frame(1, flags=START), make_bad(), frame(2, flags=START, prompt="Any people?")])
    assert bad.error.code() == pb.TritonError.INVALID_ARG and message in bad.error.message(), bad.error.message()
    assert bad.output_tensors == []
    assert text(good_1) == "svlm: Where is the car?" and context(good_1)["stream_id"] == 1
    assert text(good_2) == "svlm: Any people?" and context(good_2)["stream_id"] == 2
    assert [c.model_name for c in calls] == ["svlm", "svlm"], "the bad request never reaches svlm"


def test_a_request_breaking_the_model_gets_internal_and_neighbours_succeed(make_step, calls, monkeypatch):
    step = make_step()
    original = step._prepare

    def prepare(item):
        if item.stream_id == 3:
            raise RuntimeError("bug")
        return original(item)

    monkeypatch.setattr(step, "_prepare", prepare)
    good, broken = run(step, [frame(1), frame(3)])
    assert broken.error.code() == pb.TritonError.INTERNAL and "internal error: bug" in broken.error.message()
    assert context(good)["frame_id"] == 0


# -- streams as Triton sequences ---------------------------------------------------------------------------------------


def test_frame_ids_count_per_stream_and_restart_at_start(make_step, calls):
    step = make_step()
    ids = []
    for flags_1, flags_2 in [(START, START), (0, 0), (0, None), (START, 0)]:
        batch = [frame(1, flags=flags_1)] + ([frame(2, flags=flags_2)] if flags_2 is not None else [])
        ids.append([context(r)["frame_id"] for r in run(step, batch)])
    assert ids == [[0, 0], [1, 1], [2], [0, 2]]


def test_end_purges_the_stream(make_step, calls):
    step = make_step()
    run(step, [frame(1, flags=START), frame(2, flags=START)])
    last, other = run(step, [frame(1, flags=END), frame(2)])
    assert context(last)["frame_id"] == 1 and context(other)["frame_id"] == 1
    assert not step.store.has_stream(1) and step.store.has_stream(2)
    assert 1 not in step._next_frame and 1 not in step._epochs
    (again,) = run(step, [frame(1)])
    assert context(again)["frame_id"] == 0 and context(again)["history_turns"] == 0


def test_a_refused_last_frame_still_purges_the_stream(make_step, calls):
    step = make_step()
    run(step, [frame(1, flags=START)])
    (refused,) = run(step, [frame(1, prompt="", flags=END)])
    assert refused.error is not None and "PROMPT is empty" in refused.error.message()
    assert not step.store.has_stream(1) and 1 not in step._next_frame


def test_end_purges_the_stream_even_when_svlm_fails(make_step):
    async def fail(call):
        return pb.bls_error("out of memory")

    pb.set_bls_handler(fail)
    step = make_step()
    (response,) = run(step, [frame(1, flags=START | END)])
    assert response.error.message() == "svlm: out of memory"
    assert not step.store.has_stream(1) and 1 not in step._next_frame


# -- the BLS calls -----------------------------------------------------------------------------------------------------


def test_bls_calls_of_a_batch_run_concurrently(make_step):
    streams = [1, 2, 3, 4]
    started = []
    everyone_started = asyncio.Event()

    async def handler(call):
        started.append(call)
        if len(started) == len(streams):
            everyone_started.set()
        # Calls made one after the other would wait here for ever; the timeout turns that into a failed request.
        await asyncio.wait_for(everyone_started.wait(), timeout=5.0)
        return await _echo(call)

    pb.set_bls_handler(handler)
    step = make_step()
    responses = run(step, [frame(s, flags=START, prompt=f"question {s}") for s in streams])
    assert [text(r) for r in responses] == [f"svlm: question {s}" for s in streams]


@pytest.mark.parametrize("code", [pb.TritonError.INTERNAL, pb.TritonError.INVALID_ARG])
def test_an_svlm_error_fails_only_its_request(make_step, code):
    async def handler(call):
        if call.inputs["PROMPT"][0, 0] == b"explode":
            return pb.bls_error("tokenizer exploded", code)
        return await _echo(call)

    pb.set_bls_handler(handler)
    step = make_step()
    good, bad, also_good = run(step, [frame(1), frame(2, prompt="explode"), frame(3)])
    assert bad.error.message() == "svlm: tokenizer exploded" and bad.error.code() == code
    assert text(good) == "svlm: Where is the car?" and context(also_good)["stream_id"] == 3
    assert step.store.snapshot(2) is None, "a failed frame leaves no turn behind"


def test_an_svlm_call_that_raises_gives_internal_error(make_step):
    async def handler(call):
        raise ConnectionError("stub gone")

    pb.set_bls_handler(handler)
    (response,) = run(make_step(), [frame(1)])
    assert response.error.code() == pb.TritonError.INTERNAL
    assert response.error.message() == "internal error: stub gone"


def test_first_frame_asks_plain_svlm_without_history(make_step, calls):
    step = make_step()
    (response,) = run(step, [frame(1, flags=START, max_tokens=5)])
    (call,) = calls
    assert call.model_name == "svlm" and call.requested_output_names == ["TEXT", "GENERATE_MS"]
    assert set(call.inputs) == {"IMAGE", "PROMPT", "MAX_TOKENS"}
    assert np.array_equal(call.inputs["IMAGE"], FRAME[None])
    assert call.inputs["MAX_TOKENS"].tolist() == [[5]] and call.inputs["MAX_TOKENS"].dtype == np.int32
    ctx = context(response)
    assert ctx["context_frame"] is None and ctx["context_age_ms"] is None and ctx["replaced_turns"] == 0
    assert ctx["context_rtt_ms"] is None and ctx["context_detections"] is None
    assert ctx["cloud_state"] == "off" and ctx["cloud_dispatch"] == "off"
    assert ctx["focus_mode"] == "off" and ctx["focus_box"] is None and ctx["svlm_model"] == "svlm"
    assert set(ctx["latency_ms"]) == {"preprocess", "vision", "generate", "total"}
    assert ctx["latency_ms"]["generate"] == 5.0 and ctx["latency_ms"]["vision"] >= 0.0


def test_the_unchanged_frame_is_forwarded_as_the_requests_own_tensor_not_a_copy(make_step, calls):
    request = frame(1, flags=START)
    run(make_step(), [request])
    (call,) = calls
    assert call.inputs["IMAGE"] is request.inputs["IMAGE"], "a new tensor would copy the frame into shared memory again"


def test_a_decoded_frame_is_a_new_tensor(make_step, calls):
    run(make_step(), [frame(1, flags=START, image=None, image_bytes=_png(FRAME))])
    (call,) = calls
    assert np.array_equal(call.inputs["IMAGE"], FRAME[None])


def test_later_frames_carry_the_svlms_own_turns_about_the_same_question_as_history(make_step, calls):
    step = make_step()
    run(step, [frame(1, flags=START, prompt="What is this?")])
    (response,) = run(step, [frame(1, prompt="what is  THIS?")])  # case and spacing aside, the same question
    assert history_of(calls[-1]) == [{"question": "What is this?", "answer": "svlm: What is this?"}]
    ctx = context(response)
    assert ctx["history_turns"] == 1 and ctx["replaced_turns"] == 0 and ctx["context_frame"] is None
    run(step, [frame(1, prompt="Where is the car?")])
    assert "HISTORY" not in calls[-1].inputs, "turns about other questions are not this question's history"


def test_context_match_any_keeps_every_recent_turn(make_step, calls):
    step = make_step(context_match="any")
    run(step, [frame(1, flags=START, prompt="What is this?")])
    run(step, [frame(1, prompt="Where is the car?")])
    assert history_of(calls[-1]) == [{"question": "What is this?", "answer": "svlm: What is this?"}]


def test_a_bad_context_match_is_refused_at_load(make_step):
    with pytest.raises(ValueError, match="context_match"):
        make_step(context_match="sometimes")


def test_missing_generate_ms_counts_as_zero(make_step):
    async def handler(call):
        return pb.bls_reply(TEXT="only text")

    pb.set_bls_handler(handler)
    (response,) = run(make_step(), [frame(1)])
    assert text(response) == "only text" and context(response)["latency_ms"]["generate"] == 0.0


# -- cloud context: replacement and visual focus -------------------------------------------------------------------


def _with_cloud_answer(step, calls, detections=(CAR, TREE)):
    """Frame 0 at t = 10 s, dispatched; then the LVLM's answer for it arrives."""
    (first,) = run(step, [frame(1, flags=START, timestamp=10_000)])
    assert context(first)["cloud_dispatch"] == "sent"
    (job,) = step.link.jobs
    assert (job.stream_id, job.frame_id, job.frame_timestamp_ms, job.prompt) == (1, 0, 10_000, "Where is the car?")
    step._on_cloud_reply(reply_for(job, detections=detections))
    calls.clear()


def test_a_late_cloud_answer_focuses_and_replaces_the_next_frame(cloud_step, calls):
    _with_cloud_answer(cloud_step, calls)
    (response,) = run(cloud_step, [frame(1, timestamp=10_750)])
    (call,) = calls
    assert call.model_name == "svlm_focus"
    assert set(call.inputs) == {"IMAGE", "PROMPT", "MAX_TOKENS", "FOCUS_IMAGE", "HISTORY"}
    ctx = context(response)
    assert ctx["context_frame"] == 0 and ctx["context_age_ms"] == 750
    assert ctx["context_detections"] == 2 and ctx["context_rtt_ms"] == 500.0
    assert ctx["replaced_turns"] >= 1 and ctx["cloud_state"] == "ok" and ctx["svlm_model"] == "svlm_focus"
    assert ctx["focus_mode"] == "crop_and_frame" and ctx["focus_labels"] == ["car"], "the tree is not asked about"
    x1, y1, x2, y2 = ctx["focus_box"]
    assert 0 <= x1 <= 16 and 48 <= x2 <= 128 and 0 <= y1 <= 24 and 64 <= y2 <= 96
    assert call.inputs["FOCUS_IMAGE"].shape == (1, y2 - y1, x2 - x1, 3)
    assert np.array_equal(call.inputs["FOCUS_IMAGE"][0], FRAME[y1:y2, x1:x2])
    assert np.array_equal(call.inputs["IMAGE"][0], FRAME), "a frame under frame_side is not downscaled"
    (turn,) = history_of(call)
    assert turn["question"] == "Where is the car?" and CLOUD_TEXT in turn["answer"]
    assert turn["answer"].startswith("[cloud answer, frame 0, 0.8 s old]")


def test_a_cloud_answer_to_another_question_is_not_history_but_its_boxes_still_focus(cloud_step, calls):
    _with_cloud_answer(cloud_step, calls)  # the cloud answered "Where is the car?" with boxes of a car and a tree
    (response,) = run(cloud_step, [frame(1, timestamp=10_750, prompt="What colour is the car?")])
    (call,) = calls
    ctx = context(response)
    assert "HISTORY" not in call.inputs and ctx["context_frame"] is None and ctx["replaced_turns"] == 0
    assert call.model_name == "svlm_focus" and ctx["focus_labels"] == ["car"] and ctx["focus_frame"] == 0


def test_focus_questions_limits_the_crop_to_the_questions_it_finds(make_step, calls):
    step = make_step(cloud_url="cloud.test:8001", focus_questions="^what colou?r ")
    _with_cloud_answer(step, calls)
    run(step, [frame(1, timestamp=10_750, prompt="Where is the car?")])
    run(step, [frame(1, timestamp=10_850, prompt="What colour is the car?")])
    assert [c.model_name for c in calls] == ["svlm", "svlm_focus"]


def test_a_cloud_answer_carries_the_question_it_answered(cloud_step, calls):
    _with_cloud_answer(cloud_step, calls)
    (result,) = cloud_step.store.snapshot(1).cloud_results
    assert result.question == "Where is the car?", "the edge's question, not the cloud_prompt it was wrapped in"


@pytest.mark.parametrize(
    "params, model, focus_image, history, focus_mode",
    [
        ({"focus": "off"}, "svlm", False, True, "off"),
        ({"focus": "crop_only"}, "svlm", False, True, "crop_only"),
        ({"focus": "auto"}, "svlm_focus", True, True, "crop_and_frame"),
        ({"use_context": False}, "svlm", False, False, "off"),
        ({"use_context": "false"}, "svlm", False, False, "off"),
    ],
)
def test_request_parameters_choose_the_context_used(cloud_step, calls, params, model, focus_image, history, focus_mode):
    _with_cloud_answer(cloud_step, calls)
    (response,) = run(cloud_step, [frame(1, timestamp=11_000, **params)])
    (call,) = calls
    ctx = context(response)
    assert call.model_name == model and ("FOCUS_IMAGE" in call.inputs) == focus_image
    assert ctx["focus_mode"] == focus_mode and (ctx["focus_box"] is not None) == (focus_mode != "off")
    if history:
        assert CLOUD_TEXT in json.dumps(history_of(call)) and ctx["context_frame"] == 0
    else:
        assert "HISTORY" not in call.inputs and ctx["context_frame"] is None and ctx["replaced_turns"] == 0
    if focus_mode == "crop_only":
        x1, y1, x2, y2 = ctx["focus_box"]
        assert np.array_equal(call.inputs["IMAGE"][0], FRAME[y1:y2, x1:x2]), "the crop instead of the frame"


@pytest.mark.parametrize("value", [False, "false"])
def test_without_text_context_the_svlm_gets_the_focus_crop_but_no_history(cloud_step, calls, value):
    _with_cloud_answer(cloud_step, calls)
    (response,) = run(cloud_step, [frame(1, timestamp=10_750, focus="crop_and_frame", text_context=value)])
    (call,) = calls
    assert call.model_name == "svlm_focus"
    assert set(call.inputs) == {"IMAGE", "PROMPT", "MAX_TOKENS", "FOCUS_IMAGE"}, "no HISTORY at all"
    ctx = context(response)
    assert ctx["history_turns"] == 0 and ctx["replaced_turns"] == 0
    assert ctx["focus_mode"] == "crop_and_frame" and ctx["focus_labels"] == ["car"]
    # CONTEXT still names the cloud answer the crop came from.
    assert ctx["context_frame"] == 0 and ctx["context_age_ms"] == 750
    assert ctx["context_rtt_ms"] == 500.0 and ctx["context_detections"] == 2

    calls.clear()
    run(cloud_step, [frame(1, timestamp=11_000)])
    turns = history_of(calls[0])
    assert [t["question"] for t in turns] == ["Where is the car?", "Where is the car?"]
    assert turns[1]["answer"] == "svlm: Where is the car?", "the frame without text context still left its turn"


def test_text_context_changes_nothing_without_use_context(cloud_step, calls):
    _with_cloud_answer(cloud_step, calls)
    (response,) = run(cloud_step, [frame(1, timestamp=10_750, use_context=False, text_context=False)])
    ctx = context(response)
    assert calls[0].model_name == "svlm" and "HISTORY" not in calls[0].inputs
    assert ctx["context_frame"] is None and ctx["focus_mode"] == "off" and ctx["history_turns"] == 0


def test_the_model_default_focus_mode_applies_to_auto(make_step, calls):
    step = make_step(cloud_url="cloud.test:8001", focus_mode="crop_only")
    _with_cloud_answer(step, calls)
    (response,) = run(step, [frame(1, timestamp=10_100)])
    assert context(response)["focus_mode"] == "crop_only" and calls[0].model_name == "svlm"


def test_an_answer_without_detections_replaces_but_does_not_focus(cloud_step, calls):
    _with_cloud_answer(cloud_step, calls, detections=())
    (response,) = run(cloud_step, [frame(1, timestamp=10_100)])
    ctx = context(response)
    assert calls[0].model_name == "svlm" and ctx["focus_box"] is None and ctx["context_frame"] == 0


def test_context_older_than_the_limit_is_not_used(cloud_step, calls):
    _with_cloud_answer(cloud_step, calls)
    (response,) = run(cloud_step, [frame(1, timestamp=10_000 + 30_001)])
    ctx = context(response)
    assert ctx["context_frame"] is None and ctx["focus_box"] is None and calls[0].model_name == "svlm"


def test_a_reply_for_a_restarted_stream_is_dropped(cloud_step, calls):
    run(cloud_step, [frame(1, flags=START, timestamp=1_000)])
    run(cloud_step, [frame(1, flags=START, timestamp=2_000)])  # a new run: its frame 0 is in flight too
    old_job, new_job = cloud_step.link.jobs
    assert (old_job.frame_id, new_job.frame_id) == (0, 0)
    cloud_step._on_cloud_reply(reply_for(old_job, text="the old run's answer"))
    (response,) = run(cloud_step, [frame(1, timestamp=2_500)])
    assert context(response)["context_frame"] is None
    cloud_step._on_cloud_reply(reply_for(new_job, text="the new run's answer"))
    (response,) = run(cloud_step, [frame(1, timestamp=3_000)])
    assert context(response)["context_frame"] == 0 and "the new run's answer" in json.dumps(history_of(calls[-1]))
    assert "old run" not in json.dumps(history_of(calls[-1]))


def test_a_reply_from_an_ended_run_does_not_reach_the_next_run(cloud_step, calls):
    for index, flags in enumerate([START, 0, 0, END]):
        run(cloud_step, [frame(1, flags=flags, timestamp=1_000 + 100 * index)])
    ended_job = cloud_step.link.jobs[-1]
    assert ended_job.frame_id == 3  # the next run stays below frame 3 while this job is in flight
    cloud_step.link.outcome = "skipped_busy"  # the old job still holds the stream's slot
    for timestamp in (2_000, 2_100):
        run(cloud_step, [frame(1, flags=START if timestamp == 2_000 else 0, timestamp=timestamp)])
    cloud_step._on_cloud_reply(reply_for(ended_job, text="the ended run's answer"))
    (response,) = run(cloud_step, [frame(1, timestamp=2_200)])
    assert context(response)["context_frame"] is None
    assert cloud_step.store.snapshot(1).cloud_results == ()


def test_end_and_restart_cancel_the_streams_cloud_calls_before_the_new_runs_call(cloud_step, calls):
    run(cloud_step, [frame(1, flags=START), frame(2, flags=START)])
    assert cloud_step.link.cancelled == [1, 2]  # a start cancels whatever an earlier run left
    run(cloud_step, [frame(1, flags=START)])  # a restart: cancelled before its own frame is dispatched
    assert cloud_step.link.cancelled == [1, 2, 1] and len(cloud_step.link.jobs) == 3
    run(cloud_step, [frame(2, flags=END)])
    assert cloud_step.link.cancelled == [1, 2, 1, 2]
    # A cancelled call reports nothing back: its job, holding its frame, is forgotten at the cancel.
    assert {job.stream_id for job in cloud_step._dispatched} == {1}


def test_a_reply_after_end_does_not_revive_the_stream(cloud_step, calls):
    run(cloud_step, [frame(1, flags=START | END)])
    cloud_step._on_cloud_reply(reply_for(cloud_step.link.jobs[0]))
    assert not cloud_step.store.has_stream(1) and cloud_step._dispatched == {}


@pytest.mark.parametrize("outcome", ["sent", "skipped_busy", "skipped_down"])
def test_the_dispatch_outcome_is_reported(cloud_step, calls, outcome):
    cloud_step.link.outcome = outcome
    (response,) = run(cloud_step, [frame(1, flags=START)])
    assert context(response)["cloud_dispatch"] == outcome
    assert len(cloud_step._dispatched) == (1 if outcome == "sent" else 0), "only jobs in flight are tracked"


def test_a_cloud_error_forgets_the_job(cloud_step, calls):
    run(cloud_step, [frame(1, flags=START)])
    (job,) = cloud_step.link.jobs
    cloud_step._on_cloud_error(job, "timeout")
    assert cloud_step._dispatched == {}
    cloud_step._on_cloud_reply(reply_for(job))  # a reply after its error is not filed
    (response,) = run(cloud_step, [frame(1)])
    assert context(response)["context_frame"] is None


def test_the_cloud_state_is_reported(cloud_step, calls):
    cloud_step.link.state = CloudState.DOWN
    (response,) = run(cloud_step, [frame(1)])
    assert context(response)["cloud_state"] == "down"


def test_image_bytes_are_forwarded_to_the_cloud_as_sent(cloud_step, calls):
    png = _png(FRAME)
    run(cloud_step, [frame(1, flags=START, image=None, image_bytes=png), frame(2, flags=START)])
    by_stream = {job.stream_id: job for job in cloud_step.link.jobs}
    assert by_stream[1].image_bytes == png and by_stream[1].image is None
    assert by_stream[2].image_bytes is None and np.array_equal(by_stream[2].image, FRAME)
    assert np.array_equal(calls[0].inputs["IMAGE"][0], FRAME), "svlm gets the decoded frame"


def test_the_link_is_built_from_the_parameters(make_step, calls):
    step = make_step(
        cloud_url="cloud.test:8001",
        cloud_model="big_vlm",
        cloud_deadline_ms=2500,
        cloud_max_inflight=2,
        cloud_delay="300",
    )
    link = step.link
    assert link.url == "cloud.test:8001" and link.kwargs["model"] == "big_vlm"
    assert link.kwargs["deadline_s"] == 2.5 and link.kwargs["max_inflight"] == 2
    assert isinstance(link.kwargs["delay"], DelayInjector)
    assert link.kwargs["on_reply"] == step._on_cloud_reply
    run(step, [frame(1, cloud_delay="100+-50"), frame(2)])
    jobs = {job.stream_id: job for job in link.jobs}
    assert isinstance(jobs[1].delay, DelayInjector) and jobs[2].delay is None
    step.close()
    assert link.closed


def test_the_environment_overrides_the_cloud_url(make_step, monkeypatch):
    monkeypatch.setenv("SPOTVLM_CLOUD_URL", "off")
    assert make_step(cloud_url="cloud.test:8001").link is None


def test_any_parameter_can_come_from_the_environment(make_step, monkeypatch):
    monkeypatch.setenv("SPOTVLM_CLOUD_MAX_INFLIGHT", "12")
    monkeypatch.setenv("SPOTVLM_DEFAULT_MAX_TOKENS", "7")
    step = make_step(cloud_url="cloud.test:8001", default_max_tokens="24")
    assert step.link.kwargs["max_inflight"] == 12 and step.default_max_tokens == 7


def test_frames_and_cloud_counts_reach_the_metrics(cloud_step, calls):
    cloud_step.link.next_drain = {"sent": 2, "errors_by_kind": {"timeout": 1}, "rtt_ms": [120.0]}
    cloud_step.link.inflight = 1
    _with_cloud_answer(cloud_step, calls)
    run(cloud_step, [frame(1, timestamp=10_300)])
    metrics = cloud_step.metrics
    assert metrics.frames["no"].value() == 1 and metrics.frames["yes"].value() == 1
    assert metrics.context_age_ms.observations == [300.0]
    assert metrics.focus_applied["crop_and_frame"].value() == 1
    assert metrics.cloud_requests.value() == 2 and metrics.cloud_errors["timeout"].value() == 1
    assert metrics.cloud_rtt_ms.observations == [120.0] and metrics.cloud_inflight.value() == 1


# -- context ingest (INGEST input, routed here by correlation id) --------------------------------------------------


def test_an_ingested_result_is_used_by_the_next_frame(make_step, calls):
    step = make_step()
    run(step, [frame(1, flags=START, timestamp=5_000, prompt="Where is the dog?")])
    calls.clear()
    record = {
        "frame_id": 0,
        "text": "A brown dog runs across the lawn.",
        "detections": [{"bbox_2d": [40, 30, 80, 70], "label": "dog"}],
        "frame_size": [96, 128],
    }
    stored, other = run(step, [ingest(1, record), frame(2, flags=START)])
    assert context(stored) == {"stream_id": 1, "frame_id": 0, "stored": True}
    assert stored.output("CONTEXT").shape == (1, 1) and [c.correlation_id for c in calls] == [0]
    assert context(other)["frame_id"] == 0
    (response,) = run(step, [frame(1, timestamp=5_400, prompt="Where is the dog?")])
    ctx = context(response)
    assert ctx["context_frame"] == 0 and ctx["context_age_ms"] == 400 and ctx["focus_labels"] == ["dog"]
    assert calls[-1].model_name == "svlm_focus" and "A brown dog" in json.dumps(history_of(calls[-1]))


def test_an_ingested_result_for_an_unseen_frame_uses_its_own_timestamp(make_step, calls):
    step = make_step()
    run(step, [frame(1, flags=START, timestamp=5_000)])
    record = {"frame_id": 7, "text": "later", "detections": [], "frame_size": [96, 128], "frame_timestamp_ms": 4_000}
    run(step, [ingest(1, record)])
    (response,) = run(step, [frame(1, timestamp=5_500)])
    assert context(response)["context_frame"] == 7 and context(response)["context_age_ms"] == 1_500


# -- small pieces --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [(7, 7), ("12", 12), (2**63, 2**63)])
def test_read_stream_id(value, expected):
    assert read_stream_id(pb.FakeRequest({}, correlation=value)) == expected


@pytest.mark.parametrize(
    "value, message",
    [(0, "missing sequence id"), ("", "unsigned integer"), ("-3", "unsigned integer"), ("cam", "unsigned integer")],
)
def test_read_stream_id_rejects(value, message):
    with pytest.raises(InputError, match=message):
        read_stream_id(pb.FakeRequest({}, correlation=value))


def _prepared(prepare_ms: float) -> PreparedFrame:
    request = FrameRequest(
        stream_id=1,
        start=False,
        end=False,
        image=FRAME,
        image_bytes=None,
        image_tensor=None,
        prompt="q",
        timestamp_ms=0,
        max_tokens=4,
        focus=FocusMode.OFF,
        use_context=True,
        text_context=True,
        tracking=False,
        carry_answers=False,
        cloud_delay=None,
        received=time.perf_counter(),
    )
    history = ReplacedHistory(turns=[], replaced_turns=0, context_frame=None, context_age_ms=None)
    plan = FocusPlan(mode=FocusMode.OFF, box=None, images=[FRAME])
    return PreparedFrame(request, 0, "off", history, plan, "svlm", prepare_ms=prepare_ms)


@pytest.mark.parametrize(
    "svlm_ms, generate_ms, vision",
    [(50.0, 30.0, 20.0), (30.0, 30.0, 0.0), (10.0, 30.0, 0.0)],  # clocks of two processes: never negative
)
def test_latency_breakdown(svlm_ms, generate_ms, vision):
    latency = _latency(_prepared(1.234567), SvlmReply("a", generate_ms=generate_ms, svlm_ms=svlm_ms))
    assert latency.preprocess == 1.23 and latency.generate == generate_ms and latency.vision == vision
    assert latency.total >= 0.0


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), ("true", True), (" Yes ", True), ("on", True), ("1", True), (1, True)]
    + [("false", False), ("NO", False), ("off", False), ("0", False), (0, False), (None, True)],
)
def test_bool_parameter(value, expected):
    params = {} if value is None else {"use_context": value}
    assert bool_parameter(params, "use_context", True) is expected


@pytest.mark.parametrize("value", ["maybe", 2, 0.5, [], ""])
def test_bool_parameter_rejects(value):
    with pytest.raises(InputError, match="request parameter use_context must be a boolean"):
        bool_parameter({"use_context": value}, "use_context", True)


def test_history_json_round_trips():
    turns = [Turn("Was ist das?", "Ein Auto — rot."), Turn('say "hi"', "")]
    raw = history_json(turns)
    assert "—" in raw, "kept readable, not escaped"
    assert parse_history(raw) == turns and parse_history(raw.encode()) == turns
    assert parse_history("") == [] and parse_history(b"  ") == []


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{not json", "HISTORY is not valid JSON"),
        ('{"question": "q", "answer": "a"}', "HISTORY must be a JSON list"),
        (json.dumps([{"question": "q"}]), "HISTORY item 0 must be an object"),
        (json.dumps([{"question": "q", "answer": 3}]), "HISTORY item 0"),
        (json.dumps([{"question": "q", "answer": "a"}, "text"]), "HISTORY item 1"),
        (json.dumps([{"question": "q", "answer": "a"}] * (MAX_HISTORY_TURNS + 1)), "over the limit of 32"),
        (b"\xff\xfe", "HISTORY is not valid UTF-8"),
        (b"[" + b" " * 70_000 + b"]", "HISTORY is 70002 bytes, over the limit"),
    ],
)
def test_parse_history_rejects(raw, message):
    with pytest.raises(InputError, match=message):
        parse_history(raw)


@pytest.fixture(scope="module")
def tokenizer_budget(tiny_edge_checkpoint) -> TokenizerBudget:
    return TokenizerBudget.from_file(tiny_edge_checkpoint / "tokenizer.json")


def test_tokenizer_budget_counts_and_cuts_at_token_ends(tokenizer_budget):
    text = "The red car is parked next to the old oak tree near the station."
    total = tokenizer_budget.count(text)
    assert total > 5 and tokenizer_budget.count("") == 0
    assert tokenizer_budget.truncate(text, total) == text and tokenizer_budget.truncate(text, 0) == ""
    for limit in (1, 3, total - 1):
        cut = tokenizer_budget.truncate(text, limit)
        assert text.startswith(cut) and 0 < tokenizer_budget.count(cut) <= limit


def test_tokenizer_budget_remembers_counts_of_repeated_texts(tokenizer_budget):
    text = "A question every frame asks again."
    first = tokenizer_budget.count(text)
    hits = tokenizer_budget.count.cache_info().hits
    assert tokenizer_budget.count(text) == first and tokenizer_budget.count.cache_info().hits == hits + 1


def test_the_checkpoints_tokenizer_is_the_context_budget(make_step, tiny_edge_checkpoint, tmp_path):
    assert isinstance(make_step(checkpoint=tiny_edge_checkpoint).budget, TokenizerBudget)
    assert isinstance(make_step(checkpoint=tmp_path).budget, WordBudget), "no tokenizer.json: words"
    assert isinstance(make_step().budget, WordBudget)


# -- svlm_generate's inputs from spotvlm: HISTORY and FOCUS_FEATURES ---------------------------------------------


@pytest.fixture(scope="module")
def generate(tiny_edge_checkpoint) -> GenerateStep:
    return GenerateStep(_args({"checkpoint": tiny_edge_checkpoint, "default_max_tokens": 4}))


def _features(generate: GenerateStep, seed: int, tokens: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, tokens, generate.generator.hidden_size)).astype(np.float32)


def _generate_request(generate, focus=False, history=None, prompt="Where is the car?"):
    inputs = {"IMAGE_FEATURES": _features(generate, 1), "PROMPT": np.array([[prompt.encode()]], dtype=object)}
    if focus:
        inputs["FOCUS_FEATURES"] = _features(generate, 2)
    if history is not None:
        inputs["HISTORY"] = np.array([[history.encode()]], dtype=object)
    return pb.FakeRequest(inputs)


def test_focus_features_give_a_prompt_with_two_images(generate):
    tokenizer = generate.generator.tokenizer
    vision_start = tokenizer.convert_tokens_to_ids("<|vision_start|>")
    history = history_json([Turn("What was there?", "[cloud answer, frame 0, 0.5 s old] a red car")])
    prepared = generate._parse(_generate_request(generate, focus=True, history=history))
    assert len(prepared.grids) == 2 and len(prepared.features) == 2
    assert prepared.prompt_ids.count(vision_start) == 2
    assert np.array_equal(prepared.features[1], _features(generate, 2)[0]), "the crop comes second"
    prompt = tokenizer.decode(prepared.prompt_ids)
    assert prompt.index("a red car") < prompt.index("<|vision_start|>"), "history before the images"
    plain = generate._parse(_generate_request(generate))
    assert plain.prompt_ids.count(vision_start) == 1 and len(plain.grids) == 1


def test_bad_history_fails_alone_and_generate_ms_is_reported(generate):
    requests = [
        _generate_request(generate, focus=True, history=history_json([Turn("q", "a")])),
        _generate_request(generate, history="[{broken"),
        _generate_request(generate),
    ]
    good, bad, plain = generate.execute(requests)
    assert bad.error.code() == pb.TritonError.INVALID_ARG and "HISTORY is not valid JSON" in bad.error.message()
    for response in (good, plain):
        assert response.error is None and response.output("TOKEN_IDS").shape[0] == 1
        generate_ms = response.output("GENERATE_MS")
        assert generate_ms.dtype == np.float32 and generate_ms.shape == (1, 1) and generate_ms[0, 0] >= 0.0
    assert good.output("GENERATE_MS")[0, 0] == plain.output("GENERATE_MS")[0, 0], "one batch, one wall time"


def test_bad_focus_features_name_the_problem(generate):
    request = _generate_request(generate)
    request.inputs["FOCUS_FEATURES"] = _features(generate, 2, tokens=15)
    (response,) = generate.execute([request])
    assert response.error.code() == pb.TritonError.INVALID_ARG and "not a square grid" in response.error.message()


def test_a_server_without_custom_metrics_still_answers(make_step, calls, monkeypatch):
    monkeypatch.delattr(fake_pb_utils, "MetricFamily")
    step = make_step()
    assert step.metrics is None
    (response,) = run(step, [frame(1, flags=START)])
    assert text(response) == "svlm: Where is the car?"


def test_the_cloud_is_asked_the_question_through_the_configured_prompt(make_step, calls):
    step = make_step(cloud_url="cloud.test:8001", cloud_prompt="{question} Output the boxes in JSON.")
    run(step, [frame(1, prompt="Where is the car?", flags=START)])
    assert step.link.jobs[0].prompt == "Where is the car? Output the boxes in JSON."
    plain = make_step(cloud_url="cloud.test:8001")
    run(plain, [frame(1, prompt="Where is the car?", flags=START)])
    assert plain.link.jobs[0].prompt == "Where is the car?"


def test_a_cloud_prompt_without_the_question_is_refused(make_step):
    with pytest.raises(ValueError, match="cloud_prompt"):
        make_step(cloud_url="cloud.test:8001", cloud_prompt="Describe the frame.")
