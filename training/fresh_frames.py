"""Fresh procedural training frames: every frame drawn comes from a new scene of the train generator.

Why (measured on 2 cores): the cloud trained on the cached train split (about 4,000 frames) answered its
training frames about twice as well as the test split (recognition 0.54 against 0.27). A frame costs 0.3 ms to render,
so a recipe with fresh frames (opt-in: `--fresh-reading-fraction`) shows its tower and language model a
new scene at each draw instead, and they cannot memorise frames.

Seeds come from a block of the train range far above any cached split's seeds, so a fresh frame is never a test frame
nor a frame of the cached train split. A source is deterministic for its seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from evaluation.dataset import TRAIN_SEED_START, check_seeds
from evaluation.questions import TASKS, candidate_questions
from evaluation.scenes import ObjectTruth, Scene, SceneConfig
from training.examples import MixConfig, ModelExample, balanced_draw, frame_example, quota_draw
from training.tower_pretraining import cell_targets
from training.trainer import encode
from training.views import ModelView

FRESH_SEED_START = TRAIN_SEED_START + 1_000_000
FRESH_SEED_SPAN = 1 << 30
# One object and no entries: what a question asks about needs no finding, only reading (the curriculum's first phase).
SINGLE_OBJECT_SCENE = SceneConfig(initial_objects=(1, 1), max_objects=1, entries_per_10s=0.0)


class FreshFrames:
    """Draws (frame, ground truth) pairs, each from a scene of its own, at a random time within the scene."""

    def __init__(self, seed: int, scene: SceneConfig | None = None, seconds: float = 6.0) -> None:
        self.rng = np.random.default_rng(seed)
        # Short scenes: a draw simulates the whole scene up to its frame, and 6 s still covers entries and exits.
        self.scene = replace(scene or SceneConfig(), seconds=seconds)

    def draw(self) -> tuple[np.ndarray, list[ObjectTruth]]:
        seed = FRESH_SEED_START + int(self.rng.integers(FRESH_SEED_SPAN))
        check_seeds("train", [seed])
        scene = Scene(seed, self.scene)
        return scene.render(int(self.rng.integers(scene.num_frames)))


@dataclass(frozen=True)
class FreshCurriculum:
    """The language model's data when it trains on fresh frames: for the first `reading_fraction` of its minutes,
    single-object frames asking only `reading_tasks` (reading an answer off the one object, with nothing to find),
    then full scenes asking every task. Why: on 2 cores, reading a box off a single object took about 1,300 steps
    to start and about 4,000 to reach IoU >= 0.5 on 55% of held-out single objects (README, "Not built yet")."""

    reading_fraction: float = 0.0
    reading_tasks: tuple[str, ...] = ("grounding",)
    seed: int = 0
    # Full scenes: at least this many questions of a task per frame where it has them ((task, count) pairs; the rest
    # take turns). Empty: the tasks only take turns (examples.balanced_draw).
    scene_quota: tuple[tuple[str, int], ...] = ()
    # This share of the reading phase's frames are full scenes asking every task already. Why: finding the asked
    # object among several is learned only on full scenes, and on 2 cores a hard switch left some seeds on a plateau
    # for about 1,500 steps before it "clicked" (README, probes Q and S).
    reading_scene_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.reading_fraction <= 1.0:
            raise ValueError(f"reading_fraction must be in [0, 1], got {self.reading_fraction}")
        if not 0.0 <= self.reading_scene_share <= 1.0:
            raise ValueError(f"reading_scene_share must be in [0, 1], got {self.reading_scene_share}")
        unknown = set(self.reading_tasks) - set(TASKS)
        if not self.reading_tasks or unknown:
            raise ValueError(f"reading_tasks must be a non-empty subset of {TASKS}, got {self.reading_tasks}")
        tasks = [task for task, _ in self.scene_quota]
        if set(tasks) - set(TASKS) or len(set(tasks)) != len(tasks):
            raise ValueError(f"scene_quota must name tasks of {TASKS} once each, got {self.scene_quota}")
        if any(count < 0 for _, count in self.scene_quota):
            raise ValueError(f"scene_quota counts must be >= 0, got {self.scene_quota}")


class FreshQuestionStream:
    """Training batches from fresh frames: each frame asks up to `questions_per_frame` of its questions, the tasks
    taking turns (examples.build_frame_examples), in the curriculum's phase for the elapsed share of the budget."""

    def __init__(
        self, tokenizer, view: ModelView, mix: MixConfig, questions_per_frame: int, curriculum: FreshCurriculum
    ) -> None:
        if mix.has_context:
            raise ValueError("fresh frames take a mix without history or focus context")
        self.tokenizer, self.view, self.mix = tokenizer, view, mix
        self.questions_per_frame, self.curriculum = questions_per_frame, curriculum
        self.scene_quota = dict(curriculum.scene_quota)
        self.reading = FreshFrames(curriculum.seed, SINGLE_OBJECT_SCENE)
        self.scenes = FreshFrames(curriculum.seed + 1)
        self.rng = np.random.default_rng(curriculum.seed + 2)
        # Its own generator: a share of 0 leaves every other draw as it was before the option existed.
        self.share_rng = np.random.default_rng(curriculum.seed + 3)

    def phase(self, elapsed_fraction: float) -> str:
        return "reading" if elapsed_fraction < self.curriculum.reading_fraction else "scenes"

    def example(self, elapsed_fraction: float) -> ModelExample:
        reading = self.phase(elapsed_fraction) == "reading"
        share = self.curriculum.reading_scene_share
        if reading and share > 0 and self.share_rng.random() < share:
            reading = False
        source = self.reading if reading else self.scenes
        while True:
            frame, truth = source.draw()
            height, width = frame.shape[:2]
            candidates = candidate_questions(truth, width, height)
            if reading:
                candidates = {task: qs for task, qs in candidates.items() if task in self.curriculum.reading_tasks}
            if reading or not self.scene_quota:
                chosen = balanced_draw(candidates, self.questions_per_frame, self.rng)
            else:
                chosen = quota_draw(candidates, self.scene_quota, self.questions_per_frame, self.rng)
            if chosen:  # a frame whose objects are all leaving has nothing to ask
                break
        return frame_example("fresh", frame, truth, chosen, self.view, self.mix)

    def __call__(self, batch_size: int, elapsed_fraction: float) -> list:
        return [encode(self.tokenizer, self.example(elapsed_fraction)) for _ in range(batch_size)]


def fresh_labelled_frames(frames: FreshFrames, view: ModelView):
    """draw(n) -> n (image, CellTargets) pairs of fresh frames as `view` sees them: the tower's pretraining data."""

    def draw(count: int) -> list:
        result = []
        for _ in range(count):
            frame, truth = frames.draw()
            image = view.resize(frame)
            result.append((image, cell_targets(truth, frame.shape[:2], image.shape[:2])))
        return result

    return draw
