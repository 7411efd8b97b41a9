"""`spotvlm eval`'s pure parts (evaluation/runner.py and the helpers of load_tests/eval_run.py):
planning the streams, turning answers into EvalRecords, assembling cloud_stale from fake answers, the cached
dataset's folder, the progress line and the checkpoint check. No server."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from load_tests.eval_replay import ProgressBar
from load_tests.eval_run import add_arguments
from load_tests.eval_setup import checkpoint_problems, edge_input_size, rendered_checkpoint
from evaluation.dataset import Example
from evaluation.latency import constant_setting, trace_setting, write_trace_csv
from evaluation.policies import (
    CLOUD_REFERENCE,
    CLOUD_STALE,
    CLOUD_STALE_IDEAL,
    CONTEXT_TRANSFER,
    EDGE_ONLY,
    FOCUS_ONLY,
    SPOTVLM_POLICIES,
)
from evaluation.questions import QuestionConfig
from evaluation.report import EvalRecord
from evaluation.runner import (
    Answer,
    StalePick,
    box_in_frame,
    cloud_stale_answers,
    cloud_stale_records,
    dataset_cache_dir,
    group_videos,
    limit_videos,
    parse_latencies,
    plan_cloud_stale,
    plan_runs,
    records_for,
    stale_cloud_requests,
    violations_for,
)
from evaluation.scenes import SceneConfig
from python_backends.context.report import ContextReport


def example(video: str, frame: int, question: str = "What colour is the square?", answer="red", task="recognition",
            answer_type="text", number: int = 0, fps: float = 10.0) -> Example:  # fmt: skip
    return Example(
        id=f"{video}-{frame:04d}-{number}",
        split="test",
        video=video,
        frame_index=frame,
        time_s=frame / fps,
        question=question,
        answer=answer,
        task=task,
        answer_type=answer_type,
    )


def video_examples(video: str, frames: int, **kwargs) -> list[Example]:
    return [example(video, i, **kwargs) for i in range(frames)]


# -- planning ----------------------------------------------------------------------------------------------------------


def test_group_videos_keeps_first_appearance_and_sorts_by_time():
    mixed = [example("b", 3), example("a", 2), example("b", 1), example("a", 0)]
    videos = group_videos(mixed)
    assert [v.video for v in videos] == ["b", "a"]
    assert [e.frame_index for e in videos[0].examples] == [1, 3]
    assert [e.frame_index for e in videos[1].examples] == [0, 2]
    assert videos[0].duration_s == pytest.approx(0.2)


def test_limit_videos_cuts_count_and_length():
    videos = group_videos(video_examples("a", 30) + video_examples("b", 30) + video_examples("c", 30))
    limited = limit_videos(videos, max_videos=2, max_seconds=1.0)
    assert [v.video for v in limited] == ["a", "b"]
    assert all(len(v.examples) == 10 for v in limited)  # frames 0..9 at 10 fps lie in the first second
    assert limit_videos(videos, None, None) == videos


def test_plan_runs_covers_every_setting_video_and_policy_once():
    videos = group_videos(video_examples("a", 3) + video_examples("b", 2))
    settings = [constant_setting(0.0), constant_setting(2.0)]
    runs = plan_runs(videos, settings, first_sequence_id=500)
    assert len(runs) == len(settings) * len(videos) * len(SPOTVLM_POLICIES)
    assert {(r.setting.name, r.video.video, r.policy) for r in runs} == {
        (s.name, v.video, p) for s in settings for v in videos for p in SPOTVLM_POLICIES
    }
    ids = [r.sequence_id for r in runs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[0] == 500
    # Settings outermost: all runs of a setting are together (a trace setting needs its own edge).
    per_setting = len(videos) * len(SPOTVLM_POLICIES)
    assert [r.setting.name for r in runs] == ["0s"] * per_setting + ["2s"] * per_setting


def test_plan_runs_refuses_client_side_policies_and_bad_ids():
    videos = group_videos(video_examples("a", 2))
    with pytest.raises(ValueError, match="not spotvlm policies"):
        plan_runs(videos, [constant_setting(0)], policies=[CLOUD_STALE])
    with pytest.raises(ValueError, match="first_sequence_id"):
        plan_runs(videos, [constant_setting(0)], first_sequence_id=0)


def test_request_parameters_carry_policy_latency_and_tokens(tmp_path):
    videos = group_videos(video_examples("a", 2))
    trace = trace_setting(write_trace_csv(tmp_path / "trace.csv"))
    runs = plan_runs(videos, [constant_setting(0.5), trace], policies=[FOCUS_ONLY])
    constant, traced = runs
    assert constant.request_parameters(16) == {
        "use_context": True,
        "text_context": False,
        "focus": "auto",
        "carry_answers": False,
        "cloud_delay": "500",
        "max_tokens": 16,
    }
    # A trace is the edge's config, never a request parameter (spotvlm refuses trace: per request).
    assert "cloud_delay" not in traced.request_parameters()
    assert constant.send_offsets_s() == pytest.approx([0.0, 0.1])


def test_parse_latencies(tmp_path):
    trace = trace_setting(write_trace_csv(tmp_path / "trace.csv"))
    settings = parse_latencies("0, 0.5,2s,trace", trace)
    assert [s.name for s in settings] == ["0s", "0.5s", "2s", "trace"]
    assert [s.spec for s in settings[:3]] == ["0", "500", "2000"]
    for bad, message in (("", "no latency"), ("-1", ">= 0"), ("fast", "seconds"), ("1,1", "twice")):
        with pytest.raises(ValueError, match=message):
            parse_latencies(bad, trace)
    with pytest.raises(ValueError, match="trace file"):
        parse_latencies("trace", None)


# -- results to records ------------------------------------------------------------------------------------------------


def test_records_score_answers_and_count_failures_as_wrong():
    examples = [
        example("a", 0),
        example("a", 1, question="How many circles are there?", answer="2", task="counting", answer_type="number"),
        example(
            "a", 2, question="Locate the red circle.", answer=(10, 10, 50, 50), task="grounding", answer_type="box"
        ),  # fmt: skip
        example("a", 3),
    ]
    answers = {
        examples[0].id: Answer("The square is red.", 40.0),
        examples[1].id: Answer("two", 41.0),
        examples[2].id: Answer('[{"bbox_2d": [12, 10, 50, 52], "label": "red circle"}]', 42.0),
        # examples[3]: no answer at all
    }
    records = records_for(CONTEXT_TRANSFER, "2s", examples, answers)
    ids = [dict(video="a", example_id=e.id) for e in examples]
    assert records[:3] == [
        EvalRecord("recognition", CONTEXT_TRANSFER, "2s", True, 40.0, **ids[0]),
        EvalRecord("counting", CONTEXT_TRANSFER, "2s", True, 41.0, **ids[1]),
        EvalRecord("grounding", CONTEXT_TRANSFER, "2s", True, 42.0, **ids[2]),
    ]
    assert records[3] == EvalRecord("recognition", CONTEXT_TRANSFER, "2s", False, None, **ids[3])
    failed = records_for(EDGE_ONLY, "0s", examples[:1], {examples[0].id: Answer("red", 30.0, "timeout")})
    assert failed == [EvalRecord("recognition", EDGE_ONLY, "0s", False, 30.0, **ids[0])]


def test_boxes_are_scored_in_the_frames_pixels():
    # A 320x240 frame the model saw at 252x168 (width x height): its box text is in those pixels.
    grounding = example(
        "a", 0, question="Locate the red circle.", answer=(200, 60, 240, 100), task="grounding", answer_type="box"
    )  # fmt: skip
    text = '[{"bbox_2d": [157.5, 42, 189, 70], "label": "red circle"}]'
    assert box_in_frame(text, (168, 252), (240, 320)) == pytest.approx((200, 60, 240, 100))
    assert box_in_frame("no box here", (168, 252), (240, 320)) is None
    as_text = records_for(EDGE_ONLY, "0s", [grounding], {grounding.id: Answer(text, 30.0)})
    in_frame = Answer(text, 30.0, box=box_in_frame(text, (168, 252), (240, 320)))
    mapped = records_for(EDGE_ONLY, "0s", [grounding], {grounding.id: in_frame})
    assert [r.correct for r in as_text + mapped] == [False, True]
    # A box known for a question that is not about a box is ignored: its text is scored.
    colour = example("a", 1)
    assert records_for(EDGE_ONLY, "0s", [colour], {colour.id: Answer("red", 30.0, box=(0, 0, 1, 1))})[0].correct


def test_edge_input_size_reads_the_rendered_preprocess_config(tmp_path):
    folder = tmp_path / "edge" / "svlm_preprocess"
    folder.mkdir(parents=True)
    (folder / "config.pbtxt").write_text('parameters { key: "image_size", value: { string_value: "112" } }\n')
    assert edge_input_size(tmp_path) == (112, 112)
    assert edge_input_size(tmp_path / "missing") is None


def test_cloud_reference_records_have_no_edge_latency():
    ex = example("a", 0)
    assert records_for(CLOUD_REFERENCE, "0s", [ex], {ex.id: Answer("red", 120.0)}) == [
        EvalRecord("recognition", CLOUD_REFERENCE, "0s", True, None, video="a", example_id=ex.id)
    ]


def test_violations_come_from_the_context_replies():
    videos = group_videos(video_examples("a", 2))
    run = plan_runs(videos, [constant_setting(0)], policies=[EDGE_ONLY])[0]
    first, second = run.video.examples
    answers = {
        first.id: Answer("red", 1.0, None, ContextReport(focus_mode="off", history_turns=0)),
        second.id: Answer("red", 1.0, None, ContextReport(focus_mode="crop_and_frame", history_turns=0)),
    }
    problems = violations_for(run, answers)
    assert len(problems) == 1 and problems[0].startswith(second.id) and "focus_mode" in problems[0]


# -- cloud_stale -------------------------------------------------------------------------------------------------------


def test_cloud_stale_at_zero_latency_shows_each_frames_own_answer():
    video = group_videos(video_examples("a", 5))[0]
    picks = plan_cloud_stale(video, constant_setting(0.0))
    assert [p.cloud_frame for p in picks] == [0, 1, 2, 3, 4]
    assert stale_cloud_requests(picks) == []  # the reference covers them all


def test_cloud_stale_at_a_delay_shows_the_newest_arrived_frame():
    video = group_videos(video_examples("a", 10))[0]  # frames at 0.0, 0.1, ..., 0.9 s
    picks = plan_cloud_stale(video, constant_setting(0.25), service_s=0.04)  # answers arrive 0.29 s after sending
    assert [p.cloud_frame for p in picks] == [None, None, None, 0, 1, 2, 3, 4, 5, 6]
    assert picks[5].context_age_s == pytest.approx(0.3)
    assert stale_cloud_requests(picks) == [(f, "What colour is the square?") for f in range(7)]


def test_cloud_stale_past_the_deadline_never_arrives():
    video = group_videos(video_examples("a", 5))[0]
    picks = plan_cloud_stale(video, constant_setting(12.0))
    assert all(p.cloud_frame is None for p in picks)


def test_cloud_stale_offers_a_frame_with_two_questions_once():
    examples = [example("a", 0), example("a", 0, question="What shape is the red object?", answer="square", number=1)]
    examples += [example("a", 5)]
    video = group_videos(examples)[0]
    picks = plan_cloud_stale(video, constant_setting(0.2))
    assert [p.cloud_frame for p in picks] == [None, None, 0]


def test_cloud_stale_assembly_with_fake_answers():
    video = group_videos(
        [
            example("a", 0, answer="red"),
            example("a", 1, answer="red"),
            example("a", 2, question="What shape is the red object?", answer="square", task="recognition"),
        ]
    )[0]
    e0, e1, e2 = video.examples
    picks = [StalePick(e0, None), StalePick(e1, 0, 0.1), StalePick(e2, 1, 0.1)]
    cloud = {
        (0, e0.question): Answer("red", 90.0),  # the reference's answer on frame 0, reused for frame 1's question
        (1, e2.question): Answer("circle", 95.0),  # asked on frame 1 for frame 2's question: stale and wrong
    }
    edge = {e0.id: Answer("blue", 30.0), e1.id: Answer("blue", 31.0), e2.id: Answer("square", 32.0)}
    answers = cloud_stale_answers(picks, cloud, edge)
    assert answers[e0.id] == edge[e0.id]  # nothing arrived yet: the edge's answer
    assert answers[e1.id] == Answer("red", 31.0)  # the cloud's text, the edge's latency
    assert answers[e2.id] == Answer("circle", 32.0)
    records = cloud_stale_records(picks, "1s", cloud, edge)
    assert [r.correct for r in records] == [False, True, False]
    assert {r.policy for r in records} == {CLOUD_STALE_IDEAL} and {r.latency for r in records} == {"1s"}
    assert [r.edge_latency_ms for r in records] == [30.0, 31.0, 32.0]
    missing = cloud_stale_answers([StalePick(e2, 0, 0.2)], {}, edge)
    assert missing[e2.id].error == "no cloud answer for frame 0"


def test_cloud_stale_scores_the_clouds_box_in_frame_pixels():
    """A late cloud box is scored where lvlm's DETECTIONS put it (frame pixels), not from its text, whose box is in
    the cloud's input pixels: shown on the next frame, a box that is still right counts."""
    truth = (100.0, 50.0, 140.0, 90.0)
    first, second = (
        example("g", i, question="Locate the red square.", answer=list(truth), task="grounding", answer_type="box")
        for i in (0, 1)
    )
    video = group_videos([first, second])[0]
    text = '[{"bbox_2d": [70, 35, 98, 63], "label": "red square"}]'  # the same box in a 224x157 input
    cloud = {(0, video.examples[0].question): Answer(text, 90.0, box=truth)}
    edge = {e.id: Answer("[]", 30.0) for e in video.examples}
    picks = [StalePick(video.examples[0], None), StalePick(video.examples[1], 0, 0.1)]
    records = cloud_stale_records(picks, "1s", cloud, edge)
    assert [r.correct for r in records] == [False, True]


