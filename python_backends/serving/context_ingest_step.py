"""The `context_ingest` model: checks an LVLM result and hands it to the `spotvlm` instance that owns the stream.

The result travels as a BLS request to `spotvlm` carrying the stream's correlation id, so Triton's sequence batcher
delivers it exactly where that stream's context lives; a stream that is not active is refused by Triton itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from python_backends.errors import InputError
from python_backends.params import get_param, model_parameters
from python_backends.serving.ingest import (
    DEFAULT_FUTURE_TOLERANCE_MS,
    IngestRecord,
    check_frame_timestamp,
    make_record,
)
from python_backends.triton_io import bytes_tensor, error_response, first_item, get_input, response

_NOT_STARTED = "must specify the START flag"


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


def read_record(
    request,
    now_ms: int | None = None,
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
) -> IngestRecord:
    """One result's tensors, checked. FRAME_TIMESTAMP_MS (optional) is when the answered frame was taken, on the
    edge's clock; without it `spotvlm` dates the result by the frame's own turn, or else by its arrival."""
    size = get_input(request, "FRAME_SIZE")
    timestamp = get_input(request, "FRAME_TIMESTAMP_MS", required=False)
    if timestamp is not None:
        timestamp = check_frame_timestamp(
            first_item(timestamp, "FRAME_TIMESTAMP_MS"),
            _wall_clock_ms() if now_ms is None else now_ms,
            future_tolerance_ms,
        )
    return make_record(
        stream_id=int(first_item(get_input(request, "STREAM_ID"), "STREAM_ID")),
        frame_id=int(first_item(get_input(request, "FRAME_ID"), "FRAME_ID")),
        text=first_item(get_input(request, "TEXT"), "TEXT"),
        detections=first_item(get_input(request, "DETECTIONS"), "DETECTIONS"),
        frame_size=np.asarray(size).reshape(-1).tolist(),
        frame_timestamp_ms=timestamp,
    )


class ContextIngestStep:
    def __init__(self, args: dict, pb_utils: Any = None, clock_ms: Callable[[], int] = _wall_clock_ms) -> None:
        if pb_utils is None:
            import triton_python_backend_utils as pb_utils
        self._pb = pb_utils
        self._clock_ms = clock_ms
        params = model_parameters(args["model_config"])
        self.target = get_param(params, "target_model", "spotvlm")
        # How far ahead of this server's clock FRAME_TIMESTAMP_MS may be (the pusher's clock may run a little ahead).
        self.future_tolerance_ms = int(get_param(params, "future_tolerance_ms", DEFAULT_FUTURE_TOLERANCE_MS))
        if self.future_tolerance_ms < 0:
            raise ValueError(f"future_tolerance_ms must be >= 0, got {self.future_tolerance_ms}")

    async def _forward(self, record: IngestRecord):
        pb = self._pb
        request = pb.InferenceRequest(
            model_name=self.target,
            inputs=[pb.Tensor("INGEST", np.array([[record.to_json().encode("utf-8")]], dtype=np.object_))],
            requested_output_names=["CONTEXT"],
            correlation_id=record.stream_id,
        )
        reply = await request.async_exec()
        if reply.has_error():
            message = reply.error().message()
            if _NOT_STARTED in message:
                return error_response(f"stream {record.stream_id} is not active on the edge (never started or ended)")
            return error_response(f"{self.target}: {message}")
        status = pb.get_output_tensor_by_name(reply, "CONTEXT").as_numpy().reshape(-1)[0]
        status = status.decode("utf-8") if isinstance(status, bytes) else str(status)
        return response([bytes_tensor("STATUS", status)])

    async def execute(self, requests: list) -> list:
        responses: list[Any] = [None] * len(requests)
        pending = []
        for index, request in enumerate(requests):
            try:
                pending.append((index, read_record(request, self._clock_ms(), self.future_tolerance_ms)))
            except InputError as exc:
                responses[index] = error_response(str(exc))
            except Exception as exc:  # one broken request must not fail its neighbours
                responses[index] = error_response(f"internal error reading the request: {exc}", invalid_arg=False)
        outcomes = await asyncio.gather(*(self._forward(r) for _, r in pending), return_exceptions=True)
        for (index, _), outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                outcome = error_response(f"internal error: {outcome}", invalid_arg=False)
            responses[index] = outcome
        return responses
