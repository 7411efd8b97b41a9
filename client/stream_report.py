"""What `run_streams` shows while it runs (one tqdm bar per stream) and the per-stream summary table after it."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from tqdm import tqdm

from client.frame_result import FrameResult
from client.stats import percentile


# -- progress ----------------------------------------------------------------------------------------------------------


@dataclass
class _StreamStats:
    sent: int = 0
    errors: int = 0
    restarts: int = 0
    late: int = 0
    with_context: int = 0
    last_latency_ms: float | None = None
    cloud_state: str = "-"
    latencies: list[float] = field(default_factory=list)

    def add(self, result: FrameResult) -> None:
        self.sent += 1
        self.restarts += int(result.restarted)
        self.late += int(result.late)
        self.last_latency_ms = result.latency_ms
        if result.error is not None:
            self.errors += 1
            return
        self.latencies.append(result.latency_ms)
        self.with_context += int(result.has_context)
        self.cloud_state = result.context.cloud_state or self.cloud_state


class ProgressBoard:
    """Live progress as one tqdm bar per stream: frames sent of those planned, with the stream's last and p50 latency,
    context share, cloud state, errors, restarts and late frames. Redrawn every 0.5 s on a TTY, else every 2 s."""

    def __init__(
        self,
        stream_ids: Sequence[int],
        frames_per_stream: int,
        out: TextIO | None,
        interval_s: float | None = None,
    ) -> None:
        self.out = out
        self.frames_per_stream = frames_per_stream
        self.stats = {sid: _StreamStats() for sid in stream_ids}
        self.tty = bool(out is not None and getattr(out, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (0.5 if self.tty else 2.0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bars: dict[int, tqdm] = {}

    def update(self, result: FrameResult) -> None:
        with self._lock:
            self.stats.setdefault(result.stream_id, _StreamStats()).add(result)

    def lines(self) -> list[str]:
        with self._lock:
            return [
                f"stream {sid:>3}: {st.sent:>5}/{self.frames_per_stream} frames  {self._line(st)}"
                for sid, st in self.stats.items()
            ]

    @staticmethod
    def _line(st: _StreamStats) -> str:
        answered = st.sent - st.errors
        last = f"{st.last_latency_ms:.0f}" if st.last_latency_ms is not None else "-"
        p50 = percentile(st.latencies, 50)
        ctx = f"{100 * st.with_context / answered:.0f}%" if answered else "-"
        return (
            f"last {last:>5} ms  p50 {'-' if p50 is None else f'{p50:.0f}':>5} ms  context {ctx:>4}"
            f"  cloud {st.cloud_state:<5}  errors {st.errors}  restarts {st.restarts}  late {st.late}"
        )

    def render(self) -> None:
        if self.out is None:
            return
        with self._lock:
            for sid, st in self.stats.items():
                bar = self._bars.get(sid)
                if bar is None:
                    bar = self._bars[sid] = tqdm(
                        total=self.frames_per_stream,
                        position=len(self._bars),
                        file=self.out,
                        mininterval=0,
                        bar_format=f"stream {sid:>3}: {{n_fmt:>5}}/{{total_fmt}} frames |{{bar:20}}| {{desc}}",
                    )
                bar.n = st.sent
                bar.set_description_str(self._line(st), refresh=False)
                bar.refresh()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.render()

    def start(self) -> None:
        if self.out is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="spotvlm-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the ticker, draws the final state once and closes the bars."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.render()
        with self._lock:
            for bar in self._bars.values():
                bar.close()


# -- summary -----------------------------------------------------------------------------------------------------------


def _summary_row(name: str, results: Sequence[FrameResult]) -> dict[str, Any]:
    answered = [r for r in results if r.error is None]
    latencies = [r.latency_ms for r in answered]
    ages = [float(r.context.context_age_ms) for r in answered if r.has_context and r.context.context_age_ms is not None]
    return {
        "stream": name,
        "frames": len(results),
        "errors": len(results) - len(answered),
        "restarts": sum(r.restarted for r in results),
        "late": sum(r.late for r in results),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        # Of the answered frames: an error reply has no context to count.
        "context_share": sum(r.has_context for r in answered) / len(answered) if answered else None,
        "context_age_p50_ms": percentile(ages, 50),
    }


def summarize(results: Sequence[FrameResult]) -> list[dict[str, Any]]:
    """One row per stream (in stream id order) plus an "all" row.

    Latency percentiles (numpy's linear interpolation) and the context share are over answered frames; the context
    age median is over answered frames that had cloud context.
    """
    by_stream: dict[int, list[FrameResult]] = {}
    for result in results:
        by_stream.setdefault(result.stream_id, []).append(result)
    rows = [_summary_row(str(sid), by_stream[sid]) for sid in sorted(by_stream)]
    rows.append(_summary_row("all", list(results)))
    return rows


_COLUMNS = (
    ("stream", "stream", "{}"),
    ("frames", "frames", "{}"),
    ("errors", "errors", "{}"),
    ("restarts", "restarts", "{}"),
    ("late", "late", "{}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("context_share", "with context", "{:.0%}"),
    ("context_age_p50_ms", "context age p50 ms", "{:.0f}"),
)


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """The summary rows as an aligned text table (text left, numbers right)."""
    header = [title for _, title, _ in _COLUMNS]
    body = [[fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in _COLUMNS] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *body)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def print_summary(rows: Sequence[dict[str, Any]], file: TextIO | None = None) -> None:
    print(format_summary(rows), file=file if file is not None else sys.stdout)
