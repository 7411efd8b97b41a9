"""Bad input to the public edge model `spotvlm` on a real edge tritonserver, over gRPC and HTTP.

Each bad request is sent together with good frames of other streams (async, so the sequence batcher may put them in
one batch), and gets INVALID_ARG with a message naming the problem, from Triton itself (dtype, shape, sequence id,
START) or from the model; every good neighbour is answered, and the server is live and ready after the table.
`svlm`'s bad input is covered in test_servers.py.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.frames import sample_frame
from python_backends.image_processing import encode_jpeg

pytestmark = pytest.mark.integration

MODEL = "spotvlm"
STATUS = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}
NEIGHBOURS = 3
QUESTION = "What is on the table?"
FRAME = np.ascontiguousarray(sample_frame("coffee")[:96, :128])
JPEG = encode_jpeg(FRAME)
# Stream ids of this module only: far from the small ids other tests use on the shared edge.
_stream_ids = itertools.count(3_000_000_001)


def text_tensor(value: str | bytes) -> np.ndarray:
    return np.array([[value.encode("utf-8") if isinstance(value, str) else value]], dtype=np.object_)


@dataclass
class Frame:
    """One request to spotvlm. Every stream here is whole in one frame (START and END), so none holds a sequence
    slot after the test."""

    inputs: dict[str, np.ndarray]
    sequence_id: int | str = field(default_factory=lambda: next(_stream_ids))
    start: bool = True
    end: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)


def good_frame(**parameters: Any) -> Frame:
    return Frame({"IMAGE": FRAME[None], "PROMPT": text_tensor(QUESTION)}, parameters={"max_tokens": 2, **parameters})


def bad_frame(drop: tuple[str, ...] = (), parameters: dict[str, Any] | None = None, **inputs: np.ndarray) -> Frame:
    """A good frame with some inputs replaced or dropped, or some request parameters changed."""
    frame = good_frame(**(parameters or {}))
    frame.inputs.update(inputs)
    for name in drop:
        del frame.inputs[name]
    return frame


class Edge:
    """A tritonclient for one protocol that sends frames together and returns each one's result or error."""

    def __init__(self, url: str, protocol: str) -> None:
        if protocol == "grpc":
            import tritonclient.grpc as module

            self.client = module.InferenceServerClient(url)
        else:
            import tritonclient.http as module

            self.client = module.InferenceServerClient(url, concurrency=NEIGHBOURS + 1, network_timeout=120)
        self.module, self.protocol = module, protocol

    def _inputs(self, frame: Frame) -> list:
        tensors = []
        for name, array in frame.inputs.items():
            tensor = self.module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    def _options(self, frame: Frame) -> dict[str, Any]:
        options = {
            "sequence_id": frame.sequence_id,
            "sequence_start": frame.start,
            "sequence_end": frame.end,
            "parameters": frame.parameters or None,
        }
        if self.protocol == "grpc":
            options["client_timeout"] = 120
        return options

    def send_together(self, frames: list[Frame]) -> list[Any]:
        """All frames in flight at once; each one's InferResult or InferenceServerException, in order."""
        if self.protocol == "http":
            handles = [self.client.async_infer(MODEL, self._inputs(f), **self._options(f)) for f in frames]
            results = []
            for handle in handles:
                try:
                    results.append(handle.get_result())
                except InferenceServerException as exc:
                    results.append(exc)
            return results
        results: list[Any] = [None] * len(frames)
        finished = threading.Semaphore(0)

        def done(index: int, result, error) -> None:
            results[index] = error if error is not None else result
            finished.release()

        for index, frame in enumerate(frames):
            self.client.async_infer(MODEL, self._inputs(frame), functools.partial(done, index), **self._options(frame))
        for _ in frames:
            assert finished.acquire(timeout=180), "a request got no answer"
        return results

    def send(self, frame: Frame) -> Any:
        return self.send_together([frame])[0]

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def pixel_limit(edge_server) -> int:
    """spotvlm's max_input_pixels, as the running server has it."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(edge_server.http_url)
    try:
        parameters = client.get_model_config(MODEL)["parameters"]
    finally:
        client.close()
    return int(parameters["max_input_pixels"]["string_value"])


@functools.cache
def _over_limit_shape(limit: int) -> tuple[int, int]:
    width = 4096
    return limit // width + 1, width


@functools.cache
def _over_limit_png(limit: int) -> bytes:
    # All black: a few tens of KB however many pixels, so only the decoder's size check can refuse it.
    buffer = io.BytesIO()
    Image.new("RGB", _over_limit_shape(limit)[::-1]).save(buffer, format="PNG")
    return buffer.getvalue()


def _ended_stream(edge: Edge, limit: int) -> Frame:
    """The stream's first and last frame is answered; its next frame, without START, is not."""
    first = good_frame()
    assert_answered(edge.send(first), first)
    return Frame(first.inputs, sequence_id=first.sequence_id, start=False, end=False, parameters=first.parameters)


