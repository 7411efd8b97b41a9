"""Evaluating a model on examples: greedy answers, scored with the benchmark's scorer, per task with a 95 % CI.

Boxes come back in the model's input pixels (Qwen2.5-VL's convention) and are mapped to the frame's pixels before
scoring, as the cloud server does with its detections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from python_backends.detections import scale_box
from evaluation.questions import TASKS
from evaluation.scoring import accuracy_with_ci, parse_box, score
from python_backends.prompts import build_chat_prompt
from training.examples import ModelExample
from training.views import image_grid, image_tokens, pixel_rows

MAX_NEW_TOKENS = 40  # a one-object grounding answer is about 25 tokens


@dataclass
class Prediction:
    example: ModelExample
    text: str
    correct: bool
    iou: float | None = None
    parsed_box: bool | None = None  # grounding: whether the answer held a box


def generate_answers(model, tokenizer, examples: Sequence[ModelExample], batch_size: int = 32) -> list[str]:
    import torch

    answers: list[str] = []
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = model.config
    bad_words = [[config.image_token_id], [config.video_token_id], [config.vision_start_token_id]]
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts, rows, grids = [], [], []
        for example in chunk:
            for image in example.images:
                patch_rows, grid = pixel_rows(image)
                rows.append(patch_rows)
                grids.append(grid)
            tokens = [image_tokens(image_grid(im)) for im in example.images]
            prompt = build_chat_prompt(example.question, tokens, example.history)
            prompts.append(tokenizer(prompt, add_special_tokens=False).input_ids)
        tokenizer.padding_side = "left"
        encoded = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
        device = model.device
        input_ids = encoded.input_ids.to(device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=encoded.attention_mask.to(device),
                mm_token_type_ids=(input_ids == config.image_token_id).int(),
                pixel_values=torch.from_numpy(np.concatenate(rows, axis=0)).to(device),
                image_grid_thw=torch.tensor(grids, dtype=torch.long, device=device),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                bad_words_ids=bad_words,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
        for tokens in output[:, encoded.input_ids.shape[1] :].tolist():
            if eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            answers.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return answers


def score_answer(example: ModelExample, text: str) -> Prediction:
    source = example.source
    if source.answer_type != "box":
        return Prediction(example, text, score(source, text).correct)
    box = parse_box(text)
    if box is None:
        return Prediction(example, text, False, iou=0.0, parsed_box=False)
    frame_size = _frame_size(example)
    result = score(source, list(scale_box(box, example.seen_size, frame_size)))
    return Prediction(example, text, result.correct, iou=result.iou, parsed_box=True)


def _frame_size(example: ModelExample) -> tuple[int, int]:
    from evaluation.dataset import load_frame

    cached = example.source.meta.get("_frame_size")
    if cached is None:
        cached = load_frame(example.source).shape[:2]
        example.source.meta["_frame_size"] = cached
    return tuple(cached)


def evaluate(
    model,
    tokenizer,
    examples: Sequence[ModelExample],
    batch_size: int = 32,
    progress: Callable[[str], None] | None = None,
) -> list[Prediction]:
    predictions = []
    for start in range(0, len(examples), batch_size * 4):
        chunk = examples[start : start + batch_size * 4]
        answers = generate_answers(model, tokenizer, chunk, batch_size)
        predictions.extend(score_answer(e, a) for e, a in zip(chunk, answers, strict=True))
        if progress is not None:
            progress(f"evaluated {len(predictions)}/{len(examples)}")
    return predictions


def summarise(predictions: Sequence[Prediction], group: Callable[[Prediction], str] | None = None) -> dict:
    """{group: {"n", "accuracy", "low", "high"}} (per task by default), plus box parse rate and mean IoU."""
    group = group or (lambda p: p.example.task)
    names = sorted({group(p) for p in predictions}, key=lambda n: (TASKS.index(n) if n in TASKS else 99, n))
    summary = {}
    for name in names:
        members = [p for p in predictions if group(p) == name]
        accuracy, low, high = accuracy_with_ci(p.correct for p in members)
        row = {"n": len(members), "accuracy": accuracy, "low": low, "high": high}
        boxes = [p for p in members if p.parsed_box is not None]
        if boxes:
            row["box_parse_rate"] = sum(p.parsed_box for p in boxes) / len(boxes)
            row["mean_iou"] = sum(p.iou or 0.0 for p in boxes) / len(boxes)
        summary[name] = row
    return summary


# Size classes of a grounding target by its box's longest side, as a share of the frame's longest side: the
# benchmark's small objects are 5 to 8% of the frame's width, its normal ones 12 to 22% (scenes.SceneConfig).
SIZE_CLASSES = ((0.08, "small"), (0.14, "medium"), (float("inf"), "large"))


def target_size_class(prediction: Prediction) -> str:
    """ "grounding small|medium|large" for a grounding prediction, else its task: summarise's `group` for where
    boxes fail (measured: small objects ground far less often than large ones)."""
    source = prediction.example.source
    if source.answer_type != "box":
        return prediction.example.task
    x1, y1, x2, y2 = source.answer
    share = max(x2 - x1, y2 - y1) / max(_frame_size(prediction.example))
    return f"{source.task} {next(name for limit, name in SIZE_CLASSES if share < limit)}"


def size_classes_legend() -> str:
    """How SIZE_CLASSES split the targets, e.g. "small < 8% of the frame's longest side, medium < 14%"."""
    (small, small_name), (medium, medium_name), *_ = SIZE_CLASSES
    return f"{small_name} < {small:.0%} of the frame's longest side, {medium_name} < {medium:.0%}"


def format_summary(summary: dict) -> str:
    lines = []
    for name, row in summary.items():
        extra = ""
        if "box_parse_rate" in row:
            extra = f"  boxes parsed {row['box_parse_rate']:.0%}  mean IoU {row['mean_iou']:.2f}"
        lines.append(f"  {name:14s} {row['accuracy']:.3f}  [{row['low']:.3f}, {row['high']:.3f}]  n={row['n']}{extra}")
    return "\n".join(lines)
