"""Headless locust load test of the edge model `spotvlm`: starts both servers, runs locust, checks the reports.

    python -m load_tests.load_run [--users 16] [--spawn-rate N] [--duration 60] [--fps 5] [--protocol grpc|http]
                                  [--out DIR] [--url HOST:PORT] [--prompt TEXT] [--max-tokens N] [--cloud-delay SPEC]
    spotvlm load ...                      (the same options)

Without --url it starts a cloud tritonserver (model_repository/cloud) and an edge tritonserver (model_repository/edge)
on free loopback ports, the edge's cloud link pointed at that cloud, and stops both at the end. With --url it uses an
edge that is already running (HOST:PORT of the chosen protocol).

locust runs as a subprocess, headless, with `load_tests/locustfile.py`: every locust user is one video stream (one
Triton sequence) at --fps. It writes, under --out (default build/load):

    load_stats.csv, load_failures.csv, load_exceptions.csv, load_stats_history.csv   locust's CSV reports (--csv)
    load.html                                                                        locust's HTML report (--html)
    load_context.json                       cloud-context share and context age of the answered frames
    cloud_server.log, edge_server.log       the servers' logs (when this command started them)

Exit status: 0 when locust exited 0, its CSV shows requests and no failures; 1 on any failed request, a locust
error or a server that did not start; 2 for bad options or an edge that is not reachable; 130 on Ctrl-C.

This module also holds the pure parts the locustfile uses (sequence ids, context statistics), so they can be
unit-tested without importing locust, which monkey-patches the interpreter with gevent on import.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_backends.context.report import ContextReport

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
DEFAULT_OUT = PROJECT_ROOT / "build" / "load"
CSV_BASENAME = "load"
PROTOCOLS = ("grpc", "http")
# Locust's request_type and name of the context-age entry (see ContextStats and the locustfile).
CONTEXT_TYPE = "CONTEXT"
CONTEXT_NAME = "age_ms"
MAX_SEQUENCE_ID = 2**63 - 1


# -- sequence ids ------------------------------------------------------------------------------------------------------


class SequenceIds:
    """Triton sequence ids for locust users: positive, < 2**63, distinct across users, processes and hosts.

    id = (salt << 54) | (pid << 32) | counter, with an 8-bit random salt (two machines can run the same pid), the
    pid's low 22 bits (Linux pid_max is at most 2**22) and a per-process counter from 1. locust's --processes forks its
    workers after importing the locustfile, so the pid is read at each call: a forked child starts its own base and
    counter (and draws its salt from os.urandom, which forked children do not share as they share `random`'s state).
    """

    PID_BITS = 22
    COUNTER_BITS = 32
    SALT_BITS = 8

    def __init__(self, pid: int | None = None, salt: int | None = None) -> None:
        if pid is not None and pid < 0:
            raise ValueError(f"pid must be >= 0, got {pid}")
        if salt is not None and not 0 <= salt < 2**self.SALT_BITS:
            raise ValueError(f"salt must fit {self.SALT_BITS} bits, got {salt}")
        self._fixed_pid = pid
        self._fixed_salt = salt
        self._lock = threading.Lock()
        self._owner: int | None = None
        self.base = 0
        self._counter = itertools.count(1)

    def _rebase(self, pid: int) -> None:
        salt = self._fixed_salt
        if salt is None:
            salt = random.SystemRandom().getrandbits(self.SALT_BITS)
        self.base = ((salt << self.PID_BITS) | (pid & (2**self.PID_BITS - 1))) << self.COUNTER_BITS
        self._counter = itertools.count(1)
        self._owner = pid

    def next(self) -> int:
        pid = self._fixed_pid if self._fixed_pid is not None else os.getpid()
        with self._lock:
            if self._owner != pid:
                self._rebase(pid)
            n = next(self._counter)
        if n >= 2**self.COUNTER_BITS:
            raise OverflowError("more than 2**32 sequence ids in one process")
        return self.base | n


# -- context statistics ------------------------------------------------------------------------------------------------


def _percentile(histogram: Mapping[int, int], q: float) -> int | None:
    """The smallest value with at least q of the counts at or below it (nearest rank), as locust computes its own."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)


@dataclass
class ContextStats:
    """What the cloud context looked like over a run: the share of answered frames that had cloud context and the age
    of that context (this frame's time minus the time of the frame the LVLM answered, in ms).

    Ages are kept as a histogram of whole milliseconds (bounded by the largest age, not by the run's length), so the
    statistics of locust's --processes workers merge exactly.
    """

    frames: int = 0  # answered frames
    with_context: int = 0
    errors: int = 0
    restarts: int = 0
    ages: dict[int, int] = field(default_factory=dict)
    cloud_states: dict[str, int] = field(default_factory=dict)

    def add(self, *, ok: bool, context: ContextReport, restarted: bool = False) -> int | None:
        """Counts one frame; returns its context age in ms when it had cloud context with an age, else None."""
        self.restarts += int(restarted)
        if not ok:
            self.errors += 1
            return None
        self.frames += 1
        state = context.cloud_state
        if state is not None:
            self.cloud_states[state] = self.cloud_states.get(state, 0) + 1
        if not context.has_context:
            return None
        self.with_context += 1
        age = context.context_age_ms  # a number or None (ContextReport reads anything else as None)
        if age is None:
            return None
        age_ms = max(0, round(age))
        self.ages[age_ms] = self.ages.get(age_ms, 0) + 1
        return age_ms

    def to_dict(self) -> dict[str, Any]:
        # JSON object keys are strings; from_dict turns them back.
        return {
            "frames": self.frames,
            "with_context": self.with_context,
            "errors": self.errors,
            "restarts": self.restarts,
            "ages": {str(k): v for k, v in self.ages.items()},
            "cloud_states": dict(self.cloud_states),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContextStats:
        return cls(
            frames=int(data.get("frames", 0)),
            with_context=int(data.get("with_context", 0)),
            errors=int(data.get("errors", 0)),
            restarts=int(data.get("restarts", 0)),
            ages={int(k): int(v) for k, v in dict(data.get("ages", {})).items()},
            cloud_states={str(k): int(v) for k, v in dict(data.get("cloud_states", {})).items()},
        )

    def merge(self, other: ContextStats | Mapping[str, Any] | None) -> None:
        if other is None:
            return
        if not isinstance(other, ContextStats):
            other = ContextStats.from_dict(other)
        self.frames += other.frames
        self.with_context += other.with_context
        self.errors += other.errors
        self.restarts += other.restarts
        for age, count in other.ages.items():
            self.ages[age] = self.ages.get(age, 0) + count
        for state, count in other.cloud_states.items():
            self.cloud_states[state] = self.cloud_states.get(state, 0) + count

    def take(self) -> dict[str, Any]:
        """The counts so far as a dict, and a reset: a locust worker sends its delta to the master with each report."""
        data = self.to_dict()
        self.reset()
        return data

    def reset(self) -> None:
        self.frames = self.with_context = self.errors = self.restarts = 0
        self.ages = {}
        self.cloud_states = {}

    @property
    def context_share(self) -> float | None:
        return self.with_context / self.frames if self.frames else None

    def summary(self) -> dict[str, Any]:
        """The `<csv prefix>_context.json` content."""
        count = sum(self.ages.values())
        mean = sum(age * n for age, n in self.ages.items()) / count if count else None
        share = self.context_share
        return {
            "frames": self.frames,
            "frames_with_context": self.with_context,
            "context_share": round(share, 4) if share is not None else None,
            "context_age_ms": {
                "count": count,
                "mean": round(mean, 1) if mean is not None else None,
                "p50": _percentile(self.ages, 0.50),
                "p90": _percentile(self.ages, 0.90),
                "p99": _percentile(self.ages, 0.99),
                "max": max(self.ages) if self.ages else None,
            },
            "cloud_states": dict(sorted(self.cloud_states.items())),
            "errors": self.errors,
            "restarts": self.restarts,
        }


def format_context_summary(summary: Mapping[str, Any]) -> str:
    """One line for the end of a run."""
    share = summary.get("context_share")
    age = summary.get("context_age_ms") or {}

    def ms(value: Any) -> str:
        return f"{value:.0f}" if isinstance(value, (int, float)) else "-"

    states = ", ".join(f"{k} {v}" for k, v in (summary.get("cloud_states") or {}).items()) or "-"
    return (
        f"cloud context: {summary.get('frames_with_context', 0)}/{summary.get('frames', 0)} answered frames"
        f" ({'-' if share is None else f'{share:.0%}'}), context age p50 {ms(age.get('p50'))} ms,"
        f" p90 {ms(age.get('p90'))} ms, max {ms(age.get('max'))} ms; cloud states: {states};"
        f" restarts {summary.get('restarts', 0)}, errors {summary.get('errors', 0)}"
    )


def response_bytes(outputs: Mapping[str, Any]) -> int:
    """The payload size of a reply's outputs: the bytes of BYTES tensors' items, nbytes of the others."""
    total = 0
    for array in outputs.values():
        if array is None:
            continue
        if getattr(array, "dtype", None) is not None and array.dtype.kind == "O":
            for item in array.reshape(-1):
                total += len(item) if isinstance(item, (bytes, bytearray, str)) else 0
        else:
            total += int(getattr(array, "nbytes", 0))
    return total


def edge_url(host: str | None, protocol: str) -> str:
    """Locust's --host as a tritonclient URL: "HOST:PORT", an optional scheme stripped; the edge's default port for
    the protocol when no host is given."""
    if not host:
        from client.triton_client import default_url

        return default_url("edge", protocol)  # type: ignore[arg-type]
    url = host.strip()
    for scheme in ("grpc://", "http://", "https://"):
        if url.lower().startswith(scheme):
            url = url[len(scheme) :]
    return url.rstrip("/")


# -- locust's options: the stream arguments the locustfile adds -----------------------------------------------------


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_stream_arguments(parser: Any) -> None:
    """The locustfile's own options (locust's init_command_line_parser hands it its parser)."""
    from client.streaming import DEFAULT_PROMPT

    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="Triton protocol (default: grpc)")
    parser.add_argument("--fps", type=positive_float, default=5.0, help="frames per second per user (default: 5)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question asked of every frame")
    parser.add_argument("--max-tokens", type=positive_int, default=None, help="answer length (default: the server's)")
    parser.add_argument(
        "--cloud-delay", default=None, metavar="SPEC", help="delay injected on the edge's cloud link: 1500, 2000+-1000"
    )
    parser.add_argument("--images", default=None, metavar="DIR", help="send a folder's images (default: synthetic)")
    parser.add_argument("--request-timeout", type=positive_float, default=60.0, help="seconds per request")
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=0.0,
        help="print a one-line progress summary every N seconds (0: off; load_run turns it on)",
    )