# -- dataset cache, progress, checkpoints ---------------------------------------------------------------------------


def test_dataset_cache_dir_depends_on_everything_that_changes_the_data(tmp_path):
    base = dataset_cache_dir(tmp_path, "test", [1, 2], SceneConfig(seconds=5), QuestionConfig())
    assert base == dataset_cache_dir(tmp_path, "test", [1, 2], SceneConfig(seconds=5), QuestionConfig())
    assert base.parent == tmp_path and base.name.startswith("test-")
    others = {
        dataset_cache_dir(tmp_path, "test", [1, 3], SceneConfig(seconds=5), QuestionConfig()),
        dataset_cache_dir(tmp_path, "test", [1, 2], SceneConfig(seconds=6), QuestionConfig()),
        dataset_cache_dir(tmp_path, "test", [1, 2], SceneConfig(seconds=5), QuestionConfig(every_k_frames=2)),
    }
    assert base not in others and len(others) == 3


def test_progress_bar_counts_requests_and_can_grow_or_shrink():
    out = io.StringIO()
    bar = ProgressBar(30, out=out)
    bar.advance(label="0s edge_only")
    bar.set_total(20)  # cloud_stale's extra requests are known only after the reference
    assert bar.total == 20
    for _ in range(19):
        bar.advance(label="x")
    bar.close()
    text = out.getvalue()
    assert "eval" in text and "20/20" in text and "done" in text
    shrunk = ProgressBar(10, out=io.StringIO())
    shrunk.advance(5)
    shrunk.set_total(2)  # never below what is done
    assert shrunk.total == 5


