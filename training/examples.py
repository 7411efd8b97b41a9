"""Training and evaluation examples from a generated split: what a model sees, reads and should answer.

Each dataset question becomes one example: the frame as the model sees it (views.ModelView), the chat history, the
question, and the target text. Targets are what the served model must emit: the colour/shape word, the grid cell,
the count, or Qwen2.5-VL grounding JSON in the model's input pixels on the coarse bin grid (tokens.py).

The edge model's mix adds, per example, at most one of:
- text history: one cloud answer about an earlier frame, written by spotvlm's own context builder
  (python_backends/context/served_context.py: tagged with its age, and with `tracking` carried to the frame).
  The age is a cloud latency drawn from the benchmark's settings plus up to one frame interval, so the answer is stale
  (no longer right) as often as the scenes make it at those delays. Most of the time the turn asks the same question,
  otherwise another question about that frame;
- a focus crop (recognition only): the current frame cropped by the same builder around where the target was `age`
  ago, with the serving path's age-dependent margin (or, with `tracking`, around where it was tracked to).

`build_frame_examples` makes the cloud's mix instead: one example per frame, asking many of the frame's questions one
after the other (`follow_ups`). On 2 cores the language model does not learn, from one question per image, to find
the object a question names among the image tokens; with 12 questions per frame, every image's tokens are read by a
dozen answers per step, and localisation left its prior (cloud, 20 min: 0.45 against 0.17 for the most common cell).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from python_backends.context.focus import FocusMode
from python_backends.context.replacement import ReplacementConfig
from python_backends.context.served_context import ServedContextConfig, build_context_input, track_answers
from python_backends.context.store import CloudResult
from python_backends.context.tracking import FrameHistory
from python_backends.detections import Detection
from python_backends.detections import scale_box
from evaluation.dataset import Example, load_frame
from evaluation.questions import candidate_questions
from evaluation.staleness import TruthIndex, answer_at, is_stale
from python_backends.prompts import Turn
from training.tokens import binned_box, grounding_answer
from training.views import ModelView, merged_cell

# Cloud latencies of the benchmark, in seconds: context ages are drawn from these.
BENCHMARK_LATENCIES_S = (0.5, 1.0, 2.0, 4.0, 9.0)
_GROUNDING_LABEL = re.compile(r"^Locate the (.+?) and give")


@dataclass(frozen=True)
class MixConfig:
    """The share of examples with each kind of context (edge); all zero gives plain frame + question (cloud)."""

    history_fraction: float = 0.0
    focus_fraction: float = 0.0  # of recognition examples
    same_question_fraction: float = 0.75  # history turns that asked the current question
    latencies_s: tuple[float, ...] = BENCHMARK_LATENCIES_S
    coordinate_bin: int = 4
    # The context as spotvlm serves it with focus_tracking on: the cloud's boxes carried to the current frame, the
    # history tagged tracked/lost with how much the region changed. Off: the paper's method.
    tracking: bool = False

    def __post_init__(self) -> None:
        for name in ("history_fraction", "focus_fraction", "same_question_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.coordinate_bin < 1:
            raise ValueError(f"coordinate_bin must be >= 1, got {self.coordinate_bin}")

    @property
    def has_context(self) -> bool:
        return self.history_fraction > 0 or self.focus_fraction > 0


# Bins of 2 px keep every edge box target at IoU >= 0.5 in its 112 px view (4 px bins lose 10 % of them).
# Every history turn asks the current question: spotvlm's history holds only answers to the question being asked
# (context_match), so an edge that also learned to ignore histories about other questions would only learn to trust
# its history less.
# The edge learns on the context spotvlm serves by default: cloud boxes tracked to its frame (focus_tracking on).
EDGE_MIX = MixConfig(
    history_fraction=0.4, focus_fraction=0.3, same_question_fraction=1.0, coordinate_bin=2, tracking=True
)
CLOUD_MIX = MixConfig()


@dataclass
class ModelExample:
    """One example as a model sees it."""

    example_id: str
    task: str
    question: str
    target: str  # the text the model should answer
    images: list[np.ndarray]  # UINT8, already resized to what the vision tower sees
    history: list[Turn] = field(default_factory=list)
    context: str = "none"  # "none", "history" or "focus"
    context_age_s: float | None = None
    context_stale: bool | None = None  # history only: whether the earlier answer is wrong for this frame
    source: Example | None = None  # the dataset example, for scoring
    seen_size: tuple[int, int] = (0, 0)  # (height, width) of the full frame as the model sees it
    # More questions about the same image, asked after `question` was answered, each with its target answer.
    follow_ups: list[Turn] = field(default_factory=list)
    # Per answer (`question`'s, then each follow-up's): the merged cells of the objects it is about, for attention
    # supervision (attention_supervision.py); empty when unknown.
    answer_cells: list[tuple[int, ...]] = field(default_factory=list)


def answer_text(example_task: str, answer, question: str, seen_size: tuple[int, int], frame_size, coordinate_bin: int):
    """The target text for an answer: grounding boxes go to the model's input pixels, on the bin grid."""
    if example_task != "grounding":
        return str(answer)
    match = _GROUNDING_LABEL.match(question)
    label = match.group(1) if match else "object"
    box = binned_box(scale_box(answer, frame_size, seen_size), seen_size, coordinate_bin)
    return grounding_answer(box, label)


