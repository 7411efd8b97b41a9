"""The trained checkpoints' tokenizer learns its merges from the benchmark's own chats.

Why (measured on 2 cores): the default tiny tokenizer learns its merges from a generic corpus of other
phrasings, so the benchmark's words come out in pieces: "assistant" is 7 tokens, "object" 6, "star" 3, and a frame's
chat of 12 questions is about 580 tokens of which 54 are the image. A language-model step costs about 0.12 ms per
token of the batch on top of a fixed 70 ms (batch 8), so the text is most of a cloud step, and a one-word answer
that is three tokens is three choices to learn instead of one. Learned from chats rendered exactly as training and
serving write them (system prompt, roles, questions, answers, grounding JSON), the same 1,024-entry vocabulary holds
those words whole. Numbers stay the added single tokens of tokens.py.
"""

from __future__ import annotations

from python_backends.prompts import Turn, build_chat_prompt
from training.examples import MixConfig
from training.fresh_frames import FreshCurriculum, FreshQuestionStream
from training.trainer import follow_up_prompt
from training.views import ModelView

# Apart from the training streams' seeds (FreshCurriculum.seed and the next two): it shares none of their draws.
CORPUS_SEED = 7_919
CORPUS_FRAMES = 400
QUESTIONS_PER_FRAME = 8


def benchmark_corpus(view: ModelView, mix: MixConfig, frames: int = CORPUS_FRAMES) -> list[str]:
    """One chat per frame of fresh train scenes, as the model reads and writes it: the first question after the
    image (placeholder-free), its answer, then the frame's other questions as follow-up turns; every other chat
    carries the previous chat's first turn as history, as the edge's context does. `mix` has no context of its
    own (pipeline.plain_mix): it sets how answers are written."""
    # The stream's own frame and question draw; it tokenizes nothing until called, so it needs no tokenizer yet.
    scenes = FreshQuestionStream(None, view, mix, QUESTIONS_PER_FRAME, FreshCurriculum(seed=CORPUS_SEED))
    lines, previous = [], None
    while len(lines) < frames:
        example = scenes.example(elapsed_fraction=1.0)
        first = (example.question, example.target)
        history = [Turn(*previous)] if previous is not None and len(lines) % 2 else None
        text = build_chat_prompt(example.question, [], history) + example.target + "<|im_end|>"
        for turn in example.follow_ups:
            text += follow_up_prompt(turn.question) + turn.answer + "<|im_end|>"
        lines.append(text)
        previous = first
    return lines
