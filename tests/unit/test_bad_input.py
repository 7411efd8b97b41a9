"""Bad input to the public edge model `spotvlm`, in process (fake pb_utils): every bad request gets INVALID_ARG with
a message that names the problem, and the good requests around it in the same batch are answered.

The table covers what a client can get wrong; hypothesis then fuzzes images, prompts, parameters and sequence ids
and checks that nothing a client sends gives anything but INVALID_ARG or an answer, never an internal error. What
Triton itself refuses before the model (a wrong dtype or rank for the config's dims, no sequence id, a frame after
END) is covered against a real server in tests/integration/test_bad_input.py.
"""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from python_backends.image_processing import encode_jpeg
from python_backends.prompts import FEATURE_PLACEHOLDERS, MAX_PROMPT_BYTES, Turn, build_chat_prompt
from python_backends.serving.request_fields import MAX_PROMPT_CHARS
from tests.unit import fake_pb_utils
from tests.unit import test_spotvlm_step as spotvlm_tests
from tests.unit.test_spotvlm_step import END, FRAME, START, _png, context, frame, pb, run, text

# test_spotvlm_step's fixtures: `make_step` builds a SpotVLMStep with the cloud off, `calls` has svlm answer
# "svlm: <prompt>" over BLS and records the calls.
make_step = spotvlm_tests.make_step
calls = spotvlm_tests.calls

MAX_PIXELS = 128 * 128  # FRAME (96 x 128) fits, 129 x 128 does not
MAX_PROMPT_TOKENS = 64  # the unit steps count words (no tokenizer in their config)
STEP_PARAMS = {"max_input_pixels": MAX_PIXELS, "max_prompt_tokens": MAX_PROMPT_TOKENS}
BAD_STREAM = 5
JPEG = encode_jpeg(FRAME)


def _progressive_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(FRAME).save(buffer, format="JPEG", progressive=True)
    return buffer.getvalue()


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(FRAME).save(buffer, format="GIF")
    return buffer.getvalue()


def bad_frame(**kwargs) -> fake_pb_utils.FakeRequest:
    """A frame of stream BAD_STREAM, starting it, with `frame`'s keywords."""
    kwargs.setdefault("flags", START)
    return frame(BAD_STREAM, **kwargs)


def with_inputs(drop: tuple[str, ...] = (), **inputs: np.ndarray) -> fake_pb_utils.FakeRequest:
    """A good frame with some input tensors replaced (given raw, batch dim included) or dropped."""
    request = bad_frame()
    request.inputs.update(inputs)
    for name in drop:
        del request.inputs[name]
    return request


def image_bytes(data: bytes) -> fake_pb_utils.FakeRequest:
    return bad_frame(image=None, image_bytes=data)


def prompt_bytes(raw: bytes) -> fake_pb_utils.FakeRequest:
    return with_inputs(PROMPT=np.array([[raw]], dtype=object))


@dataclass(frozen=True)
class Case:
    make: Callable[[], fake_pb_utils.FakeRequest]
    words: str  # the message must contain these


