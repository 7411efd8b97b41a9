"""Training a tiny Qwen2.5-VL checkpoint within a step or wall-time budget.

The learning rate follows a short linear warm-up, then a cosine from the peak to 10 % of it over a step budget
(`TrainConfig.steps`), so a run is the same on any machine, CPU or GPU (`device`); its minutes are then what it is
expected to take, and only a run past STEP_BUDGET_GUARD times them is stopped. Without a step budget the cosine runs
over the wall-time budget instead and a run ends on time whatever the machine's speed. Either way the run says, after
its first steps, how long it expects to take. Loss is on the answer tokens only (and the closing <|im_end|>): the
prompt is context, not something to imitate.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from engines.tiny_checkpoint import BUILD_INFO_FILE, TinyVLMSpec, train_tokenizer
from python_backends.prompts import build_chat_prompt
from training.attention_supervision import attention_capture, attention_loss, target_pairs
from training.examples import ModelExample
from training.number_loss import NumberLoss, NumberTokens, token_losses
from training.precision import PrecisionChoice, autocast, check_precision, choose_precision, float32_scores
from training.precision import training_attention
from training.schedule import lr_factor
from training.tokens import add_number_tokens, number_tokens
from training.views import image_grid, image_tokens, pixel_rows

IGNORE = -100
# With a step budget, a run is stopped when it takes this many times its minutes (a machine far slower than expected).
STEP_BUDGET_GUARD = 3.0
# Language-model steps a minute of the default recipes on the machine their budgets were set on (2 cores of an AMD
# EPYC with AVX512-BF16, in bfloat16): the edge ran 1,860 steps in 6 minutes, the cloud 6,536 in the 21.2 minutes
# left after its 600-step tower took 2.8. A run without a step budget gets the steps its minutes gave there.
REFERENCE_STEPS_PER_MINUTE = {"edge": 310.0, "cloud": 308.0}
REFERENCE_TOWER_MINUTES_PER_STEP = 2.8 / 600
# Steps timed before a run says how long it expects to take (the first is left out: it pays for warming up).
ESTIMATE_AFTER_STEPS = 5


@dataclass(frozen=True)
class TrainConfig:
    minutes: float
    batch_size: int = 32
    peak_lr: float = 2e-3
    final_lr_fraction: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.01
    seed: int = 0
    max_steps: int | None = None  # a cap for tests; the wall-time budget always applies
    # A step budget: the learning rate's schedule (and a stream's curriculum) advance by steps done / `steps`
    # instead of by wall time, so a run is the same on any machine; `minutes` then only estimate the run, and
    # STEP_BUDGET_GUARD times them cap it.
    steps: int | None = None
    # The wall time, in minutes, that stops the language model's steps: None is STEP_BUDGET_GUARD times its minutes
    # with a step budget, its minutes without. A run limit, not a recipe: it is left out of the recipe's key.
    max_minutes: float | None = None
    # Where the model trains: "cpu", or a torch device such as "cuda" (the checkpoint is saved from the CPU).
    device: str = "cpu"
    # "bf16" / "bf16-fp32-scores": forward and loss under bfloat16 autocast (precision.py), about 1.5 times as fast
    # on a CPU with AVX512-BF16; the second keeps the language model's attention scores in float32.
    precision: str = "fp32"
    # Each example's answer tokens average to one loss term, so a 25-token grounding answer weighs as much as a
    # one-word answer (accuracy counts questions, not tokens); False: the plain mean over all answer tokens.
    loss_per_example: bool = True
    log_every_s: float = 20.0
    # > 0: weight of attention supervision (attention_supervision.py) on head 0 of `supervised_layers`, where the
    # examples give their answers' cells.
    attention_weight: float = 0.0
    supervised_layers: tuple[int, ...] = (1, 2)
    # How the answer loss weighs number tokens (number_loss.py); the default is plain cross-entropy.
    number_loss: NumberLoss = NumberLoss()

    def __post_init__(self) -> None:
        if self.minutes <= 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if self.attention_weight < 0:
            raise ValueError(f"attention_weight must be >= 0, got {self.attention_weight}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        check_precision(self.precision)


@dataclass
class Encoded:
    input_ids: list[int]
    answer_spans: tuple[tuple[int, int], ...]  # [start, end) of each answer's tokens (its <|im_end|> included)
    image: np.ndarray  # UINT8, as the tower sees it
    answer_cells: tuple[tuple[int, ...], ...] = ()  # per answer span, its objects' merged cells (may be empty)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    examples_seen: int
    losses: list[float] = field(default_factory=list)  # one per step
    expected_seconds: float | None = None  # the whole run, as estimated after its first steps
    stopped_by_guard: bool = False  # a step budget not reached before the wall-time guard


def planned(config: TrainConfig, model: str, tower_steps: int = 0) -> tuple[TrainConfig, PrecisionChoice]:
    """What a default model's training runs: in the precision this machine computes fast (precision.choose_precision)
    and, without a step budget, for the steps its minutes (less the tower's) gave on the reference machine, so that a
    slower machine trains the same model for longer instead of a shorter one in the same time."""
    choice = choose_precision(config.precision, config.device)
    steps = config.steps
    if steps is None:
        minutes = config.minutes - tower_steps * REFERENCE_TOWER_MINUTES_PER_STEP
        steps = max(1, round(minutes * REFERENCE_STEPS_PER_MINUTE[model]))
    return replace(config, precision=choice.precision, steps=steps), choice


def time_limit_s(config: TrainConfig) -> float:
    """When a run is stopped: `max_minutes` when given, else its minutes, or STEP_BUDGET_GUARD times them with a
    step budget."""
    if config.max_minutes is not None:
        return config.max_minutes * 60
    return config.minutes * 60 * (STEP_BUDGET_GUARD if config.steps is not None else 1.0)


def expectation(config: TrainConfig, seconds_per_step: float) -> tuple[float, str]:
    """How long a run is expected to take (seconds) and a line that says so, from the time its steps take."""
    if config.steps is None:
        budget_s = config.minutes * 60
        steps = int(budget_s / seconds_per_step)
        return (
            budget_s,
            f"expects about {steps} steps in its {config.minutes:.1f} min ({seconds_per_step:.3f} s a step)",
        )
    total = min(config.steps, config.max_steps or config.steps)
    expected_s = total * seconds_per_step
    line = f"expects {total} steps to take about {expected_s / 60:.1f} min ({seconds_per_step:.3f} s a step)"
    if expected_s > time_limit_s(config):
        reached = int(time_limit_s(config) / seconds_per_step)
        line += f"; over the {time_limit_s(config) / 60:.1f}-min guard, it will stop after about {reached} steps"
    return expected_s, line


def build_model(spec: TinyVLMSpec, max_number: int, corpus: Sequence[str] | None = None):
    """A fresh model and tokenizer of `spec`'s architecture, the tokenizer with single-token numbers and its merges
    learned from `corpus` (vocabulary.benchmark_corpus; default: the tiny checkpoints' generic corpus)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    # The private builder keeps the config identical to the default checkpoints' (ids, rope, vision settings).
    from engines.tiny_checkpoint import _model_config

    torch.manual_seed(spec.seed)
    tokenizer = train_tokenizer(spec.vocab_size, spec.seed, corpus)
    add_number_tokens(tokenizer, max_number)
    config = _model_config(spec, tokenizer)
    model = Qwen2_5_VLForConditionalGeneration(config)
    init_number_embeddings(model, tokenizer, max_number)
    model.generation_config = GenerationConfig(
        do_sample=False, eos_token_id=config.text_config.eos_token_id, pad_token_id=config.text_config.pad_token_id
    )
    return model, tokenizer


def number_code(max_number: int, width: int, period: float = 16.0, span: float = 1000.0):
    """Sinusoids of each value 0..max_number (shortest period `period`, longest `period * span`): nearby values get
    similar rows, so a coordinate one bin off is a small error rather than an unrelated token."""
    import torch

    values = torch.arange(max_number + 1, dtype=torch.float32)[:, None]
    half = width // 2
    angular = (2 * math.pi / period) * torch.exp(-math.log(span) * torch.arange(half, dtype=torch.float32) / half)
    code = torch.cat([torch.sin(values * angular), torch.cos(values * angular)], dim=1)
    return torch.nn.functional.pad(code, (0, width - 2 * half))


def init_number_embeddings(model, tokenizer, max_number: int) -> None:
    """The input and output embedding rows of the number tokens start as number_code, at the rows' usual scale."""
    import torch

    ids = tokenizer.convert_tokens_to_ids(number_tokens(max_number))
    with torch.no_grad():
        for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            weight[ids] = number_code(max_number, weight.shape[1]) * float(weight.std())


PLAIN_NUMBER_LOSS = NumberLoss()


def answer_loss(model, tensors: dict, labels, numbers: NumberTokens | None = None, number_loss=PLAIN_NUMBER_LOSS):
    """Cross-entropy averaged over each example's answer tokens (number tokens weighed and scored by `number_loss`),
    then over the batch (rows without answer tokens count as 0). The vocabulary projection is computed only where an
    answer token is predicted: a frame's sequence of 12 questions is ~550 tokens of which ~100 are answers, and
    projecting every position made a cloud step about 10% slower (0.51 s against 0.47 s at batch 8)."""
    import torch

    hidden = model.model(**tensors).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE
    rows = torch.nonzero(mask)[:, 0]
    tokens, weights = token_losses(model.lm_head(hidden[mask]).float(), targets[mask], numbers, number_loss)
    totals = torch.zeros(labels.shape[0], dtype=tokens.dtype, device=tokens.device)
    per_row = totals.index_add(0, rows, tokens * weights)
    row_weights = totals.index_add(0, rows, weights).clamp(min=1e-6)
    return (per_row / row_weights).mean()


def follow_up_prompt(question: str) -> str:
    """What comes between an answer's <|im_end|> and the next answer in a chat of several questions on one image."""
    return f"\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def encode(tokenizer, example: ModelExample) -> Encoded:
    if len(example.images) != 1:
        raise ValueError(f"example {example.example_id} has {len(example.images)} images; one is supported")
    image = example.images[0]
    tokens = image_tokens(image_grid(image))
    prompt = build_chat_prompt(example.question, [tokens], example.history)
    # Encoded apart, as at serving time: the answer's ids follow the prompt's, never merged with them.
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    spans = []
    asked = [(example.question, example.target)] + [(turn.question, turn.answer) for turn in example.follow_ups]
    for number, (question, answer) in enumerate(asked):
        if number > 0:  # a follow-up: the same chat goes on with the next user turn
            ids += tokenizer(follow_up_prompt(question), add_special_tokens=False).input_ids
        answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False).input_ids
        spans.append((len(ids), len(ids) + len(answer_ids)))
        ids += answer_ids
    return Encoded(ids, tuple(spans), image, tuple(example.answer_cells))


def collate(batch: Sequence[Encoded], pad_id: int, image_token_id: int, with_pixels: bool = True) -> dict:
    """Right-padded tensors for one training step. Without pixels (the tower's features are cached) the pixel rows
    are left out and `pixel_values` is a placeholder that only tells the model that the batch has images."""
    import torch

    length = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    rows, grids = [], []
    for index, item in enumerate(batch):
        ids = torch.tensor(item.input_ids, dtype=torch.long)
        input_ids[index, : len(ids)] = ids
        attention[index, : len(ids)] = 1
        for start, end in item.answer_spans:
            labels[index, start:end] = ids[start:end]
        if with_pixels:
            patch_rows, grid = pixel_rows(item.image)
            rows.append(patch_rows)
        else:
            grid = image_grid(item.image)
        grids.append(grid)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "pixel_values": torch.from_numpy(np.concatenate(rows, axis=0)) if with_pixels else torch.zeros(1),
        "image_grid_thw": torch.tensor(grids, dtype=torch.long),
        "mm_token_type_ids": (input_ids == image_token_id).int(),
    }


