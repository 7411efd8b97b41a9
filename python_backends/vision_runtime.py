"""The edge vision tower at serving time: the exported ONNX graph in ONNX Runtime.

The graph takes PIXEL_VALUES [N, patches, patch_dim] and returns IMAGE_FEATURES [N, tokens, hidden] for N images
of the fixed export size (see `engines/vision_onnx.py`). On a machine with TensorRT, `build_engines.sh` serves
the same graph as a `tensorrt_plan` model instead, with the same tensor names, and this class is not used.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from python_backends.errors import InputError

log = logging.getLogger("spotvlm.vision")

INPUT_NAME = "PIXEL_VALUES"
OUTPUT_NAME = "IMAGE_FEATURES"


def choose_providers(available: list[str], preferred: str = "auto") -> list[str]:
    """ORT execution providers in order of preference; CPU is always the last resort."""
    if preferred != "auto":
        return [preferred, "CPUExecutionProvider"] if preferred != "CPUExecutionProvider" else [preferred]
    order = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    return [p for p in order if p in available] + ["CPUExecutionProvider"]


class OnnxVisionEncoder:
    def __init__(self, onnx_path: str | Path, intra_op_threads: int = 0, provider: str = "auto") -> None:
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"no vision encoder at {path}; run build_engines.sh")
        options = ort.SessionOptions()
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        providers = choose_providers(ort.get_available_providers(), provider)
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        shape = self.session.get_inputs()[0].shape
        self.num_patches, self.patch_dim = int(shape[1]), int(shape[2])
        log.info("vision encoder %s on %s", path.name, self.session.get_providers())

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
