"""Evaluation policies: spotvlm's request parameters per policy, and cloud_stale replayed with a fake clock."""

from __future__ import annotations

import pytest

from python_backends.context.focus import FocusMode, parse_focus_mode
from evaluation.latency import DelaySpecLatency, TraceConfig, write_trace_csv
from evaluation.policies import (
    CLIENT_POLICIES,
    CLOUD_STALE,
    CLOUD_STALE_IDEAL,
    CONTEXT_TRANSFER,
    CONTEXT_TRANSFER_NO_TRACKING,
    EDGE_ONLY,
    FOCUS_ONLY,
    POLICIES,
    REPLACEMENT_ONLY,
    SPOTVLM_POLICIES,
    TEXT_CONTEXT,
    CloudStaleReplayer,
    ReplayFrame,
    policy_request_parameters,
    policy_violations,
    replay_cloud_stale,
)
from python_backends.context.report import ContextReport
from python_backends.triton_io import bool_parameter


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TableLatency:
    """Latency by send time, so a test can make a later frame overtake an earlier one."""

    def __init__(self, by_sent_s: dict[float, float], default: float = 0.0) -> None:
        self.by_sent_s = by_sent_s
        self.default = default
        self.asked: list[float] = []

    def latency_s(self, sent_s: float) -> float:
        self.asked.append(sent_s)
        return self.by_sent_s.get(sent_s, self.default)


# -- request parameters ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, use_context, text_context, focus",
    [
        (EDGE_ONLY, False, None, "off"),
        (REPLACEMENT_ONLY, True, True, "off"),
        (FOCUS_ONLY, True, False, "auto"),
        (CONTEXT_TRANSFER, True, True, "auto"),
    ],
)
def test_request_parameters_per_policy(policy, use_context, text_context, focus):
    params = policy_request_parameters(policy)
    assert params["use_context"] is use_context
    assert params.get(TEXT_CONTEXT) is text_context
    assert params["focus"] == focus


@pytest.mark.parametrize("policy", SPOTVLM_POLICIES)
def test_request_parameters_are_what_spotvlm_parses_today(policy):
    params = policy_request_parameters(policy)
    # The parsers spotvlm itself uses on these parameters: a typo here would be an INVALID_ARG on every frame.
    assert bool_parameter(params, "use_context", True) is params["use_context"]
    # The focusing policies take the edge's configured mode (here crop_only), the others turn focus off.
    expected = FocusMode.OFF if params["focus"] == "off" else FocusMode.CROP_ONLY
    assert parse_focus_mode(params["focus"], FocusMode.CROP_ONLY) is expected


def _switches(policy):
    params = policy_request_parameters(policy)
    text = params["use_context"] and params.get(TEXT_CONTEXT, True)
    focus = params["use_context"] and params["focus"] != "off"
    return text, focus


def test_the_spotvlm_policies_are_a_two_by_two_of_text_context_and_focus():
    assert _switches(EDGE_ONLY) == (False, False)
    assert _switches(REPLACEMENT_ONLY) == (True, False)
    assert _switches(FOCUS_ONLY) == (False, True)
    assert _switches(CONTEXT_TRANSFER) == (True, True)


def test_request_parameters_are_a_fresh_copy():
    policy_request_parameters(CONTEXT_TRANSFER)["focus"] = "changed"
    assert policy_request_parameters(CONTEXT_TRANSFER)["focus"] == "auto"


def test_cloud_stale_has_no_request_parameters():
    with pytest.raises(ValueError, match="client-side"):
        policy_request_parameters(CLOUD_STALE)


def test_unknown_policy_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="edge_only"):
        policy_request_parameters("cloud_only")


def test_every_policy_is_either_spotvlm_or_client_side():
    assert set(POLICIES) == set(SPOTVLM_POLICIES) | set(CLIENT_POLICIES)
    assert not set(SPOTVLM_POLICIES) & set(CLIENT_POLICIES)
    assert set(CLIENT_POLICIES) == {CLOUD_STALE, CLOUD_STALE_IDEAL}


# -- policy_violations -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, context",
    [
        (EDGE_ONLY, {"focus_mode": "off", "history_turns": 0, "context_frame": None}),
        (REPLACEMENT_ONLY, {"focus_mode": "off", "history_turns": 4, "context_frame": 2}),
        (FOCUS_ONLY, {"focus_mode": "crop_and_frame", "history_turns": 0, "context_frame": 2}),
        (CONTEXT_TRANSFER, {"focus_mode": "crop_and_frame", "history_turns": 4, "context_frame": 2}),
        (CONTEXT_TRANSFER, {"focus_mode": "off", "history_turns": 0, "context_frame": None}),  # no cloud yet
        (
            CONTEXT_TRANSFER,
            {"focus_mode": "off", "history_turns": 1, "context_frame": 2, "answer_source": "cloud_tracked"},
        ),
    ],
)
def test_contexts_that_honour_the_policy(policy, context):
    assert policy_violations(policy, ContextReport.from_dict(context)) == []


