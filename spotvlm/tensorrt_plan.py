"""TensorRT for the edge vision tower: the ONNX graph built into a plan with a profile over the image count, and the
plan checked against ONNX Runtime's features before `build_engines.sh` serves it. Where neither `trtexec` nor the
`tensorrt` module exists, none of this runs and svlm_vision stays on ONNX Runtime.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

TENSORRT_TOLERANCE = 1e-3  # max |TensorRT - ONNX Runtime| on the check images; TF32 is off so fp32 stays fp32


class PlanError(RuntimeError):
    pass


def tensorrt_available() -> str | None:
    """'trtexec', 'python' or None: how a TensorRT engine could be built here."""
    if shutil.which("trtexec"):
        return "trtexec"
    try:
        import tensorrt  # noqa: F401
    except Exception:  # any import failure means no usable TensorRT
        return None
    return "python"


def build_tensorrt_plan(onnx_path: Path, plan_path: Path, shape: tuple[int, int], max_batch: int, how: str) -> None:
    """ONNX -> serialized engine with a dynamic image count (1..max_batch)."""
    name = "PIXEL_VALUES"
    patches, dim = shape
    if how == "trtexec":
        command = [
            "trtexec",
            f"--onnx={onnx_path}",
            f"--saveEngine={plan_path}",
            f"--minShapes={name}:1x{patches}x{dim}",
            f"--optShapes={name}:{max(1, max_batch // 2)}x{patches}x{dim}",
            f"--maxShapes={name}:{max_batch}x{patches}x{dim}",
            "--noTF32",
        ]
        print(f"      {' '.join(command)}", flush=True)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise PlanError(f"trtexec failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PlanError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)  # fp32 as ONNX Runtime computes it, so the features check holds
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (1, patches, dim), (max(1, max_batch // 2), patches, dim), (max_batch, patches, dim))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise PlanError("TensorRT failed to build the engine")
    plan_path.write_bytes(bytes(engine))


def plan_check_inputs(shape: tuple[int, int], n_images: int = 2, seed: int = 0) -> np.ndarray:
    """Random PIXEL_VALUES rows [n_images, patches, patch_dim] on which the plan must match ONNX Runtime."""
    patches, dim = shape
    return np.random.default_rng(seed).standard_normal((n_images, patches, dim)).astype(np.float32)


def onnx_runtime_features(onnx_path: Path, pixel_values: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["IMAGE_FEATURES"], {"PIXEL_VALUES": pixel_values})[0]


def read_trtexec_output(path: Path, name: str) -> np.ndarray:
    """One tensor of `trtexec --exportOutput` JSON: [{"name", "dimensions": "2x16x64", "values": [...]}, ...]."""
    for entry in json.loads(path.read_text()):
        if entry.get("name") == name:
            dims = [int(d) for d in str(entry["dimensions"]).split("x")]
            return np.asarray(entry["values"], dtype=np.float32).reshape(dims)
    raise PlanError(f"trtexec wrote no {name} to {path}")


def tensorrt_features(plan_path: Path, pixel_values: np.ndarray, how: str, work_dir: Path) -> np.ndarray:
    """Runs the plan on `pixel_values`: trtexec with loaded inputs and exported outputs, or the tensorrt module with
    torch's CUDA buffers."""
    name = "PIXEL_VALUES"
    if how == "trtexec":
        inputs, outputs = work_dir / "plan_check_inputs.bin", work_dir / "plan_check_outputs.json"
        np.ascontiguousarray(pixel_values).tofile(inputs)
        shape = "x".join(str(d) for d in pixel_values.shape)
        command = [
            "trtexec",
            f"--loadEngine={plan_path}",
            f"--shapes={name}:{shape}",
            f"--loadInputs={name}:{inputs}",
            f"--exportOutput={outputs}",
            "--iterations=1",
            "--warmUp=0",
            "--duration=0",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise PlanError(f"trtexec could not run {plan_path} ({result.returncode}):\n{result.stdout[-3000:]}")
        return read_trtexec_output(outputs, "IMAGE_FEATURES")
    import tensorrt as trt
    import torch

    if not torch.cuda.is_available():
        raise PlanError("checking the TensorRT plan with the tensorrt module needs a CUDA build of torch")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    source = torch.from_numpy(np.ascontiguousarray(pixel_values)).cuda()
    context.set_input_shape(name, tuple(source.shape))
    result = torch.empty(tuple(context.get_tensor_shape("IMAGE_FEATURES")), dtype=torch.float32, device="cuda")
    context.set_tensor_address(name, source.data_ptr())
    context.set_tensor_address("IMAGE_FEATURES", result.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise PlanError("TensorRT could not run the plan")
    stream.synchronize()
    return result.cpu().numpy()


def check_tensorrt_plan(onnx_path: Path, plan_path: Path, shape: tuple[int, int], how: str, work_dir: Path) -> float:
    """Max |TensorRT - ONNX Runtime| on two random images; PlanError (and no plan left) over the tolerance."""
    pixel_values = plan_check_inputs(shape)
    expected = onnx_runtime_features(onnx_path, pixel_values)
    got = tensorrt_features(plan_path, pixel_values, how, work_dir)
    if got.shape != expected.shape:
        plan_path.unlink(missing_ok=True)
        raise PlanError(
            f"the TensorRT plan gives IMAGE_FEATURES {list(got.shape)}, ONNX Runtime {list(expected.shape)}"
        )
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
    if not diff <= TENSORRT_TOLERANCE:
        plan_path.unlink(missing_ok=True)
        raise PlanError(
            f"the TensorRT plan differs from ONNX Runtime by {diff:.2e} > {TENSORRT_TOLERANCE:.0e}; "
            "build with --no-tensorrt to serve the ONNX graph"
        )
    return diff


def launcher_tensorrt_note() -> str | None:
    """Why the server `spotvlm serve` starts cannot load a tensorrt_plan model, or None when it can."""
    from client.launcher import TritonNotFoundError, locate_tritonserver

    try:
        install = locate_tritonserver()
    except TritonNotFoundError:
        return "no tritonserver found here to serve it: use NVIDIA's Triton container (docs/gpu.md)"
    backends = install.binary.parent.parent / "backends"
    if (backends / "tensorrt").is_dir():
        return None
    where = "nvidia-pytriton's tritonserver" if install.from_wheel else f"the tritonserver at {install.binary}"
    return (
        f"{where}, the one `spotvlm serve` starts, has no tensorrt backend ({backends} holds only "
        f"{', '.join(sorted(p.name for p in backends.glob('*'))) or 'nothing'}): it cannot load this plan. "
        "Serve the repository in NVIDIA's Triton container (docs/gpu.md), or build with --no-tensorrt"
    )
