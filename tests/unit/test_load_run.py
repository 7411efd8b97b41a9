"""The pure parts of the locust load test (load_run, locust_streams, locust_reports), no server:
sequence ids, context statistics, locust's command line, its stats CSV and the run's verdict."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from spotvlm.cli import build_parser as build_cli_parser
from load_tests import load_run as lr
from load_tests import locust_reports
from load_tests import locust_streams
from python_backends.context.report import ContextReport

# -- sequence ids ------------------------------------------------------------------------------------------------------


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


# -- context statistics ------------------------------------------------------------------------------------------------


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


# -- small helpers -----------------------------------------------------------------------------------------------------


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


# -- locust's command line ---------------------------------------------------------------------------------------------


def load_args(*argv: str) -> argparse.Namespace:
    return lr.build_parser().parse_args(list(argv))


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_load_run_defaults():
    args = load_args()
    assert (args.users, args.fps, args.duration, args.protocol, args.url) == (16, 5.0, 60.0, "grpc", None)
    assert args.out == lr.DEFAULT_OUT


def test_spotvlm_load_has_the_same_options():
    args = build_cli_parser().parse_args(["load", "--users", "4", "--fps", "5", "--duration", "10"])
    assert (args.users, args.fps, args.duration, args.protocol) == (4, 5.0, 10.0, "grpc")
    assert args.func.__name__ == "cmd_load"


def test_locust_command_for_a_headless_run(tmp_path: Path):
    args = load_args("--users", "8", "--duration", "20.2", "--fps", "2", "--protocol", "http")
    command = lr.locust_command(args, "127.0.0.1:8000", tmp_path / "load", tmp_path / "load.html", python="py")
    assert command[:5] == ["py", "-m", "locust", "-f", str(lr.LOCUSTFILE)]
    assert "--headless" in command and "--only-summary" in command
    assert option(command, "--users") == "8"
    assert option(command, "--spawn-rate") == "8"  # all users within a second by default
    assert option(command, "--run-time") == "21s"  # whole seconds, rounded up
    assert option(command, "--host") == "127.0.0.1:8000"
    assert option(command, "--csv") == str(tmp_path / "load")
    assert option(command, "--html") == str(tmp_path / "load.html")
    assert option(command, "--protocol") == "http"
    assert option(command, "--fps") == "2"
    for absent in ("--prompt", "--max-tokens", "--cloud-delay", "--images"):
        assert absent not in command


def test_locust_command_passes_the_stream_options(tmp_path: Path):
    args = load_args(
        "--spawn-rate", "0.5", "--prompt", "Where is the car?", "--max-tokens", "8", "--cloud-delay", "2000+-1000"
    )
    args.images = tmp_path
    command = lr.locust_command(args, "h:1", tmp_path / "load", tmp_path / "load.html")
    assert option(command, "--spawn-rate") == "0.5"
    assert option(command, "--prompt") == "Where is the car?"
    assert option(command, "--max-tokens") == "8"
    assert option(command, "--cloud-delay") == "2000+-1000"
    assert option(command, "--images") == str(tmp_path)


@pytest.mark.parametrize("argv", [["--users", "0"], ["--fps", "0"], ["--duration", "-5"], ["--protocol", "udp"]])
def test_load_run_refuses_bad_options(argv):
    with pytest.raises(SystemExit):
        load_args(*argv)


# -- locust's stats CSV and the verdict --------------------------------------------------------------------------------

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def stats_csv(*rows: str) -> list[str]:
    return [HEADER + "\n", *(row + "\n" for row in rows)]


def test_parse_stats_csv_takes_requests_from_the_aggregated_row():
    lines = stats_csv(
        "CONTEXT,age_ms,59,0,400,402.4,195,827,0.0,8.5,0.0,400,400,400,600,600,600,720,830,830,830,830",
        "grpc,spotvlm,64,0,110,121.8,69.2,509.6,458.2,9.3,0.0,110,120,120,130,140,150,420,510,510,510,510",
        ",Aggregated,64,0,110,121.8,69.2,509.6,458.2,9.3,0.0,110,120,120,130,140,150,420,510,510,510,510",
    )
    totals = locust_reports.parse_stats_csv(lines)
    assert (totals.requests, totals.failures) == (64, 0)
    assert totals.entry("CONTEXT", "age_ms")["Request Count"] == "59"
    assert totals.entry("grpc", "nope") is None


def test_a_failure_in_any_row_counts():
    lines = stats_csv("grpc,spotvlm,10,3,1,1,1,1,1,1,1", ",Aggregated,10,0,1,1,1,1,1,1,1")
    assert locust_reports.parse_stats_csv(lines).failures == 3
    lines = stats_csv("grpc,spotvlm,10,0,1,1,1,1,1,1,1", ",Aggregated,10,2,1,1,1,1,1,1,1")
    assert locust_reports.parse_stats_csv(lines).failures == 2


@pytest.mark.parametrize(
    "lines",
    [
        [],
        ["just,some,csv\n", "1,2,3\n"],
        stats_csv("grpc,spotvlm,10,0,1,1,1,1,1,1,1"),  # no Aggregated row
        stats_csv(",Aggregated,ten,0,1,1,1,1,1,1,1"),
    ],
)
def test_parse_stats_csv_refuses_what_is_not_a_locust_stats_csv(lines):
    with pytest.raises(ValueError):
        locust_reports.parse_stats_csv(lines)


def test_read_failures_csv(tmp_path: Path):
    path = tmp_path / "load_failures.csv"
    assert locust_reports.read_failures_csv(path) == []
    path.write_text(
        "Method,Name,Error,Occurrences,First Seen,Last Seen\n"
        "grpc,spotvlm,\"FrameError('StatusCode.INVALID_ARGUMENT: max_tokens must be >= 1')\",14,1,2\n"
    )
    assert locust_reports.read_failures_csv(path) == [
        "14 x grpc spotvlm: FrameError('StatusCode.INVALID_ARGUMENT: max_tokens must be >= 1')"
    ]


def totals(requests: int, failures: int) -> locust_reports.LocustTotals:
    return locust_reports.LocustTotals(requests=requests, failures=failures, rows=[])


@pytest.mark.parametrize(
    ("returncode", "stats", "status"),
    [
        (0, totals(100, 0), 0),
        (1, totals(100, 1), 1),  # failures: locust's exit code and the CSV agree
        (0, totals(100, 1), 1),  # a failure in the CSV fails the run even when locust exited 0
        (1, totals(100, 0), 1),  # locust's exit code fails the run even with a clean CSV (e.g. the last second)
        (2, totals(100, 0), 1),
        (0, totals(0, 0), 1),  # nothing was sent
        (0, None, 1),  # no CSV
        (None, totals(100, 0), 1),  # locust had to be killed
    ],
)
def test_verdict(returncode, stats, status):
    assert locust_reports.verdict(returncode, stats)[0] == status


def test_reports_paths(tmp_path: Path):
    reports = locust_reports.Reports(tmp_path)
    assert reports.stats_csv == Path(f"{reports.csv_prefix}_stats.csv")
    assert reports.failures_csv == Path(f"{reports.csv_prefix}_failures.csv")
    assert reports.context_json == Path(f"{reports.csv_prefix}_context.json")
    assert reports.html.suffix == ".html"


def test_images_must_be_a_folder(tmp_path: Path, capsys):
    args = load_args("--url", "127.0.0.1:1", "--out", str(tmp_path), "--images", str(tmp_path / "missing"))
    assert lr.run(args) == 2
    assert "not a folder" in capsys.readouterr().err


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
