"""Glue between python-backend models and the package: reading tensors and answering every request exactly once.

The one rule of a Triton python model that serves batches: each request gets exactly one response, and a bad
request is answered with INVALID_ARG without failing its neighbours. `answer_batch` is that rule, written once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from python_backends.errors import InputError

log = logging.getLogger("spotvlm.triton_io")

P = TypeVar("P")
R = TypeVar("R")


def _pb():
    # Imported lazily: the module only exists inside the python-backend stub (tests put a fake in sys.modules).
    import triton_python_backend_utils as pb_utils

    return pb_utils


def error_response(message: str, invalid_arg: bool = True):
    pb = _pb()
    code = pb.TritonError.INVALID_ARG if invalid_arg else pb.TritonError.INTERNAL
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, code))


def get_input(request, name: str, required: bool = True) -> np.ndarray | None:
    tensor = _pb().get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise InputError(f"missing input tensor {name}")
        return None
    return tensor.as_numpy()


def first_item(array: np.ndarray, name: str) -> Any:
    """The single value of a [1] or [1, 1] tensor (batch dim included)."""
    if array.size != 1:
        raise InputError(f"{name} must hold exactly one value, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def unbatch(array: np.ndarray, name: str) -> np.ndarray:
    """Drops the leading batch dim of 1 that Triton adds for a single request in a batching model."""
    if array.ndim == 0 or array.shape[0] != 1:
        raise InputError(f"{name} must have a batch dimension of 1, got shape {list(array.shape)}")
    return array[0]


def request_parameters(request) -> dict[str, Any]:
    raw = request.parameters()
    if not raw:
        return {}
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


def int_parameter(params: dict[str, Any], key: str, default: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"request parameter {key} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError as exc:
        raise InputError(f"request parameter {key} must be an integer, got {value!r}") from exc


def bool_parameter(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
        return value.strip().lower() in {"true", "1", "yes", "on"}
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise InputError(f"request parameter {key} must be a boolean, got {value!r}")


def answer_batch(
    requests: Sequence[Any],
    parse: Callable[[Any], P],
    compute: Callable[[list[P]], list[R]],
    respond: Callable[[R], Any],
) -> list[Any]:
    """Parses each request alone, computes the valid ones as one batch, and answers all of them in order.

    If the batched compute fails, each request is retried alone, so a request that breaks the model fails by
    itself rather than taking the batch with it.
    """
    responses: list[Any] = [None] * len(requests)
    parsed: list[tuple[int, P]] = []
    for index, request in enumerate(requests):
        try:
            parsed.append((index, parse(request)))
        except InputError as exc:
            responses[index] = error_response(str(exc))
        except Exception as exc:  # a parse bug must not drop the other requests
            log.exception("parsing request %d failed", index)
            responses[index] = error_response(f"internal error reading the request: {exc}", invalid_arg=False)

    if parsed:
        try:
            results = compute([item for _, item in parsed])
            for (index, _), result in zip(parsed, results, strict=True):
                responses[index] = respond(result)
        except Exception as exc:
            if len(parsed) == 1:
                responses[parsed[0][0]] = _failure_response(exc)
            else:
                for index, item in parsed:
                    responses[index] = _compute_alone(item, compute, respond)

    assert all(r is not None for r in responses), "every request must get exactly one response"
    return responses


def _failure_response(exc: Exception):
    if isinstance(exc, InputError):
        return error_response(str(exc))
    log.error("request failed", exc_info=exc)
    return error_response(f"internal error: {exc}", invalid_arg=False)


def _compute_alone(item, compute, respond):
    try:
        return respond(compute([item])[0])
    except Exception as exc:
        return _failure_response(exc)


def response(tensors: list):
    return _pb().InferenceResponse(output_tensors=tensors)


def output_tensor(name: str, array: np.ndarray):
    return _pb().Tensor(name, array)


def bytes_tensor(name: str, text: str) -> Any:
    """A BYTES output of shape [1, 1] (batch of one) holding UTF-8 text."""
    return _pb().Tensor(name, np.array([[text.encode("utf-8")]], dtype=np.object_))