def batch_loss(model, batch: dict) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def train(
    model,
    tokenizer,
    encoded: Sequence[Encoded],
    config: TrainConfig,
    progress: Callable[[str], None] | None = None,
    image_features: Sequence | None = None,
    stream: Callable[[int, float], list[Encoded]] | None = None,
    numbers: NumberTokens | None = None,
) -> TrainResult:
    """Trains in place until the wall-time budget (or `max_steps`) is used; shuffles each epoch with the seed.

    `image_features` (one tensor per encoded example, from a frozen tower: tower_pretraining.cache_features) are
    used instead of running the tower; only parameters that require grad are trained. `stream(batch_size,
    elapsed_fraction)`, when given, makes every batch instead of `encoded` (fresh_frames.FreshQuestionStream).
    `numbers` (the tokenizer's number tokens) is needed when `config.number_loss` is not plain cross-entropy."""
    from training.tower_pretraining import serving_cached_features

    if stream is not None and (encoded or image_features is not None):
        raise ValueError("a stream makes every batch: pass no encoded examples and no cached features with it")
    if image_features is not None and len(image_features) != len(encoded):
        raise ValueError(f"{len(image_features)} cached image features for {len(encoded)} examples")
    if not config.number_loss.is_plain and (numbers is None or not config.loss_per_example):
        raise ValueError("a number loss other than plain cross-entropy needs the number tokens and per-example loss")
    if stream is None:
        stream = _ShuffledBatches(encoded, config.seed)
    cached = image_features is not None
    supervised = config.supervised_layers if config.attention_weight > 0 else ()
    with (
        serving_cached_features(model, image_features) if cached else contextlib.nullcontext() as select,
        attention_capture(model, supervised) as captured,
        training_attention(model, config.device, config.precision),
    ):
        numbers = numbers.to(config.device) if numbers is not None else None
        return _train(model, tokenizer, stream, config, progress, select, captured if supervised else None, numbers)


