"""What a headless locust run left behind: its stats and failures CSVs, read into totals and a pass/fail verdict."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CSV_BASENAME = "load"


@dataclass
class LocustTotals:
    """What locust's `<prefix>_stats.csv` says: the Aggregated row, and the per-entry rows."""

    requests: int
    failures: int
    rows: list[dict[str, str]]

    def entry(self, request_type: str, name: str) -> dict[str, str] | None:
        for row in self.rows:
            if row.get("Type") == request_type and row.get("Name") == name:
                return row
        return None


def _count(row: Mapping[str, str], column: str) -> int:
    value = (row.get(column) or "0").strip()
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"locust stats CSV: column {column!r} is not a number: {value!r}") from None


def parse_stats_csv(lines: Iterable[str]) -> LocustTotals:
    """Parses `<prefix>_stats.csv`. Failures are the larger of the Aggregated row's and the sum over the entries, so a
    failure cannot hide in either. Requests are the Aggregated row's: the CONTEXT entry is not a request (the
    locustfile logs it outside locust's totals)."""
    reader = csv.DictReader(lines)
    if reader.fieldnames is None or not {"Name", "Request Count", "Failure Count"} <= set(reader.fieldnames):
        raise ValueError(f"not a locust stats CSV (header {reader.fieldnames})")
    rows, aggregated = [], None
    for row in reader:
        if row.get("Name") == "Aggregated" and not row.get("Type"):
            aggregated = row
        else:
            rows.append(row)
    if aggregated is None:
        raise ValueError("locust stats CSV has no Aggregated row")
    failures = max(_count(aggregated, "Failure Count"), sum(_count(r, "Failure Count") for r in rows))
    return LocustTotals(requests=_count(aggregated, "Request Count"), failures=failures, rows=rows)


def read_stats_csv(path: Path) -> LocustTotals:
    with open(path, newline="", encoding="utf-8") as file:
        return parse_stats_csv(file)


def read_failures_csv(path: Path, limit: int = 10) -> list[str]:
    """The failures locust recorded, one line each ("N x METHOD NAME: error")."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return [f"{r.get('Occurrences')} x {r.get('Method')} {r.get('Name')}: {r.get('Error')}" for r in rows[:limit]]


def verdict(returncode: int | None, totals: LocustTotals | None) -> tuple[int, str]:
    """(exit status, why) from locust's exit code and its CSV: any failure, error or empty run is a failure."""
    if returncode is None:
        return 1, "locust did not finish"
    if totals is None:
        return 1, f"locust exited with {returncode} and wrote no stats CSV"
    if totals.failures:
        return 1, f"{totals.failures} of {totals.requests} requests failed (locust exit code {returncode})"
    if returncode != 0:
        return 1, f"locust exited with {returncode} (no failed request in its CSV: see its log above)"
    if totals.requests == 0:
        return 1, "no request was made"
    return 0, f"{totals.requests} requests, 0 failures"


@dataclass
class Reports:
    out: Path

    @property
    def csv_prefix(self) -> Path:
        return self.out / CSV_BASENAME

    @property
    def stats_csv(self) -> Path:
        return self.out / f"{CSV_BASENAME}_stats.csv"

    @property
    def failures_csv(self) -> Path:
        return self.out / f"{CSV_BASENAME}_failures.csv"

    @property
    def html(self) -> Path:
        return self.out / f"{CSV_BASENAME}.html"

    @property
    def context_json(self) -> Path:
        return self.out / f"{CSV_BASENAME}_context.json"
