"""`spotvlm eval`'s preparation: which checkpoints the built repository loads, the edge's input size, and the
videos to replay (a JSONL dataset, or the synthetic validation or test split generated once and cached)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.model_repository import rendered_parameter
from evaluation.dataset import default_seeds, generate_split, load_dataset
from evaluation.questions import QuestionConfig
from evaluation.runner import (
    VideoPlan,
    dataset_cache_dir,
    group_videos,
    limit_videos,
)
from evaluation.questions import text_questions
from evaluation.scenes import SceneConfig, object_labels
from python_backends.context.region_questions import DEFAULT_GROUNDING_PROMPT
from python_backends.context.watch_list import WatchList

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REPOSITORY_ROOT = PROJECT_ROOT / "model_repository"


# Where each edge model's rendered config names its checkpoint.
CHECKPOINT_CONFIGS = {"edge": "edge/svlm_generate/config.pbtxt", "cloud": "cloud/lvlm/config.pbtxt"}
EDGE_PREPROCESS_CONFIG = "edge/svlm_preprocess/config.pbtxt"


# `--cloud-watch`'s default: every object label of the generated scenes, and every text question about them.
WATCH_VOCABULARY = "vocabulary"


def watch_environment(choice: str, own_dataset: bool) -> dict[str, str]:
    """spotvlm's `cloud_watch` and `cloud_watch_questions` for the edges the evaluation starts. `vocabulary`: the
    generated scenes' object labels and their recognition and counting questions (nothing with a dataset of one's
    own, whose vocabulary is unknown); otherwise `choice` is the list of objects, and no question is watched."""
    if choice.strip() != WATCH_VOCABULARY:
        objects, questions = choice, "off"
    elif own_dataset:
        objects, questions = "off", "off"
    else:
        objects, questions = ", ".join(object_labels()), "; ".join(text_questions())
    return {"SPOTVLM_CLOUD_WATCH": objects, "SPOTVLM_CLOUD_WATCH_QUESTIONS": questions}


def watch_list(environment: dict[str, str]) -> WatchList:
    """The watch list an edge started with `environment` (watch_environment's) asks, its grounding prompt the
    edge's default."""
    objects, questions = environment["SPOTVLM_CLOUD_WATCH"], environment["SPOTVLM_CLOUD_WATCH_QUESTIONS"]
    return WatchList.parse(objects, DEFAULT_GROUNDING_PROMPT, questions=questions)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rendered_checkpoint(side: str, repository_root: Path = REPOSITORY_ROOT) -> Path | None:
    """The checkpoint folder the built repository loads on `side`, or None when it cannot be read."""
    value = rendered_parameter(repository_root / CHECKPOINT_CONFIGS[side], "checkpoint")
    return Path(value).resolve() if value is not None else None


def edge_input_size(repository_root: Path = REPOSITORY_ROOT) -> tuple[int, int] | None:
    """The square the built edge resizes every frame to (its preprocess config's image_size), or None."""
    value = rendered_parameter(repository_root / EDGE_PREPROCESS_CONFIG, "image_size")
    return (int(value),) * 2 if value is not None and value.isdigit() else None


def checkpoint_problems(args: argparse.Namespace, repository_root: Path = REPOSITORY_ROOT) -> list[str]:
    problems = []
    for side in ("edge", "cloud"):
        wanted = getattr(args, f"{side}_checkpoint")
        if wanted is None:
            continue
        built = rendered_checkpoint(side, repository_root)
        if built != Path(wanted).resolve():
            problems.append(
                f"the {side} repository was built with checkpoint {built}, not {Path(wanted).resolve()}: run"
                f" ./build_engines.sh --{side}-checkpoint {wanted} (and the other side's option) first"
            )
    return problems


def load_examples(args: argparse.Namespace, videos: int, seconds: float) -> tuple[list[VideoPlan], str]:
    """The videos to replay and a line saying where they came from. DatasetError / ValueError for bad data."""
    if args.dataset is not None:
        examples = load_dataset(args.dataset)
        plans = group_videos(examples)
        if args.quick or args.videos is not None or args.seconds is not None:
            plans = limit_videos(plans, videos, seconds)
        return plans, f"dataset {args.dataset}"
    split = getattr(args, "split", "test")
    seeds = default_seeds(split, videos)
    scene_config = SceneConfig(fps=args.fps, seconds=seconds)
    question_config = QuestionConfig(hold_s=args.hold_s)
    folder = dataset_cache_dir(args.data_dir, split, seeds, scene_config, question_config)
    path = folder / f"{split}.jsonl"
    if not path.is_file():  # generate_split writes the JSONL last: present means complete
        say(f"generating the {split} split ({videos} video(s) of {seconds:g} s, seeds {seeds[0]}..{seeds[-1]}) ...")
        generate_split(split, seeds, folder, scene_config, question_config)
    held = f", standing questions held {args.hold_s:g} s" if args.hold_s else ""
    return group_videos(load_dataset(path)), f"synthetic {split} split, seeds {seeds[0]}..{seeds[-1]}{held} ({path})"
