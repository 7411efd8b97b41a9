"""The `spotvlm` model's CONTEXT output, typed: which cloud context a frame's answer used and where its time went.

The server builds a ContextReport and sends `to_json()`; every reader (the stream client, benchmarks, load tests, the
evaluation, the demo) reads it back with `from_json()`. Reading is tolerant: a missing field takes its default, a
number field holding something else reads as None, keys this version does not know are kept in `extra`, and text
that is not a JSON object is kept as `extra["raw"]`, so a reader never fails on an answer it does not understand.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


def _number(value: Any) -> int | float | None:
    """A number as it is (int stays int), or None for anything else (bools, strings, NaN, infinities)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return value if math.isfinite(value) else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass
class LatencyBreakdown:
    """Where a frame's time went inside `spotvlm`, in ms."""

    preprocess: float | None = None  # spotvlm's own work before the SVLM call: decoding, context, crop
    vision: float | None = None  # the SVLM call outside the language model: preprocessing, vision encoder, hops
    generate: float | None = None  # the language model inside svlm_generate
    total: float | None = None  # the whole request inside spotvlm

    def to_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_dict(cls, data: Any) -> LatencyBreakdown | None:
        if not isinstance(data, Mapping):
            return None
        return cls(**{item.name: _number(data.get(item.name)) for item in fields(cls)})


@dataclass
class CloudAnswerReport:
    """The newest cloud answer to the frame's own question that the edge's link had received when the frame came:
    what a client showing the cloud's late answers (the `cloud_stale` baseline) would show for this frame."""

    frame_id: int | None = None  # the stream's frame the cloud answered
    text: str = ""
    boxes: list[list[float]] = field(default_factory=list)  # x1 y1 x2 y2 in the pixels of `frame_size`
    frame_size: list[int] | None = None  # (height, width) of the image the cloud saw
    age_ms: float | None = None  # this frame's timestamp minus the answered frame's
    arrived_before_ms: float | None = None  # how long before this frame was read the answer arrived

    def to_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_dict(cls, data: Any) -> CloudAnswerReport | None:
        if not isinstance(data, Mapping):
            return None
        boxes = data.get("boxes")
        size = data.get("frame_size")
        return cls(
            frame_id=_number(data.get("frame_id")),
            text=_text(data.get("text")) or "",
            boxes=[
                [float(v) for v in box]
                for box in (boxes if isinstance(boxes, (list, tuple)) else [])
                if isinstance(box, (list, tuple)) and len(box) == 4 and all(_number(v) is not None for v in box)
            ],
            frame_size=list(size) if isinstance(size, (list, tuple)) and len(size) == 2 else None,
            age_ms=_number(data.get("age_ms")),
            arrived_before_ms=_number(data.get("arrived_before_ms")),
        )


@dataclass
class ContextReport:
    """One frame's CONTEXT. Field names are the JSON keys, in the order the server writes them."""

    stream_id: int | None = None
    frame_id: int | None = None  # spotvlm numbers a stream's frames from 0 in arrival order
    context_frame: int | None = None  # the frame whose LVLM answer is in the history (None: no cloud context)
    context_age_ms: float | None = None  # this frame's time minus context_frame's time
    context_rtt_ms: float | None = None  # that LVLM answer's cloud round trip as the edge saw it
    context_detections: int | None = None  # how many boxes that answer carried (0: text only)
    cloud_state: str | None = None  # ok, slow, down or off
    cloud_dispatch: str | None = None  # sent, skipped_busy, skipped_down or off
    cloud_questions: int | None = None  # how many distinct questions the stream's cloud answers in reach answer
    focus_mode: str | None = None  # the focus applied: off, crop_only or crop_and_frame
    focus_box: list[int] | None = None  # the crop in this frame's pixels, x1 y1 x2 y2
    focus_frame: int | None = None  # the frame of the LVLM answer whose boxes the crop used
    focus_labels: list[str] = field(default_factory=list)
    replaced_turns: int = 0  # SVLM turns whose answer an LVLM answer replaced
    history_turns: int = 0  # turns in the history sent to the SVLM
    svlm_model: str | None = None  # svlm or svlm_focus (None: the SVLM was not asked)
    # svlm; or the cloud's own answer to the question carried to this frame: cloud (as it came: text, or boxes not
    # all found again, where the cloud saw them), cloud_tracked (boxes where they are now), cloud_region_tracked (a
    # region read off the object's box tracked here)
    answer_source: str | None = None
    latency_ms: LatencyBreakdown | None = None
    # Tracking (focus_tracking): was the context answer's box found again in this frame (None: tracking off, or
    # no box to track), where (this frame's pixels, x1 y1 x2 y2), how much its region (the whole frame for an answer
    # without boxes) changed since the cloud's frame (0..1), and whether the focus crop centred on tracked boxes.
    tracked: bool | None = None
    tracked_box: list[int] | None = None
    region_change: float | None = None
    focus_tracked: bool | None = None
    # The newest cloud answer to this frame's question the link had received (None: none yet, or no link).
    cloud_answer: CloudAnswerReport | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know (read, never written)

    @property
    def has_context(self) -> bool:
        """Did the answer use a cloud answer (in its history, or for focus alone)?"""
        return self.context_frame is not None

    def to_dict(self) -> dict[str, Any]:
        data = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "extra"}
        data["latency_ms"] = self.latency_ms.to_dict() if self.latency_ms is not None else None
        data["cloud_answer"] = self.cloud_answer.to_dict() if self.cloud_answer is not None else None
        return {**data, **self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContextReport:
        known = {item.name for item in fields(cls)} - {"extra"}
        box = data.get("focus_box")
        tracked_box = data.get("tracked_box")
        labels = data.get("focus_labels")
        return cls(
            stream_id=_number(data.get("stream_id")),
            frame_id=_number(data.get("frame_id")),
            context_frame=_number(data.get("context_frame")),
            context_age_ms=_number(data.get("context_age_ms")),
            context_rtt_ms=_number(data.get("context_rtt_ms")),
            context_detections=_number(data.get("context_detections")),
            cloud_state=_text(data.get("cloud_state")),
            cloud_dispatch=_text(data.get("cloud_dispatch")),
            cloud_questions=_number(data.get("cloud_questions")),
            focus_mode=_text(data.get("focus_mode")),
            focus_box=list(box) if isinstance(box, (list, tuple)) else None,
            focus_frame=_number(data.get("focus_frame")),
            focus_labels=[str(label) for label in labels] if isinstance(labels, (list, tuple)) else [],
            replaced_turns=_number(data.get("replaced_turns")) or 0,
            history_turns=_number(data.get("history_turns")) or 0,
            svlm_model=_text(data.get("svlm_model")),
            answer_source=_text(data.get("answer_source")),
            latency_ms=LatencyBreakdown.from_dict(data.get("latency_ms")),
            tracked=_flag(data.get("tracked")),
            tracked_box=list(tracked_box) if isinstance(tracked_box, (list, tuple)) else None,
            region_change=_number(data.get("region_change")),
            focus_tracked=_flag(data.get("focus_tracked")),
            cloud_answer=CloudAnswerReport.from_dict(data.get("cloud_answer")),
            extra={key: value for key, value in data.items() if key not in known},
        )

    @classmethod
    def from_json(cls, text: str | bytes | None) -> ContextReport:
        """CONTEXT's text as a report: empty when absent, `extra["raw"]` when not a JSON object. Never raises."""
        if text is None:
            return cls()
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        try:
            value = json.loads(text)
        except ValueError:
            return cls(extra={"raw": text})
        return cls.from_dict(value) if isinstance(value, dict) else cls(extra={"raw": value})
