"""`spotvlm`'s custom Prometheus metrics against a fake pb_utils.MetricFamily: which series exist, and what
record_frame / record_cloud push into them."""

import pytest

from tests.unit import fake_pb_utils

pb = fake_pb_utils.install()

from python_backends.serving.metrics import (
    CLOUD_ERROR_KINDS,
    FOCUS_MODES,
    LATENCY_BUCKETS_MS,
    SKIP_REASONS,
    SpotMetrics,
)


@pytest.fixture
def metrics() -> SpotMetrics:
    return SpotMetrics(pb, "spotvlm")


def _families(metrics: SpotMetrics) -> dict[str, fake_pb_utils.MetricFamily]:
    return {family.name: family for family in metrics._families}


def _all_series(metrics: SpotMetrics) -> list[fake_pb_utils.Metric]:
    return [m for family in metrics._families for m in family.metrics]


def test_the_families_and_their_series(metrics):
    families = _families(metrics)
    kinds = {name: family.kind for name, family in families.items()}
    assert kinds == {
        "spotvlm_context_age_ms": pb.MetricFamily.HISTOGRAM,
        "spotvlm_cloud_rtt_ms": pb.MetricFamily.HISTOGRAM,
        "spotvlm_cloud_inflight": pb.MetricFamily.GAUGE,
        "spotvlm_cloud_requests_total": pb.MetricFamily.COUNTER,
        "spotvlm_cloud_errors_total": pb.MetricFamily.COUNTER,
        "spotvlm_cloud_frames_skipped_total": pb.MetricFamily.COUNTER,
        "spotvlm_focus_applied_total": pb.MetricFamily.COUNTER,
        "spotvlm_frames_total": pb.MetricFamily.COUNTER,
    }
    assert all(family.description for family in families.values())
    assert all(series.labels["model"] == "spotvlm" for series in _all_series(metrics))
    assert families["spotvlm_cloud_rtt_ms"].metrics[0].buckets == LATENCY_BUCKETS_MS
    assert LATENCY_BUCKETS_MS == sorted(LATENCY_BUCKETS_MS)
    labels = {
        name: sorted(label for m in families[name].metrics for key, label in m.labels.items() if key != "model")
        for name in families
    }
    assert labels["spotvlm_cloud_errors_total"] == sorted(CLOUD_ERROR_KINDS)
    assert labels["spotvlm_cloud_frames_skipped_total"] == sorted(SKIP_REASONS)
    assert labels["spotvlm_focus_applied_total"] == sorted(FOCUS_MODES)
    assert labels["spotvlm_frames_total"] == ["no", "yes"]


def test_the_model_name_labels_every_series():
    metrics = SpotMetrics(pb, "spotvlm_b")
    assert {series.labels["model"] for series in _all_series(metrics)} == {"spotvlm_b"}


@pytest.mark.parametrize(
    "age_ms, focus_mode, frames, observed, focused",
    [
        (None, "off", "no", [], None),
        (750, "crop_and_frame", "yes", [750.0], "crop_and_frame"),
        (0, "crop_only", "yes", [0.0], "crop_only"),
        (1200, "off", "yes", [1200.0], None),
    ],
)
def test_record_frame(metrics, age_ms, focus_mode, frames, observed, focused):
    metrics.record_frame(age_ms, focus_mode)
    assert metrics.frames[frames].increments == [1] and metrics.frames["no" if frames == "yes" else "yes"].value() == 0
    assert metrics.context_age_ms.observations == observed
    for mode, series in metrics.focus_applied.items():
        assert series.value() == (1 if mode == focused else 0)


def test_record_cloud_pushes_the_deltas(metrics):
    delta = {
        "sent": 3,
        "replies": 2,
        "skipped_busy": 4,
        "skipped_down": 1,
        "errors_by_kind": {"timeout": 2, "server": 1, "client": 5},  # client errors have no series
        "rtt_ms": [120.0, 3400.5],
        "inflight": 2,  # a current value, not a delta
    }
    metrics.record_cloud(delta)
    assert metrics.cloud_inflight.sets == [2.0]
    assert metrics.cloud_requests.increments == [3.0]
    assert {kind: m.value() for kind, m in metrics.cloud_errors.items()} == {
        "timeout": 2,
        "unavailable": 0,
        "server": 1,
        "bad_reply": 0,
    }
    assert metrics.frames_skipped["busy"].value() == 4 and metrics.frames_skipped["down"].value() == 1
    assert metrics.cloud_rtt_ms.observations == [120.0, 3400.5]


def test_record_cloud_with_nothing_new_only_sets_the_gauge(metrics):
    metrics.record_cloud({"sent": 0, "errors_by_kind": {"timeout": 0}, "rtt_ms": [], "inflight": 0})
    metrics.record_cloud({"inflight": 1})
    assert metrics.cloud_inflight.sets == [0.0, 1.0]
    assert all(
        m.increments == [] and m.observations == [] for m in _all_series(metrics) if m is not metrics.cloud_inflight
    )


def test_record_cloud_accumulates_over_calls(metrics):
    for sent in (1, 2, 3):
        metrics.record_cloud({"sent": sent, "rtt_ms": [float(sent)], "inflight": sent})
    assert metrics.cloud_requests.value() == 6 and metrics.cloud_inflight.value() == 3
    assert metrics.cloud_rtt_ms.observations == [1.0, 2.0, 3.0]
