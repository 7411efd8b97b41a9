"""LVLM results pushed into a stream's context by `context_ingest`: reading its tensors, and the INGEST JSON that
carries a checked result on to `spotvlm` (routed by Triton to the instance that owns the stream)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from python_backends.detections import Detection, detections_from_json
from python_backends.errors import InputError
from python_backends.prompts import decode_text

MAX_TEXT_BYTES = 65536
MAX_DETECTIONS = 256
# How far past the edge's clock a pushed frame time may be (clock skew between the pusher and the edge).
DEFAULT_FUTURE_TOLERANCE_MS = 5000


@dataclass(frozen=True)
class IngestRecord:
    stream_id: int
    frame_id: int
    text: str
    detections: tuple[Detection, ...]
    frame_size: tuple[int, int]  # (height, width) of the image the boxes are in
    frame_timestamp_ms: int | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "frame_id": self.frame_id,
                "text": self.text,
                "detections": [d.to_json() for d in self.detections],
                "frame_size": list(self.frame_size),
                "frame_timestamp_ms": self.frame_timestamp_ms,
            },
            ensure_ascii=False,
        )


def _text(raw: bytes | str, name: str) -> str:
    return decode_text(raw, name, MAX_TEXT_BYTES)


def check_frame_size(values) -> tuple[int, int]:
    values = [int(v) for v in values]
    if len(values) != 2 or min(values) <= 0:
        raise InputError(f"FRAME_SIZE must be [height, width] with both > 0, got {values}")
    return values[0], values[1]


def parse_detections_field(raw: bytes | str) -> tuple[Detection, ...]:
    try:
        detections = detections_from_json(_text(raw, "DETECTIONS"))
    except (ValueError, TypeError) as exc:
        raise InputError(
            f'DETECTIONS is not a JSON list of {{"bbox_2d": [x1, y1, x2, y2], "label": ...}} objects: {exc}'
        ) from exc
    if len(detections) > MAX_DETECTIONS:
        raise InputError(f"DETECTIONS has {len(detections)} boxes, over the limit of {MAX_DETECTIONS}")
    return tuple(detections)


def check_frame_timestamp(
    timestamp_ms: int, now_ms: int | None = None, future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS
) -> int:
    """FRAME_TIMESTAMP_MS, on the edge's clock (epoch milliseconds unless the stream sends its own TIMESTAMP_MS):
    never negative and, when `now_ms` is given, never further ahead of it than the tolerance."""
    timestamp_ms = int(timestamp_ms)
    if timestamp_ms < 0:
        raise InputError(f"FRAME_TIMESTAMP_MS must be >= 0, got {timestamp_ms}")
    if now_ms is not None and timestamp_ms - now_ms > future_tolerance_ms:
        raise InputError(
            f"FRAME_TIMESTAMP_MS {timestamp_ms} is {timestamp_ms - now_ms} ms in the future of the edge's clock "
            f"({now_ms}), over the tolerance of {future_tolerance_ms} ms"
        )
    return timestamp_ms


def make_record(
    stream_id: int,
    frame_id: int,
    text: bytes | str,
    detections: bytes | str,
    frame_size,
    frame_timestamp_ms: int | None = None,
) -> IngestRecord:
    """Checks one result from `context_ingest`'s tensors; raises InputError naming what is wrong. The frame time,
    when given, must not be negative (how far ahead of now it may be is check_frame_timestamp's)."""
    if stream_id <= 0:
        raise InputError(f"STREAM_ID must be the stream's non-zero sequence id, got {stream_id}")
    if frame_id < 0:
        raise InputError(f"FRAME_ID must be >= 0, got {frame_id}")
    return IngestRecord(
        stream_id=int(stream_id),
        frame_id=int(frame_id),
        text=_text(text, "TEXT"),
        detections=parse_detections_field(detections),
        frame_size=check_frame_size(frame_size),
        frame_timestamp_ms=None if frame_timestamp_ms is None else check_frame_timestamp(frame_timestamp_ms),
    )


def parse_ingest_json(stream_id: int, raw: bytes | str) -> IngestRecord:
    """The INGEST tensor `spotvlm` receives from `context_ingest`."""
    try:
        data = json.loads(_text(raw, "INGEST"))
    except json.JSONDecodeError as exc:
        raise InputError(f"INGEST is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("frame_id"), int):
        raise InputError("INGEST must be an object with an integer frame_id")
    timestamp = data.get("frame_timestamp_ms")
    return make_record(
        stream_id,
        data["frame_id"],
        str(data.get("text", "")),
        json.dumps(data.get("detections", [])),
        data.get("frame_size", []),
        timestamp if isinstance(timestamp, int) and not isinstance(timestamp, bool) else None,
    )
