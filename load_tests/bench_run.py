"""How `spotvlm bench` runs (over 500 lines, why at the end; bench.py holds its options and command line): the
servers, the timed runs in rounds, the DIY baseline, the capacity search, the edge's memory, and the report.

Every timed run is alone on the machine's CPU apart from its server: the store measurement and the DIY baseline's
model load finish before the first one, the DIY process is idle while served runs go, and a linked run waits for the
cloud to finish the work of the runs before it.

The module is over 500 lines because its runs share the servers and the one order that keeps each timed run alone
on the CPU; the parts that need neither live apart (bench_phases.py, bench_rounds.py, bench_store.py, bench_diy.py,
bench_output.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from client.frame_result import FrameResult
from client.frame_sources import SyntheticSource
from client.model_repository import rendered_parameter
from client.streaming import InferClient, StreamSession, run_streams
from client.triton_client import text_tensor
from evaluation.policies import policy_request_parameters
from load_tests.bench_config import BenchConfig
from load_tests.bench_diy import DiyBaseline
from load_tests.bench_phases import (
    mean_history_tokens,
    PHASE_NAMES,
    PHASES,
    Phase,
    cloud_requests_sent,
    evaluate_goals,
    headline_keys,
    phase_samples,
    summarize_phase,
)
from load_tests.bench_rounds import (
    ROUND_KEYS,
    capacity_bound,
    find_capacity,
    meets_latency_goal,
    round_order,
    round_ratios,
    spread,
    summarize_rounds,
    throughput_fps,
)
from load_tests.bench_store import StoreMeasurement
from load_tests.machine import (
    cpu_ms_per_frame,
    cpu_snapshot,
    cpu_usage,
    machine_info,
    process_tree_cpu_by_model,
    process_tree_rss_bytes,
)
from load_tests.triton_metrics import scrape_metrics

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REPOSITORY_ROOT = PROJECT_ROOT / "model_repository"
EDGE_CHECKPOINT = PROJECT_ROOT / "build" / "checkpoints" / "edge"  # when the built repository names none


# The build options that decide the edge's speed, as build_engines.sh recorded them (build/engines.json).
EDGE_BUILD_KEYS = (
    "batch_window_us",
    "max_queue_delay_us",
    "max_batch_size",
    "spotvlm_instances",
    "preprocess_instances",
    "vision_instances",
    "generate_instances",
    "intra_op_threads",
    "default_max_tokens",
)


def edge_build(build_record: Path = PROJECT_ROOT / "build" / "engines.json") -> dict[str, Any]:
    """The served edge checkpoint, the device the build targeted (and its TensorRT engine, if any) and the build
    options of EDGE_BUILD_KEYS that produced the measured configs, as build_engines.sh wrote them (strings)."""
    out: dict[str, Any] = {"checkpoint": str(served_edge_checkpoint())}
    try:
        record = json.loads(build_record.read_text())
    except (OSError, ValueError):
        return out
    values = record.get("values", {})
    options = {key: values[key] for key in EDGE_BUILD_KEYS if key in values}
    return {**out, "device": record.get("device"), "tensorrt": record.get("tensorrt"), **options}


def history_token_counter(checkpoint: Path) -> Callable[[str, list[tuple[str, str]]], int] | None:
    """`count(question, turns)`: the prompt tokens that `turns` (question, answer pairs) add to a prompt for
    `question`, counted as `spotvlm` counts its history (TokenizerBudget on the checkpoint's tokenizer.json) in the
    served prompt template; None when the checkpoint has no tokenizer.json."""
    from python_backends.context.token_budget import TokenizerBudget
    from python_backends.prompts import Turn, build_chat_prompt

    tokenizer_file = Path(checkpoint) / "tokenizer.json"
    if not tokenizer_file.is_file():
        print(f"history tokens are not counted: no {tokenizer_file}", file=sys.stderr)
        return None
    budget = TokenizerBudget.from_file(tokenizer_file)

    def count(question: str, turns: list[tuple[str, str]]) -> int:
        if not turns:
            return 0
        with_turns = build_chat_prompt(question, [], [Turn(q, a) for q, a in turns])
        return budget.count(with_turns) - budget.count(build_chat_prompt(question, []))

    return count


def served_edge_checkpoint(repository_root: Path = REPOSITORY_ROOT) -> Path:
    """The checkpoint the built edge serves (svlm_generate's `checkpoint`: the random-weight tiny one after a plain
    build, the trained one after `--trained`), so the DIY baseline runs the same weights."""
    named = rendered_parameter(repository_root / "edge" / "svlm_generate" / "config.pbtxt", "checkpoint")
    return Path(named) if named else EDGE_CHECKPOINT


# Longest wait for the cloud to finish the runs before's requests before a linked run starts.
SETTLE_TIMEOUT_S = 20.0
THROUGHPUT_STREAMS = 16  # the served svlm's streams in the throughput comparison with the DIY baseline
RSS_STREAMS = (16, 64)  # the edge's memory is read while this many streams run
# Sequence-id slots (stream_ids_for) of the capacity trials and the memory runs, apart from the rounds' runs.
CAPACITY_SLOT, RSS_SLOT = 50, 90


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


# -- running -----------------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Load:
    """What one timed run sends: `model` "svlm" or "spotvlm" (to the edge) or "diy" (the DIY baseline process,
    `back_to_back` for its throughput), `streams` streams at the config's fps with request parameters `params`."""

    name: str
    title: str
    model: str
    streams: int
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    back_to_back: bool = False


def phase_load(phase: Phase, config: BenchConfig) -> Load:
    params: dict[str, Any] = {"max_tokens": config.max_tokens}
    if phase.cloud_delay is not None:
        params["cloud_delay"] = phase.cloud_delay
    if not phase.use_context:
        params["use_context"] = False
    if phase.model == "spotvlm":
        params["carry_answers"] = False  # timed is the SVLM path; a carried cloud answer would skip it
    return Load(phase.name, phase.title, phase.model, config.streams, params)


def capacity_loads(config: BenchConfig) -> list[Load]:
    """The cloud-off edge's extra runs of a --capacity bench, in rounds beside the three cloud-off phases."""
    transfer = {**policy_request_parameters("context_transfer"), "max_tokens": config.max_tokens}
    plain = {"max_tokens": config.max_tokens}
    return [
        Load("svlm_one_stream", "svlm, 1 stream", "svlm", 1, plain),
        Load("diy_one_stream", "transformers generate in one process, 1 stream", "diy", 1),
        Load("spotvlm_one_stream", "spotvlm context_transfer, cloud off, 1 stream", "spotvlm", 1, transfer),
        Load("spotvlm_four_streams", "spotvlm context_transfer, cloud off, 4 streams", "spotvlm", 4, transfer),
        Load(
            f"svlm_{THROUGHPUT_STREAMS}_streams",
            f"svlm, {THROUGHPUT_STREAMS} streams",
            "svlm",
            THROUGHPUT_STREAMS,
            plain,
        ),
        Load("diy_back_to_back", "transformers generate in one process, frames back to back", "diy", 1, {}, True),
    ]


def run_load(
    load: Load, url: str, config: BenchConfig, stream_ids: list[int], stop: threading.Event, seconds: float
) -> tuple[list[FrameResult], float]:
    """One timed run against the edge at `url`; (results, start wall time in ms). No per-stream progress bars: the
    bench draws one bar over its runs."""
    sources = [SyntheticSource(seed=k) for k in range(1, load.streams + 1)]
    factory: Callable[[int], StreamSession] | None = None
    if load.model == "svlm":

        def factory(stream_id: int) -> StreamSession:
            return SvlmSession(url, stream_id, config.prompt, config.max_tokens)

    started_ms = time.time() * 1000.0
    results = run_streams(
        sources,
        url=url,
        protocol="grpc",
        fps=config.fps,
        duration_s=seconds,
        prompt=config.prompt,
        params=load.params,
        progress=None,
        stream_ids=stream_ids,
        session_factory=factory,
        stop=stop,
    )
    return results, started_ms


def run_diy(diy: DiyBaseline, load: Load, config: BenchConfig, seconds: float) -> tuple[list[FrameResult], float]:
    """The DIY baseline's paced stream as FrameResults (the same statistics as a served stream)."""
    source = SyntheticSource(seed=1)
    frames = [source.frame_at(i)[0] for i in range(max(1, round(seconds * config.fps)))]
    started_ms = time.time() * 1000.0
    timings = diy.paced(frames, config.fps)
    results = [
        FrameResult(1, i, started_ms + sent_s * 1000.0, latency_ms, text="", late=sent_s > i / config.fps + 0.002)
        for i, (sent_s, latency_ms) in enumerate(timings)
    ]
    return results, started_ms


def stream_ids_for(slot: int, round_index: int, streams: int) -> list[int]:
    """Sequence ids distinct per run (slot) and round, so a late cloud answer of one run never meets another."""
    if streams > 999:
        raise ValueError(f"at most 999 streams per run, got {streams}")
    return [100_000 * slot + 1000 * round_index + k for k in range(1, streams + 1)]


class RssSampler:
    """The peak resident memory of a server's process tree while a run goes (sampled every 0.5 s, psutil)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, process_tree_rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, process_tree_rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, process_tree_rss_bytes(self.pid))


def run_bench(config: BenchConfig, stop: threading.Event) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """Measures the store, then runs every phase in rounds (servers started here, stopped after); with
    config.capacity also the DIY baseline, isolation, capacity search and memory. (report, raw samples)."""
    from client.launcher import TritonServer
    from client.linked_servers import LinkedServers

    wall_started = time.monotonic()
    runs: dict[str, list[tuple[list[FrameResult], float]]] = {}
    extra: dict[str, Any] = {}
    servers: dict[str, Any] = {}
    stoppers: list[threading.Thread] = []
    store: dict[str, Any] = {"streams": config.store_streams}
    off_loads = [phase_load(p, config) for p in PHASES if p.edge == "cloud_off"]
    if config.capacity:
        off_loads += capacity_loads(config)
    linked_loads = [phase_load(p, config) for p in PHASES if p.edge == "linked"]
    slots = {load.name: i for i, load in enumerate([*off_loads, *linked_loads])}
    planned = config.rounds * (len(off_loads) + len(linked_loads))
    bar = tqdm(total=planned, desc="bench", unit="run", file=sys.stderr, dynamic_ncols=True)

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
            bar.write(f"  {name} ready in {server.ready_time_s:.1f} s (grpc {server.grpc_url})", file=sys.stderr)

        bar.write(f"starting the {' and the '.join(name for name, _ in named)} tritonserver ...", file=sys.stderr)
        threads = [threading.Thread(target=one, args=pair, name="bench-server-start", daemon=True) for pair in named]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise ServerFailed(failures[0])

    count_history_tokens = history_token_counter(served_edge_checkpoint())

    def measure(load: Load, round_index: int, url: str, diy: DiyBaseline | None = None) -> dict[str, Any]:
        bar.set_postfix_str(f"round {round_index + 1}/{config.rounds}: {load.name}")
        if load.model == "diy":
            if load.back_to_back:
                source = SyntheticSource(seed=1)
                frames = [source.frame_at(i)[0] for i in range(20)]
                result = diy.back_to_back(frames, config.seconds - config.warmup)
                extra.setdefault("diy_back_to_back", []).append(result)
                bar.update()
                return {"throughput_fps": result["fps"]}
            results, started_ms = run_diy(diy, load, config, config.seconds)
        else:
            ids = stream_ids_for(slots[load.name], round_index, load.streams)
            results, started_ms = run_load(load, url, config, ids, stop, config.seconds)
        runs.setdefault(load.name, []).append((results, started_ms))
        summary = summarize_phase(results, started_ms, config.warmup)
        if load.name == "spotvlm_cloud_off" and count_history_tokens is not None:
            warmup_ms = started_ms + config.warmup * 1000.0
            summary["history_tokens_mean"] = mean_history_tokens(
                results, count_history_tokens, config.prompt, warmup_ms
            )
        summary["throughput_fps"] = throughput_fps(results, started_ms, config.warmup)
        bar.update()
        bar.write(
            f"  round {round_index + 1} {load.name}: p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms,"
            f" {summary['frames']} frames, {summary['errors_total']} errors, {summary['late_frames']} late",
            file=sys.stderr,
        )
        return summary

    rounds: list[dict[str, dict[str, Any]]] = [{} for _ in range(config.rounds)]
    bar.write(
        f"measuring the context store ({config.store_streams} streams at full history, tracemalloc) in a child"
        " process, alone",
        file=sys.stderr,
    )
    measurement = StoreMeasurement(config.store_streams)
    diy: DiyBaseline | None = None
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
            try:  # before the first timed run: nothing else may use the CPU while one runs
                store = measurement.result()
                bar.write(
                    f"  context store: {store['store_bytes_per_stream']:.0f} bytes per stream (tracemalloc),"
                    f" {store['store_memory_bytes_estimate_per_stream']:.0f} (memory_bytes()), {store['seconds']} s",
                    file=sys.stderr,
                )
            except RuntimeError as exc:
                store["error"] = str(exc)
                bar.write(f"  the context store measurement failed: {exc}", file=sys.stderr)
            if config.capacity:
                diy = DiyBaseline(served_edge_checkpoint(), config.prompt, config.max_tokens, config.diy_threads)
                extra["diy_load_s"] = diy.wait_ready()
                extra["edge_rss_bytes"] = {"idle": process_tree_rss_bytes(edge_off.pid)}
            for round_index in range(config.rounds):
                for name in round_order([load.name for load in off_loads], round_index):
                    if stop.is_set():
                        break
                    load = next(x for x in off_loads if x.name == name)
                    rounds[round_index][name] = measure(load, round_index, edge_off.grpc_url, diy)
            if config.capacity and not stop.is_set():
                if diy is not None:
                    diy.close()
                extra["capacity"] = search_capacity(config, edge_off.grpc_url, stop, bar, edge_off.pid)
                extra["edge_rss_bytes"].update(measure_rss(config, edge_off, stop, bar))
        finally:
            if diy is not None:
                diy.close()
            stoppers.append(_stop_in_background(unlinked))
        if stop.is_set():
            return _report(config, runs, rounds, extra, servers, wall_started, store), _samples(config, runs)
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
            for round_index in range(config.rounds):
                for name in round_order([load.name for load in linked_loads], round_index):
                    if stop.is_set():
                        break
                    if sent:  # the cloud's work of the runs before must not share the CPU with this one
                        waited = wait_for_cloud(cloud.metrics_url, sent)
                        servers.setdefault("settle_s", {}).setdefault(name, []).append(waited)
                    load = next(x for x in linked_loads if x.name == name)
                    rounds[round_index][name] = measure(load, round_index, edge.grpc_url)
                    sent += cloud_requests_sent(runs[name][-1][0])
        finally:
            stoppers.append(_stop_in_background(linked))
    finally:
        bar.close()
        measurement.cancel()
        for thread in stoppers:
            thread.join()
    return _report(config, runs, rounds, extra, servers, wall_started, store), _samples(config, runs)


def search_capacity(
    config: BenchConfig, url: str, stop: threading.Event, bar: tqdm, server_pid: int | None = None
) -> dict[str, Any]:
    """The most unsynchronised context_transfer streams (cloud off) at config.fps whose every frame is answered
    within config.latency_limit_ms at p99, none late and none failed: doubling, then bisecting, each count measured
    once for config.capacity_seconds. With `server_pid`, each trial also records where the edge's CPU went: ms per
    answered frame by model (and the server process itself), and how busy the whole machine was."""
    load = Load(
        "capacity", "", "spotvlm", 1, {**policy_request_parameters("context_transfer"), "max_tokens": config.max_tokens}
    )
    trials: list[dict[str, Any]] = []
    warmup = min(config.warmup, config.capacity_seconds / 2)

    def passes(streams: int) -> bool:
        if stop.is_set():
            return False
        bar.set_postfix_str(f"capacity: {streams} streams")
        ids = stream_ids_for(CAPACITY_SLOT + len(trials), 0, streams)
        trial = dataclasses.replace(load, streams=streams)
        cpu_before = process_tree_cpu_by_model(server_pid) if server_pid is not None else {}
        machine_before, wall_started = cpu_snapshot(server_pid), time.monotonic()
        results, started_ms = run_load(trial, url, config, ids, stop, config.capacity_seconds)
        usage = cpu_usage(machine_before, cpu_snapshot(server_pid), time.monotonic() - wall_started, os.cpu_count())
        summary = summarize_phase(results, started_ms, warmup)
        ok = meets_latency_goal(summary, config.latency_limit_ms)
        record = {"streams": streams, "passed": ok, **{k: summary.get(k) for k in ROUND_KEYS}}
        cpu_line = ""
        if server_pid is not None:
            answered = sum(1 for r in results if r.ok)
            record["cpu_ms_per_frame"] = cpu_by_model = cpu_ms_per_frame(
                cpu_before, process_tree_cpu_by_model(server_pid), answered
            )
            record["busy_share_of_machine"] = usage["busy_share_of_machine"]
            record["client_cpu_ms_per_frame"] = round(usage["client_cpu_s"] * 1000.0 / max(1, answered), 2)
            cpu_line = (
                f"; edge CPU {cpu_by_model.get('total')} ms a frame, machine {usage['busy_share_of_machine']} busy"
            )
        trials.append(record)
        bar.write(
            f"  capacity: {streams} streams: p99 {summary['p99_ms']} ms, {summary['late_frames']} late,"
            f" {summary['errors_total']} errors: {'pass' if ok else 'fail'}{cpu_line}",
            file=sys.stderr,
        )
        return ok

    search = find_capacity(passes, limit=config.capacity_limit)
    return {
        "capacity_streams": search.capacity,
        "bound": capacity_bound(trials, search.capacity),
        "at_limit": search.at_limit,
        "limit_streams": config.capacity_limit,
        "latency_limit_ms": config.latency_limit_ms,
        "fps": config.fps,
        "seconds_per_trial": config.capacity_seconds,
        "warmup_s": warmup,
        "policy": "context_transfer",
        "trials": trials,
    }


def measure_rss(config: BenchConfig, server: Any, stop: threading.Event, bar: tqdm) -> dict[str, int]:
    """The edge's peak RSS (server and its child processes) while RSS_STREAMS context_transfer streams run."""
    out = {}
    params = {**policy_request_parameters("context_transfer"), "max_tokens": config.max_tokens}
    for i, streams in enumerate(RSS_STREAMS):
        if stop.is_set():
            break
        bar.set_postfix_str(f"memory: {streams} streams")
        load = Load(f"rss_{streams}", "", "spotvlm", streams, params)
        with RssSampler(server.pid) as sampler:
            run_load(
                load, server.grpc_url, config, stream_ids_for(RSS_SLOT + i, 0, streams), stop, config.capacity_seconds
            )
        out[f"{streams}_streams"] = sampler.peak
        bar.write(f"  edge RSS with {streams} streams: {sampler.peak / 2**20:.0f} MiB", file=sys.stderr)
    return out


def _samples(config: BenchConfig, runs: dict[str, list[tuple[list[FrameResult], float]]]) -> dict[str, Any]:
    out = {}
    for name, phase_runs in runs.items():
        parts = [phase_samples(results, started, config.warmup) for results, started in phase_runs]
        out[name] = {
            key: [v for part in parts for v in part[key]] for key in ("latency_ms", "context_age_ms", "cloud_rtt_ms")
        }
    return out


def _report(
    config: BenchConfig,
    runs: dict[str, list[tuple[list[FrameResult], float]]],
    rounds: list[dict[str, dict[str, Any]]],
    extra: dict[str, Any],
    servers: dict[str, Any],
    wall_started: float,
    store: dict[str, Any],
) -> dict[str, Any]:
    phases = {name: summarize_rounds(phase_runs, config.warmup) for name, phase_runs in runs.items()}
    keys = headline_keys(phases)
    ratios = round_statistics(rounds, extra)
    for name, values in ratios.items():  # the per-round median replaces the quotient of pooled percentiles
        keys[name] = values["median"]
        keys[f"{name}_range"] = [values["min"], values["max"]]
    history_tokens = [(r.get("spotvlm_cloud_off") or {}).get("history_tokens_mean") for r in rounds]
    keys["history_tokens_per_frame"] = spread(history_tokens, digits=1)["median"]
    report: dict[str, Any] = {"benchmark": "spotvlm_bench", **keys}
    report["store_bytes_per_stream"] = store.get("store_bytes_per_stream")
    report["store_memory_bytes_estimate_per_stream"] = store.get("store_memory_bytes_estimate_per_stream")
    if config.capacity:
        capacity = extra.get("capacity") or {}
        report["capacity_streams"] = capacity.get("capacity_streams")
        report["capacity"] = capacity
        report["edge_rss_bytes"] = extra.get("edge_rss_bytes")
        report["diy"] = {
            "load_s": extra.get("diy_load_s"),
            "threads": config.diy_threads,
            "decoder": "transformers generate (QwenVLGenerator decoder 'generate'), torch vision tower",
            "back_to_back": extra.get("diy_back_to_back", []),
        }
    report["ratios"] = ratios
    report["goals"] = evaluate_goals(keys, config.fps)
    report["config"] = config.to_json()
    report["machine"] = machine_info()
    report["edge_build"] = edge_build()
    report["phases"] = phases
    report["store"] = store
    report["servers"] = servers
    complete = all(len(runs.get(name, ())) == config.rounds for name in PHASE_NAMES)
    if config.capacity:
        complete = complete and "capacity" in extra and len(extra.get("edge_rss_bytes") or {}) == 1 + len(RSS_STREAMS)
    report["complete"] = complete and "error" not in store
    report["wall_s"] = round(time.monotonic() - wall_started, 1)
    return report


def history_cost_per_token(rounds: list[dict[str, dict[str, Any]]]) -> list[float | None]:
    """Per round: how much the text history added to `spotvlm`'s p50 (cloud off, with history against without), in
    ms per history token of the with-history run's frames; None in a round that sent no history or lacks a phase."""
    out: list[float | None] = []
    for r in rounds:
        with_history, without = r.get("spotvlm_cloud_off") or {}, r.get("spotvlm_no_history") or {}
        tokens = with_history.get("history_tokens_mean")
        a, b = with_history.get("p50_ms"), without.get("p50_ms")
        out.append((a - b) / tokens if tokens and a is not None and b is not None else None)
    return out


def round_statistics(rounds: list[dict[str, dict[str, Any]]], extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every ratio per round, with its median and range: overhead, hiding, and (with --capacity) isolation and the
    DIY baseline's latency and throughput."""
    out = {
        "overhead_ratio_p50": spread(round_ratios(rounds, "spotvlm_cloud_off", "svlm")),
        "overhead_ratio_no_history_p50": spread(round_ratios(rounds, "spotvlm_no_history", "svlm")),
        "hiding_ratio_p99": spread(round_ratios(rounds, "spotvlm_delay2000", "spotvlm_delay0", "p99_ms")),
        "history_ms_per_token_p50": spread(history_cost_per_token(rounds), digits=4),
    }
    if any("spotvlm_four_streams" in r for r in rounds):
        out["isolation_ratio_p50"] = spread(round_ratios(rounds, "spotvlm_four_streams", "spotvlm_one_stream"))
        out["diy_ratio_p50"] = spread(round_ratios(rounds, "svlm_one_stream", "diy_one_stream"))
        out["diy_throughput_ratio"] = spread(
            round_ratios(rounds, f"svlm_{THROUGHPUT_STREAMS}_streams", "diy_back_to_back", "throughput_fps")
        )
    return out