def test_checkpoint_check_reads_the_rendered_configs(tmp_path):
    for side, relative in (("edge", "edge/svlm_generate"), ("cloud", "cloud/lvlm")):
        folder = tmp_path / relative
        folder.mkdir(parents=True)
        (folder / "config.pbtxt").write_text(
            f'parameters {{ key: "checkpoint", value: {{ string_value: "{tmp_path / side}" }} }}\n'
        )
    assert rendered_checkpoint("edge", tmp_path) == (tmp_path / "edge").resolve()
    parser = add_arguments(argparse.ArgumentParser())
    same = parser.parse_args(
        ["--edge-checkpoint", str(tmp_path / "edge"), "--cloud-checkpoint", str(tmp_path / "cloud")]
    )
    assert checkpoint_problems(same, tmp_path) == []
    other = parser.parse_args(["--cloud-checkpoint", str(tmp_path / "big")])
    (problem,) = checkpoint_problems(other, tmp_path)
    assert "./build_engines.sh --cloud-checkpoint" in problem
    assert rendered_checkpoint("edge", Path(tmp_path / "missing")) is None


def test_eval_asks_standing_questions_by_default():
    from load_tests.eval_run import EVAL_HOLD_S

    parser = add_arguments(argparse.ArgumentParser())
    assert parser.parse_args([]).hold_s == EVAL_HOLD_S > 0
    assert parser.parse_args(["--hold-s", "0"]).hold_s == 0