def _draw_age(rng: np.random.Generator, mix: MixConfig) -> float:
    """A cloud latency of the benchmark plus the wait for the next frame's question (up to one frame at 10 fps)."""
    return float(rng.choice(mix.latencies_s)) + float(rng.uniform(0.0, 0.1))


def _context_config(seen: tuple[int, int], mix: MixConfig, tracking: bool) -> ServedContextConfig:
    """spotvlm's context builder as the examples use it: any question's answer may be the history (the mix asks
    another question about the earlier frame at times), the edge's pixels and bin grid."""
    return ServedContextConfig(
        replacement=ReplacementConfig(match_question=False),
        tracking=tracking,
        svlm_size=tuple(seen),
        coordinate_bin=mix.coordinate_bin,
    )


def _add_context(item, example, frame, earlier_index, wants_history, fixed_age_s, mix, rng, truth, seen, tracking):
    """Fills `item`'s history (or picks its focus crop) from the cloud's answer about frame `earlier_index`, built by
    spotvlm's own context builder (served_context); returns the image to show."""
    height, width = frame.shape[:2]
    earlier_truth = truth.frames(example.video)[earlier_index]
    now_ms = int(round(example.time_s * 1000))
    earlier_ms = int(round(example.time_s * earlier_index / example.frame_index * 1000))
    if not wants_history:
        targets = [o for o in earlier_truth if o.object_id in example.meta.get("target_ids", [])]
        detections = tuple(Detection(o.label, tuple(float(v) for v in o.box)) for o in targets)
        if not detections:
            return frame
        answer = CloudResult(earlier_index, earlier_ms, 0.0, 0.0, "", detections, (height, width), example.question)
        mode = FocusMode.CROP_ONLY
    else:
        same = fixed_age_s is not None or rng.random() < mix.same_question_fraction
        earlier = answer_at(example.question, earlier_truth, width, height) if same else None
        if earlier is None and not same:
            pool = [q for qs in candidate_questions(earlier_truth, width, height).values() for q in qs]
            earlier = pool[int(rng.integers(len(pool)))] if pool else None
        if earlier is None:
            return frame
        # The cloud answers in the edge's pixels here (training's ideal cloud); its boxes, in the frame's pixels,
        # are what tracking carries forward.
        text = answer_text(earlier.task, earlier.answer, earlier.question, seen, (height, width), mix.coordinate_bin)
        detections = ()
        if earlier.task == "grounding":
            match = _GROUNDING_LABEL.match(earlier.question)
            label = match.group(1) if match else "object"
            detections = (Detection(label, tuple(float(v) for v in earlier.answer)),)
        answer = CloudResult(earlier_index, earlier_ms, 0.0, 0.0, text, detections, (height, width), earlier.question)
        mode = FocusMode.OFF
    config = _context_config(seen, mix, tracking)
    tracks = None
    if tracking:
        frames = FrameHistory(max_frames=2)
        frames.add(earlier_index, earlier_ms, load_frame(replace(example, frame_index=earlier_index)))
        frames.add(example.frame_index, now_ms, frame)
        tracks = track_answers(frames, [answer], example.frame_index, example.question, config.max_tracked_boxes)
    context = build_context_input(frame, example.question, now_ms, [], [answer], tracks, mode, config)
    age = (now_ms - earlier_ms) / 1000
    if wants_history:
        item.history = context.history.turns
        item.context, item.context_age_s = "history", age
        if earlier.question == example.question:
            item.context_stale = is_stale(example.task, earlier.answer, example.answer)
        return frame
    if context.plan.mode is FocusMode.OFF:
        return frame
    item.context, item.context_age_s = "focus", age
    return context.plan.images[0]


def build_examples(
    dataset: list[Example],
    view: ModelView,
    mix: MixConfig,
    seed: int,
    fixed_age_s: float | None = None,
    truth: TruthIndex | None = None,
    tracking: bool | None = None,
) -> list[ModelExample]:
    """Model examples for `dataset`, deterministic for a seed. `fixed_age_s` gives every example a same-question
    history turn of that age (where the question was answerable then): the evaluation of context's effect.
    `tracking`: the context as spotvlm serves it with `focus_tracking` on (the cloud's boxes carried to the frame);
    off, as with it off; None: as `mix` says."""
    tracking = mix.tracking if tracking is None else tracking
    rng = np.random.default_rng(seed)
    truth = truth or TruthIndex()
    # Questions of one frame are consecutive: keeping only the last frame decoded bounds memory.
    last_key, frame = None, None
    result = []
    for example in dataset:
        key = (example.video, example.frame_index)
        if key != last_key:
            last_key, frame = key, load_frame(example)
        height, width = frame.shape[:2]
        seen = view.seen_size(height, width)
        target = answer_text(example.task, example.answer, example.question, seen, (height, width), mix.coordinate_bin)
        item = ModelExample(
            example.id, example.task, example.question, target, [], source=example, seen_size=tuple(seen)
        )
        draw = rng.random()
        wants_history = fixed_age_s is not None or draw < mix.history_fraction
        wants_focus = (
            fixed_age_s is None
            and example.task == "recognition"
            and mix.history_fraction <= draw < mix.history_fraction + mix.focus_fraction
        )
        image = frame
        if wants_history or wants_focus:
            age = fixed_age_s if fixed_age_s is not None else _draw_age(rng, mix)
            # The first frame has no earlier one; otherwise the frame interval follows from the frame's time.
            earlier_index = -1
            if example.frame_index > 0:
                frame_step_s = example.time_s / example.frame_index
                earlier_index = example.frame_index - int(round(age / frame_step_s))
            # Before the video had run for `age`, no cloud answer that old exists: the frame stays without context.
            if earlier_index >= 0:
                image = _add_context(item, example, frame, earlier_index, wants_history, fixed_age_s, mix, rng,
                                     truth, seen, tracking)  # fmt: skip
        item.images = [view.resize(image)]
        result.append(item)
    return result


