"""The edge vision tower at serving time: the exported ONNX graph in ONNX Runtime.

The graph takes PIXEL_VALUES [N, patches, patch_dim] and returns IMAGE_FEATURES [N, tokens, hidden] for N images
of the fixed export size (see `engines/vision_onnx.py`). On a machine with TensorRT, `build_engines.sh` serves
the same graph as a `tensorrt_plan` model instead, with the same tensor names, and this class is not used.

Execution provider: a KIND_GPU instance takes TensorRT, then CUDA, then CPU, among those this onnxruntime offers
(`onnxruntime-gpu` offers the first two; the plain `onnxruntime` wheel only CPU); a KIND_CPU instance stays on CPU.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from python_backends.device import CPU, InstanceDevice
from python_backends.errors import InputError

log = logging.getLogger("spotvlm.vision")

INPUT_NAME = "PIXEL_VALUES"
OUTPUT_NAME = "IMAGE_FEATURES"
CPU_PROVIDER = "CPUExecutionProvider"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

ProviderSpec = tuple[str, dict[str, str]]


def available_providers() -> list[str]:
    """What the installed onnxruntime offers: the one seam the provider tests fake."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_providers(available: list[str], preferred: str = "auto", device: InstanceDevice = CPU) -> list[str]:
    """ORT execution providers in order of preference; CPU is always the last resort.

    "auto": TensorRT, CUDA, CPU for a GPU instance (those `available`), CPU alone for a CPU instance. A named
    provider (the model's `provider` parameter) comes first whatever the instance kind.
    """
    if preferred != "auto":
        return [preferred, CPU_PROVIDER] if preferred != CPU_PROVIDER else [preferred]
    if not device.is_gpu:
        return [CPU_PROVIDER]
    return [p for p in GPU_PROVIDERS if p in available] + [CPU_PROVIDER]


def provider_options(
    providers: list[str], device: InstanceDevice, profile: tuple[int, int, int] | None, cache_dir: Path
) -> list[ProviderSpec]:
    """Each provider with its options: the instance's GPU, and for TensorRT an engine cache and a profile over the
    image count (1..max batch) so a new batch size does not rebuild the engine."""
    specs: list[ProviderSpec] = []
    for name in providers:
        options: dict[str, str] = {}
        if name in GPU_PROVIDERS:
            options["device_id"] = str(device.index)
        if name == "TensorrtExecutionProvider":
            options["trt_engine_cache_enable"] = "True"
            options["trt_engine_cache_path"] = str(cache_dir)
            if profile is not None:
                images, patches, dim = profile
                shape = f"{INPUT_NAME}:{{}}x{patches}x{dim}"
                options["trt_profile_min_shapes"] = shape.format(1)
                options["trt_profile_opt_shapes"] = shape.format(max(1, images // 2))
                options["trt_profile_max_shapes"] = shape.format(images)
        specs.append((name, options))
    return specs


class OnnxVisionEncoder:
    def __init__(
        self,
        onnx_path: str | Path,
        intra_op_threads: int = 0,
        provider: str = "auto",
        device: InstanceDevice = CPU,
        profile: tuple[int, int, int] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        """`profile` (max images, patches, patch_dim), from the model config, shapes TensorRT's engine."""
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"no vision encoder at {path}; run build_engines.sh")
        options = ort.SessionOptions()
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        wanted = choose_providers(available_providers(), provider, device)
        cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "spotvlm_ort_tensorrt_cache"
        specs = provider_options(wanted, device, profile, cache)
        self.session = ort.InferenceSession(
            str(path),
            sess_options=options,
            providers=[name for name, _ in specs],
            provider_options=[opts for _, opts in specs],
        )
        shape = self.session.get_inputs()[0].shape
        self.num_patches, self.patch_dim = int(shape[1]), int(shape[2])
        self.providers = list(self.session.get_providers())
        where = f" (GPU {device.index})" if self.providers[0] in GPU_PROVIDERS else ""
        self.runs_on = f"{self.providers[0]}{where}; providers {', '.join(self.providers)}"
        log.info("vision encoder %s on %s", path.name, self.runs_on)

    def check(self, pixel_values: np.ndarray) -> np.ndarray:
        expected = (self.num_patches, self.patch_dim)
        if pixel_values.dtype != np.float32 or pixel_values.shape != expected:
            raise InputError(
                f"PIXEL_VALUES must be FP32 {list(expected)}, got {pixel_values.dtype} {list(pixel_values.shape)}"
            )
        return pixel_values

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """[N, patches, patch_dim] -> [N, tokens, hidden]."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixel_values)})[0]
