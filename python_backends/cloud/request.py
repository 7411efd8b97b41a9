"""One cloud request: the job, the reply, the error kinds, the JPEG and the gRPC request to the cloud's `lvlm`.

A job asks one or more questions of one frame (the stream's standing questions): they travel as one request, PROMPT
holding every prompt, and `lvlm` answers all of them on that frame, TEXT and DETECTIONS holding one answer per prompt.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from python_backends.cloud.delay import DelayInjector
from python_backends.detections import Detection, detections_from_json
from python_backends.image_processing import encode_jpeg

ERROR_KINDS = ("timeout", "unavailable", "server", "bad_reply", "client")


@dataclass(frozen=True, eq=False)
class CloudJob:
    """One frame for the cloud. Give exactly one of `image` (UINT8 [H, W, 3] RGB) or `image_bytes` (JPEG/PNG).
    `prompt` is the frame's own question; `other_prompts` the stream's other standing questions, asked of the same
    frame in the same request."""

    stream_id: int
    frame_id: int
    frame_timestamp_ms: int
    prompt: str
    max_tokens: int
    image: np.ndarray | None = None
    image_bytes: bytes | None = None
    delay: DelayInjector | None = None  # overrides the link's injected delay for this job
    other_prompts: tuple[str, ...] = ()

    @property
    def prompts(self) -> tuple[str, ...]:
        """Every prompt of the request, the frame's own first."""
        return (self.prompt, *self.other_prompts)

    def __post_init__(self) -> None:
        # Checked here, on the caller's thread, so a bad job fails where it was made, not later in the loop.
        if not isinstance(self.other_prompts, tuple):
            raise ValueError(f"CloudJob.other_prompts must be a tuple, got {type(self.other_prompts).__name__}")
        for index, prompt in enumerate(self.prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"CloudJob prompt {index} is empty or not text: {prompt!r}")
        if (self.image is None) == (self.image_bytes is None):
            raise ValueError("CloudJob needs exactly one of image or image_bytes")
        if self.image is not None:
            image = self.image
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                shape = getattr(image, "shape", None)
                raise ValueError(f"CloudJob.image must be UINT8 [H, W, 3], got {getattr(image, 'dtype', None)} {shape}")
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise ValueError(f"CloudJob.image is empty: {image.shape}")
        elif not self.image_bytes:
            raise ValueError("CloudJob.image_bytes is empty")


@dataclass(frozen=True)
class PromptAnswer:
    """The LVLM's answer to one prompt of a request."""

    text: str
    detections: tuple[Detection, ...]  # in pixels of the image sent


@dataclass(frozen=True)
class CloudReply:
    job: CloudJob
    text: str  # the answer to job.prompt
    detections: tuple[Detection, ...]  # in pixels of the image sent, i.e. of `frame_size`
    frame_size: tuple[int, int]  # (h, w) of the image sent, after any max_side downscale
    sent_s: float
    arrived_s: float
    endpoint: str = ""  # the cloud endpoint that answered
    attempt_s: float | None = None  # when the call that answered went out (after any retries); None: at sent_s
    other_answers: tuple[PromptAnswer, ...] = ()  # the answers to job.other_prompts, in their order

    @property
    def answers(self) -> tuple[PromptAnswer, ...]:
        """One answer per prompt of the job, in the job's order."""
        return (PromptAnswer(self.text, self.detections), *self.other_answers)

    @property
    def rtt_ms(self) -> float:
        return (self.arrived_s - self.sent_s) * 1000.0


class CloudCallError(Exception):
    """A failed cloud call, with its kind (one of ERROR_KINDS)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def classify_error(exc: BaseException) -> str:
    """Maps an exception from a cloud call to an error kind."""
    if isinstance(exc, CloudCallError):
        return exc.kind
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    status = ""
    status_fn = getattr(exc, "status", None)
    if callable(status_fn):  # tritonclient's InferenceServerException: status() is "StatusCode.UNAVAILABLE" etc.
        try:
            status = str(status_fn() or "")
        except Exception:
            status = ""
    code_fn = getattr(exc, "code", None)
    if not status and callable(code_fn):  # a raw grpc.aio.AioRpcError
        try:
            status = str(code_fn() or "")
        except Exception:
            status = ""
    message = str(exc).lower()
    if "DEADLINE_EXCEEDED" in status or "deadline exceeded" in message:
        return "timeout"
    if (
        "UNAVAILABLE" in status
        or isinstance(exc, ConnectionError)
        or "connection refused" in message
        or "failed to connect" in message
    ):
        return "unavailable"
    if status or type(exc).__name__ in ("InferenceServerException", "AioRpcError"):
        return "server"
    return "client"


def _resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    longer = max(height, width)
    if max_side <= 0 or longer <= max_side:
        return image
    scale = max_side / longer
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def encode_frame(image: np.ndarray, quality: int, max_side: int) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes of the frame, downscaled so its longer side is at most `max_side` (0 = full size), and its (h, w)."""
    sent = _resize_max_side(image, max_side)
    return encode_jpeg(np.ascontiguousarray(sent), quality=quality), (int(sent.shape[0]), int(sent.shape[1]))


