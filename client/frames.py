"""Real photographs that ship inside scikit-image, used as demo and test frames (no download needed)."""

from __future__ import annotations

import numpy as np

SAMPLE_FRAMES = {
    "astronaut": "What is the person wearing?",
    "coffee": "What is on the table?",
    "chelsea": "What animal is this?",
    "rocket": "Locate the rocket.",
}


def sample_frame(name: str) -> np.ndarray:
    """UINT8 RGB [H, W, 3] of one of scikit-image's sample photos."""
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


def load_image_file(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
