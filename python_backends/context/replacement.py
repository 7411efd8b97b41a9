"""Context replacement: late LVLM answers become the SVLM's history (SpotVLM / edgeVLM, training-free).

The SVLM keeps a multi-turn text history of its own answers. When the cloud's answer for frame k has arrived, it
replaces the SVLM's answer for frame k, compressed to a token budget and tagged with its age, so the small model reads
the large model's better description of the recent past before it answers the current frame. Pure functions, no clock:
the caller passes `now_ms`.

With `match_question` (the default) the history holds only the turns and cloud answers that asked the question being
asked now. Measured on the benchmark replay: where a stream's questions vary, the freshest cloud answer is
about another question most of the time, and a trained edge given that history answered worse than with none (0.07 to
0.08 against 0.13 on localisation); an answer to the same question is what it can reuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from python_backends.context.store import CloudResult, TurnRecord, question_key
from python_backends.prompts import Turn

GENERIC_QUESTION = "What do you see?"


class TokenBudget(Protocol):
    def count(self, text: str) -> int: ...

    def truncate(self, text: str, max_tokens: int) -> str: ...


class WordBudget:
    """Whitespace tokens: a tokenizer-free stand-in that over-counts no model's tokens by much for English text."""

    def count(self, text: str) -> int:
        return len(text.split())

    def truncate(self, text: str, max_tokens: int) -> str:
        words = text.split()
        if len(words) <= max_tokens:
            return text
        return " ".join(words[: max(0, max_tokens)])


DEFAULT_BUDGET = WordBudget()  # stateless, so one shared instance is a safe default argument


@dataclass(frozen=True)
class ReplacementConfig:
    max_turns: int = 4  # K: turns older than the last K are dropped
    budget_tokens: int = 48  # the tagged LVLM answer is compressed to this many tokens
    # The whole history, questions included: oldest turns go first, so K long questions cannot push the SVLM's prompt
    # past its context limit. The freshest LVLM answer stays.
    history_tokens: int = 1024
    age_tag: str = "[cloud answer, frame {frame_id}, {age_s:.1f} s old]"  # may also use {age_ms}
    # Only turns and cloud answers that asked the current question (same words, case and spacing aside); False: the
    # last K turns whatever they asked, and the freshest cloud answer to any question.
    match_question: bool = True

    def __post_init__(self) -> None:
        if self.max_turns < 0:
            raise ValueError(f"max_turns must not be negative, got {self.max_turns}")
        if self.budget_tokens < 1:
            raise ValueError(f"budget_tokens must be at least 1, got {self.budget_tokens}")
        if self.history_tokens < self.budget_tokens:
            raise ValueError(
                f"history_tokens ({self.history_tokens}) must be at least budget_tokens ({self.budget_tokens})"
            )
        try:
            self.age_tag.format(frame_id=0, age_s=0.0, age_ms=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"age_tag {self.age_tag!r} is not a valid template: {exc!r}") from exc


@dataclass(frozen=True)
class AnswerOverride:
    """How one cloud answer is written into the history instead of its own text: `text` in place of the LVLM's
    (boxes in the SVLM's pixels, where the object is now) and `note` after the age tag (was it tracked, how much
    changed). Built by context.served_context; without one, the answer is written as the cloud gave it."""

    text: str
    note: str = ""


@dataclass(frozen=True)
class ReplacedHistory:
    turns: list[Turn]  # oldest first, ready for build_chat_prompt
    replaced_turns: int  # how many SVLM answers were replaced by LVLM answers
    context_frame: int | None  # frame id of the freshest LVLM answer used (None when there is none)
    context_age_ms: int | None  # now_ms - that frame's timestamp
    context_result: CloudResult | None = None  # that freshest LVLM answer itself


def _age_ms(result: CloudResult, now_ms: int) -> int:
    # Clocks of client and edge can disagree by a little; a negative age means "just now".
    return max(0, int(now_ms) - int(result.frame_timestamp_ms))


def tagged_answer(
    result: CloudResult,
    now_ms: int,
    config: ReplacementConfig,
    budget: TokenBudget,
    override: AnswerOverride | None = None,
) -> str:
    """The age tag (and the override's note), then as much of the LVLM text (or the override's) as fits the budget.
    The tag is never cut: the SVLM must know the text is old even when little of it fits."""
    age_ms = _age_ms(result, now_ms)
    tag = config.age_tag.format(frame_id=result.frame_id, age_s=age_ms / 1000.0, age_ms=age_ms)
    if override is not None and override.note:
        tag = f"{tag} {override.note}"
    text = (override.text if override is not None else result.text).strip()
    if not text:
        return tag
    # Tokenizers need not be additive over concatenation, so check the joined string and shrink until it fits.
    allowance = max(0, config.budget_tokens - budget.count(tag))
    while True:
        body = budget.truncate(text, allowance) if allowance > 0 else ""
        joined = f"{tag} {body}" if body else tag
        if allowance <= 0 or budget.count(joined) <= config.budget_tokens:
            return joined
        allowance -= 1


