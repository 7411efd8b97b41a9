"""Context staleness against the generated ground truth, its mapping from spotvlm's frame numbers, and the report's
accuracy-by-context-age section."""

from __future__ import annotations

import shutil

import pytest

from evaluation.dataset import generate_split, load_dataset
from evaluation.questions import QuestionConfig, candidate_questions
from evaluation.report import CONTEXT_GROUPS, EvalRecord, summarize, write_report
from evaluation.runner import Answer, context_states, group_videos
from evaluation.scenes import SceneConfig
from python_backends.context.report import ContextReport
from evaluation.staleness import FRESH, NO_CONTEXT, STALE, UNKNOWN, TruthIndex, context_state

SCENE = SceneConfig(seconds=3.0, fps=10.0, change_probability=1.0, speed=(0.02, 0.03))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    path = generate_split("test", [3], folder, SCENE, QuestionConfig(per_frame=1, every_k_frames=1))
    return group_videos(load_dataset(path))[0]


def test_a_context_from_the_same_frame_is_fresh_and_none_is_no_context(video) -> None:
    truth, size = TruthIndex(), (SCENE.height, SCENE.width)
    for example in video.examples:
        state = context_state(
            truth, example.video, example.question, example.task, example.answer, example.frame_index, size
        )
        assert state == FRESH, example
        assert context_state(truth, example.video, example.question, example.task, example.answer, None, size) == (
            NO_CONTEXT
        )


def test_a_context_from_a_frame_where_the_answer_differed_is_stale(video) -> None:
    truth, size = TruthIndex(), (SCENE.height, SCENE.width)
    frames = truth.frames(video.video)
    seen = {FRESH: 0, STALE: 0}
    for example in video.examples:
        for earlier in range(example.frame_index):
            then = {
                q.question: q.answer
                for qs in candidate_questions(frames[earlier], SCENE.width, SCENE.height).values()
                for q in qs
            }
            state = context_state(truth, example.video, example.question, example.task, example.answer, earlier, size)
            if example.question not in then:
                assert state == STALE  # no certain answer then
            elif example.task != "grounding":
                assert state == (FRESH if then[example.question] == example.answer else STALE)
            seen[state] += 1
    assert seen[FRESH] and seen[STALE]  # moving, changing objects give both


def test_without_truth_or_past_the_video_the_state_is_unknown(video, tmp_path) -> None:
    example = video.examples[0]
    size = (SCENE.height, SCENE.width)
    copy = tmp_path / "no_truth"
    shutil.copytree(example.video, copy)
    (copy / "truth.jsonl").unlink()
    assert context_state(TruthIndex(), str(copy), example.question, example.task, example.answer, 0, size) == UNKNOWN
    past = len(TruthIndex().frames(example.video))
    assert context_state(TruthIndex(), example.video, example.question, example.task, example.answer, past, size) == (
        UNKNOWN
    )


def test_context_frames_are_the_streams_send_order(video) -> None:
    """spotvlm numbers frames 0, 1, ... as they are sent: context_frame k is the k-th question's frame."""
    examples = video.examples
    answers = {
        examples[0].id: Answer("x", 1.0, None, ContextReport()),
        examples[3].id: Answer("x", 1.0, None, ContextReport(context_frame=3, context_age_ms=0)),
        examples[4].id: Answer("x", 1.0, None, ContextReport(context_frame=99)),
        examples[5].id: Answer("", 1.0, "failed", ContextReport(context_frame=2)),
    }
    states = context_states(video, answers, TruthIndex(), (SCENE.height, SCENE.width))
    assert states[examples[0].id] == NO_CONTEXT
    assert states[examples[3].id] == FRESH  # its own frame
    assert states[examples[4].id] == UNKNOWN  # a frame the stream never sent
    assert states[examples[5].id] == NO_CONTEXT  # a failed request used no context
    assert states[examples[1].id] == NO_CONTEXT  # no answer at all


def _context_records():
    def records(policy, age_ms, state, correct, wrong):
        flags = [True] * correct + [False] * wrong
        return [EvalRecord("recognition", policy, "2s", f, 30.0, age_ms, state) for f in flags]

    return (
        records("edge_only", None, None, 3, 7)
        + records("context_transfer", None, "none", 2, 8)
        + records("context_transfer", 500.0, "fresh", 9, 1)
        + records("context_transfer", 2500.0, "stale", 1, 9)
        + records("context_transfer", 7000.0, "unknown", 5, 5)
        + records("cloud", None, None, 10, 0)
    )


def test_context_groups_split_by_age_and_freshness() -> None:
    summary = summarize(_context_records())
    cell = summary.context
    assert cell[("recognition", "context_transfer", "no context")].n == 10
    assert cell[("recognition", "context_transfer", "age < 1 s")].accuracy == pytest.approx(0.9)
    assert cell[("recognition", "context_transfer", "age 1-3 s")].accuracy == pytest.approx(0.1)
    assert cell[("recognition", "context_transfer", "age ≥ 6 s")].n == 10
    assert cell[("recognition", "context_transfer", "fresh context")].n == 10
    assert cell[("recognition", "context_transfer", "stale context")].accuracy == pytest.approx(0.1)
    assert ("recognition", "context_transfer", "age 3-6 s") not in cell
    assert not [key for key in cell if key[1] in ("edge_only", "cloud")]
    assert {key[2] for key in cell} <= set(CONTEXT_GROUPS)


def test_report_has_the_context_age_table_and_plot(tmp_path) -> None:
    files = write_report(_context_records(), tmp_path)
    text = files.markdown.read_text()
    assert "## Edge accuracy against the age of its cloud context" in text
    assert "| stale context | 0.100 (10) | 0.100 (10) |" in text
    assert files.context_png is not None and files.context_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(context_age.png)" in text
    plain = write_report([r for r in _context_records() if r.context_state is None], tmp_path / "plain")
    assert plain.context_png is None and "age of its cloud context" not in plain.markdown.read_text()
