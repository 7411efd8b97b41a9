"""The edge's asynchronous client for the cloud `lvlm` model over a pool of replicas (over 500 lines, why below).

`CloudLink` owns a thread running its own asyncio loop (the vllm_backend pattern), with the `tritonclient.grpc.aio`
clients (one per endpoint) created inside that loop. The `spotvlm` model's `execute()` calls `submit()` once per
frame: it decides under the dispatch policy, which also picks the endpoint (pool.py: the fewest requests outstanding,
per-endpoint circuit breakers), and hands the job to the loop with `call_soon_threadsafe`, so it never waits on the
cloud. Replies and errors come back through callbacks, on the loop thread.

Per job, in the loop: the injected delay (it simulates the network, so it counts against the deadline and holds the
stream's slot) and JPEG encoding in an executor, then `infer` on the chosen endpoint with at most `attempt_timeout_s`
of the remaining deadline. A timeout, an unreachable endpoint or a server error sends the same frame to another
endpoint while the deadline has time left (a failover: the frame keeps its place, since the reply is filed under the
frame it answers); when none is left, the frame counts as failed with its last error. Errors are classified as
timeout / unavailable / server / bad_reply (and client, for failures on the edge's side); each attempt's outcome goes
to its endpoint's breaker, and everything is counted per endpoint for Prometheus.

With one endpoint this is the single-cloud link: the whole deadline for one attempt, one breaker.

The module is over 500 lines because one object owns the loop thread, its clients, the attempts and failover and
the counters, which share its lock and loop; the parts that need neither already live apart (pool.py, request.py,
dispatch.py, breaker.py, delay.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from python_backends.cloud.breaker import CircuitBreaker, CloudState
from python_backends.cloud.delay import DelayInjector
from python_backends.cloud.dispatch import SENT, SKIPPED_DOWN, DispatchPolicy
from python_backends.cloud.pool import Endpoint, EndpointPool, dns_target, parse_endpoints, resolve_addresses
from python_backends.cloud.request import (  # re-exported: the link's callers import these from here
    ERROR_KINDS,
    CloudCallError,
    CloudJob,
    CloudReply,
    _build_request,
    _default_client_factory,
    classify_error,
    encode_frame,
    image_bytes_size,
    parse_answers,
)

__all__ = [
    "ERROR_KINDS",
    "CloudCallError",
    "CloudJob",
    "CloudLink",
    "CloudReply",
    "classify_error",
    "encode_frame",
    "image_bytes_size",
]

logger = logging.getLogger("spotvlm.cloud")

# A channel that stays unreachable this many calls in a row is replaced on the next call: gRPC reconnects by itself,
# but a fresh client also recovers from a channel stuck in a bad state (e.g. after the cloud moved).
RECREATE_AFTER_UNAVAILABLE = 5
# Bounds the rtt list kept between two drains, in case nobody drains.
MAX_RTTS_KEPT = 10_000
# Failures another replica may not share: the same frame is tried there.
RETRYABLE_KINDS = frozenset({"timeout", "unavailable", "server"})
ENDPOINT_COUNTS = ("sent", "replies", "retries")


@dataclass
class _EndpointCounts:
    """One endpoint's totals and the part of them not yet drained; guarded by the link's lock."""

    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENDPOINT_COUNTS + ERROR_KINDS, 0))
    undrained: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENDPOINT_COUNTS + ERROR_KINDS, 0))
    rtts: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_RTTS_KEPT))
    last_rtt_ms: float | None = None

    def add(self, key: str) -> None:
        self.totals[key] += 1
        self.undrained[key] += 1


class CloudLink:
    """Sends frames to the cloud without ever blocking the caller; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        model: str = "lvlm",
        deadline_s: float = 10.0,
        attempt_timeout_s: float | None = None,
        jpeg_quality: int = 85,
        max_side: int = 0,
        max_inflight: int = 1,
        breaker: CircuitBreaker | None = None,
        breaker_factory: Callable[[], CircuitBreaker] | None = None,
        delay: DelayInjector | None = None,
        on_reply: Callable[[CloudReply], None],
        on_error: Callable[[CloudJob, str], None] | None = None,
        client_factory: Callable[[str], Any] | None = None,
        resolver: Callable[[str, int], list[str]] = resolve_addresses,
        resolve_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`url`: one endpoint, several comma-separated, or dns:///HOST:PORT (every address, looked up again every
        `resolve_interval_s`). `attempt_timeout_s`: the most one endpoint gets of a frame's deadline before the frame
        goes to another; by default the whole deadline with one endpoint, half of it with several. `breaker` is the
        breaker of a single endpoint; `breaker_factory` makes one per endpoint."""
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        if max_side < 0:
            raise ValueError(f"max_side must be >= 0 (0 = full size), got {max_side}")
        if attempt_timeout_s is not None and attempt_timeout_s <= 0:
            raise ValueError(f"attempt_timeout_s must be > 0, got {attempt_timeout_s}")
        endpoints = parse_endpoints(url)
        self._dns = dns_target(endpoints)
        if breaker is not None and (len(endpoints) > 1 or self._dns is not None):
            raise ValueError("breaker is the breaker of a single endpoint: give breaker_factory for several")
        self.url = url
        self.model = model
        self.deadline_s = deadline_s
        several = len(endpoints) > 1 or self._dns is not None
        self.attempt_timeout_s = attempt_timeout_s or (deadline_s / 2 if several else deadline_s)
        self.jpeg_quality = jpeg_quality
        self.max_side = max_side
        self.delay = delay
        self.pool = EndpointPool(
            [] if self._dns is not None else endpoints,
            breaker_factory or (lambda: CircuitBreaker(clock=clock)),
        )
        if breaker is not None:
            self.pool.endpoints[0].breaker = breaker
        self.policy = DispatchPolicy(max_inflight=max_inflight, breaker=breaker)
        self._on_reply = on_reply
        self._on_error = on_error
        self._client_factory = client_factory or _default_client_factory
        self._resolver = resolver
        self.resolve_interval_s = resolve_interval_s
        self._clock = clock

        # Guards the counters and the lifecycle flags only; nothing is called while holding it.
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "replies": 0, "skipped_busy": 0, "skipped_down": 0, "retries": 0, "cancelled": 0}
        self._errors = dict.fromkeys(ERROR_KINDS, 0)
        self._drained = {**self._counts, **{f"error:{k}": 0 for k in ERROR_KINDS}}
        self._rtts: deque[float] = deque(maxlen=MAX_RTTS_KEPT)
        self._last_rtt_ms: float | None = None
        self._per_endpoint: dict[str, _EndpointCounts] = {}
        self._started = False
        self._closed = False

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Loop-thread-only state (no lock needed): the clients, the running tasks, the unavailable streaks.
        self._clients: dict[str, Any] = {}
        self._tasks: set[asyncio.Task] = set()
        self._stream_tasks: dict[int, set[asyncio.Task]] = {}
        self._unavailable_streak: dict[str, int] = {}

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The first endpoint's breaker (the breaker, with one endpoint)."""
        endpoints = self.pool.endpoints
        return endpoints[0].breaker if endpoints else None

    # ----- lifecycle (model thread) -----

    def start(self) -> None:
        """Starts the loop thread; call from the model's initialize(). Idempotent."""
        with self._lock:
            if self._closed:
                raise RuntimeError("CloudLink is closed")
            if self._started:
                return
            self._started = True
            # The loop is made here so that submit() can schedule on it at once, even before the thread runs it.
            self._loop = asyncio.new_event_loop()
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="spotvlm-jpeg")
            self._thread = threading.Thread(target=self._run_loop, name="spotvlm-cloud", daemon=True)
        if self._dns is not None:
            self._resolve_now()  # here, once, so the first frames find the replicas
            self._loop.call_soon_threadsafe(self._spawn_task, self._resolve_forever())
        self._thread.start()

    def _run_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                logger.exception("cloud link: shutting down async generators failed")
            loop.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Cancels pending calls, closes the clients, stops the loop, joins the thread. Idempotent; for finalize()."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread, executor = self._loop, self._thread, self._executor
        if loop is None or thread is None:
            return
        deadline = time.monotonic() + timeout_s
        if thread.is_alive() and not loop.is_closed():
            try:
                future = asyncio.run_coroutine_threadsafe(self._shutdown(timeout_s), loop)
                future.result(timeout=max(0.01, deadline - time.monotonic()))
            except Exception as exc:
                logger.warning("cloud link: clean shutdown did not finish: %r", exc)
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass  # the loop closed already
        thread.join(timeout=max(0.01, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning("cloud link: loop thread did not stop within %.1f s", timeout_s)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    async def _shutdown(self, timeout_s: float) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # A fake or a stuck call that ignores cancellation must not hold up finalize().
            await asyncio.wait(tasks, timeout=timeout_s / 2)
        for url in list(self._clients):
            await self._close_client(url)

    async def _close_client(self, url: str) -> None:
        client = self._clients.pop(url, None)
        if client is None:
            return
        try:
            await asyncio.wait_for(client.close(), timeout=1.0)
        except Exception as exc:
            logger.warning("cloud link: closing the client of %s failed: %r", url, exc)

    # ----- the endpoints of a dns:/// name -----

    def _resolve_now(self) -> list[str]:
        assert self._dns is not None
        try:
            urls = self._resolver(*self._dns)
        except OSError as exc:
            logger.warning("cloud link: resolving %s failed: %s", self.url, exc)
            return []
        return self._set_endpoints(urls)

    def _set_endpoints(self, urls: list[str]) -> list[str]:
        """Takes a lookup's answer; an empty one keeps the endpoints known (a DNS hiccup is not every replica gone)."""
        if not urls:
            return []
        added, removed = self.pool.replace(urls)
        if added or removed:
            logger.info("cloud link: %s is now %s (added %s, removed %s)", self.url, urls, added, removed)
        return removed

    async def _resolve_forever(self) -> None:
        assert self._dns is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.resolve_interval_s)
            try:
                urls = await loop.run_in_executor(self._executor, self._resolver, *self._dns)
            except OSError as exc:
                logger.warning("cloud link: resolving %s failed: %s", self.url, exc)
                continue
            for url in self._set_endpoints(urls):
                await self._close_client(url)

    # ----- submit (model thread) -----

    def submit(self, job: CloudJob) -> str:
        """ "sent", "skipped_busy" or "skipped_down". Never blocks: the call runs on the loop thread."""
        with self._lock:
            usable = self._started and not self._closed
        if not usable:
            self._count("skipped_down")
            return SKIPPED_DOWN
        decision, endpoint = self.policy.try_acquire_from(job.stream_id, self.pool.acquire)
        if decision != SENT or endpoint is None:
            self._count(decision)
            return decision
        sent_s = self._clock()
        loop = self._loop
        assert loop is not None
        # Counted before the hand-off so that a drain never sees the reply before the send.
        self._count("sent")
        self._count_endpoint(endpoint.url, "sent")
        try:
            loop.call_soon_threadsafe(self._spawn_task, self._run_job(job, sent_s, endpoint), job.stream_id)
        except RuntimeError:  # closed between the check and here
            self.policy.release(job.stream_id)
            self.pool.release(endpoint)
            endpoint.breaker.record_abandoned()
            with self._lock:
                self._counts["sent"] -= 1
                self._counts["skipped_down"] += 1
                self._per_endpoint[endpoint.url].totals["sent"] -= 1
                self._per_endpoint[endpoint.url].undrained["sent"] -= 1
            return SKIPPED_DOWN
        return SENT

    def cancel_stream(self, stream_id: int) -> None:
        """Cancels the stream's calls still waiting out their injected delay or in flight: its sequence ended or
        restarted, so their answers could only be dropped, and the cloud's time is better spent on live streams.
        Calls submitted after this one are not touched (the loop runs both in order). Never blocks."""
        with self._lock:
            usable = self._started and not self._closed
            loop = self._loop
        if not usable or loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._cancel_stream_tasks, stream_id)
        except RuntimeError:
            pass  # the loop closed in between: close() cancels everything anyway

    def _cancel_stream_tasks(self, stream_id: int) -> None:
        loop = asyncio.get_running_loop()
        for task in self._stream_tasks.pop(stream_id, set()):
            # Cancelled on the next turn of the loop: a task cancelled before its first step would never enter
            # _run_job, whose `finally` gives back the stream's slot and the endpoint's in-flight count. Its first
            # step is queued already (since it was made), so it runs before this.
            loop.call_soon(self._cancel_task, task)

    def _cancel_task(self, task: asyncio.Task) -> None:
        if task.cancel():  # False: it had finished in between
            with self._lock:
                self._counts["cancelled"] += 1

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _count_endpoint(self, url: str, key: str) -> None:
        with self._lock:
            self._per_endpoint.setdefault(url, _EndpointCounts()).add(key)

    # ----- the loop thread -----

    def _spawn_task(self, coroutine: Any, stream_id: int | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        # Loop-thread-only sets and no lock held: add_done_callback may run the callback inline.
        task.add_done_callback(self._tasks.discard)
        if stream_id is not None:
            self._stream_tasks.setdefault(stream_id, set()).add(task)
            task.add_done_callback(lambda done: self._forget_stream_task(stream_id, done))

    def _forget_stream_task(self, stream_id: int, task: asyncio.Task) -> None:
        tasks = self._stream_tasks.get(stream_id)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._stream_tasks[stream_id]

    async def _run_job(self, job: CloudJob, sent_s: float, endpoint: Endpoint) -> None:
        deadline = sent_s + self.deadline_s
        reply: CloudReply | None = None
        kind: str | None = None
        tried: list[str] = [endpoint.url]
        try:
            try:
                payload = await asyncio.wait_for(self._prepare(job), timeout=max(deadline - self._clock(), 0.0))
            except asyncio.CancelledError:
                self._end_attempt(endpoint, abandoned=True)
                raise
            except Exception as exc:
                kind = self._failed(job, endpoint, exc)
            while kind is None:
                attempt_end = min(deadline, self._clock() + self.attempt_timeout_s)
                try:
                    reply = await asyncio.wait_for(
                        self._call(job, sent_s, endpoint, payload, attempt_end),
                        timeout=max(attempt_end - self._clock(), 0.0),
                    )
                except asyncio.CancelledError:
                    self._end_attempt(endpoint, abandoned=True)
                    raise
                except Exception as exc:
                    kind = self._failed(job, endpoint, exc)
                else:
                    self._end_attempt(endpoint, reply=reply)
                    break
                retry = self._next_endpoint(kind, deadline, tried)
                if retry is None:
                    break
                logger.info(
                    "cloud call for stream %s frame %s failed on %s (%s): retrying on %s",
                    job.stream_id,
                    job.frame_id,
                    endpoint.url,
                    kind,
                    retry.url,
                )
                self._count("retries")
                self._count_endpoint(endpoint.url, "retries")
                self._count_endpoint(retry.url, "sent")
                endpoint, kind = retry, None
                tried.append(endpoint.url)
        finally:
            # Always free the stream's slot, whatever happened, or the stream would stay busy forever.
            self.policy.release(job.stream_id)
        # Not reached when cancelled: CancelledError was re-raised above.
        if reply is not None:
            with self._lock:
                self._counts["replies"] += 1
                self._rtts.append(reply.rtt_ms)
                self._last_rtt_ms = reply.rtt_ms
            self._callback(self._on_reply, reply)
        elif kind is not None:
            with self._lock:
                self._errors[kind] += 1
            if self._on_error is not None:
                self._callback(self._on_error, job, kind)

    def _failed(self, job: CloudJob, endpoint: Endpoint, exc: Exception) -> str:
        kind = classify_error(exc)
        log = logger.exception if kind == "client" else logger.warning
        # The type and str(): repr() of tritonclient's InferenceServerException drops its message and status.
        log(
            "cloud call for stream %s frame %s failed (%s) on %s: %s: %s",
            job.stream_id,
            job.frame_id,
            kind,
            endpoint.url,
            type(exc).__name__,
            exc,
        )
        self._end_attempt(endpoint, kind=kind)
        return kind

    def _next_endpoint(self, kind: str, deadline: float, tried: list[str]) -> Endpoint | None:
        if kind not in RETRYABLE_KINDS or deadline - self._clock() <= 0:
            return None
        return self.pool.acquire(exclude=tried)

    def _end_attempt(
        self, endpoint: Endpoint, *, kind: str | None = None, reply: CloudReply | None = None, abandoned: bool = False
    ) -> None:
        """One attempt's outcome: the endpoint's in-flight count, its breaker, its counts."""
        self.pool.release(endpoint)
        url = endpoint.url
        if reply is not None:
            self._unavailable_streak[url] = 0
            endpoint.breaker.record_success(reply.rtt_ms)
            with self._lock:
                counts = self._per_endpoint.setdefault(url, _EndpointCounts())
                counts.add("replies")
                attempt_ms = (reply.arrived_s - (reply.attempt_s or reply.sent_s)) * 1000.0
                counts.rtts.append(attempt_ms)
                counts.last_rtt_ms = attempt_ms
        elif abandoned or kind == "client":
            endpoint.breaker.record_abandoned()
        elif kind is not None:
            streak = self._unavailable_streak.get(url, 0)
            self._unavailable_streak[url] = streak + 1 if kind == "unavailable" else 0
            endpoint.breaker.record_failure(kind)
            self._count_endpoint(url, kind)

    @staticmethod
    def _callback(fn: Callable[..., None], *args: Any) -> None:
        # A failing callback must never kill the loop or the link.
        try:
            fn(*args)
        except Exception:
            logger.exception("cloud link callback %r raised", fn)

    async def _prepare(self, job: CloudJob) -> tuple[bytes, tuple[int, int]]:
        """The injected delay, then the image to send and its (h, w)."""
        delay = job.delay if job.delay is not None else self.delay
        if delay is not None:
            extra = delay.delay_s(self._clock())
            if extra > 0:
                await asyncio.sleep(extra)
        if job.image is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, encode_frame, job.image, self.jpeg_quality, self.max_side)
        jpeg = bytes(job.image_bytes or b"")
        try:
            return jpeg, image_bytes_size(jpeg)
        except Exception as exc:
            raise CloudCallError("client", f"image_bytes is not a readable image: {exc}") from exc

    async def _call(
        self,
        job: CloudJob,
        sent_s: float,
        endpoint: Endpoint,
        payload: tuple[bytes, tuple[int, int]],
        attempt_end: float,
    ) -> CloudReply:
        jpeg, frame_size = payload
        inputs, outputs = _build_request(job, jpeg)
        client = await self._get_client(endpoint.url)
        attempt_s = self._clock()
        remaining = attempt_end - attempt_s
        if remaining <= 0:
            raise asyncio.TimeoutError("deadline passed before sending")
        result = await client.infer(self.model, inputs, outputs=outputs, client_timeout=remaining)
        first, *others = parse_answers(result, len(job.prompts))
        return CloudReply(
            job=job,
            text=first.text,
            detections=first.detections,
            other_answers=tuple(others),
            frame_size=frame_size,
            sent_s=sent_s,
            arrived_s=self._clock(),
            endpoint=endpoint.url,
            attempt_s=attempt_s,
        )

    async def _get_client(self, url: str) -> Any:
        if url in self._clients and self._unavailable_streak.get(url, 0) >= RECREATE_AFTER_UNAVAILABLE:
            logger.info(
                "cloud link: %d unavailable calls in a row to %s, recreating its client",
                RECREATE_AFTER_UNAVAILABLE,
                url,
            )
            self._unavailable_streak[url] = 0
            await self._close_client(url)
        if url not in self._clients:
            # Created here, inside the loop thread: the grpc.aio channel binds to the running loop.
            self._clients[url] = self._client_factory(url)
        return self._clients[url]

    # ----- observation (any thread) -----

    @property
    def state(self) -> CloudState:
        """Down only when every endpoint is."""
        return self.pool.state

    def stats(self) -> dict:
        """Totals since start: sent, replies, skipped_busy, skipped_down, retries, cancelled, inflight, errors_by_kind,
        last_rtt_ms, state, and per endpoint: sent, replies, retries, errors_by_kind, last_rtt_ms, inflight, state."""
        with self._lock:
            result: dict = dict(self._counts)
            result["errors_by_kind"] = dict(self._errors)
            result["last_rtt_ms"] = self._last_rtt_ms
            per_endpoint = {url: (dict(c.totals), c.last_rtt_ms) for url, c in self._per_endpoint.items()}
        endpoints = {}
        for endpoint in self.pool.endpoints:
            totals, last_rtt = per_endpoint.get(endpoint.url, (dict.fromkeys(ENDPOINT_COUNTS + ERROR_KINDS, 0), None))
            endpoints[endpoint.url] = _endpoint_view(totals, endpoint)
            endpoints[endpoint.url]["last_rtt_ms"] = last_rtt
        result["endpoints"] = endpoints
        result["inflight"] = self.policy.total_inflight
        result["state"] = self.state.value
        return result

    def drain_stats(self) -> dict:
        """Counts since the last drain (deltas) and the rtt_ms observed since; inflight and state are current. Per
        endpoint the same, its rtt_ms being its own calls' round trips (without the injected delay)."""
        with self._lock:
            result: dict = {}
            for key, value in self._counts.items():
                result[key] = value - self._drained[key]
                self._drained[key] = value
            errors = {}
            for kind, value in self._errors.items():
                errors[kind] = value - self._drained[f"error:{kind}"]
                self._drained[f"error:{kind}"] = value
            result["errors_by_kind"] = errors
            result["rtt_ms"] = list(self._rtts)
            self._rtts.clear()
            result["last_rtt_ms"] = self._last_rtt_ms
            drained: dict[str, tuple[dict[str, int], list[float]]] = {}
            for url, counts in self._per_endpoint.items():
                drained[url] = (dict(counts.undrained), list(counts.rtts))
                counts.undrained = dict.fromkeys(counts.undrained, 0)
                counts.rtts.clear()
        endpoints = {}
        for endpoint in self.pool.endpoints:
            deltas, rtts = drained.pop(endpoint.url, (dict.fromkeys(ENDPOINT_COUNTS + ERROR_KINDS, 0), []))
            endpoints[endpoint.url] = {**_endpoint_view(deltas, endpoint), "rtt_ms": rtts}
        for url, (deltas, rtts) in drained.items():  # endpoints gone from the pool: their last counts
            endpoints[url] = {**_endpoint_view(deltas, None), "rtt_ms": rtts}
        result["endpoints"] = endpoints
        result["inflight"] = self.policy.total_inflight
        result["state"] = self.state.value
        return result


def _endpoint_view(counts: dict[str, int], endpoint: Endpoint | None) -> dict:
    view: dict = {key: counts[key] for key in ENDPOINT_COUNTS}
    view["errors_by_kind"] = {kind: counts[kind] for kind in ERROR_KINDS}
    view["inflight"] = endpoint.inflight if endpoint is not None else 0
    view["state"] = endpoint.state.value if endpoint is not None else CloudState.DOWN.value
    return view
