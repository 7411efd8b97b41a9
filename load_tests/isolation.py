"""Stream isolation measurement: edge servers with chosen instance counts, 1 and then 4 unsynchronised streams on each.

The command line is load_tests/stream_isolation.py (its docstring describes the method); the table and the plot are
load_tests/isolation_report.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from client.frame_sources import SyntheticSource
from client.model_repository import CONFIG_NAME, read_model_config, set_instance_count, write_model_config
from client.stats import percentile
from client.streaming import FrameResult, StreamSession, run_streams
from load_tests.frame_stats import phase_summary, ratio
from load_tests.machine import cpu_snapshot, cpu_usage, load_average
from load_tests.triton_metrics import metrics_delta, scrape_metrics

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EDGE_REPOSITORY = PROJECT_ROOT / "model_repository" / "edge"
GOAL_RATIO_P50 = 1.2
MULTI_STREAMS = 4
# Distinct sequence ids per run, so the 4-stream run never meets a sequence of the 1-stream run.
SINGLE_STREAM_IDS = (1,)
MULTI_STREAM_IDS = tuple(range(11, 11 + MULTI_STREAMS))
PHASES = (("1_stream", SINGLE_STREAM_IDS), ("4_streams", MULTI_STREAM_IDS))
DEFAULT_CONFIGS = ("1", "4")


# -- configurations ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IsolationConfig:
    """One server setup: instances of `spotvlm` and, when set, of `svlm_generate` (None: as rendered)."""

    spotvlm_instances: int
    generate_instances: int | None = None

    @property
    def name(self) -> str:
        name = f"spotvlm_instances={self.spotvlm_instances}"
        if self.generate_instances is not None:
            name += f",svlm_generate_instances={self.generate_instances}"
        return name

    def counts(self) -> dict[str, int]:
        """Model name -> instance count to write into the copy."""
        counts = {"spotvlm": self.spotvlm_instances}
        if self.generate_instances is not None:
            counts["svlm_generate"] = self.generate_instances
        return counts


def parse_config(spec: str) -> IsolationConfig:
    """`S` or `S:G`: S instances of spotvlm, G of svlm_generate (both >= 1)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", spec)
    if not match:
        raise argparse.ArgumentTypeError(f"a config is S or S:G (spotvlm / svlm_generate instances), got {spec!r}")
    spotvlm = int(match.group(1))
    generate = int(match.group(2)) if match.group(2) is not None else None
    if spotvlm < 1 or (generate is not None and generate < 1):
        raise argparse.ArgumentTypeError(f"instance counts must be >= 1, got {spec!r}")
    return IsolationConfig(spotvlm, generate)


def prepare_repository(source: Path, dest: Path, counts: dict[str, int]) -> Path:
    """A private copy of the rendered repository `source` at `dest` with the instance counts of `counts` rewritten."""
    for model in counts:
        if not (source / model / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"{source / model / CONFIG_NAME} is missing: render the repository first (./build_engines.sh)"
            )
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for model, count in counts.items():
        path = dest / model / CONFIG_NAME
        write_model_config(set_instance_count(read_model_config(path), count), path)
    return dest


def config_summary(config: IsolationConfig, phases: dict[str, dict[str, Any]], goal: float) -> dict[str, Any]:
    """The headline numbers of one configuration from its two phase summaries."""
    single, multi = phases.get("1_stream", {}), phases.get("4_streams", {})

    def get(phase: dict[str, Any], group: str, key: str) -> float | None:
        return (phase.get(group) or {}).get(key)

    p50_1, p50_4 = get(single, "client", "p50_ms"), get(multi, "client", "p50_ms")
    ratio_p50 = ratio(p50_4, p50_1)
    return {
        "name": config.name,
        "spotvlm_instances": config.spotvlm_instances,
        "svlm_generate_instances": config.generate_instances,
        "p50_1_stream_ms": p50_1,
        "p99_1_stream_ms": get(single, "client", "p99_ms"),
        "p50_4_streams_ms": p50_4,
        "p99_4_streams_ms": get(multi, "client", "p99_ms"),
        "ratio_p50": ratio_p50,
        "meets_goal": ratio_p50 is not None and ratio_p50 <= goal,
        "server_p50_1_stream_ms": get(single, "server_total", "p50_ms"),
        "server_p50_4_streams_ms": get(multi, "server_total", "p50_ms"),
        "server_ratio_p50": ratio(get(multi, "server_total", "p50_ms"), get(single, "server_total", "p50_ms")),
        "frames": sum(p.get("frames", 0) for p in phases.values()),
        "errors": sum(p.get("errors", 0) for p in phases.values()),
        "late_frames": sum(p.get("late_frames", 0) for p in phases.values()),
    }


