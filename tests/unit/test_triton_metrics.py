"""Triton's Prometheus metrics, read with prometheus_client's parser."""

from __future__ import annotations

from load_tests import triton_metrics as tm

METRICS_BEFORE = """# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="svlm_generate",version="1"} 10
nv_inference_exec_count{model="svlm_generate",version="1"} 10
nv_inference_queue_duration_us{model="svlm_generate",version="1"} 1000
nv_inference_compute_infer_duration_us{model="svlm_generate",version="1"} 400000
nv_gpu_utilization{gpu_uuid="x"} 0.5
"""
METRICS_AFTER = """nv_inference_request_success{model="svlm_generate",version="1"} 50
nv_inference_exec_count{model="svlm_generate",version="1"} 30
nv_inference_queue_duration_us{model="svlm_generate",version="1"} 801000
nv_inference_compute_infer_duration_us{model="svlm_generate",version="1"} 2400000
nv_inference_request_success{model="spotvlm",version="1"} 40
nv_inference_exec_count{model="spotvlm",version="1"} 40
nv_inference_queue_duration_us{model="spotvlm",version="1"} 4000
nv_inference_compute_infer_duration_us{model="spotvlm",version="1"} 2000000
"""


def test_parse_metrics_and_delta() -> None:
    before, after = tm.parse_metrics(METRICS_BEFORE), tm.parse_metrics(METRICS_AFTER)
    assert before == {"svlm_generate": {"requests": 10, "executions": 10, "queue_us": 1000, "compute_us": 400000}}
    delta = tm.metrics_delta(before, after)
    assert delta["svlm_generate"] == {
        "requests": 40,
        "mean_batch": 2.0,
        "queue_ms_per_request": 20.0,
        "compute_ms_per_request": 50.0,
    }
    assert delta["spotvlm"]["mean_batch"] == 1.0
    assert delta["spotvlm"]["queue_ms_per_request"] == 0.1
    assert "svlm_vision" not in delta
    assert tm.metrics_delta({}, {}) == {}


def test_series_values_match_labels() -> None:
    text = (
        METRICS_AFTER
        + '# TYPE spotvlm_frames_total counter\nspotvlm_frames_total{cloud_context="yes",model="spotvlm"} 12\n'
    )
    assert tm.series_values(text, "nv_inference_exec_count", model="spotvlm") == [40.0]
    assert tm.series_values(text, "nv_inference_exec_count") == [30.0, 40.0]
    assert tm.series_values(text, "spotvlm_frames_total", cloud_context="yes") == [12.0]
    assert tm.series_values(text, "spotvlm_frames_total", cloud_context="no") == []


def test_scrape_metrics_of_no_server_is_empty() -> None:
    assert tm.scrape_metrics("127.0.0.1:9") == {}


TRITON_TEXT = """# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="spotvlm",version="1"} 40
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="spotvlm",version="1"} 20
# HELP spotvlm_frames_total Frames answered
# TYPE spotvlm_frames_total counter
spotvlm_frames_total{cloud_context="yes",model="spotvlm"} 12
"""


def test_counters_declared_as_triton_declares_them() -> None:
    # The parser names a counter's samples <name>_total; Triton's nv_inference_* counters have no _total.
    assert tm.parse_metrics(TRITON_TEXT) == {"spotvlm": {"requests": 40.0, "executions": 20.0}}
    assert tm.series_values(TRITON_TEXT, "nv_inference_exec_count", model="spotvlm") == [20.0]
    assert tm.series_values(TRITON_TEXT, "spotvlm_frames_total", cloud_context="yes") == [12.0]
