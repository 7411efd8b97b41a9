"""The per-stream context store of the edge model.

Each Triton sequence (stream) keeps its last SVLM turns and the LVLM answers that came back for its frames. The store is
written from the cloud link's callback thread while `execute` reads it, and it must not grow without bound on a
long-running server: it holds at most `max_streams` streams (least recently used evicted first), drops streams idle for
longer than `ttl_s`, and caps every list and text per stream, so its memory is bounded by `StoreLimits` alone.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from python_backends.context.tracking import DEFAULT_SIDE, FrameHistory, StoredFrame, small_frame
from python_backends.detections import Detection
from python_backends.errors import InputError


@dataclass(frozen=True, slots=True)  # no per-instance dict: a full store holds ~300 of these per stream
class TurnRecord:
    """One SVLM exchange: the question asked about a frame and the edge's answer."""

    frame_id: int
    timestamp_ms: int
    question: str
    answer: str


@dataclass(frozen=True, slots=True)  # no per-instance dict: a full store holds ~300 of these per stream
class CloudResult:
    """One LVLM answer, which arrives after the edge has already answered that frame."""

    frame_id: int  # the frame the LVLM answered
    frame_timestamp_ms: int  # that frame's timestamp, on the same clock as TurnRecord.timestamp_ms
    sent_s: float  # edge monotonic clock, for the round-trip time
    arrived_s: float
    text: str
    detections: tuple[Detection, ...]
    frame_size: tuple[int, int]  # (height, width) of the image the boxes refer to
    # The question the edge was asked about that frame (the cloud got it, maybe wrapped in cloud_prompt); None when
    # unknown (context ingested for a frame the store no longer remembers), which context replacement treats as
    # being about any question.
    question: str | None = None

    @property
    def rtt_ms(self) -> float:
        return (self.arrived_s - self.sent_s) * 1000.0


@dataclass(frozen=True)
class StreamSnapshot:
    """An immutable copy of one stream's context, safe to use after the store's lock is released."""

    stream_id: int
    turns: tuple[TurnRecord, ...]  # oldest first
    cloud_results: tuple[CloudResult, ...]  # by arrival, newest last

    @property
    def latest_cloud(self) -> CloudResult | None:
        """The result for the newest frame. Answers can arrive out of order, so arrival order is not enough."""
        best: CloudResult | None = None
        for result in self.cloud_results:
            # `>=`: of two answers for the same frame, the later arrival wins.
            if best is None or result.frame_id >= best.frame_id:
                best = result
        return best


@dataclass(frozen=True)
class StoreLimits:
    max_streams: int = 1024
    ttl_s: float = 60.0
    max_turns: int = 8
    # Enough for a stream that takes turns between a few standing questions to keep the latest answer to each, which
    # question-matched context replacement looks for.
    max_cloud_results: int = 8
    max_text_chars: int = 1024
    max_detections: int = 32
    # The stream's standing questions: the distinct questions of its recent frames, which every frame sent to the
    # cloud asks together.
    max_questions: int = 4
    # Small colour copies of the stream's last frames, to carry the cloud's boxes to the current frame (tracking.py):
    # at most 3 * max_frames * frame_side**2 bytes a stream (about 2 MB for 100 frames of 96 x 72); 0 frames: none.
    max_frames: int = 0
    frame_side: int = DEFAULT_SIDE

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {self.max_streams}")
        if not self.ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {self.ttl_s}")
        if self.max_questions < 1:
            raise ValueError(f"max_questions must be at least 1, got {self.max_questions}")
        if self.max_frames:
            FrameHistory(self.max_frames, self.frame_side)  # raises on a side too small to track in
        for name in ("max_turns", "max_cloud_results", "max_text_chars", "max_detections", "max_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")


class _Stream:
    """Mutable per-stream state; only touched with the store's lock held."""

    __slots__ = ("turns", "cloud_results", "questions", "frames", "last_used")

    def __init__(self, limits: StoreLimits, now: float) -> None:
        # deque(maxlen) drops the oldest entry on append, which is exactly the K-turn window.
        self.turns: deque[TurnRecord] = deque(maxlen=limits.max_turns)
        self.cloud_results: deque[CloudResult] = deque(maxlen=limits.max_cloud_results)
        self.questions: deque[str] = deque(maxlen=limits.max_questions)  # most recent first
        self.frames = FrameHistory(limits.max_frames, limits.frame_side) if limits.max_frames > 0 else None
        self.last_used = now


def _check_stream_id(stream_id: object) -> int:
    if isinstance(stream_id, bool) or not isinstance(stream_id, int):
        raise InputError(f"stream id must be an integer, got {type(stream_id).__name__}")
    return stream_id


def question_key(question: str) -> str:
    """What two questions must share to count as the same question: the same words, case and spacing aside."""
    return " ".join(question.split()).casefold()


def with_new_questions(questions: Sequence[str], more: Iterable[str]) -> list[str]:
    """`questions`, then each of `more` that is not among them or already added (case and spacing aside)."""
    asked = {question_key(q) for q in questions}
    extra: list[str] = []
    for question in more:
        key = question_key(question)
        if key not in asked:
            asked.add(key)
            extra.append(question)
    return [*questions, *extra]


