"""The pure parts of `spotvlm eval` (load_tests/eval_run.py does the I/O): which streams to run, how the answers
become `report.EvalRecord`s, how `cloud_stale` is assembled and the cached dataset's folder.

How a video is replayed: the frames that carry questions form one Triton sequence per (video, policy, latency),
each frame sent at its `time_s` after the stream's start (so a dataset that asks every k-th frame is paced by its
own times), one request per question (a frame with two questions is sent twice, back to back).

`cloud_stale` shows, for the question asked at frame j, the newest answer to that question that the context_transfer
run's cloud link had received when frame j came (its CONTEXT's `cloud_answer`: the same frames, arrival times and
questions the edge's context came from), its boxes moved from the image the cloud saw to the frame's pixels; before
any, edge_only's answer to frame j (`received_cloud_stale_answers`).

`cloud_stale_ideal` is the idealised replay: the cloud's answer to that same question on the newest frame k whose
answer would have arrived by j's time (policies.replay_cloud_stale over the video's frames, every frame sent, as
the edge does with a high `cloud_max_inflight`), and edge_only's answer before any has. The cloud's answers are its
zero-delay answers: for k == j the cloud reference's own answer, otherwise one more cloud request (k, question),
asked once and shared by every latency that needs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_backends.context.report import ContextReport
from python_backends.detections import scale_box
from evaluation.dataset import Example
from evaluation.latency import LatencySetting, constant_setting, latency_model
from evaluation.policies import (
    CLOUD_REFERENCE,
    CLOUD_STALE,
    CLOUD_STALE_IDEAL,
    SPOTVLM_POLICIES,
    ReplayFrame,
    policy_request_parameters,
    policy_violations,
    replay_cloud_stale,
)
from evaluation.questions import QuestionConfig
from evaluation.report import EvalRecord
from evaluation.scenes import SceneConfig
from evaluation.staleness import UNKNOWN, TruthIndex, context_state
from evaluation.scoring import parse_box, score

# spotvlm's cloud_deadline_ms (10 s): a later cloud answer is dropped, in the replay as on the link.
CLOUD_DEADLINE_S = 10.0


@dataclass(frozen=True)
class VideoPlan:
    """One video's questions in send order (time, frame, id)."""

    video: str
    examples: tuple[Example, ...]

    @property
    def duration_s(self) -> float:
        return self.examples[-1].time_s - self.examples[0].time_s if self.examples else 0.0


@dataclass(frozen=True)
class StreamRun:
    """One Triton sequence: a video's questions under one spotvlm policy and one latency setting."""

    video: VideoPlan
    policy: str
    setting: LatencySetting
    sequence_id: int

    def request_parameters(self, max_tokens: int | None = None) -> dict[str, Any]:
        """spotvlm's request parameters; a trace setting sends no `cloud_delay` (its edge has it in the config)."""
        params = policy_request_parameters(self.policy)
        if self.setting.per_request:
            params["cloud_delay"] = self.setting.spec
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        return params

    def send_offsets_s(self) -> list[float]:
        """When each request goes, in seconds after the stream's first one."""
        first = self.video.examples[0].time_s
        return [e.time_s - first for e in self.video.examples]


@dataclass(frozen=True)
class Answer:
    """One answered (or failed) request. `latency_ms`: the client's round trip (None when not measured)."""

    text: str
    latency_ms: float | None = None
    error: str | None = None
    context: ContextReport = field(default_factory=ContextReport)
    # The answer's first box in the frame's pixels, where known (box_in_frame, or the cloud's DETECTIONS): a
    # Qwen2.5-VL model writes boxes in the pixels of its resized input, and questions are answered in the frame's.
    box: tuple[float, float, float, float] | None = None


def box_in_frame(
    text: str, input_size: tuple[int, int], frame_size: tuple[int, int]
) -> tuple[float, float, float, float] | None:
    """The first box of `text`, moved from the model's resized input (height, width) to the frame's; None if none."""
    box = parse_box(text)
    return None if box is None else scale_box(box, input_size, frame_size)


