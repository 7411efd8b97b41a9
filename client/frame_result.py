"""One frame's outcome in a stream: what `StreamSession.send` returns and what `run_streams` writes per line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from python_backends.context.report import ContextReport


@dataclass
class FrameResult:
    """The outcome of one frame of one stream (one line of the results JSONL).

    `latency_ms` is the client-measured round trip of `send()`, including a restart's second request.
    `late` says the frame went later than its schedule because the previous reply came late.
    `objects` is the source's ground truth for the frame (synthetic scenes), else None.
    """

    stream_id: int
    frame_index: int
    sent_at_ms: int
    latency_ms: float
    text: str = ""
    context: ContextReport = field(default_factory=ContextReport)
    restarted: bool = False
    error: str | None = None
    late: bool = False
    objects: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def has_context(self) -> bool:
        return self.context.has_context

    def to_json(self) -> str:
        data = asdict(self)
        # CONTEXT as the server wrote it; a frame without one (an error) keeps {} as before.
        data["context"] = self.context.to_dict() if self.context != ContextReport() else {}
        return json.dumps(data, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
