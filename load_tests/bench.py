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
import gc
import json
import math
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.frame_sources import SyntheticSource
from client.streaming import DEFAULT_PROMPT, FrameResult, InferClient, StreamSession, run_streams
from client.triton_client import text_tensor
from client.stats import percentile
from load_tests.frame_stats import after_warmup, latency_summary, phase_summary, ratio
from load_tests.machine import machine_info
from load_tests.triton_metrics import scrape_metrics
from python_backends.context.store import CloudResult, ContextStore, StoreLimits, TurnRecord
from python_backends.detections import Detection

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REPOSITORY_ROOT = PROJECT_ROOT / "model_repository"
DEFAULT_PLOT = PROJECT_ROOT / "build" / "bench.png"

DEFAULT_MAX_TOKENS = 24  # spotvlm's and svlm_generate's default_max_tokens
DELAY2000_SPEC = "uniform:1000:3000"
# The longest round trip the delay2000 phase can take: its injected maximum plus the LVLM's own time.
LONGEST_RTT_S = 3.0 + 1.0
GOAL_OVERHEAD_RATIO_P50 = 1.05
GOAL_HIDING_RATIO_P99 = 1.05
STORE_STREAMS = 10_000
QUICK_DEFAULTS = {"streams": 2, "fps": 5.0, "seconds": 20.0, "warmup": 3.0}
FULL_DEFAULTS = {"streams": 2, "fps": 5.0, "seconds": 60.0, "warmup": 5.0}
# Longest wait for the cloud to finish the delay0 phase's requests before the delay2000 phase starts.
SETTLE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Phase:
    name: str
    title: str
    model: str  # "svlm" or "spotvlm"
    edge: str  # "cloud_off" or "linked"
    cloud_delay: str | None = None
    use_context: bool = True


PHASES = (
    Phase("svlm", "svlm ensemble alone (cloud-off edge)", "svlm", "cloud_off"),
    Phase("spotvlm_cloud_off", "spotvlm, cloud link off", "spotvlm", "cloud_off"),
    # The same without the stream's text history: splits the overhead into the plugin's own hops and the history's
    # extra prefill in the SVLM (its own last turns, which context replacement works on).
    Phase(
        "spotvlm_no_history",
        "spotvlm, cloud link off, use_context false (no history)",
        "spotvlm",
        "cloud_off",
        use_context=False,
    ),
    Phase("spotvlm_delay0", "spotvlm linked, cloud_delay 0", "spotvlm", "linked", "0"),
    Phase("spotvlm_delay2000", f"spotvlm linked, cloud_delay {DELAY2000_SPEC}", "spotvlm", "linked", DELAY2000_SPEC),
)
PHASE_NAMES = tuple(p.name for p in PHASES)


def phase_stream_ids(phase_index: int, streams: int) -> list[int]:
    """Sequence ids of one phase: distinct per phase, so a late cloud answer of one phase never meets the next."""
    return [100_000 * phase_index + k for k in range(1, streams + 1)]


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


# -- per-phase statistics (pure) ---------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def first_uses(results: Iterable[FrameResult]) -> list[FrameResult]:
    """The first answered frame (by stream, then frame index) that used each distinct LVLM answer, an answer being
    (stream, context_frame): every frame until the next answer arrives reuses it."""
    seen: set[tuple[int, Any]] = set()
    out = []
    for result in sorted(results, key=lambda r: (r.stream_id, r.frame_index)):
        if not result.ok or not result.has_context:
            continue
        key = (result.stream_id, result.context.context_frame)
        if key not in seen:
            seen.add(key)
            out.append(result)
    return out


def distinct_context_rtts(results: Iterable[FrameResult]) -> list[float]:
    """CONTEXT.context_rtt_ms once per distinct LVLM answer (stream, context_frame), not once per frame using it."""
    return [v for r in first_uses(results) if (v := _number(r.context.context_rtt_ms)) is not None]


def context_lags(results: Iterable[FrameResult]) -> list[float]:
    """context_age_ms - context_rtt_ms of each frame that used cloud context."""
    lags = []
    for r in results:
        age, rtt = _number(r.context.context_age_ms), _number(r.context.context_rtt_ms)
        if age is not None and rtt is not None:
            lags.append(age - rtt)
    return lags


