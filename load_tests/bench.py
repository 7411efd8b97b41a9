"""`spotvlm bench`: does the edge keep the plain SVLM's latency, and does it hide a late cloud? One run, JSON out.

    spotvlm bench [--quick] [--json FILE] [--streams N] [--fps F] [--seconds S] [--warmup W] [--max-tokens N]
    python -m load_tests.bench ...                                  (the same options)

It starts its own servers on free loopback ports (client.linked_servers.LinkedServers), one setup at a time, and runs
five phases, one after the other (nothing else is measured while a phase runs):

  edge with its cloud link off (SPOTVLM_CLOUD_URL=off)
    svlm               the plain SVLM ensemble `svlm`: IMAGE, PROMPT, MAX_TOKENS; no sequence, no context
    spotvlm_cloud_off  `spotvlm`, the whole edge path, with no cloud to hear from
    spotvlm_no_history the same with use_context false: no text history in the SVLM's prompt, so the plugin's own
                       hops show apart from the history's extra prefill
  cloud (model_repository/cloud) + edge linked to it (SPOTVLM_CLOUD_URL=<the cloud's gRPC>), with enough cloud
  requests in flight per stream to send every frame (SPOTVLM_CLOUD_MAX_INFLIGHT, --cloud-max-inflight), so both linked
  phases give the cloud the same work and only the delay differs
    spotvlm_delay0     request parameter cloud_delay "0": the cloud answers as fast as it can
    spotvlm_delay2000  cloud_delay "uniform:1000:3000": every cloud round trip 2000 +- 1000 ms later

Every phase sends the same frames (SyntheticSource, seed k for stream k), prompt and max_tokens from N streams at a
fixed fps over gRPC, each stream paced by client.streaming.run_streams (its own staggered schedule, one request in
flight). The first --warmup seconds of each phase are left out. Latencies are the client's round trips.

Headline keys: `<phase>_p50_ms` / `<phase>_p99_ms`, overhead_ratio_p50 (spotvlm_cloud_off p50 / svlm p50),
overhead_ratio_no_history_p50 (spotvlm_no_history p50 / svlm p50), context_lag_p50_ms (an answer's age at its first
use minus its round trip: how long the edge takes to use an answer after it arrives),
hiding_ratio_p99 (spotvlm_delay2000 p99 / spotvlm_delay0 p99), context_age_p50_ms and cloud_rtt_p50_ms (delay2000
phase; the round trip is CONTEXT.context_rtt_ms, counted once per LVLM answer, not once per frame that used it), and
store_bytes_per_stream: a ContextStore filled with 10,000 streams at full history, measured with tracemalloc. The goals
are reported with met true/false, never asserted. Exit status: 0 when the run finished, 1 when a server failed to
start, 2 for bad options, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.frame_sources import SyntheticSource
from client.streaming import DEFAULT_PROMPT, FrameResult, InferClient, StreamSession, run_streams
from client.triton_client import text_tensor
from load_tests.bench_output import format_table, write_plot
from load_tests.bench_phases import (
    PHASE_NAMES,
    PHASES,
    Phase,
    evaluate_goals,
    headline_keys,
    phase_samples,
    phase_stream_ids,
    summarize_phase,
)
from load_tests.bench_store import STORE_STREAMS, StoreMeasurement
from load_tests.machine import machine_info
from load_tests.triton_metrics import scrape_metrics

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REPOSITORY_ROOT = PROJECT_ROOT / "model_repository"
DEFAULT_PLOT = PROJECT_ROOT / "build" / "bench.png"

DEFAULT_MAX_TOKENS = 24  # spotvlm's and svlm_generate's default_max_tokens
# The longest round trip the delay2000 phase can take: its injected maximum plus the LVLM's own time.
LONGEST_RTT_S = 3.0 + 1.0
QUICK_DEFAULTS = {"streams": 2, "fps": 5.0, "seconds": 20.0, "warmup": 3.0}
FULL_DEFAULTS = {"streams": 2, "fps": 5.0, "seconds": 60.0, "warmup": 5.0}
# Longest wait for the cloud to finish the delay0 phase's requests before the delay2000 phase starts.
SETTLE_TIMEOUT_S = 20.0


# -- the svlm phase ----------------------------------------------------------------------------------------------------


class SvlmSession(StreamSession):
    """A stream of plain `svlm` requests for run_streams: the frame, PROMPT and MAX_TOKENS, no sequence flags.

    It reuses StreamSession.send (timing, error capture) so both kinds of phase measure the same way."""

    def __init__(
        self,
        url: str,
        stream_id: int,
        prompt: str,
        max_tokens: int,
        timeout_s: float = 60.0,
        client: InferClient | None = None,
    ) -> None:
        super().__init__(url, "grpc", stream_id, prompt, model="svlm", timeout_s=timeout_s, client=client)
        self.max_tokens = max_tokens

    def _inputs(self, frame: np.ndarray, timestamp_ms: int) -> dict[str, np.ndarray]:
        image = np.ascontiguousarray(frame, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a frame must be RGB [H, W, 3], got shape {image.shape}")
        return {
            "IMAGE": image[None],
            "PROMPT": text_tensor(self.prompt),
            "MAX_TOKENS": np.array([[self.max_tokens]], dtype=np.int32),
        }

    def _infer(self, inputs: dict[str, np.ndarray], start: bool, end: bool) -> dict[str, np.ndarray]:
        return self._client.infer(self.model, inputs, ["TEXT"])


# -- configuration -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    streams: int
    fps: float
    seconds: float
    warmup: float
    max_tokens: int
    quick: bool
    prompt: str = DEFAULT_PROMPT
    store_streams: int = STORE_STREAMS
    ready_timeout: float = 180.0
    cloud_max_inflight: int = 0  # the linked edge's per-stream cloud requests in flight; 0 = full_rate_inflight(fps)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cloud_max_inflight"] = self.linked_inflight
        out["cloud_delays"] = {p.name: p.cloud_delay for p in PHASES}
        out["protocol"] = "grpc"
        out["frames"] = "SyntheticSource 320x240 RGB, seed k for stream k, sent raw"
        return out

    @property
    def linked_inflight(self) -> int:
        return self.cloud_max_inflight or full_rate_inflight(self.fps)


def full_rate_inflight(fps: float, longest_rtt_s: float = LONGEST_RTT_S) -> int:
    """Cloud requests in flight per stream so that every frame can go to the cloud even at the longest round trip.
    With 1 (spotvlm's default) an answer is reused until the next one comes back a round trip later, so the median
    context age is about 1.5 round trips by construction; with every frame sent, the freshest answer is at most a
    frame interval older than its round trip, which is what the context-age goal asks."""
    return max(1, math.ceil(fps * longest_rtt_s))


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
    )
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


# -- running -----------------------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_phase(
    phase: Phase, phase_index: int, url: str, config: BenchConfig, stop: threading.Event
) -> tuple[list[FrameResult], float]:
    """One phase's streams against the edge at `url`; (results, start wall time in ms)."""
    sources = [SyntheticSource(seed=k) for k in range(1, config.streams + 1)]
    params: dict[str, Any] = {"max_tokens": config.max_tokens}
    if phase.cloud_delay is not None:
        params["cloud_delay"] = phase.cloud_delay
    if not phase.use_context:
        params["use_context"] = False
    factory: Callable[[int], StreamSession] | None = None
    if phase.model == "svlm":

        def factory(stream_id: int) -> StreamSession:
            return SvlmSession(url, stream_id, config.prompt, config.max_tokens)

    started_ms = time.time() * 1000.0
    results = run_streams(
        sources,
        url=url,
        protocol="grpc",
        fps=config.fps,
        duration_s=config.seconds,
        prompt=config.prompt,
        params=params,
        progress=sys.stderr,
        stream_ids=phase_stream_ids(phase_index, config.streams),
        session_factory=factory,
        stop=stop,
    )
    return results, started_ms


def wait_for_cloud(metrics_url: str, expected: int, timeout_s: float = SETTLE_TIMEOUT_S) -> float:
    """Waits until the cloud's lvlm has answered `expected` requests (its Triton success counter) or `timeout_s`
    passed, so the next phase does not share the CPU with the last one's cloud work; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        done = scrape_metrics(metrics_url).get("lvlm", {}).get("requests", 0.0)
        if done >= expected:
            break
        time.sleep(0.2)
    return round(time.monotonic() - started, 2)


def _stop_in_background(server: Any) -> threading.Thread:
    """Stops a server that is no longer needed without holding up the next step (stopping takes seconds, most of
    them waiting for the process to exit)."""
    thread = threading.Thread(target=server.stop, name="bench-server-stop", daemon=True)
    thread.start()
    return thread


class ServerFailed(RuntimeError):
    """A server did not start; the message holds its log tail."""


def run_bench(config: BenchConfig, stop: threading.Event) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """Measures the store and runs every phase (servers started here, stopped after); (report, raw samples)."""
    from client.launcher import TritonServer
    from client.linked_servers import LinkedServers

    wall_started = time.monotonic()
    phases: dict[str, dict[str, Any]] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    servers: dict[str, Any] = {}
    stoppers: list[threading.Thread] = []
    store: dict[str, Any] = {"streams": config.store_streams}

    def start(named: Sequence[tuple[str, TritonServer]]) -> None:
        """Starts the servers together and waits for all of them; read their URLs only afterwards."""
        failures: list[str] = []

        def one(name: str, server: TritonServer) -> None:
            try:
                server.start(config.ready_timeout)
            except Exception as exc:  # ServerStartError (with the log tail), or no tritonserver at all
                failures.append(f"the {name} server did not start: {exc}")
                return
            servers[name] = {"ready_s": round(server.ready_time_s or 0.0, 1), "log": str(server.log_path)}
            _say(f"  {name} ready in {server.ready_time_s:.1f} s (grpc {server.grpc_url})")

        _say(f"starting the {' and the '.join(name for name, _ in named)} tritonserver ...")
        threads = [threading.Thread(target=one, args=pair, name="bench-server-start", daemon=True) for pair in named]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise ServerFailed(failures[0])

    def measure(phase: Phase, url: str) -> None:
        index = PHASE_NAMES.index(phase.name)
        _say(
            f"[{index + 1}/{len(PHASES)}] {phase.name}: {phase.title}; {config.streams} stream(s) at {config.fps:g} fps"
            f" for {config.seconds:g} s (first {config.warmup:g} s left out)"
        )
        results, started_ms = run_phase(phase, index, url, config, stop)
        summary = summarize_phase(results, started_ms, config.warmup)
        phases[phase.name] = summary
        samples[phase.name] = phase_samples(results, started_ms, config.warmup)
        share = summary["context_share"]
        _say(
            f"  {phase.name}: p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms over {summary['frames']} frames,"
            f" {summary['errors_total']} errors, context {'-' if share is None else f'{share:.0%}'}"
        )

    _say(
        f"measuring the context store ({config.store_streams} streams at full history, tracemalloc) in a child process"
    )
    measurement = StoreMeasurement(config.store_streams)
    try:
        unlinked = LinkedServers(
            REPOSITORY_ROOT,
            cloud=False,
            edge_name="edge (cloud link off)",
            starter=lambda name, server: start([(name, server)]),
        )
        try:
            unlinked.start()
            edge_off = unlinked.edge
            try:  # before the first phase: nothing else may use the CPU while a phase runs
                store = measurement.result()
                _say(
                    f"  context store: {store['store_bytes_per_stream']:.0f} bytes per stream (tracemalloc),"
                    f" {store['store_memory_bytes_estimate_per_stream']:.0f} (memory_bytes()), {store['seconds']} s"
                )
            except RuntimeError as exc:
                store["error"] = str(exc)
                _say(f"  the context store measurement failed: {exc}")
            for phase in PHASES:
                if phase.edge == "cloud_off" and not stop.is_set():
                    measure(phase, edge_off.grpc_url)
        finally:
            stoppers.append(_stop_in_background(unlinked))
        if stop.is_set():
            return _report(config, phases, servers, wall_started, store), samples
        linked = LinkedServers(
            REPOSITORY_ROOT,
            edge_name="edge (linked to the cloud)",
            edge_env={"SPOTVLM_CLOUD_MAX_INFLIGHT": str(config.linked_inflight)},
            starter=lambda name, server: start([(name, server)]),
        )
        try:
            linked.start()
            cloud, edge = linked.cloud, linked.edge
            for thread in stoppers:  # the cloud-off edge must be gone before anything is measured again
                thread.join()
            sent = 0
            for phase in PHASES:
                if phase.edge != "linked" or stop.is_set():
                    continue
                if sent:
                    waited = wait_for_cloud(cloud.metrics_url, sent)
                    servers.setdefault("settle_s", {})[phase.name] = waited
                    _say(f"  waited {waited:g} s for the cloud to answer the {sent} requests sent so far")
                measure(phase, edge.grpc_url)
                sent += phases[phase.name]["cloud_requests_sent"]
        finally:
            stoppers.append(_stop_in_background(linked))
    finally:
        measurement.cancel()
        for thread in stoppers:
            thread.join()
    return _report(config, phases, servers, wall_started, store), samples


def _report(
    config: BenchConfig,
    phases: dict[str, dict[str, Any]],
    servers: dict[str, Any],
    wall_started: float,
    store: dict[str, Any],
) -> dict[str, Any]:
    keys = headline_keys(phases)
    report: dict[str, Any] = {"benchmark": "spotvlm_bench", **keys}
    report["store_bytes_per_stream"] = store.get("store_bytes_per_stream")
    report["store_memory_bytes_estimate_per_stream"] = store.get("store_memory_bytes_estimate_per_stream")
    report["goals"] = evaluate_goals(keys, config.fps)
    report["config"] = config.to_json()
    report["machine"] = machine_info()
    report["phases"] = phases
    report["store"] = store
    report["servers"] = servers
    report["complete"] = all(name in phases for name in PHASE_NAMES) and "error" not in store
    report["wall_s"] = round(time.monotonic() - wall_started, 1)
    return report


# -- command line ------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `spotvlm bench` and `python -m load_tests.bench`."""
    q, f = QUICK_DEFAULTS, FULL_DEFAULTS
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the JSON report here (else to stdout)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a short run: {q['streams']} streams, {q['fps']:g} fps, {q['seconds']:g} s per phase, {q['warmup']:g} s"
        " warm-up (under 3 minutes on 2 cores)",
    )
    parser.add_argument("--streams", type=int, help=f"concurrent streams (default: {f['streams']})")
    parser.add_argument("--fps", type=float, help=f"frames per second per stream (default: {f['fps']:g})")
    parser.add_argument("--seconds", type=float, help=f"seconds per phase (default: {f['seconds']:g})")
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
        f"{prog}: {len(PHASES)} phases, {config.streams} streams at {config.fps:g} fps, {config.seconds:g} s each"
        f" ({config.warmup:g} s warm-up), max_tokens {config.max_tokens}{', quick' if config.quick else ''}"
    )
    stop = threading.Event()
    try:
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