def balanced_draw(by_task: dict[str, list], count: int, rng: np.random.Generator) -> list:
    """Up to `count` questions, the tasks taking turns (in a random order) as long as each has questions left: a frame
    allows about 10 counting questions to 3 localisation ones, while the test split asks each task about as often."""
    queues = [[questions[i] for i in rng.permutation(len(questions))] for questions in by_task.values() if questions]
    queues = [queues[i] for i in rng.permutation(len(queues))]
    chosen = []
    while queues and len(chosen) < count:
        chosen.extend(queue.pop() for queue in queues[: count - len(chosen)])
        queues = [queue for queue in queues if queue]
    return chosen


def quota_draw(by_task: dict[str, list], quotas: dict[str, int], count: int, rng: np.random.Generator) -> list:
    """Up to `count` questions: first up to `quotas[task]` of each task's questions, then the tasks taking turns over
    the rest (balanced_draw), in a random order. A quota weighs a task the frame alone would ask too seldom."""
    chosen, rest = [], {}
    for task, questions in by_task.items():
        shuffled = [questions[i] for i in rng.permutation(len(questions))]
        take = min(quotas.get(task, 0), len(shuffled), count - len(chosen))
        chosen.extend(shuffled[:take])
        rest[task] = shuffled[take:]
    chosen.extend(balanced_draw(rest, count - len(chosen), rng))
    return [chosen[i] for i in rng.permutation(len(chosen))]


def build_frame_examples(
    dataset: list[Example],
    view: ModelView,
    mix: MixConfig,
    questions_per_frame: int,
    seed: int,
    truth: TruthIndex | None = None,
) -> list[ModelExample]:
    """One example per frame of `dataset`: up to `questions_per_frame` of every question the frame allows (the tasks
    taking turns, each task's questions drawn at random), the first as `question`, the others as `follow_ups`.
    Deterministic for a seed. Plain frames only: context (history, focus crops) is the edge's mix, which asks one
    question per image."""
    if questions_per_frame < 1:
        raise ValueError(f"questions_per_frame must be >= 1, got {questions_per_frame}")
    if mix.has_context:
        raise ValueError("many questions per frame take a mix without history or focus context")
    rng = np.random.default_rng(seed)
    truth = truth or TruthIndex()
    result, seen_frames = [], set()
    for example in dataset:
        key = (example.video, example.frame_index)
        if key in seen_frames or not truth.has_truth(example.video):
            continue
        seen_frames.add(key)
        frame = load_frame(example)
        height, width = frame.shape[:2]
        objects = truth.frames(example.video)[example.frame_index]
        chosen = balanced_draw(candidate_questions(objects, width, height), questions_per_frame, rng)
        if not chosen:
            continue
        item = frame_example(f"{example.video}#{example.frame_index}", frame, objects, chosen, view, mix)
        item.source = example
        result.append(item)
    return result


def frame_example(
    example_id: str, frame: np.ndarray, objects: list, chosen: list, view: ModelView, mix: MixConfig
) -> ModelExample:
    """One example asking the `chosen` questions (evaluation.questions.Question) of `frame` one after the other;
    `objects` is the frame's ground truth (evaluation.scenes.ObjectTruth), which gives each answer's cells."""
    height, width = frame.shape[:2]
    seen = view.seen_size(height, width)
    boxes = {o.object_id: o.box for o in objects}
    cells = [
        tuple(
            sorted({merged_cell(scale_box(boxes[i], (height, width), seen), seen) for i in q.target_ids if i in boxes})
        )
        for q in chosen
    ]
    turns = [
        Turn(q.question, answer_text(q.task, q.answer, q.question, seen, (height, width), mix.coordinate_bin))
        for q in chosen
    ]
    return ModelExample(
        example_id,
        chosen[0].task,
        turns[0].question,
        turns[0].answer,
        [view.resize(frame)],
        seen_size=tuple(seen),
        follow_ups=turns[1:],
        answer_cells=cells,
    )