@dataclass(frozen=True)
class Case:
    make: Callable[[Edge, int], Frame]  # (client, pixel limit) -> the bad frame; may send setup frames first
    words: str  # the error message contains these


CASES: dict[str, Case] = {
    # Triton checks dtype and shape against the config before the model sees the request.
    "wrong dtype": Case(
        lambda e, n: bad_frame(IMAGE=FRAME[None].astype(np.float32)),
        "inference input 'IMAGE' data-type is 'FP32', but model 'spotvlm' expects 'UINT8'",
    ),
    "wrong rank": Case(
        lambda e, n: bad_frame(IMAGE=FRAME[None, ..., 0]), "unexpected shape for input 'IMAGE' for model 'spotvlm'"
    ),
    "zero-size image": Case(
        lambda e, n: bad_frame(IMAGE=np.zeros((1, 0, 0, 3), np.uint8)), "IMAGE is empty: shape [0, 0, 3]"
    ),
    "IMAGE over max_input_pixels": Case(
        lambda e, n: bad_frame(IMAGE=np.zeros((1, *_over_limit_shape(n), 3), np.uint8)),
        "pixels, over the limit of",
    ),
    "IMAGE_BYTES over max_input_pixels": Case(
        lambda e, n: bad_frame(drop=("IMAGE",), IMAGE_BYTES=text_tensor(_over_limit_png(n))),
        "IMAGE_BYTES decodes to",
    ),
    "IMAGE_BYTES not an image": Case(
        lambda e, n: bad_frame(drop=("IMAGE",), IMAGE_BYTES=text_tensor(b"hello, world")),
        "IMAGE_BYTES is not a decodable JPEG/PNG image",
    ),
    "truncated JPEG": Case(
        lambda e, n: bad_frame(drop=("IMAGE",), IMAGE_BYTES=text_tensor(JPEG[: len(JPEG) // 2])),
        "image file is truncated",
    ),
    "IMAGE and IMAGE_BYTES": Case(
        lambda e, n: bad_frame(IMAGE_BYTES=text_tensor(JPEG)), "give either IMAGE_BYTES or IMAGE, not both"
    ),
    "neither IMAGE nor IMAGE_BYTES": Case(lambda e, n: bad_frame(drop=("IMAGE",)), "missing image"),
    "empty prompt": Case(lambda e, n: bad_frame(PROMPT=text_tensor(" ")), "PROMPT is empty"),
    "missing PROMPT": Case(lambda e, n: bad_frame(drop=("PROMPT",)), "missing input tensor PROMPT"),
    "prompt over the character limit": Case(
        lambda e, n: bad_frame(PROMPT=text_tensor("x" * 8193)), "PROMPT has 8193 characters, over the limit of 8192"
    ),
    "prompt over the token limit": Case(
        lambda e, n: bad_frame(PROMPT=text_tensor("🚗" * 2000)), "tokens, over the limit of"
    ),
    "invalid UTF-8": Case(lambda e, n: bad_frame(PROMPT=text_tensor(b"\xff\xfe what?")), "PROMPT is not valid UTF-8"),
    "prompt with the image placeholder": Case(
        lambda e, n: bad_frame(PROMPT=text_tensor("<|image_pad|> what?")), "PROMPT must not contain <|image_pad|>"
    ),
    # Triton refuses a sequence model's request without an id; a string id reaches the model.
    "missing sequence id": Case(
        lambda e, n: Frame(good_frame().inputs, sequence_id=0),
        "must specify a non-zero or non-empty correlation ID",
    ),
    "sequence id not a number": Case(
        lambda e, n: Frame(good_frame().inputs, sequence_id="cam-1"), "sequence id must be an unsigned integer"
    ),
    "frame of an ended stream": Case(_ended_stream, "must specify the START flag"),
    "two frames in one request": Case(
        lambda e, n: bad_frame(IMAGE=np.stack([FRAME, FRAME]), PROMPT=np.concatenate([text_tensor("a")] * 2)),
        "must specify batch-size 1",
    ),
    "negative max_tokens": Case(
        lambda e, n: bad_frame(parameters={"max_tokens": -3}), "max_tokens must be >= 1, got -3"
    ),
    # spotvlm takes max_tokens as a request parameter only.
    "MAX_TOKENS tensor": Case(
        lambda e, n: bad_frame(MAX_TOKENS=np.array([[-1]], np.int32)), "unexpected inference input 'MAX_TOKENS'"
    ),
    "unknown focus mode": Case(
        lambda e, n: bad_frame(parameters={"focus": "sideways"}),
        "focus must be one of auto, off, crop_only, crop_and_frame; got 'sideways'",
    ),
    "unknown cloud_delay spec": Case(
        lambda e, n: bad_frame(parameters={"cloud_delay": "soon"}), "request parameter cloud_delay: delay spec 'soon'"
    ),
    "use_context not a bool": Case(
        lambda e, n: bad_frame(parameters={"use_context": "maybe"}), "use_context must be a boolean, got 'maybe'"
    ),
    "text_context not a bool": Case(
        lambda e, n: bad_frame(parameters={"text_context": "maybe"}), "text_context must be a boolean, got 'maybe'"
    ),
}


@pytest.fixture(scope="module", params=["grpc", "http"])
def edge(request, edge_server):
    client = Edge(edge_server.url(request.param), request.param)
    yield client
    client.close()


def assert_answered(result: Any, frame: Frame) -> None:
    assert not isinstance(result, InferenceServerException), f"good frame refused: {result.message()}"
    assert result.as_numpy("TEXT").reshape(-1)[0].decode("utf-8").strip()
    context = json.loads(result.as_numpy("CONTEXT").reshape(-1)[0])
    assert context["stream_id"] == frame.sequence_id


@pytest.mark.parametrize("case", list(CASES))
def test_bad_frame_gets_invalid_arg_and_its_neighbours_answers(edge, pixel_limit, case):
    bad = CASES[case].make(edge, pixel_limit)
    goods = [good_frame() for _ in range(NEIGHBOURS)]
    frames = [goods[0], bad, *goods[1:]]
    results = edge.send_together(frames)
    refused = results[1]
    assert isinstance(refused, InferenceServerException), f"{case}: answered, not refused"
    assert str(refused.status()) == STATUS[edge.protocol], (refused.status(), refused.message())
    assert CASES[case].words in refused.message(), refused.message()
    for frame, result in zip(frames, results, strict=True):
        if frame is not bad:
            assert_answered(result, frame)


def test_the_server_is_healthy_after_the_table(edge):
    # Module-scoped `edge` runs the whole table for one protocol before this test.
    assert edge.client.is_server_live() and edge.client.is_server_ready()
    assert edge.client.is_model_ready(MODEL)
    frame = good_frame()
    assert_answered(edge.send(frame), frame)
