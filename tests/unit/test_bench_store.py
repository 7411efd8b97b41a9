"""`spotvlm bench`'s context-store memory measurement (load_tests/bench_store.py)."""

from __future__ import annotations

import tracemalloc

import pytest

from load_tests import bench_store
from python_backends.context.store import ContextStore, StoreLimits


def test_fill_store_puts_every_stream_at_its_limits():
    limits = StoreLimits(max_streams=16, max_turns=3, max_cloud_results=2, max_text_chars=50, max_detections=4)
    store = ContextStore(limits, clock=lambda: 0.0)
    bench_store.fill_store(store, 10)
    assert len(store) == 10
    for sid in (1, 10):
        snapshot = store.snapshot(sid)
        assert len(snapshot.turns) == 3 and len(snapshot.cloud_results) == 2
        assert all(len(t.question) == 50 and len(t.answer) == 50 for t in snapshot.turns)
        assert all(len(r.text) == 50 and len(r.detections) == 4 for r in snapshot.cloud_results)
    # Texts differ between streams, as real ones do (no shared string objects to flatter the measurement).
    assert store.snapshot(1).turns[0].answer != store.snapshot(2).turns[0].answer


def test_measure_store_on_a_small_count():
    report = bench_store.measure_store(50)
    assert report["streams"] == 50
    assert report["store_bytes_per_stream"] > 0 and report["store_memory_bytes_estimate_per_stream"] > 0
    # Default limits: 8 turns of two 1024-char texts and 4 answers of 1024 chars are over 20 kB of text alone.
    assert report["store_bytes_per_stream"] > 20_000
    # The store's own estimate and what tracemalloc saw agree to within a factor of two.
    assert 0.5 < report["store_memory_bytes_estimate_per_stream"] / report["store_bytes_per_stream"] < 2.0
    assert report["limits"]["max_streams"] >= 50
    assert not tracemalloc.is_tracing()


def test_measure_store_scales_past_the_default_stream_limit():
    limits = StoreLimits(max_streams=4, max_turns=1, max_cloud_results=1, max_text_chars=16, max_detections=1)
    report = bench_store.measure_store(20, limits)
    assert report["streams"] == 20 and report["limits"]["max_streams"] == 20


def test_measure_store_leaves_a_running_tracemalloc_running():
    tracemalloc.start()
    try:
        report = bench_store.measure_store(5)
        assert tracemalloc.is_tracing() and report["store_bytes_per_stream"] > 0
    finally:
        tracemalloc.stop()


def test_measure_store_rejects_no_streams():
    with pytest.raises(ValueError, match="streams must be >= 1"):
        bench_store.measure_store(0)


def test_store_measurement_in_a_child_process():
    report = bench_store.StoreMeasurement(10).result()
    assert report["streams"] == 10 and report["store_bytes_per_stream"] > 0


def test_store_measurement_failure_in_the_child_is_reported():
    measurement = bench_store.StoreMeasurement(0)
    with pytest.raises(RuntimeError, match="streams must be >= 1"):
        measurement.result()
    measurement.cancel()  # harmless once the child is gone