def scored_answer(example: Example, answer: Answer) -> str | tuple[float, float, float, float]:
    """What the scorer reads: the box in frame pixels for a box question where it is known, else the text."""
    if example.answer_type == "box" and answer.box is not None:
        return answer.box
    return answer.text


def group_videos(examples: Iterable[Example]) -> list[VideoPlan]:
    """Videos in order of first appearance, each with its questions in send order."""
    by_video: dict[str, list[Example]] = {}
    for example in examples:
        by_video.setdefault(example.video, []).append(example)
    return [
        VideoPlan(video, tuple(sorted(items, key=lambda e: (e.time_s, e.frame_index, e.id))))
        for video, items in by_video.items()
    ]


def limit_videos(videos: Sequence[VideoPlan], max_videos: int | None, max_seconds: float | None) -> list[VideoPlan]:
    """The first `max_videos` videos, each cut to the questions in its first `max_seconds` (--quick on a dataset)."""
    chosen = list(videos[:max_videos] if max_videos is not None else videos)
    if max_seconds is None:
        return chosen
    out = []
    for plan in chosen:
        start = plan.examples[0].time_s
        kept = tuple(e for e in plan.examples if e.time_s - start < max_seconds)
        if kept:
            out.append(VideoPlan(plan.video, kept))
    return out


def parse_latencies(text: str, trace: LatencySetting | None) -> list[LatencySetting]:
    """`--latencies 0,0.5,2,trace`: constants in seconds, `trace` for the fluctuating trace; ValueError otherwise."""
    settings: list[LatencySetting] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item == "trace":
            if trace is None:
                raise ValueError("'trace' needs the trace file")
            setting = trace
        else:
            try:
                seconds = float(item.removesuffix("s"))
            except ValueError:
                raise ValueError(f"a latency is seconds (e.g. 0.5) or 'trace', got {item!r}") from None
            if not math.isfinite(seconds) or seconds < 0:
                raise ValueError(f"a latency must be >= 0 seconds, got {item!r}")
            setting = constant_setting(seconds)
        if setting.name in {s.name for s in settings}:
            raise ValueError(f"latency {item!r} is given twice")
        settings.append(setting)
    if not settings:
        raise ValueError("no latency settings given")
    return settings


def plan_runs(
    videos: Sequence[VideoPlan],
    settings: Sequence[LatencySetting],
    policies: Sequence[str] = SPOTVLM_POLICIES,
    first_sequence_id: int = 1,
) -> list[StreamRun]:
    """Every spotvlm stream of the evaluation, settings outermost (a trace setting needs its own edge server, so
    runs of one setting stay together), then videos, then policies; sequence ids are distinct and increasing."""
    if first_sequence_id < 1:
        raise ValueError(f"first_sequence_id must be >= 1, got {first_sequence_id}")
    unknown = [p for p in policies if p not in SPOTVLM_POLICIES]
    if unknown:
        raise ValueError(f"not spotvlm policies: {unknown}; they are {list(SPOTVLM_POLICIES)}")
    runs = []
    for setting in settings:
        for video in videos:
            if not video.examples:
                continue
            for policy in policies:
                runs.append(StreamRun(video, policy, setting, first_sequence_id + len(runs)))
    return runs


# -- results to records ------------------------------------------------------------------------------------------------


def records_for(
    policy: str,
    latency: str,
    examples: Sequence[Example],
    answers: Mapping[str, Answer],
    states: Mapping[str, str] | None = None,
) -> list[EvalRecord]:
    """One record per example; an example with no answer, or a failed request, counts as wrong. `states`: each
    example's context state (context_states), for the spotvlm policies."""
    records = []
    for example in examples:
        answer = answers.get(example.id)
        correct = answer is not None and answer.error is None and score(example, scored_answer(example, answer)).correct
        latency_ms = answer.latency_ms if answer is not None and policy != CLOUD_REFERENCE else None
        age = answer.context.context_age_ms if answer is not None else None
        state = states.get(example.id) if states is not None else None
        records.append(
            EvalRecord(example.task, policy, latency, correct, latency_ms, age, state, example.video, example.id)
        )
    return records