def matching_results(
    cloud_results: Sequence[CloudResult], question: str | None, config: ReplacementConfig
) -> list[CloudResult]:
    """The cloud answers context replacement may use for `question`: all of them unless `match_question`; else
    those that asked it, and those whose question is unknown."""
    if not config.match_question or question is None:
        return list(cloud_results)
    key = question_key(question)
    return [r for r in cloud_results if r.question is None or question_key(r.question) == key]


def build_history(
    turns: Sequence[TurnRecord],
    cloud_results: Sequence[CloudResult],
    now_ms: int,
    config: ReplacementConfig = ReplacementConfig(),
    budget: TokenBudget = DEFAULT_BUDGET,
    question: str | None = None,
    overrides: Mapping[int, AnswerOverride] | None = None,
) -> ReplacedHistory:
    """The last K turns, with every answer the LVLM has given for their frames in place of the SVLM's answer; the
    freshest LVLM answer is always included, as an extra turn if its frame has left the window. Given the current
    `question` and `config.match_question`, only the turns and answers about that question take part. `overrides`
    (by the answer's frame id) rewrite answers as AnswerOverride says."""
    overrides = overrides or {}
    if config.match_question and question is not None:
        key = question_key(question)
        turns = [t for t in turns if question_key(t.question) == key]
        cloud_results = matching_results(cloud_results, question, config)
    window = list(turns)[-config.max_turns :] if config.max_turns > 0 else []
    # Later arrivals win when the cloud answered one frame twice (a retry, or a second producer).
    by_frame: dict[int, CloudResult] = {}
    for result in cloud_results:
        by_frame[result.frame_id] = result
    freshest = by_frame[max(by_frame)] if by_frame else None

    # (turn, replaced, the freshest LVLM answer) in frame order
    entries: list[tuple[Turn, bool, bool]] = []
    for record in window:
        result = by_frame.get(record.frame_id)
        if result is None:
            entries.append((Turn(question=record.question, answer=record.answer), False, False))
        else:
            answer = tagged_answer(result, now_ms, config, budget, overrides.get(result.frame_id))
            turn = Turn(question=record.question, answer=answer)
            entries.append((turn, True, result is freshest))

    if freshest is not None and all(record.frame_id != freshest.frame_id for record in window):
        asked = freshest.question or next(
            (r.question for r in reversed(turns) if r.frame_id == freshest.frame_id), GENERIC_QUESTION
        )
        extra = Turn(
            question=asked, answer=tagged_answer(freshest, now_ms, config, budget, overrides.get(freshest.frame_id))
        )
        # Keep the history in frame order: the frame is normally older than the window (prepend), but its turn may
        # be missing from `turns` altogether while being newer than some of them.
        position = sum(1 for record in window if record.frame_id < freshest.frame_id)
        entries.insert(position, (extra, True, True))

    entries = _fit_history(entries, config.history_tokens, budget)
    history = [turn for turn, _, _ in entries]
    replaced = sum(1 for _, was_replaced, _ in entries if was_replaced)
    if freshest is None:
        return ReplacedHistory(turns=history, replaced_turns=0, context_frame=None, context_age_ms=None)
    return ReplacedHistory(
        turns=history,
        replaced_turns=replaced,
        context_frame=freshest.frame_id,
        context_age_ms=_age_ms(freshest, now_ms),
        context_result=freshest,
    )


def _fit_history(entries: list[tuple[Turn, bool, bool]], max_tokens: int, budget: TokenBudget) -> list:
    """Drops the oldest turns until the history fits `max_tokens`, never the freshest LVLM answer's turn (whose
    question alone may still be too long: the caller's prompt limit bounds that)."""
    sizes = [budget.count(turn.question) + budget.count(turn.answer) for turn, _, _ in entries]
    total = sum(sizes)
    kept = list(zip(entries, sizes))
    index = 0
    while total > max_tokens and index < len(kept):
        (entry, size) = kept[index]
        if entry[2]:
            index += 1
            continue
        del kept[index]
        total -= size
    return [entry for entry, _ in kept]
