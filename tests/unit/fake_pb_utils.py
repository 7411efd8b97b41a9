"""A small stand-in for `triton_python_backend_utils`, for testing model logic without a server (as
TensorRT-LLM's all_models tests do). Only what the package uses is here.

BLS: `InferenceRequest.async_exec()` hands each call to the async handler given to `set_bls_handler`, which answers
with `bls_reply(...)` or `bls_error(...)`; the calls are recorded in the list `set_bls_handler` returns.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Tensor:
    name: str
    array: np.ndarray

    def as_numpy(self) -> np.ndarray:
        return self.array

    def name_(self) -> str:
        return self.name


@dataclass
class TritonError:
    message_: str
    code_: int = 0
    INTERNAL = 13
    INVALID_ARG = 3

    def message(self) -> str:
        return self.message_

    def code(self) -> int:
        return self.code_


@dataclass
class InferenceResponse:
    output_tensors: list = field(default_factory=list)
    error: TritonError | None = None

    def output(self, name: str) -> np.ndarray:
        return next(t.array for t in self.output_tensors if t.name == name)

    def has_error(self) -> bool:
        return self.error is not None


@dataclass
class FakeRequest:
    inputs: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)
    correlation: int | str = 0  # the sequence id; 0 is "none", as in Triton
    sequence_flags: int = 0  # 1 = START, 2 = END

    def parameters(self) -> str:
        return json.dumps(self.params)

    def correlation_id(self) -> int | str:
        return self.correlation

    def flags(self) -> int:
        return self.sequence_flags


def get_input_tensor_by_name(request: FakeRequest, name: str) -> Tensor | None:
    array = request.inputs.get(name)
    return None if array is None else Tensor(name, array)


# -- BLS ------------------------------------------------------------------------------------------------------------


@dataclass
class BlsResponse:
    """What `InferenceRequest.async_exec()` returns; the real one has `error()` as a method."""

    output_tensors: list = field(default_factory=list)
    error_: TritonError | None = None

    def has_error(self) -> bool:
        return self.error_ is not None

    def error(self) -> TritonError | None:
        return self.error_


def get_output_tensor_by_name(response: Any, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors if t.name == name), None)


@dataclass
class BlsCall:
    """One recorded BLS request."""

    model_name: str
    inputs: dict[str, np.ndarray]
    requested_output_names: list[str]
    correlation_id: int | str


BlsHandler = Callable[[BlsCall], Awaitable[BlsResponse]]
_bls: dict[str, Any] = {"handler": None, "calls": []}


def set_bls_handler(handler: BlsHandler) -> list[BlsCall]:
    """Routes every BLS call to `handler` from now on; returns the (fresh) list the calls are recorded in."""
    _bls["handler"], _bls["calls"] = handler, []
    return _bls["calls"]


def bls_reply(**outputs: Any) -> BlsResponse:
    """A successful BLS response; str values become [1, 1] BYTES tensors, others are taken as arrays."""
    tensors = []
    for name, value in outputs.items():
        array = np.array([[value.encode("utf-8")]], dtype=np.object_) if isinstance(value, str) else np.asarray(value)
        tensors.append(Tensor(name, array))
    return BlsResponse(output_tensors=tensors)


def bls_error(message: str, code: int = 13) -> BlsResponse:
    return BlsResponse(error_=TritonError(message, code))


class InferenceRequest:
    def __init__(
        self,
        model_name: str,
        inputs: list[Tensor],
        requested_output_names: list[str],
        correlation_id: int | str = 0,
        **_: Any,
    ) -> None:
        self.call = BlsCall(
            model_name=model_name,
            inputs={t.name: t.array for t in inputs},
            requested_output_names=list(requested_output_names),
            correlation_id=correlation_id,
        )

    async def async_exec(self) -> BlsResponse:
        handler = _bls["handler"]
        if handler is None:
            raise RuntimeError("no BLS handler: call fake_pb_utils.set_bls_handler first")
        _bls["calls"].append(self.call)
        return await handler(self.call)


# -- custom metrics ---------------------------------------------------------------------------------------------------


class Metric:
    """One labelled series; records every call, and `value()` as Triton's would (sum of increments, or last set)."""

    def __init__(self, family: MetricFamily, labels: dict[str, str], buckets: list[float] | None) -> None:
        self.family = family
        self.labels = dict(labels)
        self.buckets = buckets
        self.increments: list[float] = []
        self.sets: list[float] = []
        self.observations: list[float] = []

    def increment(self, value: float) -> None:
        if value < 0:
            raise ValueError("a counter only goes up")
        self.increments.append(value)

    def set(self, value: float) -> None:
        self.sets.append(value)

    def observe(self, value: float) -> None:
        if self.family.kind != MetricFamily.HISTOGRAM:
            raise TypeError("observe() is for histograms")
        self.observations.append(value)

    def value(self) -> float:
        return self.sets[-1] if self.sets else sum(self.increments)


class MetricFamily:
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2

    def __init__(self, name: str, description: str, kind: int) -> None:
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[Metric] = []

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:
        if (buckets is not None) != (self.kind == MetricFamily.HISTOGRAM):
            raise ValueError("buckets are given for histograms and only for them")
        metric = Metric(self, labels or {}, buckets)
        self.metrics.append(metric)
        return metric


def install() -> types.ModuleType:
    """Registers this module as `triton_python_backend_utils` and returns it."""
    module = sys.modules[__name__]
    sys.modules["triton_python_backend_utils"] = module
    return module