def stream_params(max_tokens: int | None, cloud_delay: str | None) -> dict[str, Any]:
    """The request parameters of every frame; None means "the server's default" and is left out."""
    params: dict[str, Any] = {}
    if max_tokens is not None:
        params["max_tokens"] = int(max_tokens)
    if cloud_delay:
        params["cloud_delay"] = str(cloud_delay)
    return params


# -- the headless run --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """load_run's options; `spotvlm load` uses the same."""
    parser.add_argument("--users", type=positive_int, default=16, help="concurrent streams (default: 16)")
    parser.add_argument("--spawn-rate", type=positive_float, help="users started per second (default: --users)")
    parser.add_argument("--duration", type=positive_float, default=60.0, metavar="S", help="seconds (default: 60)")
    parser.add_argument("--fps", type=positive_float, default=5.0, help="frames per second per user (default: 5)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="Triton protocol (default: grpc)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help=f"reports folder (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--url", metavar="HOST:PORT", help="a running edge (the chosen protocol's port); default: start both servers"
    )
    parser.add_argument("--prompt", help="the question asked of every frame")
    parser.add_argument("--max-tokens", type=positive_int, help="answer length in tokens (default: the server's)")
    parser.add_argument("--cloud-delay", metavar="SPEC", help="delay injected on the cloud link: 1500, 2000+-1000")
    parser.add_argument("--images", metavar="DIR", help="send the images of a folder (default: a synthetic scene)")
    parser.add_argument(
        "--stop-timeout", type=float, default=30.0, help="seconds users get to finish their frame at the end"
    )
    parser.add_argument(
        "--progress-interval", type=float, default=5.0, help="seconds between progress lines (0: off; default: 5)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.load_run",
        description="Headless locust load test of the edge spotvlm model (see the module docstring).",
    )
    add_arguments(parser)
    return parser


