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
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.frame_sources import SyntheticSource
from client.streaming import FrameResult, StreamSession, run_streams

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EDGE_REPOSITORY = PROJECT_ROOT / "model_repository" / "edge"
GOAL_RATIO_P50 = 1.2
MULTI_STREAMS = 4
# Distinct sequence ids per run, so the 4-stream run never meets a sequence of the 1-stream run.
SINGLE_STREAM_IDS = (1,)
MULTI_STREAM_IDS = tuple(range(11, 11 + MULTI_STREAMS))
PHASES = (("1_stream", SINGLE_STREAM_IDS), ("4_streams", MULTI_STREAM_IDS))
# The models of the edge path whose Triton metrics are reported (context_ingest and svlm_focus are not used here).
METRIC_MODELS = ("spotvlm", "svlm", "svlm_preprocess", "svlm_vision", "svlm_generate", "svlm_postprocess")
DEFAULT_CONFIGS = ("1", "4")
DEFAULT_PLOT = PROJECT_ROOT / "build" / "stream_isolation.png"


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


_INSTANCE_COUNT = re.compile(r"(instance_group\s*\[\s*\{[^}]*?\bcount\s*:\s*)(\d+)")


def instance_count(config_text: str) -> int | None:
    """The first `instance_group` count of a config.pbtxt text, or None when it has none."""
    match = _INSTANCE_COUNT.search(_strip_comments(config_text))
    return int(match.group(2)) if match else None


def set_instance_count(config_text: str, count: int) -> str:
    """The config text with its (single) `instance_group` count set to `count`; nothing else changes.

    Raises ValueError when the text has no instance_group count, or more than one (which group was meant?).
    """
    if count < 1:
        raise ValueError(f"an instance count must be >= 1, got {count}")
    # Matched on the text with comments blanked out (same offsets), so a commented-out group is never rewritten.
    matches = list(_INSTANCE_COUNT.finditer(_strip_comments(config_text)))
    if not matches:
        raise ValueError("the config has no `instance_group [ { count: N ... } ]` to rewrite")
    if len(matches) > 1:
        raise ValueError(f"the config has {len(matches)} instance_group counts; expected one")
    start, end = matches[0].span(2)
    return config_text[:start] + str(count) + config_text[end:]


def _strip_comments(text: str) -> str:
    """`#` comments replaced by spaces of the same length (offsets stay valid). Quoted strings are left alone."""
    out = []
    for line in text.splitlines(keepends=True):
        quoted = False
        for i, char in enumerate(line):
            if char == '"' and (i == 0 or line[i - 1] != "\\"):
                quoted = not quoted
            elif char == "#" and not quoted:
                body = line[i:].rstrip("\r\n")
                line = line[:i] + " " * len(body) + line[i + len(body) :]
                break
        out.append(line)
    return "".join(out)


def read_parameter(config_text: str, key: str) -> str | None:
    """A string parameter of a config.pbtxt text (`parameters { key: "k", value: { string_value: "v" } }`)."""
    match = re.search(
        r'key\s*:\s*"' + re.escape(key) + r'"\s*,?\s*value\s*:\s*\{\s*string_value\s*:\s*"([^"]*)"',
        _strip_comments(config_text),
    )
    return match.group(1) if match else None


def prepare_repository(source: Path, dest: Path, counts: dict[str, int]) -> Path:
    """A private copy of the rendered repository `source` at `dest` with the instance counts of `counts` rewritten."""
    for model in counts:
        if not (source / model / "config.pbtxt").is_file():
            raise FileNotFoundError(
                f"{source / model / 'config.pbtxt'} is missing: render the repository first (./build_engines.sh)"
            )
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for model, count in counts.items():
        path = dest / model / "config.pbtxt"
        path.write_text(set_instance_count(path.read_text(), count))
    return dest


# -- statistics --------------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """numpy's (linear) percentile, rounded to 0.01; None for no values."""
    if len(values) == 0:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 2)


