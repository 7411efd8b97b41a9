"""ContextReport: the CONTEXT JSON that spotvlm writes and every reader parses."""

from __future__ import annotations

import json

import pytest

from python_backends.context.report import CloudAnswerReport, ContextReport, LatencyBreakdown

# The keys spotvlm writes, in its order: readers and stored results depend on them. The tracking keys came last,
# after latency_ms, so every earlier key kept its place.
CONTEXT_KEYS = [
    "stream_id",
    "frame_id",
    "context_frame",
    "context_age_ms",
    "context_rtt_ms",
    "context_detections",
    "cloud_state",
    "cloud_dispatch",
    "cloud_questions",
    "focus_mode",
    "focus_box",
    "focus_frame",
    "focus_labels",
    "replaced_turns",
    "history_turns",
    "svlm_model",
    "answer_source",
    "latency_ms",
    "tracked",
    "tracked_box",
    "region_change",
    "focus_tracked",
    "cloud_answer",
]


def full_report() -> ContextReport:
    return ContextReport(
        stream_id=7,
        frame_id=6,
        context_frame=2,
        context_age_ms=1593,
        context_rtt_ms=1512.4,
        context_detections=1,
        cloud_state="ok",
        cloud_dispatch="skipped_busy",
        cloud_questions=2,
        focus_mode="crop_and_frame",
        focus_box=[87, 74, 213, 326],
        focus_frame=2,
        focus_labels=["rocket"],
        replaced_turns=1,
        history_turns=4,
        svlm_model="svlm_focus",
        latency_ms=LatencyBreakdown(preprocess=5.15, vision=8.85, generate=35.39, total=49.59),
        tracked=True,
        tracked_box=[101, 80, 199, 310],
        region_change=0.042,
        focus_tracked=True,
        cloud_answer=CloudAnswerReport(
            frame_id=3,
            text="[1, 2, 3, 4]",
            boxes=[[1.0, 2.0, 3.0, 4.0]],
            frame_size=[96, 128],
            age_ms=300.0,
            arrived_before_ms=12.5,
        ),  # fmt: skip
    )


def test_the_json_keys_and_their_order_are_the_servers() -> None:
    data = json.loads(full_report().to_json())
    assert list(data) == CONTEXT_KEYS
    assert data["latency_ms"] == {"preprocess": 5.15, "vision": 8.85, "generate": 35.39, "total": 49.59}
    assert data["focus_box"] == [87, 74, 213, 326] and data["context_age_ms"] == 1593


def test_a_report_survives_its_json() -> None:
    report = full_report()
    assert ContextReport.from_json(report.to_json()) == report
    assert ContextReport.from_json(report.to_json().encode()) == report


def test_before_any_cloud_answer_the_context_fields_are_null() -> None:
    report = ContextReport(stream_id=1, frame_id=0, cloud_state="off", cloud_dispatch="off", focus_mode="off")
    data = json.loads(report.to_json())
    assert data["context_frame"] is None and data["context_age_ms"] is None and data["latency_ms"] is None
    assert data["tracked"] is None and data["tracked_box"] is None and data["region_change"] is None
    assert not ContextReport.from_json(report.to_json()).has_context


def test_missing_fields_take_their_defaults() -> None:
    report = ContextReport.from_json('{"context_frame": 4}')
    assert report.has_context and report.context_frame == 4
    assert report.cloud_state is None and report.replaced_turns == 0 and report.focus_labels == []
    assert report.latency_ms is None and report.extra == {}
    assert report.tracked is None and report.focus_tracked is None


def test_a_tracked_flag_holding_something_else_reads_as_none() -> None:
    report = ContextReport.from_json('{"tracked": "yes", "focus_tracked": 1, "region_change": "x"}')
    assert report.tracked is None and report.focus_tracked is None and report.region_change is None
    assert ContextReport.from_json('{"tracked": false}').tracked is False


@pytest.mark.parametrize("bad", ['"12"', "true", "null", "NaN", "Infinity", "[1]"])
def test_a_number_field_holding_something_else_reads_as_none(bad: str) -> None:
    report = ContextReport.from_json(
        f'{{"context_frame": 3, "context_age_ms": {bad}, "latency_ms": {{"total": {bad}}}}}'
    )
    assert report.context_age_ms is None and report.latency_ms.total is None and report.context_frame == 3


def test_unknown_keys_and_unparseable_text_are_kept_not_fatal() -> None:
    newer = ContextReport.from_json('{"frame_id": 1, "new_key": {"a": 1}}')
    assert newer.frame_id == 1 and newer.extra == {"new_key": {"a": 1}}
    assert newer.to_dict()["new_key"] == {"a": 1}
    assert ContextReport.from_json("not json").extra == {"raw": "not json"}
    assert ContextReport.from_json("[1, 2]").extra == {"raw": [1, 2]}
    assert ContextReport.from_json(None) == ContextReport()