BAD: dict[str, Case] = {
    # IMAGE
    "wrong dtype": Case(lambda: bad_frame(image=FRAME.astype(np.float32)), "IMAGE must be UINT8, got float32"),
    "wrong rank: no channel axis": Case(lambda: bad_frame(image=FRAME[..., 0]), "IMAGE must have shape [H, W, 3]"),
    "wrong rank: no batch dim": Case(lambda: with_inputs(IMAGE=FRAME), "IMAGE must have a batch dimension of 1"),
    "four channels": Case(lambda: bad_frame(image=np.zeros((8, 8, 4), np.uint8)), "got [8, 8, 4]"),
    "zero-size image": Case(lambda: bad_frame(image=np.zeros((0, 0, 3), np.uint8)), "IMAGE is empty: shape [0, 0, 3]"),
    "zero-width image": Case(lambda: bad_frame(image=np.zeros((4, 0, 3), np.uint8)), "IMAGE is empty"),
    "IMAGE over max_input_pixels": Case(
        lambda: bad_frame(image=np.zeros((129, 128, 3), np.uint8)),
        f"IMAGE has 129x128 = 16512 pixels, over the limit of {MAX_PIXELS}",
    ),
    "IMAGE_BYTES over max_input_pixels": Case(
        lambda: image_bytes(_png(np.zeros((129, 128, 3), np.uint8))),
        f"IMAGE_BYTES decodes to 129x128 pixels, over the limit of {MAX_PIXELS}",
    ),
    "image too thin": Case(lambda: bad_frame(image=np.zeros((1, 201, 3), np.uint8)), "aspect ratio 1x201"),
    # IMAGE_BYTES
    "IMAGE_BYTES not an image": Case(lambda: image_bytes(b"hello, world"), "not a decodable JPEG/PNG image"),
    "IMAGE_BYTES empty": Case(lambda: image_bytes(b""), "IMAGE_BYTES is empty"),
    "IMAGE_BYTES a GIF": Case(lambda: image_bytes(_gif()), "not a decodable JPEG/PNG image"),
    "truncated JPEG": Case(lambda: image_bytes(JPEG[:-300]), "image file is truncated"),
    "JPEG without its end marker": Case(lambda: image_bytes(JPEG[:-2]), "image file is truncated"),
    "truncated progressive JPEG": Case(lambda: image_bytes(_progressive_jpeg()[:-500]), "image file is truncated"),
    "JPEG header cut short": Case(lambda: image_bytes(JPEG[:20]), "cut-short header"),
    "truncated PNG": Case(lambda: image_bytes(_png(FRAME)[:5000]), "not a decodable JPEG/PNG image"),
    "IMAGE and IMAGE_BYTES": Case(lambda: bad_frame(image_bytes=JPEG), "give either IMAGE_BYTES or IMAGE, not both"),
    "neither IMAGE nor IMAGE_BYTES": Case(lambda: bad_frame(image=None), "missing image"),
    # PROMPT
    "empty prompt": Case(lambda: bad_frame(prompt=""), "PROMPT is empty"),
    "blank prompt": Case(lambda: bad_frame(prompt=" \n\t "), "PROMPT is empty"),
    "prompt over the character limit": Case(
        lambda: bad_frame(prompt="x" * (MAX_PROMPT_CHARS + 1)),
        f"PROMPT has {MAX_PROMPT_CHARS + 1} characters, over the limit of {MAX_PROMPT_CHARS}",
    ),
    "prompt over the byte limit": Case(
        lambda: bad_frame(prompt="é" * (MAX_PROMPT_BYTES // 2 + 1)),
        f"PROMPT is {MAX_PROMPT_BYTES + 2} bytes, over the limit of {MAX_PROMPT_BYTES}",
    ),
    "prompt over the token limit": Case(
        lambda: bad_frame(prompt="word " * (MAX_PROMPT_TOKENS + 1)),
        f"PROMPT is {MAX_PROMPT_TOKENS + 1} tokens, over the limit of {MAX_PROMPT_TOKENS}",
    ),
    "invalid UTF-8": Case(lambda: prompt_bytes(b"\xff\xfe what?"), "PROMPT is not valid UTF-8"),
    "UTF-8 cut inside a character": Case(lambda: prompt_bytes("café".encode()[:-1]), "PROMPT is not valid UTF-8"),
    "prompt with the image placeholder": Case(
        lambda: bad_frame(prompt="<|image_pad|> what is this?"), "PROMPT must not contain <|image_pad|>"
    ),
    "missing PROMPT": Case(lambda: with_inputs(drop=("PROMPT",)), "missing input tensor PROMPT"),
    "two prompts": Case(
        lambda: with_inputs(PROMPT=np.array([[b"a", b"b"]], dtype=object)), "PROMPT must hold exactly one value"
    ),
    # the sequence id (Triton refuses 0 itself; a string id reaches the model)
    "missing sequence id": Case(lambda: frame(0, flags=START), "missing sequence id"),
    "sequence id not a number": Case(lambda: frame("cam-1", flags=START), "sequence id must be an unsigned integer"),
    "sequence id a superscript digit": Case(lambda: frame("²", flags=START), "sequence id must be an unsigned integer"),
    "sequence id over 64 bits": Case(lambda: frame(str(2**64), flags=START), "below 2**64"),
    # max_tokens
    "negative max_tokens parameter": Case(lambda: bad_frame(max_tokens=-3), "max_tokens must be >= 1, got -3"),
    "negative MAX_TOKENS tensor": Case(
        lambda: with_inputs(MAX_TOKENS=np.array([[-1]], np.int32)), "max_tokens must be >= 1, got -1"
    ),
    "max_tokens not an integer": Case(
        lambda: bad_frame(max_tokens="lots"), "request parameter max_tokens must be an integer, got 'lots'"
    ),
    "max_tokens a fraction": Case(lambda: bad_frame(max_tokens=2.5), "max_tokens must be an integer, got 2.5"),
    "max_tokens over the limit": Case(
        lambda: bad_frame(max_tokens=10_000), "max_tokens 10000 is over the limit of 256"
    ),
    # other request parameters
    "unknown focus mode": Case(
        lambda: bad_frame(focus="sideways"), "focus must be one of auto, off, crop_only, crop_and_frame; got 'sideways'"
    ),
    "unknown cloud_delay spec": Case(
        lambda: bad_frame(cloud_delay="soon"), "request parameter cloud_delay: delay spec 'soon'"
    ),
    "cloud_delay trace file": Case(
        lambda: bad_frame(cloud_delay="trace:/etc/passwd"), "trace: specs are accepted only in the model config"
    ),
    "infinite cloud_delay": Case(lambda: bad_frame(cloud_delay="inf"), "must be a finite number >= 0"),
    "negative cloud_delay": Case(lambda: bad_frame(cloud_delay="-5"), "must be a finite number >= 0"),
    "cloud_delay bounds reversed": Case(lambda: bad_frame(cloud_delay="uniform:3:1"), "low bound 3 is over"),
    "use_context not a bool": Case(
        lambda: bad_frame(use_context="maybe"), "request parameter use_context must be a boolean, got 'maybe'"
    ),
    "use_context a number": Case(lambda: bad_frame(use_context=7), "use_context must be a boolean, got 7"),
    "text_context not a bool": Case(
        lambda: bad_frame(text_context="maybe"), "request parameter text_context must be a boolean, got 'maybe'"
    ),
    # TIMESTAMP_MS
    "two timestamps": Case(
        lambda: with_inputs(TIMESTAMP_MS=np.array([[1, 2]], np.int64)), "TIMESTAMP_MS must hold exactly one value"
    ),
}


@pytest.fixture
def step(make_step):
    return make_step(**STEP_PARAMS)


def neighbours(first: int = 1) -> tuple[fake_pb_utils.FakeRequest, fake_pb_utils.FakeRequest]:
    return frame(first, flags=START), frame(first + 1, flags=START, prompt="Any people?")


def assert_answered(response, stream: int, prompt: str) -> None:
    assert text(response) == f"svlm: {prompt}"
    assert context(response)["stream_id"] == stream


def assert_refused(response, words: str) -> None:
    assert response.error is not None, "expected INVALID_ARG, got an answer"
    message = response.error.message()
    assert response.error.code() == pb.TritonError.INVALID_ARG, message
    assert words in message, message
    assert response.output_tensors == []


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_gets_invalid_arg_naming_the_problem_between_good_ones(step, calls, case):
    before, after = neighbours()
    first, bad, last = run(step, [before, BAD[case].make(), after])
    assert_refused(bad, BAD[case].words)
    assert_answered(first, 1, "Where is the car?")
    assert_answered(last, 2, "Any people?")
    assert [c.model_name for c in calls] == ["svlm", "svlm"], "the bad request never reaches svlm"


@pytest.mark.parametrize("case", ["negative max_tokens parameter", "truncated JPEG", "unknown focus mode"])
def test_a_bad_last_frame_is_refused_and_ends_its_stream(step, calls, case):
    run(step, [frame(BAD_STREAM, flags=START)])
    request = BAD[case].make()
    request.sequence_flags = END
    (bad,) = run(step, [request])
    assert_refused(bad, BAD[case].words)
    assert not step.store.has_stream(BAD_STREAM)


def test_the_step_still_answers_after_the_whole_table(step, calls):
    responses = run(step, [BAD[case].make() for case in BAD] + [frame(9, flags=START | END)])
    for case, response in zip(BAD, responses[:-1], strict=True):
        assert_refused(response, BAD[case].words)
    assert_answered(responses[-1], 9, "Where is the car?")


def test_a_placeholder_in_the_history_adds_no_image_slot():
    # History also holds LVLM answers and texts from context_ingest, which no PROMPT check saw; one image slot more
    # than the features sent fails generation for every later frame of the stream.
    history = [Turn("q <|image_pad|>", "a <|video_pad|><|image_pad|>")]
    prompt = build_chat_prompt("What now?", [4], history=history)
    assert prompt.count("<|image_pad|>") == 4 and "<|video_pad|>" not in prompt
    assert "q <|im_end|>" in prompt and "a <|im_end|>" in prompt


# -- fuzzing -----------------------------------------------------------------------------------------------------------

# Each example builds its own step, so no state carries over from one example to the next.
FUZZ = settings(
    max_examples=150,
    deadline=None,  # a shared 2-core machine: timing is not what these tests check
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def around(step, request) -> fake_pb_utils.InferenceResponse:
    """Sends `request` between two good frames of whole streams; checks they are answered; returns its response."""
    before = frame(1, flags=START | END)
    after = frame(2, flags=START | END, prompt="Any people?")
    first, response, last = asyncio.run(step.execute([before, request, after]))
    assert_answered(first, 1, "Where is the car?")
    assert_answered(last, 2, "Any people?")
    return response


def refused_or_answered(response, subject: str) -> bool:
    """True when answered (TEXT and CONTEXT), False when refused with INVALID_ARG naming `subject`; else fails."""
    if response.error is None:
        assert {t.name for t in response.output_tensors} == {"TEXT", "CONTEXT"}
        return True
    assert_refused(response, subject)
    return False


def _mutate(seed: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    return bytes(data[: max(1, cut % len(data))] if cut is not None else data)


IMAGE_SEEDS = [JPEG, _progressive_jpeg(), _png(FRAME[:32, :48]), _gif()]
any_image_bytes = st.one_of(
    st.binary(max_size=256),
    st.builds(
        _mutate,
        st.sampled_from(IMAGE_SEEDS),
        st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=6),
        st.none() | st.integers(1, 2**20),
    ),
)


@FUZZ
@given(data=any_image_bytes)
def test_any_image_bytes_get_an_answer_or_invalid_arg(make_step, calls, data):
    response = around(make_step(**STEP_PARAMS), image_bytes(data))
    refused_or_answered(response, "IMAGE_BYTES")


@FUZZ
@given(seed=st.sampled_from([JPEG, _progressive_jpeg()]), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_every_strict_prefix_of_a_jpeg_is_refused(make_step, calls, seed, fraction):
    cut = int(len(seed) * fraction)
    response = around(make_step(**STEP_PARAMS), image_bytes(seed[:cut]))
    assert_refused(response, "IMAGE_BYTES")


def _prompt_is_valid(raw: bytes) -> bool:
    if len(raw) > MAX_PROMPT_BYTES:
        return False
    try:
        prompt = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return (
        bool(prompt.strip())
        and len(prompt) <= MAX_PROMPT_CHARS
        and len(prompt.split()) <= MAX_PROMPT_TOKENS
        and not any(p in prompt for p in FEATURE_PLACEHOLDERS)
    )


any_prompt = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    st.builds(lambda piece, n: piece * n, st.binary(min_size=1, max_size=3), st.integers(0, 9000)),
    st.builds(
        lambda a, p, b: (a + p + b).encode(),
        st.text(max_size=8),
        st.sampled_from(FEATURE_PLACEHOLDERS),
        st.text(max_size=8),
    ),
)


@FUZZ
@given(raw=any_prompt)
def test_any_prompt_bytes_get_an_answer_exactly_when_valid(make_step, calls, raw):
    response = around(make_step(**STEP_PARAMS), prompt_bytes(raw))
    assert refused_or_answered(response, "PROMPT") == _prompt_is_valid(raw)
    if response.error is None:
        assert text(response) == f"svlm: {raw.decode()}"


DTYPES = [np.uint8, np.int8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]


def _image_is_valid(shape: tuple[int, ...], dtype) -> bool:
    if dtype != np.uint8 or len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        return False
    height, width = shape[1:3]
    return 0 < height * width <= MAX_PIXELS and max(height, width) <= 200 * min(height, width)


@FUZZ
@given(
    shape=st.lists(st.sampled_from([0, 1, 2, 3, 4, 127, 128, 129, 201]), max_size=5).filter(
        lambda s: math.prod(s) <= 2_000_000
    ),
    dtype=st.sampled_from(DTYPES),
)
def test_any_image_shape_and_dtype_get_an_answer_exactly_when_valid(make_step, calls, shape, dtype):
    response = around(make_step(**STEP_PARAMS), with_inputs(IMAGE=np.zeros(shape, dtype)))
    assert refused_or_answered(response, "IMAGE") == _image_is_valid(tuple(shape), dtype), (shape, dtype)


PARAMETER_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
    st.sampled_from(
        ["auto", "off", "crop_only", "crop_and_frame", "true", "0", "1500", "10+-5", "uniform:1:2", "trace:/dev/zero"]
    ),
)
PARAMETER_NAMES = ("max_tokens", "focus", "use_context", "text_context", "cloud_delay")


@FUZZ
@given(params=st.dictionaries(st.sampled_from([*PARAMETER_NAMES, "something_else"]), PARAMETER_VALUES, max_size=4))
def test_any_request_parameters_get_an_answer_or_invalid_arg_naming_one(make_step, calls, params):
    response = around(make_step(**STEP_PARAMS), frame(BAD_STREAM, flags=START | END, **params))
    if response.error is not None:
        assert_refused(response, "")
        assert any(name in response.error.message() for name in PARAMETER_NAMES), response.error.message()


def _stream_id_is_valid(sequence_id: int | str) -> bool:
    if isinstance(sequence_id, str):
        if not (sequence_id.isascii() and sequence_id.isdigit()) or len(sequence_id) > 20:
            return False
        sequence_id = int(sequence_id)
    return 0 < sequence_id < 2**64


@FUZZ
@given(
    sequence_id=st.one_of(
        st.integers(0, 2**64 - 1),
        st.text(max_size=24),
        st.from_regex(r"[0-9]{1,22}", fullmatch=True),
    )
)
def test_any_sequence_id_gets_an_answer_exactly_when_it_is_a_stream_id(make_step, calls, sequence_id):
    response = around(make_step(**STEP_PARAMS), frame(sequence_id, flags=START | END))
    assert refused_or_answered(response, "sequence id") == _stream_id_is_valid(sequence_id), repr(sequence_id)


@FUZZ
@given(layout=st.lists(st.none() | st.sampled_from(sorted(BAD)), min_size=1, max_size=8))
def test_any_mix_of_good_and_bad_requests_answers_each_in_place(make_step, calls, layout):
    step = make_step(**STEP_PARAMS)
    requests = [
        frame(100 + i, flags=START | END, prompt=f"question {i}?") if case is None else BAD[case].make()
        for i, case in enumerate(layout)
    ]
    responses = asyncio.run(step.execute(requests))
    assert len(responses) == len(requests)
    for i, (case, response) in enumerate(zip(layout, responses, strict=True)):
        if case is None:
            assert_answered(response, 100 + i, f"question {i}?")
        else:
            assert_refused(response, BAD[case].words)
