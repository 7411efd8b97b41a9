"""What each stream's cloud link has received: per question, the newest cloud answer (by the frame it answers).

A client that shows the cloud's late answers (the evaluation's `cloud_stale` baseline) shows, for the question asked
now, the newest answer to that question that has arrived. spotvlm keeps that here, apart from the context store
(whose window of recent results serves the SVLM's context and may have dropped an older question's answer), and
reports it in CONTEXT's `cloud_answer`, so the baseline is replayed from exactly what the link received.

Bounded: at most `max_streams` streams (least recently touched dropped first) and `max_questions` questions a stream
(the answer that arrived first dropped first). Thread-safe: replies are filed on the cloud link's thread.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from python_backends.context.report import CloudAnswerReport
from python_backends.context.store import CloudResult, question_key


# Questions a stream's record holds by default: more than its standing questions, so a question asked again later
# still finds its answer.
MAX_QUESTIONS = 16


class ReceivedAnswers:
    def __init__(
        self, max_streams: int = 1024, max_questions: int = MAX_QUESTIONS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_streams < 1 or max_questions < 1:
            raise ValueError(f"max_streams and max_questions must be >= 1, got {max_streams}, {max_questions}")
        self.max_streams = max_streams
        self.max_questions = max_questions
        self._clock = clock
        self._lock = threading.Lock()
        # stream -> question key -> the newest answer received (insertion order: when each key was last replaced)
        self._streams: OrderedDict[int, OrderedDict[str, CloudResult]] = OrderedDict()

    def add(self, stream_id: int, results: Iterable[CloudResult]) -> None:
        """Files answers as they arrive. An answer about an older frame than the one kept for its question (a late
        reply overtaken by a newer one) is not kept; an answer with no question is about none and is ignored."""
        with self._lock:
            answers = self._streams.get(stream_id)
            if answers is None:
                answers = self._streams[stream_id] = OrderedDict()
                while len(self._streams) > self.max_streams:
                    self._streams.popitem(last=False)
            self._streams.move_to_end(stream_id)
            for result in results:
                if result.question is None:
                    continue
                key = question_key(result.question)
                kept = answers.get(key)
                if kept is not None and kept.frame_id > result.frame_id:
                    continue
                answers.pop(key, None)
                answers[key] = result
                while len(answers) > self.max_questions:
                    answers.popitem(last=False)

    def newest(self, stream_id: int, question: str) -> CloudResult | None:
        with self._lock:
            answers = self._streams.get(stream_id)
            return None if answers is None else answers.get(question_key(question))

    def report(self, stream_id: int, question: str, frame_timestamp_ms: int) -> CloudAnswerReport | None:
        """CONTEXT's `cloud_answer` for a frame asking `question` now (the clock's now is when it was read)."""
        result = self.newest(stream_id, question)
        if result is None:
            return None
        now = self._clock()
        return CloudAnswerReport(
            frame_id=result.frame_id,
            text=result.text,
            boxes=[[round(float(v), 1) for v in d.bbox] for d in result.detections],
            frame_size=[int(v) for v in result.frame_size],
            age_ms=float(frame_timestamp_ms - result.frame_timestamp_ms),
            arrived_before_ms=round(max(0.0, (now - result.arrived_s) * 1000.0), 1),
        )

    def forget(self, stream_id: int) -> None:
        """A stream's run ended or restarted: its answers are of the old run."""
        with self._lock:
            self._streams.pop(stream_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)