class _ShuffledBatches:
    """stream(batch_size, elapsed_fraction) over `encoded`, reshuffled each epoch; `indices` are the last batch's
    (cached tower features are selected by them)."""

    def __init__(self, encoded: Sequence[Encoded], seed: int) -> None:
        self.encoded, self.rng = encoded, np.random.default_rng(seed)
        self.order, self.cursor = self.rng.permutation(len(encoded)), 0
        self.indices = self.order[:0]

    def __call__(self, batch_size: int, elapsed_fraction: float) -> list[Encoded]:
        if self.cursor + batch_size > len(self.order):
            self.order, self.cursor = self.rng.permutation(len(self.encoded)), 0
        self.indices = self.order[self.cursor : self.cursor + batch_size]
        self.cursor += batch_size
        return [self.encoded[i] for i in self.indices]


def _train(model, tokenizer, stream, config: TrainConfig, progress, select, captured, numbers) -> TrainResult:
    import torch

    torch.manual_seed(config.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.peak_lr, weight_decay=config.weight_decay)
    pad_id, image_token_id = tokenizer.pad_token_id, model.config.image_token_id
    budget_s = config.minutes * 60
    guard_s = time_limit_s(config)
    limit = min(config.max_steps or math.inf, config.steps or math.inf)
    device = torch.device(config.device)
    started = time.monotonic()
    last_log = first_done = started
    result = TrainResult(steps=0, seconds=0.0, examples_seen=0)
    model.train()
    while True:
        elapsed = time.monotonic() - started
        if result.steps >= limit:
            break
        if elapsed >= guard_s:
            result.stopped_by_guard = config.steps is not None
            if result.stopped_by_guard and progress is not None:
                progress(f"stopped by the {guard_s / 60:.1f}-min guard after {result.steps} of {config.steps} steps")
            break
        progress_fraction = elapsed / budget_s if config.steps is None else result.steps / config.steps
        batch = stream(config.batch_size, progress_fraction)
        if select is not None:
            select(stream.indices)
        factor = lr_factor(progress_fraction, result.steps, config.warmup_steps, config.final_lr_fraction)
        for group in optimizer.param_groups:
            group["lr"] = config.peak_lr * factor
        collated = collate(batch, pad_id, image_token_id, with_pixels=select is None)
        tensors = {name: value.to(device) for name, value in collated.items()}
        with autocast(config.device, config.precision):
            if config.loss_per_example:
                labels = tensors.pop("labels")
                loss = answer_loss(model, tensors, labels, numbers, config.number_loss)
            else:
                loss = model(**tensors).loss
            if captured is not None:
                pairs = target_pairs(collated["input_ids"], image_token_id, batch)
                supervision = attention_loss(captured, pairs, float32_scores=float32_scores(config.precision))
                if supervision is not None:
                    loss = loss + config.attention_weight * supervision
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        result.steps += 1
        result.examples_seen += len(batch)
        result.losses.append(loss.item())
        now = time.monotonic()
        if result.steps == 1:
            first_done = now
        elif result.steps == ESTIMATE_AFTER_STEPS + 1:
            result.expected_seconds, line = expectation(config, (now - first_done) / ESTIMATE_AFTER_STEPS)
            if progress is not None:
                progress(f"{config.precision}: {line}")
        if progress is not None and now - last_log >= config.log_every_s:
            last_log = now
            recent = result.losses[-20:]
            of = f"/{config.steps}" if config.steps is not None else ""
            progress(
                f"step {result.steps:5d}{of}  {now - started:6.0f}/{budget_s:.0f} s  "
                f"loss {sum(recent) / len(recent):.3f}  lr {config.peak_lr * factor:.2e}  "
                f"examples {result.examples_seen}"
            )
    result.seconds = time.monotonic() - started
    model.eval()
    return result


def image_processor_config(spec: TinyVLMSpec) -> dict:
    from engines.tiny_checkpoint import _image_processor_config

    return _image_processor_config(spec)


def save_checkpoint(model, tokenizer, spec: TinyVLMSpec, out_dir: Path, key: str, info: dict) -> Path:
    """A checkpoint folder the serving code loads like the default ones, plus `training.json` (how it was made)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(image_processor_config(spec), indent=2))
    # build.py reads the input size from here; the digest marks it as trained, so it is never taken for the
    # random-weight default of the same spec.
    (out_dir / BUILD_INFO_FILE).write_text(json.dumps({"digest": f"trained-{key}", "spec": asdict(spec)}, indent=2))
    (out_dir / "training.json").write_text(json.dumps(info, indent=2))
    return out_dir