def latency_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "mean_ms": round(float(np.mean(values)), 2) if len(values) else None,
        "max_ms": round(float(np.max(values)), 2) if len(values) else None,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def after_warmup(results: Sequence[FrameResult], run_start_ms: float, warmup_s: float) -> list[FrameResult]:
    """The results of frames sent at least `warmup_s` after the run began (wall clock, ms since the epoch)."""
    cutoff = run_start_ms + warmup_s * 1000.0
    return [r for r in results if r.sent_at_ms >= cutoff]


def server_latency(result: FrameResult, part: str = "total") -> float | None:
    """`CONTEXT.latency_ms[part]` of an answered frame, or None."""
    value = (result.context.get("latency_ms") or {}).get(part) if isinstance(result.context, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def phase_summary(results: Sequence[FrameResult], run_start_ms: float, warmup_s: float) -> dict[str, Any]:
    """What one run measured, over the frames after the warm-up (`frames_sent` counts every frame)."""
    measured = after_warmup(results, run_start_ms, warmup_s)
    answered = [r for r in measured if r.ok]
    client = [r.latency_ms for r in answered]
    server_total = [v for r in answered if (v := server_latency(r)) is not None]
    # Client round trip minus the model's own time: gRPC, Triton's queue for a free instance, the response.
    outside = [r.latency_ms - v for r in answered if (v := server_latency(r)) is not None]
    by_stream: dict[int, list[float]] = {}
    for r in answered:
        by_stream.setdefault(r.stream_id, []).append(r.latency_ms)
    errors = [r.error for r in measured if not r.ok]
    streams = len({r.stream_id for r in results})
    # A fixed number of frames per stream (duration x fps); a late reply sends the next frame at once, so an
    # overloaded server stretches the run and each stream gets fewer frames per second than asked.
    wall_s = max((r.sent_at_ms + r.latency_ms for r in results), default=run_start_ms) / 1000.0 - run_start_ms / 1000.0
    return {
        "streams": streams,
        "wall_s": round(wall_s, 2),
        "achieved_fps_per_stream": round(len(results) / streams / wall_s, 2) if streams and wall_s > 0 else None,
        "frames_sent": len(results),
        "frames": len(measured),
        "errors": len(errors),
        "first_errors": sorted(set(str(e) for e in errors))[:3],
        "late_frames": sum(r.late for r in measured),
        "restarts": sum(r.restarted for r in measured),
        "client": latency_summary(client),
        "server_total": latency_summary(server_total),
        "outside_model_p50_ms": percentile(outside, 50),
        "server_breakdown_p50_ms": {
            part: percentile([v for r in answered if (v := server_latency(r, part)) is not None], 50)
            for part in ("preprocess", "vision", "generate")
        },
        "per_stream_p50_ms": {str(sid): percentile(v, 50) for sid, v in sorted(by_stream.items())},
    }


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


# -- Triton metrics ----------------------------------------------------------------------------------------------------

_METRIC_LINE = re.compile(r'^(nv_inference_\w+)\{[^}]*\bmodel="([^"]+)"[^}]*\}\s+([0-9.eE+-]+)\s*$')
_METRIC_NAMES = {
    "nv_inference_request_success": "requests",
    "nv_inference_exec_count": "executions",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_infer_duration_us": "compute_us",
}


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """model -> {requests, executions, queue_us, compute_us} from Triton's Prometheus text (counters summed over
    versions)."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line.strip())
        if not match or match.group(1) not in _METRIC_NAMES:
            continue
        key = _METRIC_NAMES[match.group(1)]
        model = out.setdefault(match.group(2), {})
        model[key] = model.get(key, 0.0) + float(match.group(3))
    return out


def metrics_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], models: Sequence[str] = METRIC_MODELS
) -> dict[str, dict[str, float | None]]:
    """Per model over a run: requests, mean batch size, mean queue and compute time per request (ms)."""
    out: dict[str, dict[str, float | None]] = {}
    for model in models:
        if model not in after:
            continue
        d = {k: after[model].get(k, 0.0) - before.get(model, {}).get(k, 0.0) for k in _METRIC_NAMES.values()}
        requests, executions = d["requests"], d["executions"]
        out[model] = {
            "requests": int(requests),
            "mean_batch": round(requests / executions, 2) if executions else None,
            "queue_ms_per_request": round(d["queue_us"] / requests / 1000, 2) if requests else None,
            "compute_ms_per_request": round(d["compute_us"] / requests / 1000, 2) if requests else None,
        }
    return out


def scrape_metrics(metrics_url: str) -> dict[str, dict[str, float]]:
    """Triton's metrics now; {} when they cannot be read (they are an aid, not the measurement)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{metrics_url}/metrics", timeout=5) as response:
            return parse_metrics(response.read().decode("utf-8", "replace"))
    except OSError:
        return {}


# -- running -----------------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def system_busy_s(stat_text: str | None = None) -> float | None:
    """CPU seconds spent busy (all CPUs, not idle or iowait) since boot, from /proc/stat; None off Linux."""
    try:
        text = stat_text if stat_text is not None else Path("/proc/stat").read_text()
    except OSError:
        return None
    fields = text.splitlines()[0].split()
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLOCK_TICKS


def process_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the live processes `pids` (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 of stat(5) is fields[0]
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLOCK_TICKS


@dataclass
class CpuSnapshot:
    system_busy_s: float | None
    server_s: float
    client_s: float


def cpu_snapshot(server_pid: int | None) -> CpuSnapshot:
    from client.launcher import descendant_pids

    pids = [server_pid, *descendant_pids(server_pid)] if server_pid is not None else []
    times = os.times()
    return CpuSnapshot(system_busy_s(), process_cpu_s(pids), times.user + times.system)


def cpu_usage(before: CpuSnapshot, after: CpuSnapshot, wall_s: float, cpus: int | None) -> dict[str, float | None]:
    """CPU seconds over a run: the server's process tree, this client, and everything else on the machine."""
    server = after.server_s - before.server_s
    client = after.client_s - before.client_s
    other = None
    if before.system_busy_s is not None and after.system_busy_s is not None:
        other = max(0.0, after.system_busy_s - before.system_busy_s - server - client)
    capacity = wall_s * cpus if cpus else None
    return {
        "wall_s": round(wall_s, 2),
        "server_cpu_s": round(server, 2),
        "client_cpu_s": round(client, 2),
        "other_cpu_s": round(other, 2) if other is not None else None,
        "busy_share_of_machine": round((server + client + (other or 0.0)) / capacity, 3) if capacity else None,
    }


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Ticker:
    """Prints `label: elapsed/planned s, frames, errors, p50 of the last ticks` to stderr every `interval_s`."""

    def __init__(self, label: str, planned_s: float, interval_s: float = 5.0) -> None:
        self.label = label
        self.planned_s = planned_s
        self.interval_s = interval_s
        self.frames = 0
        self.errors = 0
        self._recent: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="stream-isolation-ticker", daemon=True)

    def record(self, result: FrameResult) -> None:
        with self._lock:
            self.frames += 1
            if result.ok:
                self._recent.append(result.latency_ms)
            else:
                self.errors += 1

    def line(self) -> str:
        with self._lock:
            recent, self._recent = self._recent, []
            frames, errors = self.frames, self.errors
        p50 = percentile(recent, 50)
        recent_text = f"{p50:.1f} ms" if p50 is not None else "-"
        elapsed = time.monotonic() - self._started
        return (
            f"  {self.label}: {elapsed:5.1f}/{self.planned_s:.0f} s  frames {frames}  errors {errors}"
            f"  p50 since last line {recent_text}"
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            _say(self.line())

    def __enter__(self) -> _Ticker:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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
    ticker = _Ticker(label, duration_s)

    class _CountingSession(StreamSession):
        def send(self, frame: np.ndarray, *, start: bool, end: bool) -> FrameResult:
            result = super().send(frame, start=start, end=end)
            ticker.record(result)
            return result

    def factory(stream_id: int) -> StreamSession:
        return _CountingSession(url, "grpc", stream_id, params=params)

    sources = [SyntheticSource(seed=sid) for sid in stream_ids]
    started_ms = time.time() * 1000.0
    with ticker:
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
        _say(f"{label} starting an edge tritonserver (cloud off) ...")
        server = TritonServer(repository, env_overrides={"SPOTVLM_CLOUD_URL": "off"})
        entry["server_log"] = str(server.log_path)
        try:
            server.start(ready_timeout_s=args.ready_timeout)
        except ServerStartError as exc:
            _say(f"{label} the server failed to start:\n{exc}")
            entry["error"] = f"server failed to start: {str(exc).splitlines()[0]}"
            return entry
        _say(f"{label} ready in {server.ready_time_s:.1f} s at grpc {server.grpc_url}")
        phases: dict[str, dict[str, Any]] = {}
        try:
            for phase, ids in PHASES:
                _say(f"{label} {phase}: {len(ids)} stream(s) at {args.fps:g} fps for {args.duration:g} s")
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
                _say(
                    f"{label} {phase}: p50 {client['p50_ms']} ms, p99 {client['p99_ms']} ms over {summary['frames']}"
                    f" frames, {summary['errors']} errors, {summary['late_frames']} late,"
                    f" {summary['achieved_fps_per_stream']} fps per stream; CPU s: server {cpu['server_cpu_s']},"
                    f" client {cpu['client_cpu_s']}, other processes {cpu['other_cpu_s']} in {cpu['wall_s']} s"
                )
        finally:
            _say(f"{label} stopping the server ...")
            server.stop()
    entry.update(config_summary(config, phases, GOAL_RATIO_P50))
    entry["phases"] = phases
    return entry


# -- output ------------------------------------------------------------------------------------------------------------

_TABLE = (
    ("config", "name", "{}"),
    ("p50 1 ms", "p50_1_stream_ms", "{:.1f}"),
    ("p99 1 ms", "p99_1_stream_ms", "{:.1f}"),
    ("p50 4 ms", "p50_4_streams_ms", "{:.1f}"),
    ("p99 4 ms", "p99_4_streams_ms", "{:.1f}"),
    ("ratio p50", "ratio_p50", "{:.3f}"),
    ("server ratio", "server_ratio_p50", "{:.3f}"),
    ("goal", "meets_goal", "{}"),
    ("frames", "frames", "{}"),
    ("errors", "errors", "{}"),
    ("late", "late_frames", "{}"),
)


def format_table(configs: Sequence[dict[str, Any]]) -> str:
    """The headline numbers of each config as an aligned text table."""
    rows = [[title for title, _, _ in _TABLE]]
    for entry in configs:
        row = []
        for _, key, fmt in _TABLE:
            value = entry.get(key) if key != "name" else entry.get("name", "?")
            row.append("-" if value is None else fmt.format(value))
        if "error" in entry:
            row[1:] = [entry["error"]] + [""] * (len(row) - 2)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    )


def write_plot(report: dict[str, Any], path: Path) -> str | None:
    """A bar chart of client p50/p99 for 1 and 4 streams per config; None when written, else why it was not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed; no plot written"
    configs = [c for c in report["configs"] if "error" not in c]
    if not configs:
        return "no configuration was measured; no plot written"
    x = np.arange(len(configs))
    fig, ax = plt.subplots(figsize=(max(6, 2.5 * len(configs)), 4.5))
    bars = (
        ("p50_1_stream_ms", "p50, 1 stream"),
        ("p50_4_streams_ms", "p50, 4 streams"),
        ("p99_1_stream_ms", "p99, 1 stream"),
        ("p99_4_streams_ms", "p99, 4 streams"),
    )
    width = 0.2
    for i, (key, label) in enumerate(bars):
        ax.bar(x + (i - 1.5) * width, [c.get(key) or 0 for c in configs], width, label=label)
    for xi, config in zip(x, configs):
        if config.get("p50_1_stream_ms"):
            ax.hlines(GOAL_RATIO_P50 * config["p50_1_stream_ms"], xi - 2 * width, xi, colors="black", linestyles=":")
    ax.set_xticks(x, [c["name"].replace(",", "\n") for c in configs])
    ax.set_ylabel("client latency (ms)")
    ax.set_title(
        f"Edge latency, 1 vs 4 streams at {report['fps']:g} fps\n(dotted: the goal, {GOAL_RATIO_P50}x p50 of 1 stream)",
        fontsize=10,
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


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
    config = args.repository / "spotvlm" / "config.pbtxt"
    value = read_parameter(config.read_text(), "default_max_tokens") if config.is_file() else None
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
    _say(
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
            _say(skipped)
    print(format_table(report["configs"]))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