def context_states(
    video: VideoPlan, answers: Mapping[str, Answer], truth: TruthIndex, size: tuple[int, int]
) -> dict[str, str]:
    """Per example of one spotvlm stream: whether the cloud context it was answered with was still right
    (staleness.context_state). spotvlm numbers a stream's frames from 0 in send order, so CONTEXT's context_frame k
    is the frame of the stream's k-th question."""
    states = {}
    for example in video.examples:
        answer = answers.get(example.id)
        sent = answer.context.context_frame if answer is not None and answer.error is None else None
        frame_index = (
            video.examples[sent].frame_index if isinstance(sent, int) and 0 <= sent < len(video.examples) else None
        )
        if sent is not None and frame_index is None:
            states[example.id] = UNKNOWN
            continue
        states[example.id] = context_state(
            truth, example.video, example.question, example.task, example.answer, frame_index, size
        )
    return states


def violations_for(run: StreamRun, answers: Mapping[str, Answer]) -> list[str]:
    """What spotvlm's CONTEXT replies show it did against the run's policy (answered requests only)."""
    problems = []
    for example in run.video.examples:
        answer = answers.get(example.id)
        if answer is not None and answer.error is None:
            problems += [f"{example.id}: {p}" for p in policy_violations(run.policy, answer.context)]
    return problems


# -- cloud_stale -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StalePick:
    """cloud_stale's source for one question: the cloud's answer on `cloud_frame`, or (None) edge_only's answer."""

    example: Example
    cloud_frame: int | None
    context_age_s: float | None = None


def plan_cloud_stale(
    video: VideoPlan,
    setting: LatencySetting,
    service_s: float = 0.0,
    max_inflight: int | None = None,
    deadline_s: float | None = CLOUD_DEADLINE_S,
) -> list[StalePick]:
    """Which frame's cloud answer cloud_stale shows for each question of the video, at `setting` plus the cloud's
    own service time. Each frame is offered once (at its first question's time); times start at the video's first
    question, as the trace's replay does."""
    if not video.examples:
        return []
    start = video.examples[0].time_s
    frames: dict[int, float] = {}
    for example in video.examples:
        frames.setdefault(example.frame_index, example.time_s - start)
    replay = [ReplayFrame(index, time_s, index, None) for index, time_s in frames.items()]
    choices = replay_cloud_stale(replay, latency_model(setting, service_s), max_inflight, deadline_s)
    by_frame = {frame.frame_id: choice for frame, choice in zip(replay, choices)}
    picks = []
    for example in video.examples:
        choice = by_frame[example.frame_index]
        if choice.source == "cloud":
            picks.append(StalePick(example, choice.cloud_frame_id, choice.context_age_s))
        else:
            picks.append(StalePick(example, None))
    return picks


def stale_cloud_requests(picks: Iterable[StalePick]) -> list[tuple[int, str]]:
    """(frame, question) pairs the cloud must answer beyond the reference (which covers each question's own frame),
    each once, in first-needed order."""
    needed: dict[tuple[int, str], None] = {}
    for pick in picks:
        if pick.cloud_frame is not None and pick.cloud_frame != pick.example.frame_index:
            needed.setdefault((pick.cloud_frame, pick.example.question), None)
    return list(needed)


