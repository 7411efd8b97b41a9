"""`spotvlm bench`: does the edge keep the plain SVLM's latency, does it hide a late cloud, and how many streams does
it carry? JSON out.

    spotvlm bench [--quick] [--capacity] [--json FILE] [--rounds R] [--streams N] [--fps F] [--seconds S] ...
    python -m load_tests.bench ...                                  (the same options)

It starts its own servers on free loopback ports (client.linked_servers.LinkedServers), one setup at a time, and runs
five phases in R interleaved rounds (A, B, C, then C, B, A, ...), each phase for S seconds per round:

  edge with its cloud link off (SPOTVLM_CLOUD_URL=off); these phases differ only in the model and request parameters
    svlm               the plain SVLM ensemble `svlm`: IMAGE, PROMPT, MAX_TOKENS; no sequence, no context
    spotvlm_cloud_off  `spotvlm`, the whole edge path, with no cloud to hear from
    spotvlm_no_history the same with use_context false: no text history in the SVLM's prompt, so the plugin's own
                       hops show apart from the history's extra prefill
  cloud (model_repository/cloud) + edge linked to it, with enough cloud requests in flight per stream to send every
  frame (SPOTVLM_CLOUD_MAX_INFLIGHT, --cloud-max-inflight), so both linked phases give the cloud the same work
    spotvlm_delay0     request parameter cloud_delay "0": the cloud answers as fast as it can
    spotvlm_delay2000  cloud_delay "uniform:1000:3000": every cloud round trip 2000 +- 1000 ms later
  A linked phase starts once the cloud has answered every request of the runs before (its Triton counter).

Each ratio is computed within each round, and the report gives its median over rounds under the key (e.g.
overhead_ratio_p50) and its range as `<key>_range` [min, max]; `ratios` holds every round's value. Per-phase
percentiles (`<phase>_p50_ms`) pool the measured frames of all rounds.

--capacity adds, on the cloud-off edge (load_tests/bench_run.py):
  in the rounds: spotvlm (context_transfer policy) at 1 and 4 unsynchronised streams (isolation_ratio_p50), svlm at
    1 stream against the DIY baseline, the same checkpoint's transformers `generate` in one Python process on the same
    frames (diy_ratio_p50), and svlm at 16 streams against the DIY process answering frames back to back
    (diy_throughput_ratio);
  after the rounds: the capacity search, the most context_transfer streams at --fps whose every frame is answered
    within --latency-limit-ms at p99, none late and none failed (doubling then bisecting, --capacity-seconds per
    count, up to --capacity-limit; capacity_streams), and the edge's peak RSS (server + child processes) at 16 and
    64 streams (edge_rss_bytes).

The context store's memory (store_bytes_per_stream: a ContextStore filled with 10,000 streams at full history,
tracemalloc, in a child process) is measured before any timed run, alone. Latencies are the client's round trips
over gRPC; the first --warmup seconds of every run are left out. Goals are reported with met true/false, never
asserted. A tqdm bar counts the runs. Exit status: 0 when the run finished, 1 when a server failed to start, 2 for
bad options, 130 when interrupted (Ctrl-C, SIGINT or SIGTERM: the servers are stopped first).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.streaming import DEFAULT_PROMPT
from load_tests.bench_output import format_table, write_plot
from load_tests.bench_phases import PHASES
from load_tests.bench_run import REPOSITORY_ROOT, ServerFailed, run_bench
from load_tests.bench_config import CAPACITY_DEFAULTS, DEFAULT_MAX_TOKENS, LONGEST_RTT_S, BenchConfig
from load_tests.bench_store import STORE_STREAMS
from load_tests.interrupts import interruptible

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PLOT = PROJECT_ROOT / "build" / "bench.png"

QUICK_DEFAULTS = {"streams": 2, "fps": 5.0, "seconds": 8.0, "warmup": 2.0, "rounds": 3}
FULL_DEFAULTS = {"streams": 2, "fps": 5.0, "seconds": 20.0, "warmup": 3.0, "rounds": 5}


# -- configuration -----------------------------------------------------------------------------------------------------


def resolve_config(args: argparse.Namespace) -> BenchConfig:
    """The run's settings: the options given, else the --quick or the full defaults. ValueError for bad values."""
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS

    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return defaults[name] if value is None else value

    config = BenchConfig(
        streams=int(pick("streams")),
        fps=float(pick("fps")),
        seconds=float(pick("seconds")),
        warmup=float(pick("warmup")),
        max_tokens=args.max_tokens if args.max_tokens is not None else DEFAULT_MAX_TOKENS,
        quick=bool(args.quick),
        prompt=args.prompt if args.prompt is not None else DEFAULT_PROMPT,
        store_streams=args.store_streams if args.store_streams is not None else STORE_STREAMS,
        ready_timeout=args.ready_timeout,
        cloud_max_inflight=0 if getattr(args, "cloud_max_inflight", None) is None else args.cloud_max_inflight,
        rounds=int(pick("rounds")),
        capacity=bool(getattr(args, "capacity", False)),
        **{
            name: getattr(args, name) if getattr(args, name, None) is not None else default
            for name, default in CAPACITY_DEFAULTS.items()
        },
    )
    if config.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {config.rounds}")
    if not config.capacity_seconds > 0 or not 1 <= config.capacity_limit <= 999:
        raise ValueError("--capacity-seconds must be > 0 and --capacity-limit between 1 and 999")
    if not config.latency_limit_ms > 0 or config.diy_threads < 1:
        raise ValueError("--latency-limit-ms must be > 0 and --diy-threads >= 1")
    if config.streams < 1:
        raise ValueError(f"--streams must be >= 1, got {config.streams}")
    if not config.fps > 0 or not config.seconds > 0:
        raise ValueError("--fps and --seconds must be > 0")
    if not 0 <= config.warmup < config.seconds:
        raise ValueError(
            f"--warmup ({config.warmup:g} s) must be >= 0 and shorter than --seconds ({config.seconds:g} s)"
        )
    if config.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {config.max_tokens}")
    if getattr(args, "cloud_max_inflight", None) is not None and config.cloud_max_inflight < 1:
        raise ValueError(f"--cloud-max-inflight must be >= 1, got {config.cloud_max_inflight}")
    if config.store_streams < 1:
        raise ValueError(f"--store-streams must be >= 1, got {config.store_streams}")
    if not config.prompt.strip():
        raise ValueError("--prompt must not be empty")
    return config


