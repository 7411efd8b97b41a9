"""python -m training --model edge|cloud --minutes M --out DIR"""

from __future__ import annotations

import argparse
from dataclasses import replace
import sys

from training.precision import PRECISIONS
from training.pipeline import DEFAULT_OUT, VOCABULARIES, recipe, run


def _quota(text: str) -> dict[str, int]:
    if text == "none":
        return {}
    try:
        pairs = [item.split("=") for item in text.split(",")]
        return {task.strip(): int(count) for task, count in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TASK=N[,TASK=N...], got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train a default tiny checkpoint on the benchmark's train split and report test accuracy.",
    )
    parser.add_argument("--model", choices=("edge", "cloud"), required=True)
    parser.add_argument(
        "--minutes",
        type=float,
        required=True,
        help="training budget: without --steps, the steps these minutes gave on the reference machine; a run is"
        " stopped at three times them",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="cache folder (data and checkpoints)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the model's recipe)")
    parser.add_argument(
        "--final-lr-fraction", type=float, help="where the cosine learning rate ends, as a share of the peak (0.1)"
    )
    parser.add_argument(
        "--tower-steps",
        type=int,
        help="pretrain the vision tower densely for N steps, then freeze it; 0: end to end (default: the recipe's)",
    )
    parser.add_argument(
        "--questions-per-frame",
        type=int,
        help="ask N questions of each training frame in one sequence (default: the recipe's; >1 needs no context)",
    )
    parser.add_argument(
        "--tower-empty-weight",
        type=float,
        help="weight of the tower's empty cells in its class losses, in (0, 1] (default: the recipe's)",
    )
    parser.add_argument(
        "--fresh-reading-fraction",
        type=float,
        help="train on fresh frames instead of the cached split: single-object grounding for this share of the "
        "language model's minutes, then full scenes (default: the cached split)",
    )
    parser.add_argument(
        "--attention-weight",
        type=float,
        help="supervise one language-model head's attention onto the asked objects with this weight (default 0)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="a step budget for the language model: its schedule follows steps, not minutes, which still cap the run",
    )
    parser.add_argument(
        "--vocabulary",
        choices=VOCABULARIES,
        help="where the tokenizer learns its merges; benchmark: its words become whole tokens (default generic)",
    )
    parser.add_argument("--device", help="torch device to train on, e.g. cuda (default cpu)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="bf16: train under bfloat16 autocast, about twice as fast on CPUs with AVX512-BF16 (default fp32)",
    )
    parser.add_argument(
        "--tower-precision", choices=PRECISIONS, help="the tower's precision (default: the language model's)"
    )
    parser.add_argument(
        "--scene-quota",
        type=_quota,
        help="full-scene frames ask at least N questions of a task, as TASK=N[,TASK=N...]; 'none': the tasks take "
        "turns (default: the recipe's)",
    )
    parser.add_argument(
        "--number-weight",
        type=float,
        help="a number token (box corner, count) counts as this many tokens in its answer's loss (default 1)",
    )
    parser.add_argument(
        "--number-distance-weight",
        type=float,
        help="add this times the expected distance of the predicted number from the target to a number token's "
        "loss (default 0)",
    )
    parser.add_argument(
        "--coordinate-bin",
        type=int,
        help="box corners in training targets lie on multiples of this many input pixels (default: the recipe's)",
    )
    parser.add_argument(
        "--reading-scene-share",
        type=float,
        help="this share of the reading phase's frames are full scenes asking every task (default 0)",
    )
    parser.add_argument(
        "--tower-final-lr-fraction",
        type=float,
        help="the tower's learning rate falls along a cosine to this share of its peak (default: the recipe's)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        help="stop the language model's steps after this many minutes of wall time, whatever is left of a step "
        "budget (default: three times --minutes); not part of the recipe's key",
    )
    parser.add_argument("--eval-limit", type=int, help="evaluate on the first N test questions only")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    if args.tower_steps is not None and args.tower_steps < 0:
        parser.error("--tower-steps must be >= 0")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.max_minutes is not None and args.max_minutes <= 0:
        parser.error("--max-minutes must be > 0")
    try:
        chosen = recipe(
            args.model,
            args.minutes,
            args.seed,
            args.batch_size,
            args.lr,
            args.tower_steps,
            args.questions_per_frame,
            args.tower_empty_weight,
            args.fresh_reading_fraction,
            args.attention_weight,
            args.steps,
            args.device,
            args.vocabulary,
            args.precision,
            args.scene_quota,
            args.tower_precision,
            args.final_lr_fraction,
            args.number_weight,
            args.number_distance_weight,
            args.coordinate_bin,
            args.reading_scene_share,
            args.tower_final_lr_fraction,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.max_minutes is not None:
        chosen = replace(chosen, train=replace(chosen.train, max_minutes=args.max_minutes))
    run(
        chosen,
        args.out,
        args.threads,
        args.eval_limit,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
