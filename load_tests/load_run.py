"""Headless locust load test of the edge model `spotvlm`: starts both servers, runs locust, checks the reports.

    python -m load_tests.load_run [--users 16] [--spawn-rate N] [--duration 60] [--fps 5] [--protocol grpc|http]
                                  [--out DIR] [--url HOST:PORT[,...] | --edges N] [--prompt TEXT] [--max-tokens N]
                                  [--cloud-delay SPEC]
    spotvlm load ...                      (the same options)

Without --url it starts a cloud tritonserver (model_repository/cloud) and an edge tritonserver (model_repository/edge)
on free loopback ports, the edge's cloud link pointed at that cloud, and stops both at the end; `--edges N` starts N
edges on that cloud, and each user's stream goes to the edge its id hashes to (client.sharding). With --url it uses
edges that are already running (HOST:PORT of the chosen protocol, several comma-separated).

locust runs as a subprocess, headless, with `load_tests/locustfile.py`: every locust user is one video stream (one
Triton sequence) at --fps. It writes, under --out (default build/load):

    load_stats.csv, load_failures.csv, load_exceptions.csv, load_stats_history.csv   locust's CSV reports (--csv)
    load.html                                                                        locust's HTML report (--html)
    load_context.json                       cloud-context share and context age of the answered frames
    cloud_server.log, edge_server.log       the servers' logs (when this command started them)

Exit status: 0 when locust exited 0, its CSV shows requests and no failures; 1 on any failed request, a locust
error or a server that did not start; 2 for bad options or an edge that is not reachable; 130 on Ctrl-C.

The pure parts the locustfile uses (sequence ids, context statistics) are load_tests/locust_streams.py, the reading
of locust's reports load_tests/locust_reports.py; the names the locustfile imports from here are re-exported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from load_tests.locust_reports import CSV_BASENAME, Reports, read_failures_csv, read_stats_csv, verdict
from load_tests.locust_streams import (
    CONTEXT_NAME,
    CONTEXT_TYPE,
    PROTOCOLS,
    ContextStats,
    SequenceIds,
    add_stream_arguments,
    edge_url,
    format_context_summary,
    positive_float,
    positive_int,
    response_bytes,
    stream_params,
)

# The locustfile imports these from here.
__all__ = [
    "CONTEXT_NAME",
    "CONTEXT_TYPE",
    "ContextStats",
    "SequenceIds",
    "add_stream_arguments",
    "edge_url",
    "format_context_summary",
    "response_bytes",
    "stream_params",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
DEFAULT_OUT = PROJECT_ROOT / "build" / "load"


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
        "--url",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="running edges (the chosen protocol's port); several: each stream goes to the edge its id hashes to;"
        " default: start the servers",
    )
    parser.add_argument(
        "--edges",
        type=positive_int,
        default=1,
        help="without --url: how many edges to start, all linked to one cloud and sharded by stream (default: 1)",
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


def _start_servers(stack: contextlib.ExitStack, out: Path, protocol: str, edges: int = 1) -> str:
    """Starts the cloud, then `edges` edges linked to it, on free loopback ports; returns the edges' URLs for
    `protocol`, comma-separated (locust's --host: each user's stream goes to the edge its id hashes to)."""
    from client.linked_servers import LinkedServers
    from client.model_repository import check_built

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
    started = [servers.edge]
    for index in range(1, edges):
        name = f"edge{index + 1}"
        started.append(servers.start_edge(name=name, log_path=out / f"{name}_server.log"))
    return ",".join(edge.http_url if protocol == "http" else edge.grpc_url for edge in started)


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
                hosts = [edge_url(url.strip(), args.protocol) for url in args.url.split(",")]
                for one in hosts:
                    problem = _check_edge(one, args.protocol)
                    if problem is not None:
                        print(
                            f"load: the edge at {one} ({args.protocol}) is {problem}. Start it with"
                            " `spotvlm serve edge` (and `spotvlm serve cloud`), or leave out --url to have this"
                            " command start the servers.",
                            file=sys.stderr,
                        )
                        return 2
                host = ",".join(hosts)
            else:
                try:
                    host = _start_servers(stack, reports.out, args.protocol, args.edges)
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