def _number(value: float) -> str:
    return f"{value:g}"


def locust_command(
    args: argparse.Namespace, host: str, csv_prefix: Path, html_path: Path, python: str = sys.executable
) -> list[str]:
    """The locust command line for a headless run of the locustfile against `host`."""
    spawn_rate = args.spawn_rate if args.spawn_rate is not None else args.users
    command = [
        python,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(args.users),
        "--spawn-rate",
        _number(spawn_rate),
        "--run-time",
        f"{max(1, math.ceil(args.duration))}s",
        "--stop-timeout",
        f"{max(0, math.ceil(args.stop_timeout))}s",
        "--host",
        host,
        "--csv",
        str(csv_prefix),
        "--html",
        str(html_path),
        # Our own progress line replaces locust's table every 2 s; the summary tables still print at the end.
        "--only-summary",
        "--protocol",
        args.protocol,
        "--fps",
        _number(args.fps),
        "--progress-interval",
        _number(args.progress_interval),
    ]
    if args.prompt:
        command += ["--prompt", args.prompt]
    if args.max_tokens is not None:
        command += ["--max-tokens", str(args.max_tokens)]
    if args.cloud_delay:
        command += ["--cloud-delay", args.cloud_delay]
    if args.images:
        command += ["--images", str(args.images)]
    return command


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


