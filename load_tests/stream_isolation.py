"""Stream isolation on the edge: do unsynchronised streams wait for each other? Prints JSON.

    python -m load_tests.stream_isolation [--fps 10] [--duration 20] [--warmup 2] [--max-tokens N]
                                          [--configs 1 4 4:2] [--json out.json] [--plot build/stream_isolation.png]

The requirement: "Streams must not wait for each other: edge p50 for 4 unsynchronised streams at 10 fps must be
<= 1.2x the p50 of 1 stream."

For each configuration `S[:G]` (S instances of `spotvlm`, optionally G instances of `svlm_generate`) it copies the
rendered edge repository (`model_repository/edge`, built by build_engines.sh) into a temporary folder, rewrites only
those `instance_group` counts in the copy, and starts one edge tritonserver on free ports with the cloud link off
(`SPOTVLM_CLOUD_URL=off`: this measures the edge alone). On that one server, over gRPC, with synthetic frames, it runs

  (a) 1 stream at --fps for --duration seconds, then
  (b) 4 streams at the same fps, staggered by a quarter of a frame interval (`run_streams` does that), for as long.

The first --warmup seconds of each run are left out. Per frame it keeps the client's round trip
(`FrameResult.latency_ms`, what a stream sees) and the server's own `CONTEXT.latency_ms.total` (from the start of the
`spotvlm` execute to its reply: without the time a request queues for its instance). Triton's per-model metrics
(queue and compute time, batch size) are read before and after each run to show where the time goes, and so is the
CPU time of the server's processes, of this client and of everything else on the machine (other people's work skews
the numbers on a small machine: `other_cpu_s` and the load averages say how much).

The goal is not asserted: the JSON says `meets_goal` per configuration (client p50 ratio <= `goal_ratio_p50`).
The exit code is 0 unless a server failed to start. Progress goes to stderr, the table and the JSON to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.model_repository import rendered_parameter
from load_tests.isolation import (
    DEFAULT_CONFIGS,
    EDGE_REPOSITORY,
    GOAL_RATIO_P50,
    PROJECT_ROOT,
    measure_config,
    parse_config,
    say,
)
from load_tests.isolation_report import format_table, write_plot
from load_tests.machine import load_average, machine_info

DEFAULT_PLOT = PROJECT_ROOT / "build" / "stream_isolation.png"


# -- command line ------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.stream_isolation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fps", type=_positive_float, default=10.0, help="frames per second of every stream")
    parser.add_argument("--duration", type=_positive_float, default=20.0, help="seconds of each run (1 and 4 streams)")
    parser.add_argument("--warmup", type=_non_negative_float, default=2.0, help="seconds left out at each run's start")
    parser.add_argument(
        "--max-tokens", type=_positive_int, default=None, help="max_tokens request parameter (default: the server's)"
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        type=parse_config,
        default=[parse_config(c) for c in DEFAULT_CONFIGS],
        metavar="S[:G]",
        help="S instances of spotvlm, optionally G of svlm_generate (default: 1 4; e.g. 4:2)",
    )
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--plot", type=Path, default=DEFAULT_PLOT, help="bar chart of the latencies (needs matplotlib; skipped without)"
    )
    parser.add_argument("--repository", type=Path, default=EDGE_REPOSITORY, help="the rendered edge repository")
    parser.add_argument("--ready-timeout", type=_positive_float, default=180.0, help="seconds to wait for a server")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.warmup >= args.duration:
        parser.error(f"--warmup ({args.warmup:g} s) must be shorter than --duration ({args.duration:g} s)")
    return args


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def effective_max_tokens(args: argparse.Namespace) -> tuple[int | None, str]:
    """(max_tokens the frames ask for, where it comes from)."""
    if args.max_tokens is not None:
        return args.max_tokens, "--max-tokens (request parameter)"
    value = rendered_parameter(args.repository / "spotvlm" / "config.pbtxt", "default_max_tokens")
    return (int(value) if value and value.isdigit() else None), "server default (spotvlm default_max_tokens)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.repository = args.repository.resolve()
    max_tokens, max_tokens_source = effective_max_tokens(args)
    params = {"max_tokens": args.max_tokens} if args.max_tokens is not None else None
    report: dict[str, Any] = {
        "benchmark": "stream_isolation",
        "requirement": "edge p50 for 4 unsynchronised streams at 10 fps <= 1.2x the p50 of 1 stream",
        "goal_ratio_p50": GOAL_RATIO_P50,
        "fps": args.fps,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "max_tokens": max_tokens,
        "max_tokens_source": max_tokens_source,
        "protocol": "grpc",
        "cloud": "off (SPOTVLM_CLOUD_URL=off)",
        "frames": "SyntheticSource 320x240 RGB, sent raw",
        "machine": machine_info(),
        "configs": [],
    }
    say(
        f"stream isolation: {len(args.configs)} config(s), {args.fps:g} fps, {args.duration:g} s per run, "
        f"warm-up {args.warmup:g} s, max_tokens {max_tokens} ({max_tokens_source}); "
        f"{report['machine']['cpu_count']} CPUs, load average {report['machine']['load_average']}"
    )
    failed = False
    for index, config in enumerate(args.configs, start=1):
        entry = measure_config(config, args, index, len(args.configs), params)
        if "error" in entry:
            entry.setdefault("name", config.name)
            failed = True
        report["configs"].append(entry)
    report["machine"]["load_average_end"] = load_average()
    if args.plot is not None:
        skipped = write_plot(report, args.plot)
        report["plot"] = None if skipped else str(args.plot)
        if skipped:
            report["plot_note"] = skipped
            say(skipped)
    print(format_table(report["configs"]))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
