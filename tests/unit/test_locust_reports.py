"""Reading a headless locust run's reports (load_tests/locust_reports.py): the stats and failures CSVs, the verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from load_tests import locust_reports

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
