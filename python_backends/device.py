"""Where a python-backend model instance runs, and in what precision.

Triton hands every instance its group's kind and device in `initialize(args)` (`model_instance_kind` "GPU" or
"CPU", `model_instance_device_id` "0", ...); the config's instance groups are what `build_engines.sh --device`
rendered. A GPU instance runs in bf16 where the GPU computes it natively (compute capability 8.0 and up), in fp16 on
7.x, in fp32 on anything older; a CPU instance always runs in fp32, since the CPU would emulate the half formats.

Pure logic: the torch CUDA queries go through one seam, `CudaQueries`, which the unit tests replace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("spotvlm.device")

DTYPES = ("float32", "bfloat16", "float16")
# Compute capabilities whose tensor cores run each half format natively (bf16 from Ampere, fp16 from Volta).
BF16_MIN_CAPABILITY = (8, 0)
FP16_MIN_CAPABILITY = (7, 0)
# What a GPU may be asked for, by its best native format: fp32 always, fp16 wherever bf16 is native too.
NATIVE_ON = {
    "float32": {"float32"},
    "float16": {"float32", "float16"},
    "bfloat16": {"float32", "float16", "bfloat16"},
}


class DeviceError(RuntimeError):
    """An instance asked for a device or precision this machine cannot give it."""


@dataclass(frozen=True)
class InstanceDevice:
    kind: str  # "cpu" or "cuda"
    index: int = 0

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def torch_name(self) -> str:
        return f"cuda:{self.index}" if self.is_gpu else "cpu"


CPU = InstanceDevice("cpu")


def instance_device(args: Mapping[str, Any]) -> InstanceDevice:
    """The device of a python-backend instance from its `initialize` args; absent kind (unit tests) means CPU."""
    kind = str(args.get("model_instance_kind", "CPU")).upper().removeprefix("KIND_")
    if kind != "GPU":
        return CPU
    raw = args.get("model_instance_device_id", "0")
    try:
        index = int(raw)
    except (TypeError, ValueError):
        raise DeviceError(f"model_instance_device_id must be a GPU number, got {raw!r}") from None
    if index < 0:
        raise DeviceError(f"model_instance_device_id must be >= 0, got {index}")
    return InstanceDevice("cuda", index)


class CudaQueries:
    """The torch.cuda calls the device choice depends on: the one seam the tests fake."""

    def __init__(self) -> None:
        import torch

        self._cuda = torch.cuda

    def available(self) -> bool:
        return bool(self._cuda.is_available())

    def device_count(self) -> int:
        return int(self._cuda.device_count())

    def capability(self, index: int) -> tuple[int, int]:
        major, minor = self._cuda.get_device_capability(index)
        return int(major), int(minor)

    def name(self, index: int) -> str:
        return str(self._cuda.get_device_name(index))


def native_dtype(capability: tuple[int, int]) -> str:
    """The smallest precision a GPU of this compute capability runs natively (never one it emulates)."""
    if capability >= BF16_MIN_CAPABILITY:
        return "bfloat16"
    if capability >= FP16_MIN_CAPABILITY:
        return "float16"
    return "float32"


def choose_dtype(device: InstanceDevice, capability: tuple[int, int] | None, requested: str = "auto") -> str:
    """`requested` ("auto" or one of DTYPES) checked against the device; "auto" picks the native one."""
    if requested != "auto" and requested not in DTYPES:
        raise DeviceError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {requested!r}")
    if not device.is_gpu:
        if requested in ("auto", "float32"):
            return "float32"
        raise DeviceError(f"dtype {requested} on a CPU instance: the CPU would emulate it; use float32 or auto")
    if capability is None:
        raise DeviceError(f"no compute capability known for {device.torch_name}")
    native = native_dtype(capability)
    if requested == "auto":
        return native
    if requested not in NATIVE_ON[native]:
        raise DeviceError(
            f"dtype {requested} is not native on {device.torch_name} (compute capability "
            f"{capability[0]}.{capability[1]}, native: {native})"
        )
    return requested


@dataclass(frozen=True)
class Placement:
    """Where and in what precision an instance's torch model lives."""

    device: InstanceDevice
    dtype: str
    description: str


def place_instance(
    args: Mapping[str, Any], requested_dtype: str = "auto", cuda: CudaQueries | None = None
) -> Placement:
    """The device and dtype for an instance; DeviceError naming the problem when the machine cannot give them."""
    device = instance_device(args)
    if not device.is_gpu:
        dtype = choose_dtype(device, None, requested_dtype)
        return Placement(device, dtype, f"cpu, {dtype}")
    cuda = cuda or CudaQueries()
    if not cuda.available():
        raise DeviceError(
            f"this instance is KIND_GPU (device {device.index}) but torch sees no CUDA device: install a CUDA build "
            "of torch, or render the repository with ./build_engines.sh --device cpu"
        )
    count = cuda.device_count()
    if device.index >= count:
        raise DeviceError(f"this instance wants GPU {device.index} but torch sees {count} GPU(s)")
    capability = cuda.capability(device.index)
    dtype = choose_dtype(device, capability, requested_dtype)
    description = (
        f"{device.torch_name} ({cuda.name(device.index)}, compute capability {capability[0]}.{capability[1]}), {dtype}"
    )
    return Placement(device, dtype, description)


def report(message: str) -> None:
    """Writes `message` to the Triton server log (INFO) from inside the python-backend stub, else to logging."""
    try:
        import triton_python_backend_utils as pb_utils

        logger = pb_utils.Logger
    except (ImportError, AttributeError):
        log.info("%s", message)
        return
    logger.log_info(message)
