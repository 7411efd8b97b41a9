"""Dense pretraining of the vision tower, then a frozen tower whose features are computed once per example.

Why (measured on 2 cores with the cloud recipe): trained end to end from question answers, the tower and the
language model stay at the majority answer for the whole budget. Supervised densely instead, one label per merged cell
(colour and shape of the object centred there, and its box), the tower alone names, after 300 steps, the colour of
63% and the shape of 25% of the objects centred in the cells of 400 held-out frames (38% of shapes when "no object"
is ruled out; README, "Not built yet"). Frozen after that, its features are computed once per training example, so
the language model's steps no longer run the tower (about 0.2 s instead of 0.46 s at batch 16) and it gets twice the
steps in the same minutes.

`pretrain_tower` trains the tower with small linear heads that are thrown away afterwards; `cache_features` runs the
frozen tower once per example; `serving_cached_features` makes the model read those instead of running the tower.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.scenes import COLOURS, SHAPES, ObjectTruth
from evaluation.staleness import TruthIndex
from training.examples import ModelExample
from training.precision import check_precision
from training.schedule import lr_factor
from training.views import MERGE, PATCH, image_grid, image_tokens, merged_cell, pixel_rows

CELL = PATCH * MERGE  # pixels of the resized image behind one merged token
NO_OBJECT = 0  # class 0 of the colour and shape heads: no object is centred in the cell


@dataclass(frozen=True)
class TowerPretrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    box_weight: float = 2.0  # the box's L1 error (fractions of the side) against the two cross-entropies
    seed: int = 0
    # Weight of the cells without an object in the colour and shape losses. About 50 of a frame's 54 cells are
    # empty: at 1.0 the tower mostly learns "no object" (held out after 300 steps: colour 0.63, shape 0.25; at 0.1:
    # 0.88 and 0.37).
    empty_weight: float = 1.0
    # Pretrain on fresh frames (fresh_frames.py), a new scene at every draw, instead of the cached split's frames.
    fresh_frames: bool = False
    # The tower's own precision (precision.PRECISIONS); None: the language model's. A bfloat16 tower step costs 0.27 s
    # against float32's 0.46 s on 2 cores, and its tower learns as a float32 one does (tests/unit/test_precision.py).
    precision: str | None = None
    # The learning rate falls along a cosine from `lr` to this share of it over the steps; 1.0: constant (the old
    # default). Why: the frozen tower keeps whatever its last steps left, and a constant rate leaves them noisy.
    final_lr_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.precision is not None:
            check_precision(self.precision)
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not 0.0 < self.empty_weight <= 1.0:
            raise ValueError(f"empty_weight must be in (0, 1], got {self.empty_weight}")


@dataclass
class CellTargets:
    """One row per merged cell of a resized image, in the tower's output order (row-major over the merged grid)."""

    colour: np.ndarray  # int64, 0 = no object, else 1 + index in COLOURS
    shape: np.ndarray  # int64, 0 = no object, else 1 + index in SHAPES
    box: np.ndarray  # float32 [cells, 4]: x1, y1, x2, y2 as fractions of the resized image's width and height
    has_object: np.ndarray  # float32, 1 where an object is centred in the cell


def cell_targets(
    objects: Sequence[ObjectTruth], frame_size: tuple[int, int], seen_size: tuple[int, int]
) -> CellTargets:
    """Labels of every merged cell of a frame of `frame_size` (height, width) resized to `seen_size`. Where two
    objects are centred in one cell, the larger one (by visible box) is the label."""
    height, width = seen_size
    rows, columns = height // CELL, width // CELL
    cells = rows * columns
    colour = np.full(cells, NO_OBJECT, np.int64)
    shape = np.full(cells, NO_OBJECT, np.int64)
    box = np.zeros((cells, 4), np.float32)
    has_object = np.zeros(cells, np.float32)
    area = np.zeros(cells)
    scale_x, scale_y = width / frame_size[1], height / frame_size[0]
    for item in objects:
        x1, y1, x2, y2 = item.box
        seen = (x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y)
        cell = merged_cell(seen, seen_size)
        size = (seen[2] - seen[0]) * (seen[3] - seen[1])
        if size <= area[cell]:
            continue
        area[cell] = size
        colour[cell] = tuple(COLOURS).index(item.colour) + 1
        shape[cell] = SHAPES.index(item.shape) + 1
        box[cell] = (seen[0] / width, seen[1] / height, seen[2] / width, seen[3] / height)
        has_object[cell] = 1.0
    return CellTargets(colour, shape, box, has_object)


def labelled_examples(examples: Sequence[ModelExample], truth: TruthIndex | None = None):
    """(image, CellTargets) of every example that shows its whole frame (focus crops have no frame-wide truth)."""
    from evaluation.dataset import load_frame

    truth = truth or TruthIndex()
    frame_sizes: dict[str, tuple[int, int]] = {}  # a video's frames share one size
    result = []
    for example in examples:
        source = example.source
        if example.context == "focus" or source is None or not truth.has_truth(source.video):
            continue
        if source.video not in frame_sizes:
            frame_sizes[source.video] = load_frame(source).shape[:2]
        objects = truth.frames(source.video)[source.frame_index]
        targets = cell_targets(objects, frame_sizes[source.video], example.images[0].shape[:2])
        result.append((example.images[0], targets))
    return result


