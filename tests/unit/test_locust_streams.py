"""The pure parts the locustfile uses (load_tests/locust_streams.py): sequence ids, context statistics, reply
sizes, the edge URL and the stream options. No server, no locust."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from load_tests import locust_streams
from python_backends.context.report import ContextReport


def test_sequence_ids_are_positive_distinct_and_below_2_pow_63():
    ids = locust_streams.SequenceIds()
    drawn = [ids.next() for _ in range(1000)]
    assert len(set(drawn)) == len(drawn)
    assert all(0 < i < 2**63 for i in drawn)


@pytest.mark.parametrize("pid", [0, 1, 4321, 2**22 - 1, 2**22 + 5, 2**31])
@pytest.mark.parametrize("salt", [0, 1, 255])
def test_sequence_ids_fit_63_bits_for_any_pid_and_salt(pid: int, salt: int):
    ids = locust_streams.SequenceIds(pid=pid, salt=salt)
    first, second = ids.next(), ids.next()
    assert 0 < first < second <= locust_streams.MAX_SEQUENCE_ID
    assert first & (2**32 - 1) == 1  # the counter starts at 1: never id 0 (Triton's "no sequence")


def test_sequence_ids_of_two_processes_differ():
    ids = locust_streams.SequenceIds
    a = [ids(pid=100, salt=7).next() for _ in range(1)] + [ids(pid=101, salt=7).next()]
    assert a[0] != a[1]
    # The same pid on another host (another salt) too.
    assert locust_streams.SequenceIds(pid=100, salt=7).next() != locust_streams.SequenceIds(pid=100, salt=8).next()


def test_sequence_ids_start_afresh_in_a_forked_child(monkeypatch):
    """locust --processes forks after importing the locustfile: a child must not repeat its parent's ids."""
    ids = locust_streams.SequenceIds()
    monkeypatch.setattr(locust_streams.os, "getpid", lambda: 1000)
    parent = [ids.next(), ids.next()]
    monkeypatch.setattr(locust_streams.os, "getpid", lambda: 1001)
    child = [ids.next(), ids.next()]
    assert not set(parent) & set(child)
    assert [c & 0xFFFFFFFF for c in child] == [1, 2]
    assert (child[0] >> 32) & (2**22 - 1) == 1001


@pytest.mark.parametrize("kwargs", [{"pid": -1}, {"salt": 256}, {"salt": -1}])
def test_sequence_ids_reject_bad_parts(kwargs):
    with pytest.raises(ValueError):
        locust_streams.SequenceIds(**kwargs)


def test_sequence_ids_refuse_to_overflow_the_counter():
    ids = locust_streams.SequenceIds(pid=1, salt=1)
    ids.next()
    ids._counter = iter([2**32])
    with pytest.raises(OverflowError):
        ids.next()


def ctx(frame: int | None, age: object = None, state: str = "ok") -> dict:
    return ContextReport.from_dict({"context_frame": frame, "context_age_ms": age, "cloud_state": state})