def _check_edge(url: str, protocol: str) -> str | None:
    """None when the edge is up with `spotvlm` ready, else what is wrong."""
    from client.triton_client import VLMClient

    try:
        with VLMClient(url, protocol, timeout_s=10.0) as client:  # type: ignore[arg-type]
            if not client.is_ready():
                return "not reachable"
            state = client.model_states().get("spotvlm")
            if state != "READY":
                return f"up, but its model 'spotvlm' is {state or 'missing'}"
    except Exception as exc:  # a malformed URL or a dead port
        return f"not reachable ({exc})"
    return None


def _start_servers(stack: contextlib.ExitStack, out: Path, protocol: str) -> str:
    """Starts cloud then edge (linked to that cloud) on free loopback ports; returns the edge URL for `protocol`."""
    from client.model_repository import check_built
    from client.linked_servers import LinkedServers

    repositories = PROJECT_ROOT / "model_repository"
    check_built(repositories)
    print("load: starting the cloud and edge Triton servers on free loopback ports ...", file=sys.stderr, flush=True)

    def say_ready(name: str, server: Any) -> None:
        urls = f"grpc {server.grpc_url}" if name == "cloud" else f"http {server.http_url}  grpc {server.grpc_url}"
        print(f"  {name:<5} ready: {urls} (pid {server.pid})", file=sys.stderr, flush=True)

    servers = stack.enter_context(
        LinkedServers(
            repositories,
            cloud_log_path=out / "cloud_server.log",
            edge_log_path=out / "edge_server.log",
            on_ready=say_ready,
        )
    )
    return servers.edge.http_url if protocol == "http" else servers.edge.grpc_url


