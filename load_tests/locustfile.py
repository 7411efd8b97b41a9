"""Locust load test of the edge model `spotvlm`: every locust user is one video stream, one Triton sequence.

    locust -f load_tests/locustfile.py --headless -u 8 -r 8 -t 20s --host 127.0.0.1:8001 \
           [--protocol grpc|http] [--fps 5] [--prompt TEXT] [--max-tokens N] [--cloud-delay SPEC] [--images DIR] \
           --csv build/load/load --html build/load/load.html
    python -m load_tests.load_run ...     (starts both servers, runs this headless and checks the reports)

--host is the edge's HOST:PORT for the chosen protocol (gRPC by default), or several comma-separated: each user's
stream then goes to the edge its sequence id hashes to (client.sharding), and moves on, restarted, if that edge goes.
A user gets its own sequence id (load_run.SequenceIds: distinct across users and worker processes), sends frames of a
synthetic scene drawn over a scikit-image photo (or of --images DIR) at --fps (locust's constant_pacing), START on its
first frame, and a last frame with END when locust stops it. Sending goes through client.streaming.StreamSession,
which resends a frame with START when Triton dropped an idle sequence and returns errors in FrameResult.error instead
of raising.

Every frame is reported as a locust request (type "grpc" or "http", name "spotvlm"): its round trip and reply size,
and a failure carrying the error text when one came back.

Cloud context: frames answered with cloud context add their context age (ms) to a separate stats entry, type
"CONTEXT", name "age_ms", shown in locust's tables, CSV and HTML report. Its count is the number of frames that had
context and its "response times" are ages. That entry is logged straight into its StatsEntry, not through the request
event, so locust's Aggregated row (total requests, failures, RPS, latency percentiles) counts only frames: an age is
not a request, and mixing ages into the latency percentiles would make them meaningless. The share of frames with
context, the age percentiles, cloud states and restarts go to `<csv prefix>_context.json` and a line at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gevent
from locust import User, constant_pacing, events, task
from locust.runners import WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC

# tritonclient's gRPC client must cooperate with gevent, or one user's request blocks every other user. This has to run
# after locust's monkey-patching (done by importing locust) and before any channel exists.
import grpc.experimental.gevent as grpc_gevent  # isort: skip

grpc_gevent.init_gevent()

from client.frame_sources import ImageDirSource, SyntheticSource
from client.streaming import FrameResult, StreamSession
from client.triton_client import VLMClient
from load_tests.load_run import (
    CONTEXT_NAME,
    CONTEXT_TYPE,
    ContextStats,
    SequenceIds,
    add_stream_arguments,
    edge_url,
    format_context_summary,
    response_bytes,
    stream_params,
)

SEQUENCE_IDS = SequenceIds()
# This process's context statistics: on a --processes/--worker node its delta goes to the master with each report.
CONTEXT_STATS = ContextStats()
_ENVIRONMENT: Any = None
_REPORT_KEY = "spotvlm_context"


class FrameError(Exception):
    """An error the edge answered for a frame (the text of FrameResult.error)."""


class _SizedClient:
    """A VLMClient that remembers the payload size of its last reply (for locust's response_length)."""

    def __init__(self, inner: VLMClient) -> None:
        self.inner = inner
        self.last_bytes = 0

    def infer(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.last_bytes = 0
        outputs = self.inner.infer(*args, **kwargs)
        self.last_bytes = response_bytes(outputs)
        return outputs

    def close(self) -> None:
        self.inner.close()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add_stream_arguments(parser)


@events.init.add_listener
def _on_init(environment: Any, **_kwargs: Any) -> None:
    global _ENVIRONMENT
    _ENVIRONMENT = environment


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kwargs: Any) -> None:
    CONTEXT_STATS.reset()
    interval = float(getattr(environment.parsed_options, "progress_interval", 0) or 0)
    if interval > 0 and not isinstance(environment.runner, WorkerRunner):
        gevent.spawn(_progress_loop, environment, interval)


@events.reset_stats.add_listener
def _on_reset_stats(**_kwargs: Any) -> None:
    CONTEXT_STATS.reset()


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    data[_REPORT_KEY] = CONTEXT_STATS.take()


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    CONTEXT_STATS.merge(data.get(_REPORT_KEY))


def _progress_line(environment: Any, started: float) -> str:
    total = environment.runner.stats.total
    share = CONTEXT_STATS.context_share
    # Whole-run percentiles: the "current" ones need a response-time cache that locust keeps only in some modes.
    p50, p95 = (total.get_response_time_percentile(q) for q in (0.5, 0.95)) if total.num_requests else (None, None)
    ages = CONTEXT_STATS.summary()["context_age_ms"]
    return (
        f"[{time.monotonic() - started:4.0f} s] users {environment.runner.user_count:>3}"
        f"  requests {total.num_requests:>6}  failures {total.num_failures:>4}  rps {total.current_rps:5.1f}"
        f"  p50 {'-' if p50 is None else f'{p50:.0f}'} ms  p95 {'-' if p95 is None else f'{p95:.0f}'} ms"
        f"  context {'-' if share is None else f'{share:.0%}'}"
        f"  age p50 {'-' if ages['p50'] is None else ages['p50']} ms"
    )


def _progress_loop(environment: Any, interval: float) -> None:
    started = time.monotonic()
    while True:
        gevent.sleep(interval)
        if environment.runner is None or environment.runner.state not in ("spawning", "running"):
            return
        print(_progress_line(environment, started), flush=True)


@events.quitting.add_listener
def _on_quitting(environment: Any, **_kwargs: Any) -> None:
    # locust rewrites its CSV files every CSV_STATS_INTERVAL_SEC and closes them at exit without a last write, so the
    # frames of the run's last second (the END frames among them) would be missing from <prefix>_stats.csv. Users
    # have stopped by now: one more pass of the writer makes the CSV final.
    if getattr(environment.parsed_options, "csv_prefix", None) and not isinstance(environment.runner, WorkerRunner):
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.25)