def test_context_stats_counts_share_and_ages():
    stats = locust_streams.ContextStats()
    assert stats.add(ok=True, context=ctx(None)) is None
    assert stats.add(ok=True, context=ctx(3, 1200.4)) == 1200
    assert stats.add(ok=True, context=ctx(4, 800)) == 800
    assert stats.add(ok=False, context=ContextReport(), restarted=True) is None
    assert (stats.frames, stats.with_context, stats.errors, stats.restarts) == (3, 2, 1, 1)
    summary = stats.summary()
    assert summary["context_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["context_age_ms"] == {"count": 2, "mean": 1000.0, "p50": 800, "p90": 1200, "p99": 1200, "max": 1200}
    assert summary["cloud_states"] == {"ok": 3}
    assert (summary["errors"], summary["restarts"]) == (1, 1)


@pytest.mark.parametrize("age", [None, "1200", True, float("nan"), float("inf")])
def test_context_without_a_usable_age_counts_as_context_but_adds_no_age(age):
    stats = locust_streams.ContextStats()
    assert stats.add(ok=True, context=ctx(1, age)) is None
    assert (stats.with_context, stats.ages) == (1, {})


def test_a_negative_age_is_clamped_to_zero():
    """A client clock behind the edge's can make an age negative; it is a fresh context, not a bad one."""
    stats = locust_streams.ContextStats()
    assert stats.add(ok=True, context=ctx(1, -5)) == 0


def test_context_stats_of_nothing():
    summary = locust_streams.ContextStats().summary()
    assert summary["context_share"] is None
    assert summary["context_age_ms"]["p50"] is None
    assert "-" in locust_streams.format_context_summary(summary)


@pytest.mark.parametrize(
    ("histogram", "q", "expected"),
    [
        ({}, 0.5, None),
        ({5: 1}, 0.99, 5),
        ({1: 1, 2: 1, 3: 1, 4: 1}, 0.5, 2),  # nearest rank: ceil(0.5 * 4) = 2nd value
        ({1: 1, 2: 1, 3: 1, 4: 1}, 0.51, 3),
        ({10: 98, 1000: 2}, 0.99, 1000),
        ({10: 99, 1000: 1}, 0.99, 10),
    ],
)
def test_percentile_is_nearest_rank(histogram, q, expected):
    assert locust_streams._percentile(histogram, q) == expected


def test_worker_deltas_merge_into_the_same_totals_as_one_process():
    """What locust workers send (take() each report) and the master merges equals counting everything in one place."""
    frames = [
        (True, ctx(None)),
        (True, ctx(2, 500)),
        (False, ContextReport()),
        (True, ctx(3, 700, "slow")),
        (True, ctx(4, 500)),
    ]
    whole = locust_streams.ContextStats()
    for ok, context in frames:
        whole.add(ok=ok, context=context)
    worker, master = locust_streams.ContextStats(), locust_streams.ContextStats()
    for i, (ok, context) in enumerate(frames):
        worker.add(ok=ok, context=context)
        if i % 2:
            # Through JSON, as locust's report messages would carry it.
            master.merge(json.loads(json.dumps(worker.take())))
    master.merge(worker.take())
    master.merge(None)
    assert master.summary() == whole.summary()
    assert worker.frames == 0 and worker.ages == {}


def test_to_dict_round_trips():
    stats = locust_streams.ContextStats()
    stats.add(ok=True, context=ctx(1, 42), restarted=True)
    assert locust_streams.ContextStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_context_summary_line():
    stats = locust_streams.ContextStats()
    stats.add(ok=True, context=ctx(1, 1500))
    stats.add(ok=True, context=ctx(None, state="down"))
    line = locust_streams.format_context_summary(stats.summary())
    assert "1/2 answered frames (50%)" in line
    assert "p50 1500 ms" in line
    assert "down 1, ok 1" in line


def test_response_bytes_counts_bytes_items_and_numeric_payloads():
    outputs = {
        "TEXT": np.array([[b"hello"]], dtype=np.object_),
        "CONTEXT": np.array([[b'{"a": 1}', "xyz"]], dtype=np.object_),
        "GENERATE_MS": np.zeros((1, 1), dtype=np.float32),
        "MISSING": None,
    }
    assert locust_streams.response_bytes(outputs) == 5 + 8 + 3 + 4


@pytest.mark.parametrize(
    ("host", "protocol", "expected"),
    [
        ("127.0.0.1:8001", "grpc", "127.0.0.1:8001"),
        ("grpc://127.0.0.1:9001/", "grpc", "127.0.0.1:9001"),
        ("http://edge:8000", "http", "edge:8000"),
        (None, "grpc", "127.0.0.1:8001"),
        ("", "http", "127.0.0.1:8000"),
    ],
)
def test_edge_url(host, protocol, expected):
    assert locust_streams.edge_url(host, protocol) == expected


def test_stream_params_leave_out_server_defaults():
    assert locust_streams.stream_params(None, None) == {}
    assert locust_streams.stream_params(8, "1500") == {"max_tokens": 8, "cloud_delay": "1500"}
    assert locust_streams.stream_params(None, "") == {}


def test_the_locustfile_options_on_a_plain_parser():
    parser = argparse.ArgumentParser()
    locust_streams.add_stream_arguments(parser)
    options = parser.parse_args([])
    assert (options.protocol, options.fps, options.max_tokens, options.cloud_delay, options.images) == (
        "grpc",
        5.0,
        None,
        None,
        None,
    )
    options = parser.parse_args(["--protocol", "http", "--fps", "2.5", "--max-tokens", "8", "--cloud-delay", "1500"])
    assert (options.protocol, options.fps, options.max_tokens, options.cloud_delay) == ("http", 2.5, 8, "1500")


@pytest.mark.parametrize(
    "argv", [["--fps", "0"], ["--fps", "-1"], ["--fps", "nan"], ["--fps", "x"], ["--max-tokens", "0"]]
)
def test_the_locustfile_options_refuse_bad_values(argv):
    parser = argparse.ArgumentParser()
    locust_streams.add_stream_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)


def test_positive_float_and_int():
    assert locust_streams.positive_float("2.5") == 2.5
    assert locust_streams.positive_int("3") == 3
    for bad in ("0", "-1", "inf", "nan", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            locust_streams.positive_float(bad)
    for bad in ("0", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            locust_streams.positive_int(bad)
    assert math.isfinite(locust_streams.positive_float("1e3"))