def _deep_size(obj: object, seen: set[int]) -> int:
    """sys.getsizeof summed over everything reachable through containers, dataclasses and slots."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return size
    if isinstance(obj, dict):
        return size + sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, deque, set, frozenset)):
        return size + sum(_deep_size(item, seen) for item in obj)
    if hasattr(obj, "__dict__"):
        size += _deep_size(vars(obj), seen)
    for slot in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, slot):
            size += _deep_size(getattr(obj, slot), seen)
    return size


def _frame_record_bytes() -> int:
    """What one buffered frame costs besides its pixels: the record, its attributes and the array's header."""
    record = StoredFrame(0, 0, np.zeros((1, 1), dtype=np.uint8), 1.0, (1, 1))
    header = sys.getsizeof(record.pixels) - record.pixels.nbytes
    return sys.getsizeof(record) + sys.getsizeof(vars(record)) + sys.getsizeof(record.full_size) + header


_FRAME_RECORD_BYTES = _frame_record_bytes()


def _frames_bytes(frames: FrameHistory) -> int:
    return sys.getsizeof(frames) + frames.nbytes + _FRAME_RECORD_BYTES * len(frames)


class ContextStore:
    """Bounded, thread-safe map from stream id to that stream's turns and late cloud results."""

    def __init__(self, limits: StoreLimits = StoreLimits(), clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        # Insertion order is recency order (oldest first): every use moves the stream to the end.
        self._streams: OrderedDict[int, _Stream] = OrderedDict()
        # Clamps the clock so recency order and last_used order agree even when two threads read the clock in one
        # order and take the lock in the other; that is what lets the lazy purge look at the oldest entries only.
        self._latest_now = float("-inf")
        self.evicted = 0  # streams dropped because the store was full
        self.expired = 0  # streams dropped because they were idle longer than ttl_s

    # -- helpers, lock held ---------------------------------------------------------------------------------------

    def _now_locked(self, now: float) -> float:
        self._latest_now = max(self._latest_now, now)
        return self._latest_now

    def _purge_locked(self, now: float) -> list[int]:
        dropped = []
        ttl = self.limits.ttl_s
        while self._streams:
            stream_id, stream = next(iter(self._streams.items()))
            if now - stream.last_used <= ttl:
                break
            del self._streams[stream_id]
            dropped.append(stream_id)
        self.expired += len(dropped)
        return dropped

    def _touch_locked(self, stream_id: int, now: float, reset: bool = False) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None or reset:
            stream = _Stream(self.limits, now)
            self._streams[stream_id] = stream
            while len(self._streams) > self.limits.max_streams:
                self._streams.popitem(last=False)
                self.evicted += 1
        stream.last_used = now
        self._streams.move_to_end(stream_id)
        return stream

    # -- truncation, no lock needed ---------------------------------------------------------------------------------

    def _clip_turn(self, turn: TurnRecord) -> TurnRecord:
        limit = self.limits.max_text_chars
        if len(turn.question) <= limit and len(turn.answer) <= limit:
            return turn
        return dataclasses.replace(turn, question=turn.question[:limit], answer=turn.answer[:limit])

    def _clip_result(self, result: CloudResult) -> CloudResult:
        limit = self.limits.max_text_chars
        if (
            len(result.text) <= limit
            and (result.question is None or len(result.question) <= limit)
            and len(result.detections) <= self.limits.max_detections
            and isinstance(result.detections, tuple)
        ):
            return result
        detections = tuple(result.detections[: self.limits.max_detections])
        question = result.question[:limit] if result.question is not None else None
        return dataclasses.replace(result, text=result.text[:limit], question=question, detections=detections)

    # -- public API ---------------------------------------------------------------------------------------------

    def start_stream(self, stream_id: int) -> None:
        """Sequence START: a fresh, empty context, even if the id was in use (ids are reused by clients)."""
        stream_id = _check_stream_id(stream_id)
        now = self._clock()
        with self._lock:
            now = self._now_locked(now)
            self._purge_locked(now)
            self._touch_locked(stream_id, now, reset=True)

    def end_stream(self, stream_id: int) -> bool:
        """Sequence END: drop the stream's state. True if it existed."""
        stream_id = _check_stream_id(stream_id)
        now = self._clock()
        with self._lock:
            self._purge_locked(self._now_locked(now))
            return self._streams.pop(stream_id, None) is not None

    def add_turn(self, stream_id: int, turn: TurnRecord) -> None:
        """Record an SVLM exchange; an unknown stream is created (a client may omit sequence START)."""
        stream_id = _check_stream_id(stream_id)
        turn = self._clip_turn(turn)
        now = self._clock()
        with self._lock:
            now = self._now_locked(now)
            self._purge_locked(now)
            self._touch_locked(stream_id, now).turns.append(turn)

    def add_frame(self, stream_id: int, frame_id: int, timestamp_ms: int, image: np.ndarray) -> FrameHistory | None:
        """Keeps a small copy of a known stream's frame (an unknown stream is not created: a frame that fails
        leaves nothing behind) and returns the stream's frame history; None when the stream is unknown or no frames
        are kept. The history is the store's own: only the thread that adds frames may read it outside the store."""
        stream_id = _check_stream_id(stream_id)
        if not self.limits.max_frames:
            return None
        # Shrunk outside the lock, which every stream of the instance shares: on a large frame this is the costly part.
        stored = small_frame(frame_id, timestamp_ms, image, self.limits.frame_side)
        now = self._clock()
        with self._lock:
            now = self._now_locked(now)
            self._purge_locked(now)
            stream = self._streams.get(stream_id)
            if stream is None or stream.frames is None:
                return None
            # Under the lock: memory_bytes walks the same buffer from another thread.
            stream.frames.append(stored)
            return stream.frames

    def add_cloud_result(self, stream_id: int, result: CloudResult) -> bool:
        """Record a late LVLM answer. False, and nothing stored, when the stream is gone: a late answer for a dead
        stream must not bring it back. It does not count as use, so a stream the client abandoned still expires."""
        return self.add_cloud_results(stream_id, [result])

    def add_cloud_results(self, stream_id: int, results: Sequence[CloudResult]) -> bool:
        """Record the LVLM's answers to several questions on one frame at once (a reader sees all or none of them),
        in the given order, as `add_cloud_result` records one."""
        stream_id = _check_stream_id(stream_id)
        results = [self._clip_result(result) for result in results]
        now = self._clock()
        with self._lock:
            self._purge_locked(self._now_locked(now))
            stream = self._streams.get(stream_id)
            if stream is None:
                return False
            stream.cloud_results.extend(results)
            return True

    def ask(self, stream_id: int, question: str) -> tuple[str, ...]:
        """Record the question a frame of the stream asks and return the stream's standing questions: the distinct
        questions of its recent frames (same words, case and spacing aside), most recent first, so `question` comes
        first, at most `max_questions`. An unknown stream is created, as `add_turn` does."""
        stream_id = _check_stream_id(stream_id)
        question = question[: self.limits.max_text_chars]
        key = question_key(question)
        now = self._clock()
        with self._lock:
            now = self._now_locked(now)
            self._purge_locked(now)
            questions = self._touch_locked(stream_id, now).questions
            kept = [q for q in questions if question_key(q) != key][: self.limits.max_questions - 1]
            questions.clear()
            questions.extend([question, *kept])
            return tuple(questions)

    def snapshot(self, stream_id: int) -> StreamSnapshot | None:
        """An immutable copy of the stream's context, or None for an unknown stream. Counts as use."""
        stream_id = _check_stream_id(stream_id)
        now = self._clock()
        with self._lock:
            now = self._now_locked(now)
            self._purge_locked(now)
            if stream_id not in self._streams:
                return None
            stream = self._touch_locked(stream_id, now)
            turns, results = tuple(stream.turns), tuple(stream.cloud_results)
        return StreamSnapshot(stream_id=stream_id, turns=turns, cloud_results=results)

    def has_stream(self, stream_id: int) -> bool:
        now = self._clock()
        with self._lock:
            self._purge_locked(self._now_locked(now))
            return stream_id in self._streams

    def __len__(self) -> int:
        now = self._clock()
        with self._lock:
            self._purge_locked(self._now_locked(now))
            return len(self._streams)

    def stream_ids(self) -> list[int]:
        """Live stream ids, least recently used first."""
        now = self._clock()
        with self._lock:
            self._purge_locked(self._now_locked(now))
            return list(self._streams)

    def purge_expired(self) -> list[int]:
        """Drop the streams idle for longer than ttl_s and return their ids (oldest first)."""
        now = self._clock()
        with self._lock:
            return self._purge_locked(self._now_locked(now))

    def memory_bytes(self) -> int:
        """Deep size estimate of the stored state, in bytes (for a bytes-per-stream metric)."""
        with self._lock:
            # Only shallow sizes and references under the lock; the records are immutable, so they are walked outside.
            total = sys.getsizeof(self._streams)
            records: list[tuple[tuple[TurnRecord, ...], tuple[CloudResult, ...], tuple[str, ...]]] = []
            for stream_id, stream in self._streams.items():
                total += sys.getsizeof(stream_id) + sys.getsizeof(stream) + sys.getsizeof(stream.last_used)
                total += sys.getsizeof(stream.turns) + sys.getsizeof(stream.cloud_results)
                total += sys.getsizeof(stream.questions)
                if stream.frames is not None:
                    total += _frames_bytes(stream.frames)
                records.append((tuple(stream.turns), tuple(stream.cloud_results), tuple(stream.questions)))
        seen: set[int] = set()
        for turns, results, questions in records:
            total += sum(_deep_size(t, seen) for t in turns) + sum(_deep_size(r, seen) for r in results)
            total += sum(_deep_size(q, seen) for q in questions)
        return total
