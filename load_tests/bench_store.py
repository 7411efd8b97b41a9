"""`spotvlm bench`'s context-store memory measurement: a ContextStore filled with N streams at full history,
measured with tracemalloc in a spawned child process."""

from __future__ import annotations

import dataclasses
import gc
import time
import tracemalloc
from typing import Any

from python_backends.context.store import CloudResult, ContextStore, StoreLimits, TurnRecord
from python_backends.detections import Detection

STORE_STREAMS = 10_000


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