def _locust_env() -> dict[str, str]:
    env = dict(os.environ)
    # The locustfile imports client.* and load_tests.*: find them from any working directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Terminated(Exception):
    """SIGTERM while running: unwinds like Ctrl-C, so locust and the servers this run started are stopped."""


def _raise_terminated(signum: int, _frame: Any) -> None:
    # Once: a second SIGTERM must not cut the servers' shutdown short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(signum)


def _run_locust(command: Sequence[str], timeout_s: float) -> int | None:
    """Runs locust in the foreground; returns its exit code (None if it had to be killed)."""
    print("load: " + " ".join(command[1:]), file=sys.stderr, flush=True)
    process = subprocess.Popen(list(command), cwd=PROJECT_ROOT, env=_locust_env())
    try:
        return process.wait(timeout=timeout_s)
    except (KeyboardInterrupt, Terminated) as exc:
        if isinstance(exc, Terminated):
            # Only this process got the SIGTERM; locust shuts down on its own SIGTERM and writes its CSV.
            process.send_signal(signal.SIGTERM)
        # A terminal's Ctrl-C reached locust too (same process group): it stops its users and writes its reports.
        print("load: interrupted; waiting for locust to write its reports ...", file=sys.stderr, flush=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        raise
    except subprocess.TimeoutExpired:
        print(f"load: locust still running after {timeout_s:.0f} s; stopping it", file=sys.stderr, flush=True)
        return None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run(args: argparse.Namespace) -> int:
    """A whole load run from parsed options (`spotvlm load` and `python -m load_tests.load_run`)."""
    from client.launcher import ServerStartError

    if args.images and not Path(args.images).is_dir():
        print(f"load: --images {args.images} is not a folder", file=sys.stderr)
        return 2
    reports = Reports(Path(args.out).resolve())
    reports.out.mkdir(parents=True, exist_ok=True)
    # Old reports must not pass for this run's.
    for stale in reports.out.glob(f"{CSV_BASENAME}[_.]*"):
        if stale.is_file():
            stale.unlink()
    returncode: int | None = None
    previous_sigterm = None
    with contextlib.suppress(ValueError):  # not the main thread: the caller handles signals
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with contextlib.ExitStack() as stack:
            if args.url:
                host = edge_url(args.url, args.protocol)
                problem = _check_edge(host, args.protocol)
                if problem is not None:
                    print(
                        f"load: the edge at {host} ({args.protocol}) is {problem}. Start it with `spotvlm serve edge`"
                        " (and `spotvlm serve cloud`), or leave out --url to have this command start both.",
                        file=sys.stderr,
                    )
                    return 2
            else:
                try:
                    host = _start_servers(stack, reports.out, args.protocol)
                except ServerStartError as exc:
                    print(f"load: a server did not start: {exc}", file=sys.stderr)
                    return 1
            command = locust_command(args, host, reports.csv_prefix, reports.html)
            # Locust's own start and stop take seconds; the users get stop_timeout to finish their last frame.
            returncode = _run_locust(command, timeout_s=args.duration + args.stop_timeout + 120)
    except KeyboardInterrupt:
        print("load: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("load: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    totals = None
    if reports.stats_csv.exists():
        try:
            totals = read_stats_csv(reports.stats_csv)
        except ValueError as exc:
            print(f"load: {exc}", file=sys.stderr)
    status, why = verdict(returncode, totals)
    for line in read_failures_csv(reports.failures_csv):
        print(f"  failure: {line}", file=sys.stderr)
    if reports.context_json.exists():
        share = json.loads(reports.context_json.read_text()).get("context_share")
        if share is not None:
            why += f"; {share:.0%} of the answered frames had cloud context"
    print(f"load: {'OK' if status == 0 else 'FAILED'}: {why}")
    print(f"load: reports in {reports.out} ({reports.html.name}, {CSV_BASENAME}_*.csv, {reports.context_json.name})")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
