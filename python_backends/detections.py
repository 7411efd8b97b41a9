"""Parsing Qwen2.5-VL grounding output into detections.

Qwen2.5-VL answers grounding prompts with `[{"bbox_2d": [x1, y1, x2, y2], "label": "car"}]`, often inside a
```json fence and sometimes with prose around it or cut off by the token limit. The parser takes what it can and
never raises: text with nothing parseable gives an empty list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)
_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)


@dataclass(frozen=True, slots=True)  # no per-instance dict: a full store holds hundreds of these per stream
class Detection:
    label: str
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in the pixels of the image the model saw

    def to_json(self) -> dict:
        return {"bbox_2d": list(self.bbox), "label": self.label}


def _as_detection(item: object) -> Detection | None:
    if not isinstance(item, dict):
        return None
    box = item.get("bbox_2d", item.get("bbox"))
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    if not all(v == v and abs(v) != float("inf") for v in (x1, y1, x2, y2)):
        return None
    # Models sometimes emit corners in the wrong order; the box they mean is still clear.
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    label = item.get("label", "")
    return Detection(label=str(label).strip() if label is not None else "", bbox=(x1, y1, x2, y2))


def _candidates(text: str) -> list[str]:
    fenced = [m.group(1) for m in _FENCE.finditer(text)]
    return fenced + [text]


def parse_detections(text: str) -> list[Detection]:
    """All well-formed detections in `text`, in order; [] when there are none."""
    if not isinstance(text, str) or not text.strip():
        return []
    for candidate in _candidates(text):
        candidate = candidate.strip()
        start = candidate.find("[")
        if start >= 0:
            end = candidate.rfind("]")
            if end > start:
                try:
                    parsed = json.loads(candidate[start : end + 1])
                except json.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, list):
                    found = [d for d in map(_as_detection, parsed) if d is not None]
                    if found or not parsed:
                        return found
        # Truncated or prose-wrapped lists: salvage each complete {...} object.
        salvaged = []
        for match in _OBJECT.finditer(candidate):
            try:
                detection = _as_detection(json.loads(match.group(0)))
            except json.JSONDecodeError:
                continue
            if detection is not None:
                salvaged.append(detection)
        if salvaged:
            return salvaged
    return []


def detections_to_json(detections: list[Detection]) -> str:
    return json.dumps([d.to_json() for d in detections])


def detections_from_json(text: str) -> list[Detection]:
    """Strict reader for DETECTIONS tensors produced by `detections_to_json` (raises on malformed JSON)."""
    parsed = json.loads(text)
    if not isinstance(parsed, list):
        raise ValueError("detections must be a JSON list")
    result = []
    for item in parsed:
        detection = _as_detection(item)
        if detection is None:
            raise ValueError(f"not a detection: {item!r}")
        result.append(detection)
    return result


def scale_box(
    box: Sequence[float], source_size: tuple[int, int], target_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """A box from one image's pixels to another's; sizes are (height, width)."""
    (source_h, source_w), (target_h, target_w) = source_size, target_size
    x1, y1, x2, y2 = box
    return x1 * target_w / source_w, y1 * target_h / source_h, x2 * target_w / source_w, y2 * target_h / source_h
