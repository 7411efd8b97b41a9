"""A small stand-in for `triton_python_backend_utils`, for testing model logic without a server (as
TensorRT-LLM's all_models tests do). Only what the package uses is here."""

from __future__ import annotations

import json
import sys
import types
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

    def parameters(self) -> str:
        return json.dumps(self.params)


def get_input_tensor_by_name(request: FakeRequest, name: str) -> Tensor | None:
    array = request.inputs.get(name)
    return None if array is None else Tensor(name, array)


def install() -> types.ModuleType:
    """Registers this module as `triton_python_backend_utils` and returns it."""
    module = sys.modules[__name__]
    sys.modules["triton_python_backend_utils"] = module
    return module