@events.quit.add_listener
def _on_quit(exit_code: int, **_kwargs: Any) -> None:
    # `quit` fires after locust printed its tables, so this line ends the output. Workers only report to the master.
    environment = _ENVIRONMENT
    if environment is None or isinstance(environment.runner, WorkerRunner):
        return
    summary = CONTEXT_STATS.summary()
    options = environment.parsed_options
    summary["run"] = {
        "protocol": options.protocol,
        "fps": options.fps,
        "users": getattr(options, "num_users", None),
        "host": environment.host,
        "exit_code": exit_code,
    }
    print(format_context_summary(summary), flush=True)
    prefix = getattr(options, "csv_prefix", None)
    if prefix:
        path = Path(f"{prefix}_context.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


class SpotVLMStream(User):
    """One video stream to the edge's `spotvlm` model: one Triton sequence at a fixed frame rate."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        self.options = options
        self.protocol = options.protocol
        self._pacing = constant_pacing(1.0 / options.fps)
        self.stream_id = SEQUENCE_IDS.next()
        self.session: StreamSession | None = None
        self.clients: dict[str, _SizedClient] = {}  # by edge URL
        self.frames: Any = None
        self.started = False
        self._inflight: gevent.Greenlet | None = None

    def wait_time(self) -> float:  # type: ignore[override]
        # A fixed frame rate however long a frame took (a late reply makes the next frame go at once).
        return self._pacing(self)

    def on_start(self) -> None:
        hosts = (self.host or "").split(",")
        urls = [edge_url(host.strip() or None, self.protocol) for host in hosts]
        self.session = StreamSession(
            urls,
            self.protocol,
            self.stream_id,
            self.options.prompt,
            params=stream_params(self.options.max_tokens, self.options.cloud_delay),
            client_factory=self._client_for,
        )
        # Distinct scenes per user, from the low bits of the stream id (the per-process counter).
        source = ImageDirSource(self.options.images) if self.options.images else SyntheticSource(self.stream_id % 1000)
        self.frames = iter(source)

    def _client_for(self, url: str) -> _SizedClient:
        self.clients[url] = _SizedClient(VLMClient(url, self.protocol, timeout_s=self.options.request_timeout))
        return self.clients[url]

    @task
    def send_frame(self) -> None:
        self._send(end=False)

    def on_stop(self) -> None:
        try:
            if self.session is not None and self.started:
                # A frame cut off by the stop is still on its way: it goes first, so the END frame is the last.
                if self._inflight is not None:
                    self._inflight.join(timeout=self.options.request_timeout)
                # The last frame carries END: the edge frees the stream's state now, not at its idle timeout.
                self._send(end=True)
        finally:
            if self.session is not None:
                self.session.close()
                self.session = None

    def _send(self, *, end: bool) -> None:
        assert self.session is not None
        frame = next(self.frames)
        start = not self.started
        # Even when START fails, the next frame goes without it: StreamSession restarts a sequence the edge refuses.
        self.started = True
        # The request runs in a greenlet of its own. locust can kill a user's greenlet in the middle of a request (its
        # stop sees the user "waiting", and the user wakes up before the kill lands), and a tritonclient request cut
        # off there keeps the HTTP client's only pooled connection forever: the END frame would then hang. A killed
        # user only stops waiting here; the frame completes and is reported.
        self._inflight = gevent.spawn(self._send_and_report, self.session, frame, start, end)
        self._inflight.get()

    def _send_and_report(self, session: StreamSession, frame: Any, start: bool, end: bool) -> None:
        self._report(session.send(frame, start=start, end=end))

    def _report(self, result: FrameResult) -> None:
        assert self.session is not None
        client = self.clients.get(self.session.url)  # the stream's edge, after any move
        self.environment.events.request.fire(
            request_type=self.protocol,
            name="spotvlm",
            response_time=result.latency_ms,
            response_length=client.last_bytes if result.ok and client is not None else 0,
            exception=FrameError(result.error) if result.error is not None else None,
            context={"stream_id": self.stream_id, "frame": result.frame_index, "restarted": result.restarted},
        )
        age = CONTEXT_STATS.add(ok=result.ok, context=result.context, restarted=result.restarted)
        if age is not None:
            # Straight into the entry, not through stats.log_request: the Aggregated row stays frames only.
            self.environment.stats.get(CONTEXT_NAME, CONTEXT_TYPE).log(age, 0)