def cloud_stale_answers(
    picks: Iterable[StalePick],
    cloud_answers: Mapping[tuple[int, str], Answer],
    edge_answers: Mapping[str, Answer],
) -> dict[str, Answer]:
    """cloud_stale's answer per example id. `cloud_answers` is keyed by (frame, question) and holds the reference's
    answers on each question's own frame as well; `edge_answers` are edge_only's, by example id, whose latency every
    cloud_stale answer carries (the edge answers each frame either way). A missing cloud answer counts as failed."""
    out = {}
    for pick in picks:
        edge = edge_answers.get(pick.example.id)
        latency_ms = edge.latency_ms if edge is not None else None
        if pick.cloud_frame is None:
            out[pick.example.id] = edge if edge is not None else Answer("", None, "no edge_only answer")
            continue
        cloud = cloud_answers.get((pick.cloud_frame, pick.example.question))
        if cloud is None:
            out[pick.example.id] = Answer("", latency_ms, f"no cloud answer for frame {pick.cloud_frame}")
        else:
            # The cloud's box in frame pixels comes along: its text's box is in the cloud's input pixels.
            out[pick.example.id] = Answer(cloud.text, latency_ms, cloud.error, box=cloud.box)
    return out


def cloud_stale_records(
    picks: Sequence[StalePick],
    latency: str,
    cloud_answers: Mapping[tuple[int, str], Answer],
    edge_answers: Mapping[str, Answer],
) -> list[EvalRecord]:
    answers = cloud_stale_answers(picks, cloud_answers, edge_answers)
    return records_for(CLOUD_STALE_IDEAL, latency, [p.example for p in picks], answers)


def received_cloud_stale_answers(
    examples: Sequence[Example],
    transfer_answers: Mapping[str, Answer],
    edge_answers: Mapping[str, Answer],
    frame_size: tuple[int, int] | None = None,
) -> dict[str, Answer]:
    """cloud_stale's answer per example id, from what context_transfer's link had received (its answers' CONTEXT
    `cloud_answer`); edge_only's answer where none had arrived, whose latency every answer carries. `frame_size`:
    the frame's (height, width), which the cloud's boxes are moved to (None: its first box as the cloud gave it).
    A failed context_transfer request leaves that question unknown: a failed answer."""
    out = {}
    for example in examples:
        edge = edge_answers.get(example.id)
        latency_ms = edge.latency_ms if edge is not None else None
        transfer = transfer_answers.get(example.id)
        if transfer is None or transfer.error is not None:
            out[example.id] = Answer("", latency_ms, "no context_transfer answer: what its link had is unknown")
            continue
        received = transfer.context.cloud_answer
        if received is None:
            out[example.id] = edge if edge is not None else Answer("", None, "no edge_only answer")
            continue
        box = None
        if received.boxes:
            first = tuple(received.boxes[0])
            if frame_size is not None and received.frame_size is not None:
                first = scale_box(first, tuple(received.frame_size), frame_size)
            box = tuple(float(v) for v in first)
        out[example.id] = Answer(received.text, latency_ms, box=box)  # type: ignore[arg-type]
    return out


def received_cloud_stale_records(
    video: VideoPlan,
    latency: str,
    transfer_answers: Mapping[str, Answer],
    edge_answers: Mapping[str, Answer],
    frame_size: tuple[int, int] | None = None,
) -> list[EvalRecord]:
    answers = received_cloud_stale_answers(video.examples, transfer_answers, edge_answers, frame_size)
    return records_for(CLOUD_STALE, latency, video.examples, answers)


# -- the cached dataset ------------------------------------------------------------------------------------------------


def dataset_cache_dir(
    root: str | Path,
    split: str,
    seeds: Sequence[int],
    scene_config: SceneConfig,
    question_config: QuestionConfig,
) -> Path:
    """`root/<split>-<hash>`: one folder per (seeds, scene and question settings), so a change regenerates."""
    key = json.dumps(
        {
            "split": split,
            "seeds": list(seeds),
            "scene": dataclasses.asdict(scene_config),
            "questions": question_config.identity(),
        },
        sort_keys=True,
        default=list,
    )
    return Path(root) / f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