def image_bytes_size(data: bytes) -> tuple[int, int]:
    """(h, w) of an encoded image; PIL reads only the header here."""
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
    return height, width


def _texts(result: Any, name: str, count: int) -> list[str]:
    """The `count` texts of a [1, count] (or [count]) BYTES output."""
    array = result.as_numpy(name)
    if array is None:
        raise CloudCallError("bad_reply", f"reply has no {name} output")
    flat = np.asarray(array).reshape(-1)
    if flat.size != count:
        raise CloudCallError("bad_reply", f"reply's {name} holds {flat.size} answers for {count} prompts")
    texts = []
    for value in flat:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CloudCallError("bad_reply", f"reply's {name} is not UTF-8: {exc}") from exc
        texts.append(str(value))
    return texts


def parse_answers(result: Any, count: int) -> list[PromptAnswer]:
    """The answers to a request of `count` prompts: TEXT and DETECTIONS, one per prompt."""
    answers = []
    for text, raw in zip(_texts(result, "TEXT", count), _texts(result, "DETECTIONS", count), strict=True):
        try:
            detections = tuple(detections_from_json(raw))
        except (ValueError, TypeError) as exc:
            raise CloudCallError("bad_reply", f"DETECTIONS is not a detection list: {exc}") from exc
        answers.append(PromptAnswer(text, detections))
    return answers


# gRPC's reconnect backoff to a cloud that went away, capped at about the breaker's retry interval. gRPC's default
# grows to 120 s, and while it waits every call fails at once without trying: the edge would stay down for up to two
# minutes after the cloud is back.
RECONNECT_BACKOFF_MS = 1000


def cloud_channel_args() -> list[tuple[str, int]]:
    """tritonclient's default channel options (passing any replaces them all), plus a short reconnect backoff and a
    subchannel pool of the channel's own: channels to one address share a process-wide subchannel by default, with its
    backoff, so the client recreated after an unavailable streak would inherit the old one's wait."""
    from tritonclient.grpc import KeepAliveOptions

    keepalive = KeepAliveOptions()
    max_message = 2**31 - 1  # tritonclient's MAX_GRPC_MESSAGE_SIZE
    return [
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_receive_message_length", max_message),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS // 2),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    ]


def _default_client_factory(url: str) -> Any:
    import tritonclient.grpc.aio as grpcclient

    return grpcclient.InferenceServerClient(url, channel_args=cloud_channel_args())


def _build_request(job: CloudJob, jpeg: bytes) -> tuple[list, list]:
    import tritonclient.grpc as grpcclient

    # lvlm has max_batch_size > 0: every input carries a leading batch dim of 1.
    image = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[jpeg]], dtype=np.object_))
    # Every prompt in one request, [1, n]: lvlm encodes the image once and answers them together.
    prompts = job.prompts
    prompt = grpcclient.InferInput("PROMPT", [1, len(prompts)], "BYTES")
    prompt.set_data_from_numpy(np.array([[p.encode("utf-8") for p in prompts]], dtype=np.object_))
    inputs = [image, prompt]
    if job.max_tokens and job.max_tokens > 0:
        max_tokens = grpcclient.InferInput("MAX_TOKENS", [1, 1], "INT32")
        max_tokens.set_data_from_numpy(np.array([[job.max_tokens]], dtype=np.int32))
        inputs.append(max_tokens)
    outputs = [grpcclient.InferRequestedOutput("TEXT"), grpcclient.InferRequestedOutput("DETECTIONS")]
    return inputs, outputs