# -- running -----------------------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class PhaseProgress:
    """A tqdm bar of one run's frames on stderr, with its errors and the p50 of the frames since the last redraw."""

    def __init__(self, label: str, planned_frames: int, interval_s: float = 5.0) -> None:
        self._bar = tqdm(total=planned_frames, desc=label, unit="frame", file=sys.stderr, mininterval=interval_s)
        self._lock = threading.Lock()
        self._recent: list[float] = []
        self.errors = 0

    def record(self, result: FrameResult) -> None:
        with self._lock:
            if result.ok:
                self._recent.append(result.latency_ms)
            else:
                self.errors += 1
            if self._bar.update(1):  # redrawn: start a new window for the recent p50
                p50 = percentile(self._recent, 50)
                self._recent = []
                self._bar.set_postfix_str(
                    f"errors {self.errors}, p50 since last {'-' if p50 is None else f'{p50:.1f} ms'}", refresh=False
                )

    def close(self) -> None:
        self._bar.close()


def run_phase(
    url: str,
    stream_ids: Sequence[int],
    *,
    fps: float,
    duration_s: float,
    params: dict[str, Any] | None,
    label: str,
    run: Callable[..., list[FrameResult]] = run_streams,
) -> tuple[list[FrameResult], float]:
    """One run of len(stream_ids) concurrent streams of synthetic frames; (results, start wall time in ms)."""
    progress = PhaseProgress(label, len(stream_ids) * max(1, round(duration_s * fps)))

    class _CountingSession(StreamSession):
        def send(self, frame: np.ndarray, *, start: bool, end: bool) -> FrameResult:
            result = super().send(frame, start=start, end=end)
            progress.record(result)
            return result

    def factory(stream_id: int) -> StreamSession:
        return _CountingSession(url, "grpc", stream_id, params=params)

    sources = [SyntheticSource(seed=sid) for sid in stream_ids]
    started_ms = time.time() * 1000.0
    try:
        results = run(
            sources,
            url=url,
            protocol="grpc",
            fps=fps,
            duration_s=duration_s,
            params=params,
            progress=None,
            stream_ids=list(stream_ids),
            session_factory=factory,
        )
    finally:
        progress.close()
    return results, started_ms


def measure_config(
    config: IsolationConfig, args: argparse.Namespace, index: int, total: int, params: dict[str, Any] | None
) -> dict[str, Any]:
    """Starts an edge server for `config`, runs both phases on it, stops it; the config's full result."""
    from client.launcher import ServerStartError, TritonServer

    label = f"[{index}/{total} {config.name}]"
    entry: dict[str, Any] = {"load_average_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="stream-isolation-") as tmp:
        repository = prepare_repository(args.repository, Path(tmp) / "edge", config.counts())
        say(f"{label} starting an edge tritonserver (cloud off) ...")
        server = TritonServer(repository, env_overrides={"SPOTVLM_CLOUD_URL": "off"})
        entry["server_log"] = str(server.log_path)
        try:
            server.start(ready_timeout_s=args.ready_timeout)
        except ServerStartError as exc:
            say(f"{label} the server failed to start:\n{exc}")
            entry["error"] = f"server failed to start: {str(exc).splitlines()[0]}"
            return entry
        say(f"{label} ready in {server.ready_time_s:.1f} s at grpc {server.grpc_url}")
        phases: dict[str, dict[str, Any]] = {}
        try:
            for phase, ids in PHASES:
                say(f"{label} {phase}: {len(ids)} stream(s) at {args.fps:g} fps for {args.duration:g} s")
                load_before = load_average()
                before = scrape_metrics(server.metrics_url)
                cpu_before, wall_before = cpu_snapshot(server.pid), time.monotonic()
                results, started_ms = run_phase(
                    server.grpc_url,
                    ids,
                    fps=args.fps,
                    duration_s=args.duration,
                    params=params,
                    label=f"{label} {phase}",
                )
                # Counters over the whole run, warm-up included: they only explain where the time goes.
                cpu = cpu_usage(cpu_before, cpu_snapshot(server.pid), time.monotonic() - wall_before, os.cpu_count())
                after = scrape_metrics(server.metrics_url)
                summary = phase_summary(results, started_ms, args.warmup)
                summary["load_average_start"] = load_before
                summary["load_average_end"] = load_average()
                summary["cpu"] = cpu
                summary["triton_metrics"] = metrics_delta(before, after)
                phases[phase] = summary
                client = summary["client"]
                say(
                    f"{label} {phase}: p50 {client['p50_ms']} ms, p99 {client['p99_ms']} ms over {summary['frames']}"
                    f" frames, {summary['errors']} errors, {summary['late_frames']} late,"
                    f" {summary['achieved_fps_per_stream']} fps per stream; CPU s: server {cpu['server_cpu_s']},"
                    f" client {cpu['client_cpu_s']}, other processes {cpu['other_cpu_s']} in {cpu['wall_s']} s"
                )
        finally:
            say(f"{label} stopping the server ...")
            server.stop()
    entry.update(config_summary(config, phases, GOAL_RATIO_P50))
    entry["phases"] = phases
    return entry