def test_focus_only_with_history_names_the_missing_parameter():
    problems = policy_violations(FOCUS_ONLY, ContextReport(focus_mode="crop_and_frame", history_turns=3))
    assert len(problems) == 1 and TEXT_CONTEXT in problems[0]


@pytest.mark.parametrize(
    "policy, context",
    [
        (EDGE_ONLY, {"focus_mode": "off", "history_turns": 0, "context_frame": 5}),
        (EDGE_ONLY, {"focus_mode": "off", "history_turns": 2, "context_frame": None}),
        (REPLACEMENT_ONLY, {"focus_mode": "crop_and_frame", "history_turns": 2, "context_frame": 1}),
        (
            FOCUS_ONLY,
            {"focus_mode": "crop_only", "history_turns": 0, "context_frame": 1, "answer_source": "cloud_tracked"},
        ),
        (CONTEXT_TRANSFER_NO_TRACKING, {"focus_mode": "off", "context_frame": 1, "answer_source": "cloud_tracked"}),
    ],
)
def test_contexts_that_break_the_policy(policy, context):
    assert policy_violations(policy, ContextReport.from_dict(context))


# -- cloud_stale -------------------------------------------------------------------------------------------------------


def test_before_any_arrival_the_edge_answer_is_shown():
    clock = FakeClock(0.0)
    replayer = CloudStaleReplayer(TableLatency({}, default=2.0), clock=clock)
    assert replayer.answer("edge-a").source == "edge"  # nothing sent yet
    assert replayer.offer(0, "cloud-0")
    clock.now = 1.999
    choice = replayer.answer("edge-b")
    assert (choice.answer, choice.source, choice.cloud_frame_id, choice.context_age_s) == ("edge-b", "edge", None, None)


def test_an_answer_counts_from_its_arrival_time_inclusive():
    clock = FakeClock(10.0)
    replayer = CloudStaleReplayer(TableLatency({}, default=2.0), clock=clock)
    replayer.offer(3, "cloud-3")
    clock.now = 12.0
    choice = replayer.answer("edge")
    assert (choice.answer, choice.source, choice.cloud_frame_id) == ("cloud-3", "cloud", 3)
    assert choice.context_age_s == pytest.approx(2.0)
    clock.now = 15.5
    assert replayer.answer("edge").context_age_s == pytest.approx(5.5)  # the answer ages while nothing newer comes


def test_out_of_order_arrivals_show_the_newest_frame_arrived():
    # Frame 0 hits a spike (arrives at 5.0); frame 1 is sent later and arrives first (at 1.5).
    replayer = CloudStaleReplayer(TableLatency({0.0: 5.0, 1.0: 0.5}), clock=FakeClock(), max_inflight=None)
    assert replayer.offer(0, "cloud-0", sent_s=0.0)
    assert replayer.offer(1, "cloud-1", sent_s=1.0)
    assert replayer.answer("edge", at_s=0.9).source == "edge"
    assert replayer.answer("edge", at_s=1.5).answer == "cloud-1"
    # Frame 0's late arrival does not displace the newer frame 1.
    assert replayer.answer("edge", at_s=6.0).answer == "cloud-1"
    assert replayer.answer("edge", at_s=6.0).context_age_s == pytest.approx(5.0)


def test_a_late_older_frame_is_shown_while_it_is_the_only_arrival():
    replayer = CloudStaleReplayer(TableLatency({0.0: 5.0, 1.0: 9.0}), clock=FakeClock(), max_inflight=None)
    replayer.offer(0, "cloud-0", sent_s=0.0)
    replayer.offer(1, "cloud-1", sent_s=1.0)
    assert replayer.answer("edge", at_s=5.0).answer == "cloud-0"
    assert replayer.answer("edge", at_s=10.0).answer == "cloud-1"


