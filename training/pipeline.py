"""The training pipeline of one default model: data, examples, training, evaluation, cached by a hash of its inputs.

`run(recipe, minutes, out_root)` generates (or reuses) the train and test splits under `out_root/data/`, trains the
checkpoint into `out_root/<model>-<key>/`, evaluates it on the test split at zero delay (no context) and writes
`training.json` there with the per-task accuracies. A second run with the same inputs finds the folder and only
reports: the key hashes the generator version, the scene/question configs, seeds, sizes, mix and budget.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from engines.tiny_checkpoint import TinyVLMSpec
from evaluation.dataset import default_seeds, generate_split, load_dataset
from evaluation.questions import QuestionConfig
from evaluation.scenes import GENERATOR_VERSION, SceneConfig
from training.fresh_frames import (
    FreshCurriculum,
    FreshFrames,
    FreshQuestionStream,
    fresh_labelled_frames,
)
from training.examples import CLOUD_MIX, EDGE_MIX, MixConfig, build_examples, build_frame_examples
from training.number_loss import NumberLoss, NumberTokens
from training.tokens import DEFAULT_MAX_NUMBER
from training.tower_pretraining import TowerPretrainConfig
from training.precision import choose_precision
from training.trainer import TrainConfig, build_model, encode, planned, save_checkpoint, time_limit_s, train
from training.views import ModelView

# Bumped whenever the same inputs would train a different model (examples, targets, trainer).
PIPELINE_VERSION = 2
# Bumped whenever Recipe.key() hashes the recipe differently (a new option is hashed as it is, default or not, and
# the keys before it are given up: a cached checkpoint under an old key is trained again).
KEY_VERSION = 2
# (section, field) of the recipe that cannot change the trained weights nor the reported numbers.
KEY_IGNORES = (("train", "log_every_s"), ("train", "max_minutes"))
DEFAULT_OUT = Path("build/training")
CONTEXT_AGES_S = (0.5, 2.0, 9.0)
CONTEXT_EVAL_QUESTIONS = 400


@dataclass(frozen=True)
class DataConfig:
    train_videos: int = 40
    test_videos: int = 10
    seconds: float = 20.0
    train_questions: QuestionConfig = QuestionConfig(per_frame=2, every_k_frames=2)
    test_questions: QuestionConfig = QuestionConfig(per_frame=1, every_k_frames=2)
    scene: SceneConfig = SceneConfig()


@dataclass(frozen=True)
class Recipe:
    model: str
    spec: TinyVLMSpec
    view: ModelView
    mix: MixConfig
    train: TrainConfig
    data: DataConfig = DataConfig()
    max_number: int = DEFAULT_MAX_NUMBER
    # Dense pretraining of the vision tower, which is then frozen (tower_pretraining.py); None: end to end.
    tower: TowerPretrainConfig | None = None
    # 1: one training example per dataset question; more: one per frame, asking that many of the frame's questions
    # one after the other (examples.build_frame_examples). Needs a mix without context.
    questions_per_frame: int = 1
    # The language model trains on fresh frames (fresh_frames.py) in this curriculum instead of the train split's
    # cached frames; None: the cached split.
    fresh: FreshCurriculum | None = None
    # Where the tokenizer learns its merges: "generic" (the tiny checkpoints' corpus) or "benchmark" (the benchmark's
    # own chats, so its words are whole tokens: vocabulary.py).
    vocabulary: str = "generic"

    def __post_init__(self) -> None:
        if self.vocabulary not in VOCABULARIES:
            raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {self.vocabulary!r}")
        if self.questions_per_frame < 1:
            raise ValueError(f"questions_per_frame must be >= 1, got {self.questions_per_frame}")
        if self.questions_per_frame > 1 and self.mix.has_context:
            raise ValueError(f"the {self.model} mix has context (history or focus): it asks one question per image")
        if self.train.attention_weight > 0 and self.questions_per_frame == 1 and self.fresh is None:
            raise ValueError("attention supervision needs the answers' cells: many questions per frame or fresh frames")
        if self.fresh is not None and self.tower is not None and not self.tower.fresh_frames:
            raise ValueError("a fresh-frame recipe has no cached split to pretrain the tower on: use fresh frames")
        if self.fresh is not None and sum(count for _, count in self.fresh.scene_quota) > self.questions_per_frame:
            raise ValueError(f"scene_quota {self.fresh.scene_quota} asks more than {self.questions_per_frame} a frame")
        if self.fresh is not None and self.mix.has_context:
            raise ValueError(f"the {self.model} mix has context (history or focus): fresh frames have no history")

    def key(self) -> str:
        """Hash of every input that decides the trained weights and the reported numbers: every field of the recipe
        but those in KEY_IGNORES, with KEY_VERSION, PIPELINE_VERSION and the scene generator's version."""
        recipe = asdict(self)
        for section, name in KEY_IGNORES:
            del recipe[section][name]
        payload = {
            "key": KEY_VERSION,
            "pipeline": PIPELINE_VERSION,
            "generator": GENERATOR_VERSION,
            "recipe": recipe,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


VOCABULARIES = ("generic", "benchmark")

# With head_dim 32, M-RoPE at Qwen's base of 1e6 leaves the image grid's height and width sections almost unrotated,
# so where an object is reaches the text model only faintly. A base of 10 turned a one-square localisation probe's
# test loss after 100 steps from 0.34 (1e6) and 0.23 (100) to 0.15, and single-square grounding's mean IoU after 200
# steps from 0.07 (100) to 0.21. Prompts are short, so the faster wrap-around of text positions costs little.
TRAINED_ROPE_THETA = 10.0

EDGE_TRAINED_SPEC = TinyVLMSpec(
    name="tiny-qwen2.5-vl-edge-trained",
    text_hidden=128,
    text_layers=3,
    text_heads=4,
    text_kv_heads=2,
    text_intermediate=256,
    mrope_section=(4, 6, 6),
    vision_hidden=96,
    vision_depth=3,
    vision_heads=4,
    vision_intermediate=192,
    fullatt_block_indexes=(2,),
    image_size=112,
    seed=1234,
    rope_theta=TRAINED_ROPE_THETA,
)
CLOUD_TRAINED_SPEC = TinyVLMSpec(
    name="tiny-qwen2.5-vl-cloud-trained",
    text_hidden=192,
    text_layers=4,
    text_heads=6,
    text_kv_heads=2,
    text_intermediate=384,
    mrope_section=(4, 6, 6),
    vision_hidden=128,
    vision_depth=4,
    vision_heads=4,
    vision_intermediate=256,
    fullatt_block_indexes=(1, 3),
    image_size=224,
    seed=5678,
    # With 12 questions per frame on a frozen tower, Qwen's base beat 10: after 2,000 steps, localisation 0.19
    # against 0.10 and recognition 0.30 against 0.25 (600 test questions).
    rope_theta=1e6,
)


def recipe(
    model: str,
    minutes: float,
    seed: int = 0,
    batch_size: int | None = None,
    peak_lr: float | None = None,
    tower_steps: int | None = None,
    questions_per_frame: int | None = None,
    tower_empty_weight: float | None = None,
    fresh_reading_fraction: float | None = None,
    attention_weight: float | None = None,
    steps: int | None = None,
    device: str | None = None,
    vocabulary: str | None = None,
    precision: str | None = None,
    scene_quota: dict[str, int] | None = None,
    tower_precision: str | None = None,
    final_lr_fraction: float | None = None,
    number_weight: float | None = None,
    number_distance_weight: float | None = None,
    coordinate_bin: int | None = None,
    reading_scene_share: float | None = None,
    tower_final_lr_fraction: float | None = None,
) -> Recipe:
    """The default recipe of `model`, with any of its settings overridden. `tower_steps` > 0 pretrains the vision
    tower densely first and freezes it (0: trained end to end); `questions_per_frame` > 1 asks that many questions
    of each training frame in one sequence; `tower_empty_weight` weighs the tower's empty cells; a
    `fresh_reading_fraction` trains the tower and the language model on fresh frames, single-object grounding for
    that share of the language model's minutes first (fresh_frames.FreshCurriculum); an `attention_weight` > 0
    supervises one head's attention onto the asked objects (attention_supervision.py; many questions per frame);
    `steps` gives the language model a step budget instead of its minutes' schedule (trainer.TrainConfig.steps);
    `device` ("cuda", say) is where both the tower and the language model train; `vocabulary` "benchmark" learns
    the tokenizer's merges from the benchmark's chats (vocabulary.py); `precision` is "bf16" (bfloat16 autocast;
    the edge's default), "bf16-fp32-scores" (the cloud's) or "fp32" (precision.py); `scene_quota` {task: n} asks
    at least n of a task's questions per full-scene frame (fresh_frames.FreshCurriculum; {}: the tasks take turns);
    `tower_precision` is the tower's own precision (default: the language model's); `final_lr_fraction` is where
    the language model's cosine ends, as a share of its peak; `number_weight` and `number_distance_weight` set how
    the answer loss treats number tokens (number_loss.NumberLoss); `coordinate_bin` is the grid, in the model's input
    pixels, that training targets put box corners on (examples.MixConfig); `reading_scene_share` is the share of
    full scenes among the reading phase's frames (fresh_frames.FreshCurriculum); `tower_final_lr_fraction` is where
    the tower's cosine learning rate ends, as a share of its rate (1: constant)."""
    base = _base_recipe(model, minutes, seed, batch_size, peak_lr)
    if vocabulary is not None:
        base = replace(base, vocabulary=vocabulary)
    if coordinate_bin is not None:
        base = replace(base, mix=replace(base.mix, coordinate_bin=coordinate_bin))
    numbers = {"weight": number_weight, "distance_weight": number_distance_weight}
    number_loss = replace(base.train.number_loss, **{k: v for k, v in numbers.items() if v is not None})
    given = {"steps": steps, "device": device, "precision": precision, "final_lr_fraction": final_lr_fraction}
    given = {k: v for k, v in given.items() if v is not None}
    base = replace(base, train=replace(base.train, number_loss=number_loss, **given))
    if tower_steps is not None:
        # A pretrained tower keeps the recipe's other tower settings; a recipe without one gets the defaults, on
        # fresh frames when the language model trains on them (there is no cached split to label).
        if tower_steps == 0:
            base = replace(base, tower=None)
        elif base.tower is not None:
            base = replace(base, tower=replace(base.tower, steps=tower_steps))
        else:
            tower = TowerPretrainConfig(steps=tower_steps, seed=seed, fresh_frames=base.fresh is not None)
            base = replace(base, tower=tower)
    if tower_final_lr_fraction is not None:
        if base.tower is None:
            raise ValueError("tower_final_lr_fraction needs a pretrained tower (tower_steps > 0)")
        base = replace(base, tower=replace(base.tower, final_lr_fraction=float(tower_final_lr_fraction)))
    if tower_precision is not None:
        if base.tower is None:
            raise ValueError("tower_precision needs a pretrained tower (tower_steps > 0)")
        base = replace(base, tower=replace(base.tower, precision=tower_precision))
    if questions_per_frame is not None:
        base = replace(base, questions_per_frame=questions_per_frame)
    if tower_empty_weight is not None:
        if base.tower is None:
            raise ValueError("tower_empty_weight needs a pretrained tower (tower_steps > 0)")
        base = replace(base, tower=replace(base.tower, empty_weight=tower_empty_weight))
    if attention_weight is not None:
        base = replace(base, train=replace(base.train, attention_weight=attention_weight))
    if fresh_reading_fraction is not None:
        fresh = base.fresh or FreshCurriculum(seed=seed)
        base = replace(base, fresh=replace(fresh, reading_fraction=fresh_reading_fraction))
        if base.tower is not None:
            base = replace(base, tower=replace(base.tower, fresh_frames=True))
    if scene_quota is not None:
        if base.fresh is None:
            raise ValueError("scene_quota needs fresh frames (fresh_reading_fraction)")
        base = replace(base, fresh=replace(base.fresh, scene_quota=tuple(sorted(scene_quota.items()))))
    if reading_scene_share is not None:
        if base.fresh is None:
            raise ValueError("reading_scene_share needs fresh frames (fresh_reading_fraction)")
        base = replace(base, fresh=replace(base.fresh, reading_scene_share=float(reading_scene_share)))
    return base


def _base_recipe(model: str, minutes: float, seed: int, batch_size: int | None, peak_lr: float | None) -> Recipe:
    if model == "edge":
        return Recipe(
            "edge",
            EDGE_TRAINED_SPEC,
            ModelView(112, keep_aspect=False),
            EDGE_MIX,
            TrainConfig(
                minutes=float(minutes), batch_size=batch_size or 32, peak_lr=peak_lr or 2e-3, seed=seed,
                precision="bf16",
            ),
        )  # fmt: skip
    if model == "cloud":
        # The tower learns colour, shape and box per cell on fresh frames, its learning rate falling along a cosine
        # to a tenth, then is frozen; the language model reads single objects' boxes for 15% of its minutes, then
        # answers 12 questions per fresh frame with one head's attention supervised, all in bfloat16 but the
        # attention scores; a number token's loss adds 0.1 times the expected distance of the predicted number from
        # the right one (README, "Trained tiny checkpoints").
        return Recipe(
            "cloud",
            CLOUD_TRAINED_SPEC,
            ModelView(224, keep_aspect=True),
            CLOUD_MIX,
            TrainConfig(
                minutes=float(minutes), batch_size=batch_size or 8, peak_lr=peak_lr or 1.5e-3, seed=seed,
                precision="bf16-fp32-scores", attention_weight=1.0, number_loss=NumberLoss(distance_weight=0.1),
            ),
            tower=TowerPretrainConfig(
                steps=600, seed=seed, empty_weight=0.1, fresh_frames=True, final_lr_fraction=0.1,
            ),
            questions_per_frame=12,
            fresh=FreshCurriculum(reading_fraction=0.15, seed=seed),
            vocabulary="benchmark",
        )  # fmt: skip
    raise ValueError(f"model must be edge or cloud, got {model!r}")


def plain_mix(mix: MixConfig) -> MixConfig:
    """The same targets, without random context: evaluation examples."""
    return replace(mix, history_fraction=0.0, focus_fraction=0.0)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def split_path(split: str, data: DataConfig, root: Path) -> Path:
    """Generate the split once per data config (cached under root/data/<hash>/)."""
    count = data.train_videos if split == "train" else data.test_videos
    questions = data.train_questions if split == "train" else data.test_questions
    payload = json.dumps(
        {"generator": GENERATOR_VERSION, "split": split, "count": count, "seconds": data.seconds,
         "questions": questions.identity(), "scene": asdict(data.scene)},
        sort_keys=True, default=str,
    )  # fmt: skip
    folder = root / "data" / f"{split}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        _say(f"generating the {split} split ({count} videos of {data.seconds:.0f} s) in {folder}")
        scene = replace(data.scene, seconds=data.seconds)
        generate_split(split, default_seeds(split, count), folder, scene, questions)
    return path


def checkpoint_folder(recipe: Recipe, out_root: Path = DEFAULT_OUT) -> Path:
    """Where `recipe`'s checkpoint is (or will be) cached."""
    return Path(out_root) / f"{recipe.model}-{recipe.key()}"


def run(recipe: Recipe, out_root: Path = DEFAULT_OUT, threads: int = 0, eval_limit: int | None = None) -> dict:
    """Train (or reuse) and evaluate one model; returns the contents of its training.json."""
    import torch

    from training.evaluate import evaluate, summarise, target_size_class

    if threads > 0:
        torch.set_num_threads(threads)
    out_root = Path(out_root)
    key = recipe.key()
    folder = checkpoint_folder(recipe, out_root)
    info_path = folder / "training.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        _say(f"{recipe.model}: up to date in {folder} (key {key})")
        print_report(info)
        return info

    started = time.monotonic()
    # Fresh frames replace the train split's examples, so that split is not even generated.
    train_set = load_dataset(split_path("train", recipe.data, out_root)) if recipe.fresh is None else []
    test_set = load_dataset(split_path("test", recipe.data, out_root))
    if eval_limit is not None:
        test_set = test_set[:eval_limit]
    corpus = None
    if recipe.vocabulary == "benchmark":
        from training.vocabulary import benchmark_corpus

        corpus = benchmark_corpus(recipe.view, plain_mix(recipe.mix))
    model, tokenizer = build_model(recipe.spec, recipe.max_number, corpus)
    model.to(recipe.train.device)
    parameters = sum(p.numel() for p in model.parameters())
    examples = training_examples(recipe, train_set) if recipe.fresh is None else []
    described = f"{len(examples)} training examples" if examples else "fresh frames"
    _say(f"{recipe.model}: {parameters / 1e6:.2f} M parameters, {described}")
    encoded = [encode(tokenizer, e) for e in examples]
    ready_s = time.monotonic() - started
    features, tower_losses = None, []
    train_config, choice = planned(recipe.train, recipe.model, recipe.tower.steps if recipe.tower else 0)
    _say(f"{recipe.model}: training in {choice.precision} ({choice.reason})")
    if recipe.tower is not None:
        tower_started = time.monotonic()
        tower_losses, features = pretrain_and_cache(model, examples, encoded, recipe)
        # The tower's minutes come out of the same budget: the whole run still ends on time.
        spent_min = (time.monotonic() - tower_started) / 60
        train_config = replace(train_config, minutes=max(0.05, train_config.minutes - spent_min))
    guard_min = time_limit_s(train_config) / 60
    budget = f"{train_config.steps} steps (expected in {train_config.minutes:.1f} min, stopped after {guard_min:.1f})"
    _say(f"{recipe.model}: training for {budget} on {train_config.device} (examples ready in {ready_s:.0f} s)")
    say = lambda m: _say(f"{recipe.model}: {m}")  # noqa: E731
    stream = None
    if recipe.fresh is not None:
        stream = FreshQuestionStream(tokenizer, recipe.view, recipe.mix, recipe.questions_per_frame, recipe.fresh)
    numbers = None if recipe.train.number_loss.is_plain else NumberTokens(tokenizer, recipe.max_number)
    result = train(
        model, tokenizer, encoded, train_config, progress=say, image_features=features, stream=stream, numbers=numbers
    )
    _say(f"{recipe.model}: {result.steps} steps in {result.seconds:.0f} s; evaluating on {len(test_set)} questions")
    test_examples = build_examples(test_set, recipe.view, plain_mix(recipe.mix), seed=0)
    predictions = evaluate(model, tokenizer, test_examples)
    summary = summarise(predictions)
    grounding = [p for p in predictions if p.parsed_box is not None]
    context = evaluate_with_context(model, tokenizer, recipe, test_set) if recipe.mix.history_fraction > 0 else {}
    info = {
        "key": key,
        "model": recipe.model,
        "recipe": json.loads(json.dumps(asdict(recipe), default=str)),
        "parameters": parameters,
        "steps": result.steps,
        "planned_steps": train_config.steps,
        "stopped_by_guard": result.stopped_by_guard,
        "precision": {"requested": choice.requested, "ran": choice.precision, "reason": choice.reason},
        "train_seconds": result.seconds,
        "examples": len(encoded),
        "final_loss": sum(result.losses[-20:]) / max(1, len(result.losses[-20:])),
        "tower_final_loss": sum(tower_losses[-20:]) / len(tower_losses[-20:]) if tower_losses else None,
        "test_zero_delay": summary,
        "grounding_by_target_size": summarise(grounding, target_size_class),
        "test_with_context": context,
    }
    save_checkpoint(model.to("cpu"), tokenizer, recipe.spec, folder, key, info)
    print_report(info)
    return info


def training_examples(recipe: Recipe, train_set) -> list:
    if recipe.questions_per_frame == 1:
        return build_examples(train_set, recipe.view, recipe.mix, seed=recipe.train.seed)
    return build_frame_examples(train_set, recipe.view, recipe.mix, recipe.questions_per_frame, recipe.train.seed)


def pretrain_and_cache(model, examples, encoded, recipe: Recipe) -> tuple[list[float], list | None]:
    """Pretrains and freezes the tower (recipe.tower), then computes its features of every encoded example (None
    without encoded examples: with fresh frames the frozen tower runs at every step)."""
    from training.tower_pretraining import (
        cache_features,
        freeze_tower,
        labelled_examples,
        pretrain_tower,
    )

    steps = recipe.tower.steps
    if recipe.tower.fresh_frames:
        labelled = fresh_labelled_frames(FreshFrames(recipe.tower.seed), recipe.view)
        _say(f"{recipe.model}: pretraining the vision tower for {steps} steps on fresh frames")
    else:
        labelled = labelled_examples(examples)
        _say(f"{recipe.model}: pretraining the vision tower for {steps} steps on {len(labelled)} frames")
    say = lambda m: _say(f"{recipe.model}: {m}")  # noqa: E731
    precision = choose_precision(recipe.tower.precision or recipe.train.precision, recipe.train.device).precision
    losses = pretrain_tower(model, labelled, recipe.tower, progress=say, precision=precision)
    freeze_tower(model)
    features = cache_features(model, [e.image for e in encoded]) if encoded else None
    _say(f"{recipe.model}: tower frozen (loss {sum(losses[-20:]) / len(losses[-20:]):.3f})")
    return losses, features


def print_report(info: dict) -> None:
    from training.evaluate import format_summary, size_classes_legend

    print(f"{info['model']} on the test split at zero delay (accuracy [95% CI]):")
    print(format_summary(info["test_zero_delay"]))
    if info.get("grounding_by_target_size"):
        print(f"  grounding by the target's size ({size_classes_legend()}):")
        print(format_summary(info["grounding_by_target_size"]))
    for age, rows in info.get("test_with_context", {}).items():
        print(f"{info['model']} with the right answer {age} old in its history (stale: no longer right now):")
        print(format_summary(rows))


def evaluate_with_context(model, tokenizer, recipe: Recipe, test_set, limit: int = CONTEXT_EVAL_QUESTIONS) -> dict:
    """Accuracy when the history holds the right answer to the same question `age` ago (a perfect cloud at that
    delay), per task and by whether that answer is stale now: how much the model trusts old text over the image."""
    from training.evaluate import evaluate, summarise

    results = {}
    for age in CONTEXT_AGES_S:
        examples = build_examples(test_set[:limit], recipe.view, plain_mix(recipe.mix), seed=0, fixed_age_s=age)

        def group(prediction) -> str:
            example = prediction.example
            state = "no context" if example.context_stale is None else ("stale" if example.context_stale else "fresh")
            return f"{example.task} / {state}"

        results[f"{age:g} s"] = summarise(evaluate(model, tokenizer, examples), group)
        _say(f"{recipe.model}: context evaluation at {age:g} s done")
    return results
