"""Streams of frames to the edge model `spotvlm`, one Triton sequence per stream, at a fixed frame rate.

A stream is a Triton sequence: the sequence id is the stream id, the first frame carries START, the last END.
`StreamSession` sends the frames of one stream and survives Triton dropping an idle sequence: the next frame then fails
with "must specify the START flag", and the session resends that same frame with START (a restart) so no frame is lost.

`run_streams` runs N streams concurrently, one thread each, every stream on its own schedule at `fps` (staggered so the
streams are not in step), never more than one request in flight per stream. It shows live progress, writes one JSON
line per frame, and returns the `FrameResult`s; `summarize` / `print_summary` (client.stream_report) make a table.

    sources = [SyntheticSource(seed) for seed in range(2)]
    results = run_streams(sources, url="127.0.0.1:8001", protocol="grpc", fps=10, frames=50, prompt="Where is the car?")
    print_summary(summarize(results))
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from client.frame_result import FrameResult
from client.sharding import EdgeRing, edge_unreachable, parse_edge_urls, stream_headers
from client.stream_report import ProgressBoard
from client.triton_client import ClientError, VLMClient, decode_text, text_tensor
from python_backends.context.report import ContextReport
from python_backends.image_processing import encode_jpeg

log = logging.getLogger(__name__)

DEFAULT_MODEL = "spotvlm"
DEFAULT_PROMPT = "What objects are in the scene and where are they?"
SEND_MODES = ("raw", "jpeg")
FOCUS_MODES = ("auto", "off", "crop_only", "crop_and_frame")

# Triton's sequence batcher drops a sequence after its idle timeout; the next frame without START is then refused
# ("... must specify the START flag on the first request of the sequence"). Other wordings of "this sequence is not
# known" get the same treatment: resending with START is always safe for a stream, it only resets the edge's context.
_RESTART_PATTERN = re.compile(
    r"must specify the START flag"
    r"|unknown sequence"
    r"|sequence[^.;]*\b(?:is unknown|unknown|not (?:known|started|found|active|running))",
    re.IGNORECASE,
)


def needs_restart(message: str) -> bool:
    """Whether an error says the sequence is gone and the frame must be resent with START."""
    return bool(_RESTART_PATTERN.search(message or ""))


class InferClient(Protocol):
    """What StreamSession needs of a client: `VLMClient` (or a fake in tests)."""

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        parameters: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class StreamSession:
    """One stream (one Triton sequence) to the edge model. Not thread-safe: one thread sends a stream's frames.

    `url` may name several edges (comma-separated or a list): the stream goes to the one its id hashes to
    (client.sharding.EdgeRing). When that edge cannot be reached, it leaves this session's ring and the frame goes to
    the stream's next edge as a restart (START); every request also names the stream in the `x-spotvlm-stream` header,
    for a proxy that hashes on it. `client` is the client of the stream's first edge, `client_factory(url)` makes
    the others' (default: VLMClient).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        protocol: str = "grpc",
        stream_id: int = 1,
        prompt: str = DEFAULT_PROMPT,
        model: str = DEFAULT_MODEL,
        send: str = "raw",
        params: dict[str, Any] | None = None,
        timeout_s: float = 60.0,
        client: InferClient | None = None,
        jpeg_quality: int = 90,
        client_factory: Callable[[str], InferClient] | None = None,
    ) -> None:
        if not isinstance(stream_id, int) or stream_id <= 0:
            # Sequence id 0 means "no sequence" to Triton, and negative ids do not fit its uint64 correlation id.
            raise ValueError(f"stream_id must be a positive int, got {stream_id!r}")
        if send not in SEND_MODES:
            raise ValueError(f"send must be one of {SEND_MODES}, got {send!r}")
        self.ring = EdgeRing(parse_edge_urls(url))
        self.url = self.ring.edge_for(stream_id)  # the stream's edge
        self.protocol = protocol
        self.stream_id = stream_id
        self.prompt = prompt
        self.model = model
        self.send_mode = send
        # None means "server default": tritonclient cannot serialise a None parameter.
        self.params = {k: v for k, v in (params or {}).items() if v is not None}
        self.jpeg_quality = jpeg_quality
        self._client_factory = client_factory or (lambda edge: VLMClient(edge, protocol, timeout_s=timeout_s))
        self._clients: dict[str, InferClient] = {
            self.url: client if client is not None else self._client_factory(self.url)
        }
        self._next_index = 0
        self.restarts = 0

    def _inputs(self, frame: np.ndarray, timestamp_ms: int) -> dict[str, np.ndarray]:
        image = np.ascontiguousarray(frame, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a frame must be RGB [H, W, 3], got shape {image.shape}")
        inputs: dict[str, np.ndarray] = {}
        if self.send_mode == "jpeg":
            inputs["IMAGE_BYTES"] = np.array([[encode_jpeg(image, self.jpeg_quality)]], dtype=np.object_)
        else:
            inputs["IMAGE"] = image[None]
        inputs["PROMPT"] = text_tensor(self.prompt)
        inputs["TIMESTAMP_MS"] = np.array([[timestamp_ms]], dtype=np.int64)
        return inputs

    @property
    def _client(self) -> InferClient:
        if self.url not in self._clients:
            self._clients[self.url] = self._client_factory(self.url)
        return self._clients[self.url]

    def _infer(self, inputs: dict[str, np.ndarray], start: bool, end: bool) -> dict[str, np.ndarray]:
        return self._client.infer(
            self.model,
            inputs,
            ["TEXT", "CONTEXT"],
            parameters=self.params or None,
            sequence_id=self.stream_id,
            sequence_start=start,
            sequence_end=end,
            headers=stream_headers(self.stream_id),
        )

    def _infer_moving(self, inputs: dict[str, np.ndarray], end: bool) -> dict[str, np.ndarray]:
        """A restart (START), on the stream's next edge while its edge cannot be reached."""
        while True:
            try:
                return self._infer(inputs, True, end)
            except Exception as exc:
                if not self._move_off_edge(exc):
                    raise

    def _move_off_edge(self, exc: Exception) -> bool:
        """When the stream's edge cannot be reached and another is left: drop it, and the stream moves on."""
        if len(self.ring) < 2 or not edge_unreachable(exc):
            return False
        gone = self.url
        self.ring.remove(gone)
        self.url = self.ring.edge_for(self.stream_id)
        log.warning("stream %d: edge %s unreachable (%s); restarting on %s", self.stream_id, gone, exc, self.url)
        return True

    def send(self, frame: np.ndarray, *, start: bool, end: bool) -> FrameResult:
        """Sends one frame; errors are returned in `FrameResult.error`, never raised (the stream goes on)."""
        index = self._next_index
        self._next_index += 1
        sent_at_ms = int(time.time() * 1000)
        result = FrameResult(stream_id=self.stream_id, frame_index=index, sent_at_ms=sent_at_ms, latency_ms=0.0)
        started = time.perf_counter()
        try:
            # Built once: a restart must resend exactly this frame, timestamp included.
            inputs = self._inputs(frame, sent_at_ms)
            try:
                outputs = self._infer(inputs, start, end)
            except Exception as exc:  # decided below: restart, or record and go on
                # An edge that is gone hands the stream to its next edge, which holds no sequence for it: restart.
                moved = self._move_off_edge(exc)
                if not moved and (start or not needs_restart(str(exc))):
                    raise
                log.info("stream %d: sequence dropped by the server (%s); restarting", self.stream_id, exc)
                result.restarted = True
                self.restarts += 1
                outputs = self._infer_moving(inputs, end)
            result.text = decode_text(outputs["TEXT"]) if outputs.get("TEXT") is not None else ""
            result.context = parse_context(outputs.get("CONTEXT"))
        except ClientError as exc:
            result.error = f"{exc.status}: {exc}" if exc.status else str(exc)
        except Exception as exc:  # a dead connection is recorded like a refused request
            result.error = f"{type(exc).__name__}: {exc}"
        result.latency_ms = (time.perf_counter() - started) * 1000
        return result

    def close(self) -> None:
        for client in self._clients.values():
            try:
                client.close()
            except Exception:  # closing a broken connection must not hide the run's results
                log.debug("stream %d: error closing a client", self.stream_id, exc_info=True)


def parse_context(array: np.ndarray | None) -> ContextReport:
    """The CONTEXT output as a report; empty when absent, `extra["raw"]` when not a JSON object (never raises)."""
    if array is None:
        return ContextReport()
    try:
        raw = decode_text(array)
    except Exception:
        return ContextReport()
    return ContextReport.from_json(raw)


# -- pacing ------------------------------------------------------------------------------------------------------------


def stream_offsets(n_streams: int, fps: float) -> list[float]:
    """Start offsets in seconds: stream k starts k/N of a frame interval after the first, so N streams spread their
    requests evenly instead of arriving at the server together."""
    if n_streams <= 0:
        return []
    interval = 1.0 / fps
    return [k * interval / n_streams for k in range(n_streams)]


def scheduled_time(t0: float, index: int, fps: float, offset: float = 0.0) -> float:
    """When frame `index` of a stream is due: t0 + offset + index/fps."""
    return t0 + offset + index / fps


def pacing_delay(due: float, now: float) -> tuple[float, bool]:
    """(seconds to wait before sending a frame due at `due`, whether it goes late). A frame whose time has already
    passed (the previous reply came late) goes at once and counts as late."""
    if now > due:
        return 0.0, True
    return due - now, False


def frame_count(fps: float, frames: int | None = None, duration_s: float | None = None) -> int:
    """Frames per stream from either --frames or --duration (at fps)."""
    if (frames is None) == (duration_s is None):
        raise ValueError("give exactly one of frames and duration_s")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if frames is not None:
        if frames <= 0:
            raise ValueError(f"frames must be > 0, got {frames}")
        return frames
    assert duration_s is not None
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    return max(1, math.ceil(duration_s * fps - 1e-9))


# -- running streams ---------------------------------------------------------------------------------------------------


def _stream_worker(
    source: Iterable[np.ndarray],
    session: StreamSession,
    *,
    t0: float,
    offset: float,
    fps: float,
    n_frames: int,
    sink: Callable[[FrameResult], None],
    stop: threading.Event,
    frame_sink: Callable[[np.ndarray, FrameResult], None] | None = None,
) -> None:
    def fetch(it: Any) -> tuple[np.ndarray, list[dict[str, Any]] | None] | None:
        try:
            frame = next(it)
        except StopIteration:
            return None
        except Exception:  # a broken file ends this stream, not the run
            log.warning("stream %d: the source failed; ending the stream", session.stream_id, exc_info=True)
            return None
        objects = getattr(source, "last_objects", None)
        return frame, [dict(o) for o in objects] if objects is not None else None

    it = iter(source)
    upcoming = fetch(it)
    index = 0
    while upcoming is not None and index < n_frames and not stop.is_set():
        frame, objects = upcoming
        # One frame ahead, so the frame that carries END is known: a finite source may end before n_frames.
        upcoming = fetch(it) if index + 1 < n_frames else None
        last = upcoming is None
        delay, late = pacing_delay(scheduled_time(t0, index, fps, offset), time.monotonic())
        if delay > 0 and stop.wait(delay):
            break
        result = session.send(frame, start=index == 0, end=last)
        result.late = late
        result.objects = objects
        sink(result)
        if frame_sink is not None:
            frame_sink(frame, result)
        index += 1


def run_streams(
    sources: Sequence[Iterable[np.ndarray]],
    *,
    url: str,
    protocol: str = "grpc",
    fps: float = 10.0,
    frames: int | None = None,
    duration_s: float | None = None,
    prompt: str = DEFAULT_PROMPT,
    params: dict[str, Any] | None = None,
    out_path: str | Path | None = None,
    progress: TextIO | None = sys.stderr,
    stream_ids: Sequence[int] | None = None,
    model: str = DEFAULT_MODEL,
    send: str = "raw",
    timeout_s: float = 60.0,
    session_factory: Callable[[int], StreamSession] | None = None,
    stop: threading.Event | None = None,
    frame_sink: Callable[[np.ndarray, FrameResult], None] | None = None,
) -> list[FrameResult]:
    """Runs one stream per source concurrently and returns every frame's result, ordered by stream and frame.

    Frame i of stream k is due at t0 + k/(N*fps) + i/fps. A reply that comes after the next frame's time makes that
    frame go at once (counted as late); there is never more than one request in flight per stream. A Ctrl-C (or
    setting `stop`) ends the streams after their in-flight requests and returns what was answered so far.
    `session_factory(stream_id)` replaces the default `StreamSession` (tests use it to inject a fake client).
    `frame_sink(frame, result)` gets each frame sent with its result, on the stream's thread (client.annotate).
    """
    if not sources:
        raise ValueError("no sources")
    n_frames = frame_count(fps, frames, duration_s)
    ids = list(stream_ids) if stream_ids is not None else list(range(1, len(sources) + 1))
    if len(ids) != len(sources) or len(set(ids)) != len(ids):
        raise ValueError("stream_ids must be distinct, one per source")
    stop = stop if stop is not None else threading.Event()

    def default_factory(stream_id: int) -> StreamSession:
        return StreamSession(
            url, protocol, stream_id, prompt, model=model, send=send, params=params, timeout_s=timeout_s
        )

    factory = session_factory or default_factory
    sessions = [factory(sid) for sid in ids]
    board = ProgressBoard(ids, n_frames, progress)
    results: list[FrameResult] = []
    lock = threading.Lock()
    out_file = None
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        out_file = open(out_path, "w", encoding="utf-8")  # closed in the finally below

    def sink(result: FrameResult) -> None:
        board.update(result)
        with lock:
            results.append(result)
            if out_file is not None:
                # Written as they come, so a long run that is killed still leaves its results.
                out_file.write(result.to_json() + "\n")
                out_file.flush()

    offsets = stream_offsets(len(sources), fps)
    # A little head room so every thread is up before the first frame is due.
    t0 = time.monotonic() + 0.05
    threads = [
        threading.Thread(
            target=_stream_worker,
            name=f"spotvlm-stream-{sid}",
            kwargs=dict(
                source=source,
                session=session,
                t0=t0,
                offset=offset,
                fps=fps,
                n_frames=n_frames,
                sink=sink,
                stop=stop,
                frame_sink=frame_sink,
            ),
            daemon=True,
        )
        for sid, source, session, offset in zip(ids, sources, sessions, offsets)
    ]
    board.start()
    try:
        for thread in threads:
            thread.start()
        try:
            # join() with a timeout so the main thread still sees Ctrl-C.
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(timeout=0.2)
        except KeyboardInterrupt:
            log.warning("interrupted: finishing the requests in flight")
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        board.stop()
        for session in sessions:
            session.close()
        if out_file is not None:
            out_file.close()
    return sorted(results, key=lambda r: (r.stream_id, r.frame_index))