def test_one_frame_in_flight_skips_frames_while_the_cloud_is_busy():
    latency = TableLatency({}, default=1.0)
    replayer = CloudStaleReplayer(latency, clock=FakeClock(), max_inflight=1)
    sent = [replayer.offer(i, f"cloud-{i}", sent_s=i * 0.25) for i in range(9)]  # 0.0, 0.25, ..., 2.0
    # Frame 0 occupies the slot until 1.0, when frame 4 goes; frame 8 goes at 2.0.
    assert sent == [True, False, False, False, True, False, False, False, True]
    assert latency.asked == [0.0, 1.0, 2.0]  # skipped frames never reach the latency model
    assert replayer.answer("edge", at_s=1.9).answer == "cloud-0"
    assert replayer.answer("edge", at_s=2.0).answer == "cloud-4"


def test_past_the_deadline_an_answer_never_arrives_and_frees_its_slot_at_the_deadline():
    replayer = CloudStaleReplayer(TableLatency({0.0: 12.0}, default=1.0), clock=FakeClock(), deadline_s=10.0)
    assert replayer.offer(0, "cloud-0", sent_s=0.0)
    assert not replayer.offer(1, "cloud-1", sent_s=9.9)
    assert replayer.answer("edge", at_s=50.0).source == "edge"
    assert replayer.offer(2, "cloud-2", sent_s=10.0)
    assert replayer.answer("edge", at_s=11.0).answer == "cloud-2"


def test_frames_must_be_offered_in_send_order():
    replayer = CloudStaleReplayer(TableLatency({}), clock=FakeClock(), max_inflight=None)
    replayer.offer(1, "a", sent_s=2.0)
    with pytest.raises(ValueError, match="send order"):
        replayer.offer(0, "b", sent_s=1.0)


@pytest.mark.parametrize("kwargs", [{"max_inflight": 0}, {"deadline_s": 0.0}])
def test_bad_replayer_settings(kwargs):
    with pytest.raises(ValueError):
        CloudStaleReplayer(TableLatency({}), **kwargs)


def _frames(count: int, fps: float = 10.0) -> list[ReplayFrame[str]]:
    return [ReplayFrame(i, i / fps, f"cloud-{i}", f"edge-{i}") for i in range(count)]


def test_replay_at_zero_latency_is_the_cloud_on_every_frame():
    choices = replay_cloud_stale(_frames(20), TableLatency({}, default=0.0))
    assert [c.answer for c in choices] == [f"cloud-{i}" for i in range(20)]
    assert all(c.context_age_s == 0.0 for c in choices)


def test_replay_with_a_constant_latency():
    # 10 fps, 0.35 s: frame 0 arrives at 0.35 (shown from frame 4 at 0.4); frame 4 goes then, arrives at 0.75.
    choices = replay_cloud_stale(_frames(12), DelaySpecLatency("350"))
    shown = [c.answer for c in choices]
    assert shown[:4] == ["edge-0", "edge-1", "edge-2", "edge-3"]
    assert shown[4:8] == ["cloud-0"] * 4
    assert shown[8:12] == ["cloud-4"] * 4


def test_replay_answers_in_the_order_given():
    frames = _frames(6)
    shuffled = [frames[i] for i in (3, 0, 5, 1, 4, 2)]
    by_id = {f.frame_id: c for f, c in zip(frames, replay_cloud_stale(frames, TableLatency({}, default=0.15)))}
    replayed = replay_cloud_stale(shuffled, TableLatency({}, default=0.15))
    assert replayed == [by_id[f.frame_id] for f in shuffled]


def test_replay_with_a_trace_file_starts_the_trace_at_the_first_frame(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("time_s,latency_ms\n0,100\n1,3000\n2,100\n")
    # Send times are offsets from the video's start, so the trace's origin is the first frame.
    latency = DelaySpecLatency(f"trace:{path}", service_s=0.05)
    replayer = CloudStaleReplayer(latency, clock=FakeClock(), max_inflight=None)
    replayer.offer(0, "cloud-0", sent_s=100.0)  # trace row 0: 0.1 s + 0.05 s service
    replayer.offer(1, "cloud-1", sent_s=101.0)  # trace row 1: 3.0 s + 0.05 s
    assert replayer.answer("edge", at_s=100.15).answer == "cloud-0"
    assert replayer.answer("edge", at_s=104.0).answer == "cloud-0"  # frame 1 is due at 104.05
    assert replayer.answer("edge", at_s=104.06).answer == "cloud-1"


def test_replay_on_the_generated_trace_is_deterministic(tmp_path):
    path = write_trace_csv(tmp_path / "t.csv", TraceConfig(duration_s=20.0))
    runs = [replay_cloud_stale(_frames(200), DelaySpecLatency(f"trace:{path}", service_s=0.1)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert {c.source for c in runs[0]} == {"edge", "cloud"}