def plot_path(args: argparse.Namespace) -> Path:
    """--plot, else next to the JSON (same name, .png), else build/bench.png."""
    if args.plot is not None:
        return Path(args.plot)
    if args.json is not None:
        return Path(args.json).with_suffix(".png")
    return DEFAULT_PLOT


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- command line ------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `spotvlm bench` and `python -m load_tests.bench`."""
    q, f = QUICK_DEFAULTS, FULL_DEFAULTS
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the JSON report here (else to stdout)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a short run: {q['streams']} streams, {q['fps']:g} fps, {q['rounds']} rounds of {q['seconds']:g} s per"
        f" phase, {q['warmup']:g} s warm-up",
    )
    parser.add_argument("--streams", type=int, help=f"concurrent streams (default: {f['streams']})")
    parser.add_argument("--fps", type=float, help=f"frames per second per stream (default: {f['fps']:g})")
    parser.add_argument("--seconds", type=float, help=f"seconds per phase and round (default: {f['seconds']:g})")
    parser.add_argument(
        "--warmup", type=float, help=f"seconds left out at each phase's start (default: {f['warmup']:g})"
    )
    parser.add_argument(
        "--max-tokens", type=int, help=f"max_tokens of every request, all phases (default: {DEFAULT_MAX_TOKENS})"
    )
    parser.add_argument("--prompt", help="the question asked of every frame (default: the stream client's)")
    parser.add_argument(
        "--store-streams", type=int, help=f"streams in the context store memory measurement (default: {STORE_STREAMS})"
    )
    parser.add_argument(
        "--cloud-max-inflight",
        type=int,
        help="the linked edge's cloud requests in flight per stream (default: enough to send every frame at a"
        f" {LONGEST_RTT_S:g} s round trip; 1 is spotvlm's own default)",
    )
    parser.add_argument(
        "--rounds", type=int, help=f"rounds of every phase (default: {f['rounds']}, --quick {q['rounds']})"
    )
    parser.add_argument(
        "--capacity",
        action="store_true",
        help="also the DIY baseline, 1 vs 4 streams, the capacity search and the edge's memory at 16 and 64 streams",
    )
    c = CAPACITY_DEFAULTS
    parser.add_argument(
        "--capacity-seconds",
        type=float,
        help=f"seconds per capacity trial and memory run (default: {c['capacity_seconds']:g})",
    )
    parser.add_argument(
        "--capacity-limit",
        type=int,
        help=f"the most streams the capacity search tries (default: {c['capacity_limit']})",
    )
    parser.add_argument(
        "--latency-limit-ms", type=float, help=f"the capacity's p99 limit (default: {c['latency_limit_ms']:g})"
    )
    parser.add_argument(
        "--diy-threads", type=int, help=f"torch threads of the DIY baseline (default: {c['diy_threads']}, as served)"
    )
    parser.add_argument("--plot", type=Path, help="the latency plot (default: next to --json, else build/bench.png)")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for each server")
    return parser


def run_from_args(args: argparse.Namespace, prog: str = "spotvlm bench") -> int:
    try:
        config = resolve_config(args)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    from client.model_repository import unrendered_templates

    missing = unrendered_templates(REPOSITORY_ROOT)
    if missing:
        print(f"{prog}: {missing[0]} is not rendered; run ./build_engines.sh first", file=sys.stderr)
        return 2
    _say(
        f"{prog}: {len(PHASES)} phases in {config.rounds} rounds, {config.streams} streams at {config.fps:g} fps,"
        f" {config.seconds:g} s each ({config.warmup:g} s warm-up), max_tokens {config.max_tokens}"
        f"{', quick' if config.quick else ''}{', capacity' if config.capacity else ''}"
    )
    stop = threading.Event()
    try:
        with interruptible():
            report, samples = run_bench(config, stop)
    except ServerFailed as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    path = plot_path(args)
    skipped = write_plot(report, samples, path)
    report["plot"] = None if skipped else str(path)
    if skipped:
        _say(skipped)
    text = json.dumps(report, indent=2)
    table = format_table(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
        print(table)
        print(f"\nJSON: {args.json}" + (f"\nplot: {path}" if not skipped else ""))
    else:
        _say(table)
        print(text)
    return 130 if stop.is_set() else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), prog="python -m load_tests.bench")


if __name__ == "__main__":
    sys.exit(main())
