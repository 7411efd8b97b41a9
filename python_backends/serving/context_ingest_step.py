"""The `context_ingest` model: checks an LVLM result and hands it to the `spotvlm` instance that owns the stream.

The result travels as a BLS request to `spotvlm` carrying the stream's correlation id, so Triton's sequence batcher
delivers it exactly where that stream's context lives; a stream that is not active is refused by Triton itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from python_backends.errors import InputError
from python_backends.params import get_param, model_parameters
from python_backends.serving.ingest import IngestRecord, make_record
from python_backends.triton_io import bytes_tensor, error_response, first_item, get_input, response

_NOT_STARTED = "must specify the START flag"


def read_record(request) -> IngestRecord:
    size = get_input(request, "FRAME_SIZE")
    return make_record(
        stream_id=int(first_item(get_input(request, "STREAM_ID"), "STREAM_ID")),
        frame_id=int(first_item(get_input(request, "FRAME_ID"), "FRAME_ID")),
        text=first_item(get_input(request, "TEXT"), "TEXT"),
        detections=first_item(get_input(request, "DETECTIONS"), "DETECTIONS"),
        frame_size=np.asarray(size).reshape(-1).tolist(),
    )


class ContextIngestStep:
    def __init__(self, args: dict, pb_utils: Any = None) -> None:
        if pb_utils is None:
            import triton_python_backend_utils as pb_utils
        self._pb = pb_utils
        params = model_parameters(args["model_config"])
        self.target = get_param(params, "target_model", "spotvlm")

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
                pending.append((index, read_record(request)))
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