def run_eval_cli(argv: list[str]) -> int:
    from load_tests.eval_run import run_from_args

    return run_from_args(add_arguments(argparse.ArgumentParser()).parse_args(argv))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--edge-url", "127.0.0.1:1"], "together"),
        (["--videos", "0"], "--videos"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--hold-s", "-1"], "--hold-s"),
        (["--hold-s", "nan"], "--hold-s"),
        (["--cloud-watch", "red circle,,blue square"], "--cloud-watch"),
        (["--edge-url", "127.0.0.1:1", "--cloud-url", "127.0.0.1:2", "--latencies", "soon"], "seconds"),
        (["--edge-url", "127.0.0.1:1", "--cloud-url", "127.0.0.1:2", "--dataset", "/no/such.jsonl"], "no such"),
    ],
)
def test_bad_options_exit_2_before_any_server(argv, message, tmp_path, capsys):
    assert run_eval_cli([*argv, "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_evaluation_watches_the_generated_scenes_vocabulary_unless_told_otherwise():
    from evaluation.questions import candidate_questions, grounding_question
    from evaluation.scenes import Scene, SceneConfig
    from load_tests.eval_setup import watch_environment, watch_list

    assert add_arguments(argparse.ArgumentParser()).parse_args([]).cloud_watch == "vocabulary"
    watched = watch_list(watch_environment("vocabulary", own_dataset=False))
    # The edge asks a watched object's box in the words the benchmark's grounding questions use.
    assert watched.questions()[0] == grounding_question(watched.objects[0])
    assert len(watched.objects) == 24 and "purple star" in watched.objects
    # Every text question the generated scenes ask is watched, and every object they ask about.
    for seed in (500, 501):
        scene = Scene(seed, SceneConfig(seconds=2.0))
        for index in (0, 10, 19):
            _, truth = scene.render(index)
            for task, questions in candidate_questions(truth, *scene.size).items():
                for question in questions:
                    if task in ("recognition", "counting"):
                        assert question.question in watched.extra_questions, question
                    elif task == "grounding":
                        assert any(grounding_question(o) == question.question for o in watched.objects)
    for own_dataset, choice in ((True, "vocabulary"), (False, "off")):
        assert not watch_list(watch_environment(choice, own_dataset)).enabled
    given = watch_list(watch_environment("red circle, tree", own_dataset=True))
    assert given.objects == ("red circle", "tree") and given.extra_questions == ()


def test_a_server_that_stopped_stops_the_evaluation_with_its_log():
    from load_tests.eval_replay import ServerStopped, check_running

    class Stopped:
        grpc_url, returncode = "127.0.0.1:1", -11

        def is_running(self) -> bool:
            return False

        def log_tail(self) -> str:
            return "Stub process 'spotvlm_0_0' is not healthy."

    check_running([None])  # a server never started is not checked
    with pytest.raises(ServerStopped, match=r"127.0.0.1:1 stopped \(exit status -11\)(.|\n)*spotvlm_0_0"):
        check_running([None, Stopped()])