def tower_features(visual, images: Sequence[np.ndarray]):
    """The tower's merged tokens for `images`, concatenated in order."""
    import torch

    rows, grids = zip(*(pixel_rows(image) for image in images), strict=True)
    device = next(visual.parameters()).device
    pixels, grid_thw = torch.from_numpy(np.concatenate(rows)).to(device), torch.tensor(grids, device=device)
    return visual(pixels, grid_thw=grid_thw).pooler_output


def pretrain_tower(
    model,
    labelled: Sequence | Callable[[int], list],
    config: TowerPretrainConfig,
    progress: Callable[[str], None] | None = None,
    precision: str = "fp32",
) -> list[float]:
    """Trains `model`'s vision tower (in place) on per-cell labels; returns the loss of every step. `labelled` is
    a sequence of (image, CellTargets) to sample from, or draw(n) giving n new ones (fresh_labelled_frames);
    `precision` "bf16" runs each step's forward and loss under bfloat16 autocast (precision.py)."""
    import torch

    from training.precision import autocast, training_attention

    torch.manual_seed(config.seed)
    visual = model.model.visual
    width = model.config.text_config.hidden_size
    heads = torch.nn.ModuleDict(
        {
            "colour": torch.nn.Linear(width, len(COLOURS) + 1),
            "shape": torch.nn.Linear(width, len(SHAPES) + 1),
            "box": torch.nn.Linear(width, 4),
        }
    ).to(device := next(visual.parameters()).device)
    optimizer = torch.optim.AdamW(list(visual.parameters()) + list(heads.parameters()), lr=config.lr)
    rng = np.random.default_rng(config.seed)
    visual.train()
    losses, last_log = [], time.monotonic()
    with training_attention(model, str(device), precision):
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * tower_lr_factor(step, config.steps, config.final_lr_fraction)
            if callable(labelled):
                batch = labelled(config.batch_size)
            else:
                batch = [labelled[i] for i in rng.choice(len(labelled), config.batch_size)]
            with autocast(str(device), precision):
                loss = _tower_loss(visual, heads, batch, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if progress is not None and time.monotonic() - last_log >= 20:
                last_log = time.monotonic()
                progress(f"tower step {step + 1}/{config.steps}  loss {np.mean(losses[-20:]):.3f}")
    return losses


def tower_lr_factor(step: int, steps: int, final_fraction: float) -> float:
    """Multiplier of the tower's learning rate at `step` of `steps`: the language model's cosine (trainer.lr_factor)
    from 1 to `final_fraction`, over steps and without a warm-up."""
    return lr_factor(step / max(1, steps - 1), step, warmup_steps=0, final_fraction=final_fraction)


def _tower_loss(visual, heads, batch: Sequence, config: TowerPretrainConfig):
    """The dense loss of one batch of (image, CellTargets): colour and shape cross-entropies per cell (empty cells
    weighed by `config.empty_weight`) plus the box's L1 error on the cells with an object."""
    import torch

    features = tower_features(visual, [image for image, _ in batch])

    def stacked(name: str, batch=batch, device=features.device):
        rows = np.concatenate([getattr(targets, name) for _, targets in batch])
        return torch.from_numpy(rows).to(device)

    has_object = stacked("has_object")
    cell_weight = has_object + config.empty_weight * (1 - has_object)

    def class_loss(head: str, features=features, cell_weight=cell_weight) -> torch.Tensor:
        losses = torch.nn.functional.cross_entropy(heads[head](features), stacked(head), reduction="none")
        return (losses * cell_weight).sum() / cell_weight.sum()

    box_error = (heads["box"](features) - stacked("box")).abs().sum(-1)
    return (
        class_loss("colour")
        + class_loss("shape")
        + config.box_weight * (box_error * has_object).sum() / has_object.sum().clamp(min=1)
    )


def freeze_tower(model) -> None:
    for parameter in model.model.visual.parameters():
        parameter.requires_grad_(False)
    model.model.visual.eval()


def cache_features(model, images: Sequence[np.ndarray], batch_size: int = 64) -> list:
    """The frozen tower's tokens of each image, one tensor per image."""
    import torch

    visual = model.model.visual
    result = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            sizes = [image_tokens(image_grid(image)) for image in chunk]
            result.extend(tower_features(visual, chunk).split(sizes))
    return result


@contextlib.contextmanager
def serving_cached_features(model, features: Sequence) -> Iterator[Callable[[Sequence[int]], None]]:
    """Within the block the model takes its image tokens from `features` instead of running the tower; call the
    yielded `select(indices)` before each forward with the indices (into `features`) of the batch's examples."""
    from types import SimpleNamespace

    inner = model.model
    chosen: list[int] = []

    def cached(pixel_values=None, image_grid_thw=None, **kwargs):
        return SimpleNamespace(pooler_output=tuple(features[i] for i in chosen))

    def select(indices: Sequence[int]) -> None:
        chosen[:] = [int(i) for i in indices]

    inner.get_image_features = cached
    try:
        yield select
    finally:
        del inner.get_image_features  # back to the class's method
