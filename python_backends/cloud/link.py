"""The edge's asynchronous client for the cloud `lvlm` model.

`CloudLink` owns a thread running its own asyncio loop (the vllm_backend pattern), with the
`tritonclient.grpc.aio` client created inside that loop. The `spotvlm` model's `execute()` calls `submit()` once per
frame: it decides under the dispatch policy and hands the job to the loop with `call_soon_threadsafe`, so it never waits
on the cloud. Replies and errors come back through callbacks, on the loop thread.

Per job, in the loop: the injected delay (it simulates the network, so it counts against the deadline and holds the
stream's slot), JPEG encoding in an executor, then `infer` with the remaining deadline, all under one
`asyncio.wait_for`. Errors are classified as timeout / unavailable / server / bad_reply (and client, for failures on
the edge's side), fed to the circuit breaker, and counted for Prometheus.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from python_backends.cloud.breaker import CircuitBreaker, CloudState
from python_backends.cloud.delay import DelayInjector
from python_backends.cloud.dispatch import SENT, SKIPPED_DOWN, DispatchPolicy
from python_backends.detections import Detection, detections_from_json
from python_backends.image_processing import encode_jpeg

logger = logging.getLogger("spotvlm.cloud")

ERROR_KINDS = ("timeout", "unavailable", "server", "bad_reply", "client")
# A channel that stays unreachable this many calls in a row is replaced on the next call: gRPC reconnects by itself,
# but a fresh client also recovers from a channel stuck in a bad state (e.g. after the cloud moved).
RECREATE_AFTER_UNAVAILABLE = 5
# Bounds the rtt list kept between two drains, in case nobody drains.
MAX_RTTS_KEPT = 10_000


@dataclass(frozen=True, eq=False)
class CloudJob:
    """One frame for the cloud. Give exactly one of `image` (UINT8 [H, W, 3] RGB) or `image_bytes` (JPEG/PNG)."""

    stream_id: int
    frame_id: int
    frame_timestamp_ms: int
    prompt: str
    max_tokens: int
    image: np.ndarray | None = None
    image_bytes: bytes | None = None
    delay: DelayInjector | None = None  # overrides the link's injected delay for this job

    def __post_init__(self) -> None:
        # Checked here, on the caller's thread, so a bad job fails where it was made, not later in the loop.
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
class CloudReply:
    job: CloudJob
    text: str
    detections: tuple[Detection, ...]  # in pixels of the image sent, i.e. of `frame_size`
    frame_size: tuple[int, int]  # (h, w) of the image sent, after any max_side downscale
    sent_s: float
    arrived_s: float

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


def _first_text(result: Any, name: str) -> str:
    array = result.as_numpy(name)
    if array is None:
        raise CloudCallError("bad_reply", f"reply has no {name} output")
    flat = np.asarray(array).reshape(-1)
    if flat.size < 1:
        raise CloudCallError("bad_reply", f"reply's {name} output is empty")
    value = flat[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CloudCallError("bad_reply", f"reply's {name} is not UTF-8: {exc}") from exc
    return str(value)


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
    prompt = grpcclient.InferInput("PROMPT", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[job.prompt.encode("utf-8")]], dtype=np.object_))
    inputs = [image, prompt]
    if job.max_tokens and job.max_tokens > 0:
        max_tokens = grpcclient.InferInput("MAX_TOKENS", [1, 1], "INT32")
        max_tokens.set_data_from_numpy(np.array([[job.max_tokens]], dtype=np.int32))
        inputs.append(max_tokens)
    outputs = [grpcclient.InferRequestedOutput("TEXT"), grpcclient.InferRequestedOutput("DETECTIONS")]
    return inputs, outputs


class CloudLink:
    """Sends frames to the cloud without ever blocking the caller; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        model: str = "lvlm",
        deadline_s: float = 10.0,
        jpeg_quality: int = 85,
        max_side: int = 0,
        max_inflight: int = 1,
        breaker: CircuitBreaker | None = None,
        delay: DelayInjector | None = None,
        on_reply: Callable[[CloudReply], None],
        on_error: Callable[[CloudJob, str], None] | None = None,
        client_factory: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        if max_side < 0:
            raise ValueError(f"max_side must be >= 0 (0 = full size), got {max_side}")
        self.url = url
        self.model = model
        self.deadline_s = deadline_s
        self.jpeg_quality = jpeg_quality
        self.max_side = max_side
        self.delay = delay
        self.breaker = breaker if breaker is not None else CircuitBreaker(clock=clock)
        self.policy = DispatchPolicy(max_inflight=max_inflight, breaker=self.breaker)
        self._on_reply = on_reply
        self._on_error = on_error
        self._client_factory = client_factory or _default_client_factory
        self._clock = clock

        # Guards the counters and the lifecycle flags only; nothing is called while holding it.
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "replies": 0, "skipped_busy": 0, "skipped_down": 0}
        self._errors = dict.fromkeys(ERROR_KINDS, 0)
        self._drained = {**self._counts, **{f"error:{k}": 0 for k in ERROR_KINDS}}
        self._rtts: deque[float] = deque(maxlen=MAX_RTTS_KEPT)
        self._last_rtt_ms: float | None = None
        self._started = False
        self._closed = False

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Loop-thread-only state (no lock needed): the client, the running tasks, the unavailable streak.
        self._client: Any = None
        self._tasks: set[asyncio.Task] = set()
        self._unavailable_streak = 0

    # ----- lifecycle (model thread) -----

    def start(self) -> None:
        """Starts the loop thread; call from the model's initialize(). Idempotent."""
        with self._lock:
            if self._closed:
                raise RuntimeError("CloudLink is closed")
            if self._started:
                return
            self._started = True
            # The loop is made here so that submit() can schedule on it at once, even before the thread runs it.
            self._loop = asyncio.new_event_loop()
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="spotvlm-jpeg")
            self._thread = threading.Thread(target=self._run_loop, name="spotvlm-cloud", daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                logger.exception("cloud link: shutting down async generators failed")
            loop.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Cancels pending calls, closes the client, stops the loop, joins the thread. Idempotent; for finalize()."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread, executor = self._loop, self._thread, self._executor
        if loop is None or thread is None:
            return
        deadline = time.monotonic() + timeout_s
        if thread.is_alive() and not loop.is_closed():
            try:
                future = asyncio.run_coroutine_threadsafe(self._shutdown(timeout_s), loop)
                future.result(timeout=max(0.01, deadline - time.monotonic()))
            except Exception as exc:
                logger.warning("cloud link: clean shutdown did not finish: %r", exc)
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass  # the loop closed already
        thread.join(timeout=max(0.01, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning("cloud link: loop thread did not stop within %.1f s", timeout_s)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    async def _shutdown(self, timeout_s: float) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # A fake or a stuck call that ignores cancellation must not hold up finalize().
            await asyncio.wait(tasks, timeout=timeout_s / 2)
        await self._close_client()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.close(), timeout=1.0)
        except Exception as exc:
            logger.warning("cloud link: closing the client failed: %r", exc)

    # ----- submit (model thread) -----

    def submit(self, job: CloudJob) -> str:
        """ "sent", "skipped_busy" or "skipped_down". Never blocks: the call runs on the loop thread."""
        with self._lock:
            usable = self._started and not self._closed
        if not usable:
            self._count("skipped_down")
            return SKIPPED_DOWN
        decision = self.policy.try_acquire(job.stream_id)
        if decision != SENT:
            self._count(decision)
            return decision
        sent_s = self._clock()
        loop = self._loop
        assert loop is not None
        # Counted before the hand-off so that a drain never sees the reply before the send.
        self._count("sent")
        try:
            loop.call_soon_threadsafe(self._spawn, job, sent_s)
        except RuntimeError:  # closed between the check and here
            self.policy.release(job.stream_id)
            self.breaker.record_abandoned()
            with self._lock:
                self._counts["sent"] -= 1
                self._counts["skipped_down"] += 1
            return SKIPPED_DOWN
        return SENT

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    # ----- the loop thread -----

    def _spawn(self, job: CloudJob, sent_s: float) -> None:
        task = asyncio.get_running_loop().create_task(self._run_job(job, sent_s))
        self._tasks.add(task)
        # Loop-thread-only set and no lock held: add_done_callback may run the callback inline.
        task.add_done_callback(self._tasks.discard)

    async def _run_job(self, job: CloudJob, sent_s: float) -> None:
        reply: CloudReply | None = None
        kind: str | None = None
        cancelled = False
        try:
            remaining = sent_s + self.deadline_s - self._clock()
            reply = await asyncio.wait_for(self._call(job, sent_s), timeout=max(remaining, 0.0))
        except asyncio.CancelledError:
            cancelled = True
            raise
        except Exception as exc:
            kind = classify_error(exc)
            log = logger.exception if kind == "client" else logger.warning
            # The type and str(): repr() of tritonclient's InferenceServerException drops its message and status.
            log(
                "cloud call for stream %s frame %s failed (%s): %s: %s",
                job.stream_id,
                job.frame_id,
                kind,
                type(exc).__name__,
                exc,
            )
        finally:
            # Always free the slot and tell the breaker, whatever happened, or the stream would stay busy forever.
            self.policy.release(job.stream_id)
            if reply is not None:
                self._unavailable_streak = 0
                self.breaker.record_success(reply.rtt_ms)
            elif cancelled or kind == "client":
                self.breaker.record_abandoned()
            elif kind is not None:
                self._unavailable_streak = self._unavailable_streak + 1 if kind == "unavailable" else 0
                self.breaker.record_failure(kind)
        # Not reached when cancelled: CancelledError was re-raised above.
        if reply is not None:
            with self._lock:
                self._counts["replies"] += 1
                self._rtts.append(reply.rtt_ms)
                self._last_rtt_ms = reply.rtt_ms
            self._callback(self._on_reply, reply)
        elif kind is not None:
            with self._lock:
                self._errors[kind] += 1
            if self._on_error is not None:
                self._callback(self._on_error, job, kind)

    @staticmethod
    def _callback(fn: Callable[..., None], *args: Any) -> None:
        # A failing callback must never kill the loop or the link.
        try:
            fn(*args)
        except Exception:
            logger.exception("cloud link callback %r raised", fn)

    async def _call(self, job: CloudJob, sent_s: float) -> CloudReply:
        delay = job.delay if job.delay is not None else self.delay
        if delay is not None:
            extra = delay.delay_s(self._clock())
            if extra > 0:
                await asyncio.sleep(extra)
        loop = asyncio.get_running_loop()
        if job.image is not None:
            jpeg, frame_size = await loop.run_in_executor(
                self._executor, encode_frame, job.image, self.jpeg_quality, self.max_side
            )
        else:
            jpeg = bytes(job.image_bytes or b"")
            try:
                frame_size = image_bytes_size(jpeg)
            except Exception as exc:
                raise CloudCallError("client", f"image_bytes is not a readable image: {exc}") from exc
        inputs, outputs = _build_request(job, jpeg)
        client = await self._get_client()
        remaining = sent_s + self.deadline_s - self._clock()
        if remaining <= 0:
            raise asyncio.TimeoutError("deadline passed before sending")
        result = await client.infer(self.model, inputs, outputs=outputs, client_timeout=remaining)
        text = _first_text(result, "TEXT")
        raw_detections = _first_text(result, "DETECTIONS")
        try:
            detections = tuple(detections_from_json(raw_detections))
        except (ValueError, TypeError) as exc:
            raise CloudCallError("bad_reply", f"DETECTIONS is not a detection list: {exc}") from exc
        return CloudReply(
            job=job,
            text=text,
            detections=detections,
            frame_size=frame_size,
            sent_s=sent_s,
            arrived_s=self._clock(),
        )

    async def _get_client(self) -> Any:
        if self._client is not None and self._unavailable_streak >= RECREATE_AFTER_UNAVAILABLE:
            logger.info("cloud link: %d unavailable calls in a row, recreating the client", self._unavailable_streak)
            self._unavailable_streak = 0
            await self._close_client()
        if self._client is None:
            # Created here, inside the loop thread: the grpc.aio channel binds to the running loop.
            self._client = self._client_factory(self.url)
        return self._client

    # ----- observation (any thread) -----

    @property
    def state(self) -> CloudState:
        return self.breaker.state

    def stats(self) -> dict:
        """Totals since start: sent, replies, skipped_busy, skipped_down, inflight, errors_by_kind, last_rtt_ms."""
        with self._lock:
            result: dict = dict(self._counts)
            result["errors_by_kind"] = dict(self._errors)
            result["last_rtt_ms"] = self._last_rtt_ms
        result["inflight"] = self.policy.total_inflight
        result["state"] = self.state.value
        return result

    def drain_stats(self) -> dict:
        """Counts since the last drain (deltas) and the rtt_ms observed since; inflight and state are current."""
        with self._lock:
            result: dict = {}
            for key, value in self._counts.items():
                result[key] = value - self._drained[key]
                self._drained[key] = value
            errors = {}
            for kind, value in self._errors.items():
                errors[kind] = value - self._drained[f"error:{kind}"]
                self._drained[f"error:{kind}"] = value
            result["errors_by_kind"] = errors
            result["rtt_ms"] = list(self._rtts)
            self._rtts.clear()
            result["last_rtt_ms"] = self._last_rtt_ms
        result["inflight"] = self.policy.total_inflight
        result["state"] = self.state.value
        return result