def context_stats(answered: Sequence[FrameResult], warmup: Sequence[FrameResult] = ()) -> dict[str, Any]:
    """Cloud context of a phase's answered (measured) frames: share with context, its age, and the LVLMs' round
    trips. `warmup`: the phase's answered warm-up frames, so an answer first used there has no later "first use"."""
    with_context = [r for r in answered if r.has_context]
    ages = [v for r in with_context if (v := _number(r.context.context_age_ms)) is not None]
    measured = {id(r) for r in answered}
    first = [r for r in first_uses([*warmup, *answered]) if id(r) in measured]
    states: dict[str, int] = {}
    for r in answered:
        state = r.context.cloud_state or "none"
        states[state] = states.get(state, 0) + 1
    return {
        "context_share": round(len(with_context) / len(answered), 3) if answered else None,
        "context_age": latency_summary(ages),
        # The age when an answer is first used: its round trip plus the wait for the next frame.
        "context_age_first_use": latency_summary(
            [v for r in first if (v := _number(r.context.context_age_ms)) is not None]
        ),
        # At each answer's first use: how much older it is than its round trip, i.e. how long the edge took to use
        # an answer after it arrived (the wait for the stream's next frame, plus the edge's own share). Later frames
        # reuse an answer until a fresher one arrives, which depends on the injected delays, not on the edge.
        "context_lag": latency_summary(context_lags(first)),
        "cloud_answers_used": len(first_uses(answered)),
        "cloud_rtt": latency_summary(distinct_context_rtts(answered)),
        "cloud_states": dict(sorted(states.items())),
    }


def summarize_phase(results: Sequence[FrameResult], started_ms: float, warmup_s: float) -> dict[str, Any]:
    """One phase's summary: stream_isolation's phase_summary (client and server latency, per stream, late frames),
    its client p50/p99/mean/n at the top, the cloud context, and `errors_total` over every frame sent."""
    summary = phase_summary(results, started_ms, warmup_s)
    client = summary["client"]
    answered = [r for r in after_warmup(results, started_ms, warmup_s) if r.ok]
    measured = {id(r) for r in answered}
    warmup = [r for r in results if r.ok and id(r) not in measured]
    return {
        "n": client["n"],
        "p50_ms": client["p50_ms"],
        "p99_ms": client["p99_ms"],
        "mean_ms": client["mean_ms"],
        # `errors` (phase_summary) counts measured frames only; a warm-up error is an error all the same.
        "errors_total": sum(1 for r in results if not r.ok),
        "cloud_requests_sent": cloud_requests_sent(results),
        **summary,
        **context_stats(answered, warmup),
    }


def phase_samples(results: Sequence[FrameResult], started_ms: float, warmup_s: float) -> dict[str, list[float]]:
    """The raw numbers the plot draws: measured client latencies, context ages and distinct round trips."""
    answered = [r for r in after_warmup(results, started_ms, warmup_s) if r.ok]
    return {
        "latency_ms": [r.latency_ms for r in answered],
        "context_age_ms": [
            v for r in answered if r.has_context and (v := _number(r.context.context_age_ms)) is not None
        ],
        "cloud_rtt_ms": distinct_context_rtts(answered),
    }


# -- headline keys and goals (pure) ------------------------------------------------------------------------------------


