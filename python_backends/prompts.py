"""Chat prompts in Qwen2.5-VL's format, with image placeholders expanded to the tower's token count."""

from __future__ import annotations

import json
from dataclasses import dataclass

from python_backends.errors import InputError

DEFAULT_SYSTEM = "You are a helpful assistant."
IMAGE_PAD = "<|image_pad|>"
# Placeholders the model fills with visual features: one more in the text than features sent fails generation.
FEATURE_PLACEHOLDERS = (IMAGE_PAD, "<|video_pad|>")
MAX_PROMPT_BYTES = 16384
MAX_HISTORY_TURNS = 32
MAX_HISTORY_BYTES = 65536


@dataclass(frozen=True)
class Turn:
    """One past exchange in a stream's text history (used by context replacement)."""

    question: str
    answer: str


def decode_text(raw: bytes | str, name: str, max_bytes: int) -> str:
    """A BYTES tensor item -> text; raises InputError naming the tensor when it is too long or not UTF-8."""
    if not isinstance(raw, bytes):
        return str(raw)
    if len(raw) > max_bytes:
        raise InputError(f"{name} is {len(raw)} bytes, over the limit of {max_bytes}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not valid UTF-8: {exc}") from exc


def decode_prompt(raw: bytes | str, max_chars: int) -> str:
    """PROMPT tensor bytes -> text; raises InputError for empty, non-UTF-8 or too long prompts."""
    text = decode_text(raw, "PROMPT", MAX_PROMPT_BYTES)
    if not text.strip():
        raise InputError("PROMPT is empty")
    if len(text) > max_chars:
        raise InputError(f"PROMPT has {len(text)} characters, over the limit of {max_chars}")
    for placeholder in FEATURE_PLACEHOLDERS:
        if placeholder in text:
            raise InputError(f"PROMPT must not contain {placeholder}: the model reserves it for visual features")
    return text


def parse_history(raw: bytes | str) -> list[Turn]:
    """HISTORY tensor -> turns. It is JSON: `[{"question": "...", "answer": "..."}, ...]`, oldest first."""
    raw = decode_text(raw, "HISTORY", MAX_HISTORY_BYTES)
    if not raw.strip():
        return []
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"HISTORY is not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise InputError("HISTORY must be a JSON list of {question, answer} objects")
    if len(items) > MAX_HISTORY_TURNS:
        raise InputError(f"HISTORY has {len(items)} turns, over the limit of {MAX_HISTORY_TURNS}")
    turns = []
    for index, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("question"), str)
            or not isinstance(item.get("answer"), str)
        ):
            raise InputError(f"HISTORY item {index} must be an object with string 'question' and 'answer'")
        turns.append(Turn(item["question"], item["answer"]))
    return turns


def history_json(turns: list[Turn]) -> str:
    return json.dumps([{"question": t.question, "answer": t.answer} for t in turns], ensure_ascii=False)


def image_block(num_image_tokens: int) -> str:
    return "<|vision_start|>" + IMAGE_PAD * num_image_tokens + "<|vision_end|>"


def build_chat_prompt(
    question: str,
    image_tokens: list[int],
    history: list[Turn] | None = None,
    system: str = DEFAULT_SYSTEM,
) -> str:
    """The full model input: system, earlier turns (text only), then the images and the question."""
    parts = [f"<|im_start|>system\n{system}<|im_end|>\n"]
    for turn in history or []:
        # History also holds model answers and ingested texts, which no PROMPT check saw.
        asked, answered = _without_placeholders(turn.question), _without_placeholders(turn.answer)
        parts.append(f"<|im_start|>user\n{asked}<|im_end|>\n<|im_start|>assistant\n{answered}<|im_end|>\n")
    images = "".join(image_block(n) for n in image_tokens)
    parts.append(f"<|im_start|>user\n{images}{question}<|im_end|>\n<|im_start|>assistant\n")
    return "".join(parts)


def _without_placeholders(text: str) -> str:
    for placeholder in FEATURE_PLACEHOLDERS:
        text = text.replace(placeholder, "")
    return text
