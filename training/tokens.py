"""Numbers as single tokens, and boxes on coarse coordinate bins, for the tiny checkpoints' tokenizer.

The tiny BPE splits multi-digit numbers into arbitrary pieces ("1", "37" for 137), so a box is a long sequence of
unrelated tokens; the prototype never learned them. Every integer 0..max_number is added as one token instead, and
training targets put box corners on multiples of `coordinate_bin` pixels, so each corner is one choice among a few
dozen. The text stays plain Qwen2.5-VL grounding JSON: python_backends.detections parses it unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

DEFAULT_MAX_NUMBER = 448  # the largest side a tiny checkpoint's input has (Qwen2.5-VL boxes are in input pixels)


def number_tokens(max_number: int = DEFAULT_MAX_NUMBER) -> list[str]:
    return [str(value) for value in range(max_number + 1)]


def add_number_tokens(tokenizer, max_number: int = DEFAULT_MAX_NUMBER) -> int:
    """Adds "0".."max_number" as whole tokens (not special: they decode as text); returns how many were new."""
    return tokenizer.add_tokens(number_tokens(max_number))


def bin_coordinate(value: float, coordinate_bin: int, limit: int) -> int:
    """The multiple of `coordinate_bin` nearest `value`, within [0, limit]."""
    return int(min(limit, max(0, round(value / coordinate_bin) * coordinate_bin)))


def binned_box(box: Sequence[float], size: tuple[int, int], coordinate_bin: int) -> list[int]:
    """Corners on the bin grid of an image of `size` (height, width); a box never collapses to zero width."""
    height, width = size
    x1, x2 = (bin_coordinate(v, coordinate_bin, width) for v in (box[0], box[2]))
    y1, y2 = (bin_coordinate(v, coordinate_bin, height) for v in (box[1], box[3]))
    if x2 <= x1:
        x1, x2 = (x1, x1 + coordinate_bin) if x1 + coordinate_bin <= width else (x2 - coordinate_bin, x2)
    if y2 <= y1:
        y1, y2 = (y1, y1 + coordinate_bin) if y1 + coordinate_bin <= height else (y2 - coordinate_bin, y2)
    return [x1, y1, x2, y2]


def grounding_answer(box: Sequence[int], label: str) -> str:
    """Qwen2.5-VL's grounding output for one object."""
    return json.dumps([{"bbox_2d": [int(v) for v in box], "label": label}])
