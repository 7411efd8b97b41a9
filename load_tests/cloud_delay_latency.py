"""Does a late cloud slow the edge? Edge latency with the cloud off against a cloud answering 1.5 s late, one run.

    python -m load_tests.cloud_delay_latency [--streams 2] [--fps 5] [--duration 20] [--delay 1500] [--json out.json]

It starts a cloud server and two edge servers, one with its cloud link off and one linked to the cloud, and sends
the same synthetic streams to each (the same seeds, so the same frames), one edge after the other. It prints JSON
with the client-side p50/p99 of each, their ratios, and how much of the linked run had cloud context.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.frame_sources import SyntheticSource
from client.linked_servers import LinkedServers
from client.streaming import FrameResult, run_streams
from load_tests.frame_stats import after_warmup, latency_summary, ratio
from load_tests.machine import machine_info

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run(edge_url: str, streams: int, fps: float, duration_s: float, params: dict[str, Any]) -> list[FrameResult]:
    sources = [SyntheticSource(seed=seed) for seed in range(1, streams + 1)]
    return run_streams(
        sources,
        url=edge_url,
        protocol="grpc",
        fps=fps,
        duration_s=duration_s,
        prompt="Where is the car?",
        params=params,
        progress=io.StringIO(),
    )


def summarize(results: Sequence[FrameResult], warmup_s: float) -> dict[str, Any]:
    start_ms = min(r.sent_at_ms for r in results)
    kept = [r for r in after_warmup(results, start_ms, warmup_s) if r.ok]
    with_context = [r for r in kept if r.context.has_context]
    ages = [float(r.context.context_age_ms) for r in with_context if r.context.context_age_ms is not None]
    return {
        "client": latency_summary([r.latency_ms for r in kept]),
        "server_total": latency_summary(
            [float(r.context.latency_ms.total) for r in kept if r.context.latency_ms is not None]
        ),
        "errors": sum(1 for r in results if not r.ok),
        "context_share": round(len(with_context) / len(kept), 3) if kept else None,
        "context_age": latency_summary(ages),
        "cloud_states": sorted({str(r.context.cloud_state) for r in kept}),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.cloud_delay_latency", description=__doc__)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds left out at the start of each run")
    parser.add_argument("--delay", default="1500", help="cloud delay spec injected on the linked edge's link")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    repositories = PROJECT_ROOT / "model_repository"
    # Timed is the SVLM path with and without a cloud; a carried cloud answer would skip the SVLM.
    params = {"max_tokens": args.max_tokens, "cloud_delay": args.delay, "carry_answers": False}
    report: dict[str, Any] = {
        "benchmark": "cloud_delay_latency",
        "streams": args.streams,
        "fps": args.fps,
        "duration_s": args.duration,
        "cloud_delay": args.delay,
        "max_tokens": args.max_tokens,
        "machine": machine_info(),
    }
    print("starting the cloud ...", file=sys.stderr, flush=True)
    with LinkedServers(repositories, edge=False, ready_timeout_s=180) as servers:
        for name, linked in (("cloud_off", False), ("cloud_delayed", True)):
            url = servers.link_url if linked else "off"
            print(f"starting the edge with cloud link {url} ...", file=sys.stderr, flush=True)
            edge = servers.start_edge(linked=linked)
            print(f"{name}: {args.streams} streams at {args.fps:g} fps for {args.duration:g} s", file=sys.stderr)
            report[name] = summarize(run(edge.grpc_url, args.streams, args.fps, args.duration, params), args.warmup)
            edge.stop()
    off, delayed = report["cloud_off"]["client"], report["cloud_delayed"]["client"]
    report["ratio_p50"] = ratio(delayed["p50_ms"], off["p50_ms"])
    report["ratio_p99"] = ratio(delayed["p99_ms"], off["p99_ms"])
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