def headline_keys(phases: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The report's top-level numbers from the per-phase summaries (a missing phase gives None values)."""
    keys: dict[str, Any] = {}
    for name in PHASE_NAMES:
        summary = phases.get(name) or {}
        keys[f"{name}_p50_ms"] = summary.get("p50_ms")
        keys[f"{name}_p99_ms"] = summary.get("p99_ms")
    keys["overhead_ratio_p50"] = ratio(keys["spotvlm_cloud_off_p50_ms"], keys["svlm_p50_ms"])
    keys["overhead_ratio_no_history_p50"] = ratio(keys["spotvlm_no_history_p50_ms"], keys["svlm_p50_ms"])
    keys["hiding_ratio_p99"] = ratio(keys["spotvlm_delay2000_p99_ms"], keys["spotvlm_delay0_p99_ms"])
    delayed = phases.get("spotvlm_delay2000") or {}
    keys["context_age_p50_ms"] = (delayed.get("context_age") or {}).get("p50_ms")
    keys["context_age_first_use_p50_ms"] = (delayed.get("context_age_first_use") or {}).get("p50_ms")
    keys["cloud_rtt_p50_ms"] = (delayed.get("cloud_rtt") or {}).get("p50_ms")
    keys["context_lag_p50_ms"] = (delayed.get("context_lag") or {}).get("p50_ms")
    keys["frames"] = sum(int((phases.get(name) or {}).get("frames", 0)) for name in PHASE_NAMES)
    keys["errors"] = sum(int((phases.get(name) or {}).get("errors_total", 0)) for name in PHASE_NAMES)
    keys["context_share"] = {name: (phases.get(name) or {}).get("context_share") for name in PHASE_NAMES}
    return keys


def evaluate_goals(keys: Mapping[str, Any], fps: float) -> dict[str, dict[str, Any]]:
    """Each goal with its value, limit and `met` (False when a value is missing). Reported, never asserted."""
    interval_ms = round(1000.0 / fps, 2)
    age, rtt = keys.get("context_age_p50_ms"), keys.get("cloud_rtt_p50_ms")
    gap = round(abs(age - rtt), 2) if age is not None and rtt is not None else None

    def goal(text: str, value: float | None, limit: float) -> dict[str, Any]:
        return {"goal": text, "value": value, "limit": limit, "met": value is not None and value <= limit}

    return {
        "overhead_ratio_p50": goal(
            "spotvlm_cloud_off p50 / svlm p50 <= 1.05", keys.get("overhead_ratio_p50"), GOAL_OVERHEAD_RATIO_P50
        ),
        "hiding_ratio_p99": goal(
            "spotvlm_delay2000 p99 / spotvlm_delay0 p99 <= 1.05", keys.get("hiding_ratio_p99"), GOAL_HIDING_RATIO_P99
        ),
        "context_age_p50": goal(
            "|context_age_p50 - cloud_rtt_p50| <= one frame interval (1000/fps ms), delay2000 phase", gap, interval_ms
        ),
    }


# -- store memory ------------------------------------------------------------------------------------------------------


def _text(tag: str, length: int) -> str:
    """A distinct ASCII text of exactly `length` characters (real texts are distinct objects too)."""
    return (tag + " " + "x" * length)[:length]


def fill_store(store: ContextStore, streams: int) -> None:
    """Streams 1..`streams`, each at its limits: max_turns turns and max_cloud_results LVLM answers, every text at
    max_text_chars and every answer with max_detections boxes. Values are computed, not constants, so no int, float,
    tuple or string is shared between records, as with decoded requests and parsed replies."""
    limits = store.limits
    length = limits.max_text_chars
    base_ms = int(time.time() * 1000)
    for sid in range(1, streams + 1):
        store.start_stream(sid)
        for t in range(limits.max_turns):
            frame = 10_000 + t
            store.add_turn(
                sid, TurnRecord(frame, base_ms + 100 * t, _text(f"q{sid}.{t}", length), _text(f"a{sid}.{t}", length))
            )
        for c in range(limits.max_cloud_results):
            frame = 10_000 + c
            detections = tuple(
                Detection(f"object {sid}.{c}.{d}", (300.5 + d, 200.5 + c, 900.5 + d, 700.5 + sid))
                for d in range(limits.max_detections)
            )
            result = CloudResult(
                frame_id=frame,
                frame_timestamp_ms=base_ms + 100 * c,
                sent_s=1000.25 + sid + c,
                arrived_s=1002.75 + sid + c,
                text=_text(f"c{sid}.{c}", length),
                detections=detections,
                frame_size=(1080 + c, 1920 + c),
            )
            store.add_cloud_result(sid, result)


def measure_store(streams: int = STORE_STREAMS, limits: StoreLimits | None = None) -> dict[str, Any]:
    """Memory of a ContextStore holding `streams` streams at full history: what tracemalloc saw it allocate (the
    store and everything it references) and the store's own memory_bytes() estimate, in total and per stream."""
    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    limits = limits or StoreLimits()
    # Room for every stream, and a clock that stands still so none expires while the store fills.
    limits = dataclasses.replace(limits, max_streams=max(limits.max_streams, streams))
    was_tracing = tracemalloc.is_tracing()
    gc_enabled = gc.isenabled()
    started = time.perf_counter()
    # The records hold no cycles: collecting while millions of them are made only costs time.
    gc.disable()
    if not was_tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = ContextStore(limits, clock=lambda: 0.0)
        fill_store(store, streams)
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        if not was_tracing:
            tracemalloc.stop()
        if gc_enabled:
            gc.enable()
    fill_s = time.perf_counter() - started
    estimate = store.memory_bytes()
    held = len(store)
    return {
        "streams": held,
        "store_bytes_per_stream": round(traced / held, 1),
        "store_memory_bytes_estimate_per_stream": round(estimate / held, 1),
        "traced_bytes": traced,
        "memory_bytes_estimate": estimate,
        "limits": dataclasses.asdict(limits),
        "texts": f"distinct ASCII, {limits.max_text_chars} characters each",
        "seconds": round(time.perf_counter() - started, 1),
        "fill_seconds": round(fill_s, 1),
    }


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


def cloud_requests_sent(results: Iterable[FrameResult]) -> int:
    """Frames the edge says it sent to the cloud (CONTEXT.cloud_dispatch == "sent")."""
    return sum(1 for r in results if r.ok and r.context.cloud_dispatch == "sent")


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


class StoreMeasurement:
    """measure_store in a spawned child process. It measures memory, not time, so it may run while a server starts
    (nothing is timed then), and tracemalloc's own bookkeeping (gigabytes at 10,000 streams) leaves with the child."""

    def __init__(self, streams: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # never fork a process that holds gRPC threads
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_measure_store_child, args=(streams, send), name="bench-store", daemon=True
        )
        self._process.start()
        send.close()

    def result(self) -> dict[str, Any]:
        """The measurement; RuntimeError when the child failed or died."""
        try:
            status, value = self._receive.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(f"the store measurement process died (exit code {self._process.exitcode})") from None
        self._process.join()
        if status != "ok":
            raise RuntimeError(value)
        return value

    def cancel(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()


def _measure_store_child(streams: int, send: Any) -> None:
    try:
        send.send(("ok", measure_store(streams)))
    except BaseException as exc:  # reported to the parent, which goes on without the store numbers
        send.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()


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


# -- output ------------------------------------------------------------------------------------------------------------


def _fmt(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def format_table(report: Mapping[str, Any]) -> str:
    """A short human summary: one line per phase, then the goals and the store."""
    header = ("phase", "frames", "errors", "p50 ms", "p99 ms", "mean ms", "context")
    rows = [header]
    for name in PHASE_NAMES:
        s = (report.get("phases") or {}).get(name)
        if s is None:
            rows.append((name, "-", "-", "-", "-", "-", "-"))
            continue
        rows.append(
            (
                name,
                str(s.get("frames")),
                str(s.get("errors_total")),
                _fmt(s.get("p50_ms"), "{:.1f}"),
                _fmt(s.get("p99_ms"), "{:.1f}"),
                _fmt(s.get("mean_ms"), "{:.1f}"),
                _fmt(s.get("context_share"), "{:.0%}"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    goals = report.get("goals") or {}

    def met(name: str) -> str:
        goal = goals.get(name) or {}
        return f"goal <= {goal.get('limit')}: {'met' if goal.get('met') else 'not met'}"

    lines.append("")
    lines.append(
        f"overhead_ratio_p50  {_fmt(report.get('overhead_ratio_p50'), '{:.3f}')}  ({met('overhead_ratio_p50')})"
    )
    lines.append(
        f"  without history   {_fmt(report.get('overhead_ratio_no_history_p50'), '{:.3f}')}  (the plugin's own hops)"
    )
    lines.append(f"hiding_ratio_p99    {_fmt(report.get('hiding_ratio_p99'), '{:.3f}')}  ({met('hiding_ratio_p99')})")
    age = goals.get("context_age_p50") or {}
    lines.append(
        f"context age p50 {_fmt(report.get('context_age_p50_ms'), '{:.0f}')} ms, cloud rtt p50"
        f" {_fmt(report.get('cloud_rtt_p50_ms'), '{:.0f}')} ms: gap {_fmt(age.get('value'), '{:.0f}')} ms"
        f" (goal gap <= {age.get('limit')} ms: {'met' if age.get('met') else 'not met'});"
        f" answers used {_fmt(report.get('context_lag_p50_ms'), '{:.0f}')} ms after arrival (p50)"
    )
    store = report.get("store")
    if store and "store_bytes_per_stream" in store:
        lines.append(
            f"context store: {store['store_bytes_per_stream']:.0f} bytes per stream (tracemalloc, {store['streams']}"
            f" streams at full history); memory_bytes() estimate {store['store_memory_bytes_estimate_per_stream']:.0f}"
        )
    elif store and "error" in store:
        lines.append(f"context store: not measured ({store['error']})")
    lines.append(f"{report.get('frames')} frames, {report.get('errors')} errors, {report.get('wall_s')} s")
    return "\n".join(lines)


def write_plot(
    report: Mapping[str, Any], samples: Mapping[str, Mapping[str, Sequence[float]]], path: Path
) -> str | None:
    """Per-phase latency distributions (box plot and cumulative distribution) and, for the delay2000 phase, the
    context ages against the LVLM round trips. None when written, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed; no plot written"
    names = [n for n in PHASE_NAMES if len((samples.get(n) or {}).get("latency_ms", ())) > 0]
    if not names:
        return "no phase has latencies; no plot written"
    fig, (box_ax, cdf_ax, age_ax) = plt.subplots(1, 3, figsize=(16, 5))
    data = [np.asarray(samples[n]["latency_ms"], dtype=float) for n in names]
    box_ax.boxplot(data, whis=(1, 99), showfliers=True, flierprops={"markersize": 3})
    box_ax.set_xticks(range(1, len(names) + 1), [n.replace("_", "\n", 1) for n in names], fontsize=8)
    for i, values in enumerate(data, start=1):
        p50, p99 = percentile(values, 50), percentile(values, 99)
        box_ax.annotate(
            f"p50 {p50:.0f}\np99 {p99:.0f}", (i, p99), textcoords="offset points", xytext=(8, 4), fontsize=7
        )
    box_ax.set_ylabel("client latency (ms)")
    box_ax.set_title("latency per phase (whiskers: p1-p99)", fontsize=10)
    for name, values in zip(names, data):
        ordered = np.sort(values)
        cdf_ax.step(ordered, np.arange(1, len(ordered) + 1) / len(ordered), where="post", label=name)
    cdf_ax.axhline(0.5, color="grey", linewidth=0.5)
    cdf_ax.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
    cdf_ax.set_xlabel("client latency (ms)")
    cdf_ax.set_ylabel("share of frames")
    cdf_ax.set_title("cumulative distribution", fontsize=10)
    cdf_ax.legend(fontsize=8)
    delayed = samples.get("spotvlm_delay2000") or {}
    ages, rtts = delayed.get("context_age_ms") or [], delayed.get("cloud_rtt_ms") or []
    if ages or rtts:
        bins = np.linspace(0, (max([*ages, *rtts]) or 1.0) * 1.05, 30)
        for values, what in ((ages, "context age per frame"), (rtts, "LVLM round trip per answer")):
            if values:
                age_ax.hist(
                    values,
                    bins=bins,
                    weights=np.full(len(values), 1 / len(values)),
                    alpha=0.6,
                    label=f"{what} (p50 {percentile(values, 50):.0f})",
                )
        age_ax.legend(fontsize=8)
    else:
        age_ax.text(0.5, 0.5, "no cloud context", ha="center", va="center", transform=age_ax.transAxes)
    age_ax.set_xlabel("ms")
    age_ax.set_ylabel("share")
    age_ax.set_title(f"cloud context, cloud_delay {DELAY2000_SPEC}", fontsize=10)
    config = report.get("config") or {}
    fig.suptitle(
        f"spotvlm bench: {config.get('streams')} streams at {config.get('fps')} fps,"
        f" {config.get('seconds')} s per phase, max_tokens {config.get('max_tokens')}",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


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
