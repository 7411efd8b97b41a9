"""Where a model instance runs, tested on CPU: Triton's instance kind/id parsed into a torch device, the precision
chosen from a faked GPU capability, ONNX Runtime's providers chosen from a faked provider list. No CUDA runs here."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from python_backends import vision_runtime
from python_backends.device import (
    CPU,
    DeviceError,
    InstanceDevice,
    choose_dtype,
    instance_device,
    native_dtype,
    place_instance,
    report,
)
from tests.build_helpers import tiny_vision_onnx
from python_backends.vision_runtime import OnnxVisionEncoder, choose_providers, provider_options

GPU0, GPU1 = InstanceDevice("cuda", 0), InstanceDevice("cuda", 1)
ALL_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class FakeCuda:
    """Stands in for CudaQueries: the GPUs a machine would have."""

    def __init__(self, *capabilities: tuple[int, int], available: bool = True) -> None:
        self.capabilities, self._available = list(capabilities), available

    def available(self) -> bool:
        return self._available

    def device_count(self) -> int:
        return len(self.capabilities)

    def capability(self, index: int) -> tuple[int, int]:
        return self.capabilities[index]

    def name(self, index: int) -> str:
        return f"Fake GPU {index}"


@pytest.mark.parametrize(
    "args, expected",
    [
        ({}, CPU),
        ({"model_instance_kind": "CPU", "model_instance_device_id": "0"}, CPU),
        ({"model_instance_kind": "MODEL", "model_instance_device_id": "0"}, CPU),
        ({"model_instance_kind": "GPU", "model_instance_device_id": "0"}, GPU0),
        ({"model_instance_kind": "GPU", "model_instance_device_id": "1"}, GPU1),
        ({"model_instance_kind": "KIND_GPU", "model_instance_device_id": 1}, GPU1),
    ],
)
def test_instance_kind_and_id_become_a_torch_device(args, expected):
    device = instance_device(args)
    assert device == expected
    assert device.torch_name == ("cpu" if expected == CPU else f"cuda:{expected.index}")


@pytest.mark.parametrize("device_id", ["x", "-1", None])
def test_a_bad_gpu_id_is_named(device_id):
    with pytest.raises(DeviceError, match="model_instance_device_id"):
        instance_device({"model_instance_kind": "GPU", "model_instance_device_id": device_id})


@pytest.mark.parametrize(
    "capability, dtype",
    [
        ((9, 0), "bfloat16"),
        ((8, 0), "bfloat16"),
        ((8, 6), "bfloat16"),
        ((7, 5), "float16"),
        ((7, 0), "float16"),
        ((6, 1), "float32"),
    ],
)
def test_a_gpu_runs_the_half_format_its_tensor_cores_compute(capability, dtype):
    assert native_dtype(capability) == dtype
    assert choose_dtype(GPU0, capability) == dtype


def test_cpu_is_always_float32_and_refuses_emulated_half_formats():
    assert choose_dtype(CPU, None) == "float32"
    assert choose_dtype(CPU, None, "float32") == "float32"
    for half in ("bfloat16", "float16"):
        with pytest.raises(DeviceError, match="the CPU would emulate it"):
            choose_dtype(CPU, None, half)


@pytest.mark.parametrize(
    "capability, requested, allowed",
    [((8, 0), "float16", True), ((8, 0), "float32", True), ((7, 5), "bfloat16", False), ((6, 1), "float16", False)],
)
def test_an_asked_dtype_must_be_native_on_the_gpu(capability, requested, allowed):
    if allowed:
        assert choose_dtype(GPU0, capability, requested) == requested
    else:
        with pytest.raises(DeviceError, match=f"dtype {requested} is not native on cuda:0"):
            choose_dtype(GPU0, capability, requested)


def test_an_unknown_dtype_is_refused():
    with pytest.raises(DeviceError, match="dtype must be auto or one of float32, bfloat16, float16"):
        choose_dtype(CPU, None, "int8")


def test_place_instance_describes_the_gpu_it_picked():
    gpu_args = {"model_instance_kind": "GPU", "model_instance_device_id": "1"}
    placement = place_instance(gpu_args, cuda=FakeCuda((7, 5), (9, 0)))
    assert (placement.device, placement.dtype) == (GPU1, "bfloat16")
    assert placement.description == "cuda:1 (Fake GPU 1, compute capability 9.0), bfloat16"
    cpu = place_instance({"model_instance_kind": "CPU"}, cuda=FakeCuda((9, 0)))
    assert (cpu.device, cpu.dtype, cpu.description) == (CPU, "float32", "cpu, float32")


def test_a_gpu_instance_without_cuda_or_past_the_last_gpu_fails_its_load_clearly():
    gpu = {"model_instance_kind": "GPU", "model_instance_device_id": "2"}
    with pytest.raises(DeviceError, match="torch sees no CUDA device.*--device cpu"):
        place_instance(gpu, cuda=FakeCuda(available=False))
    with pytest.raises(DeviceError, match="wants GPU 2 but torch sees 2 GPU"):
        place_instance(gpu, cuda=FakeCuda((8, 0), (8, 0)))


def test_this_cpu_machines_torch_refuses_a_gpu_instance():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="KIND_GPU"):
        place_instance({"model_instance_kind": "GPU", "model_instance_device_id": "0"})


# -- ONNX Runtime providers for the vision tower ---------------------------------------------------------------


@pytest.mark.parametrize(
    "available, device, expected",
    [
        (ALL_PROVIDERS, GPU0, ALL_PROVIDERS),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], GPU0, ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        (["AzureExecutionProvider", "CPUExecutionProvider"], GPU0, ["CPUExecutionProvider"]),
        (ALL_PROVIDERS, CPU, ["CPUExecutionProvider"]),
    ],
)
def test_providers_go_tensorrt_cuda_cpu_on_a_gpu_instance_and_cpu_alone_on_a_cpu_one(available, device, expected):
    assert choose_providers(available, "auto", device) == expected


def test_a_named_provider_comes_first_whatever_the_kind():
    assert choose_providers(ALL_PROVIDERS, "CUDAExecutionProvider", CPU) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(ALL_PROVIDERS, "CPUExecutionProvider", GPU0) == ["CPUExecutionProvider"]


def test_gpu_providers_get_the_instances_gpu_and_tensorrt_an_image_count_profile(tmp_path):
    specs = dict(provider_options(ALL_PROVIDERS, GPU1, (8, 64, 1176), tmp_path))
    assert specs["CUDAExecutionProvider"] == {"device_id": "1"}
    trt = specs["TensorrtExecutionProvider"]
    assert trt["device_id"] == "1" and trt["trt_engine_cache_path"] == str(tmp_path)
    assert (trt["trt_profile_min_shapes"], trt["trt_profile_opt_shapes"], trt["trt_profile_max_shapes"]) == (
        "PIXEL_VALUES:1x64x1176",
        "PIXEL_VALUES:4x64x1176",
        "PIXEL_VALUES:8x64x1176",
    )
    assert specs["CPUExecutionProvider"] == {}


@pytest.fixture
def tiny_onnx(tmp_path):
    path = tmp_path / "1" / "model.onnx"
    path.parent.mkdir()
    return tiny_vision_onnx(path)


def test_the_encoder_reports_the_provider_it_really_runs_on(tiny_onnx, monkeypatch):
    # This onnxruntime has no GPU providers: a GPU instance told they exist still ends on CPU, and says so.
    monkeypatch.setattr(vision_runtime, "available_providers", lambda: list(ALL_PROVIDERS))
    encoder = OnnxVisionEncoder(tiny_onnx, device=GPU0, profile=(2, 4, 6), cache_dir=tiny_onnx.parent / "cache")
    assert encoder.providers == ["CPUExecutionProvider"]
    assert encoder.runs_on == "CPUExecutionProvider; providers CPUExecutionProvider"
    pixels = np.ones((2, 4, 6), dtype=np.float32)
    np.testing.assert_array_equal(encoder.encode(pixels), 2 * pixels)


def test_the_vision_step_reads_its_device_and_profile_and_reports_ready(tiny_onnx, monkeypatch):
    from python_backends.serving import svlm_steps

    messages = []
    fake_pb = SimpleNamespace(Logger=SimpleNamespace(log_info=messages.append))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb)
    made = {}

    class RecordingEncoder(OnnxVisionEncoder):
        def __init__(self, *args, **kwargs):
            made.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(vision_runtime, "OnnxVisionEncoder", RecordingEncoder)
    config = {"max_batch_size": 8, "input": [{"name": "PIXEL_VALUES", "dims": ["4", "6"]}], "parameters": {}}
    args = {
        "model_config": json.dumps(config),
        "model_repository": str(tiny_onnx.parent.parent),
        "model_version": "1",
        "model_name": "svlm_vision",
        "model_instance_kind": "GPU",
        "model_instance_device_id": "1",
    }
    svlm_steps.VisionStep(args)
    assert made["device"] == GPU1 and made["profile"] == (8, 4, 6)
    assert messages == ["svlm_vision ready: ONNX Runtime on CPUExecutionProvider; providers CPUExecutionProvider"]


def test_report_falls_back_to_logging_outside_the_stub(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", SimpleNamespace())
    with caplog.at_level("INFO", logger="spotvlm.device"):
        report("lvlm ready: torch on cpu, float32")
    assert "lvlm ready: torch on cpu, float32" in caplog.text
