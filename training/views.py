"""How each default model sees a frame: the resize its serving path applies, then Qwen2-VL's patchify.

- edge: every frame resized to a fixed square (the ONNX vision tower's input, python_backends.image_processing).
- cloud: the checkpoint's image processor, which keeps the aspect ratio (smart_resize to about size x size pixels).
Boxes a model emits are in the pixels of the resized image, as with Qwen2.5-VL; `seen_size` gives that frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from python_backends.image_processing import CLIP_MEAN, CLIP_STD, ImageProcessorSpec, patchify

PATCH, MERGE = 14, 2


@dataclass(frozen=True)
class ModelView:
    size: int  # side of the square (edge), or sqrt of the pixel budget (cloud)
    keep_aspect: bool  # False: square resize (edge); True: the image processor's smart_resize (cloud)

    def seen_size(self, height: int, width: int) -> tuple[int, int]:
        if not self.keep_aspect:
            return self.size, self.size
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        pixels = self.size * self.size
        return smart_resize(height, width, factor=PATCH * MERGE, min_pixels=pixels, max_pixels=pixels)

    def resize(self, image: np.ndarray) -> np.ndarray:
        """UINT8 RGB -> the UINT8 image the model's vision tower sees (bicubic, as Qwen's processor)."""
        height, width = self.seen_size(*image.shape[:2])
        if image.shape[:2] == (height, width):
            return image
        return np.asarray(Image.fromarray(image).resize((width, height), resample=Image.Resampling.BICUBIC))


def pixel_rows(resized: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A resized UINT8 image -> (float32 patch rows, grid_thw), with the processor's rescale and normalisation."""
    chw = resized.transpose(2, 0, 1)
    scaled = (chw.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(CLIP_STD, dtype=np.float32)[:, None, None]
    spec = ImageProcessorSpec(image_size=PATCH * MERGE)  # only the patch constants are used by patchify
    rows = patchify((scaled - mean) / std, spec)
    return rows, image_grid(resized)


def image_grid(resized: np.ndarray) -> tuple[int, int, int]:
    """grid_thw of a resized image: one frame, its patch rows and columns."""
    return 1, resized.shape[0] // PATCH, resized.shape[1] // PATCH


def image_tokens(grid_thw: tuple[int, int, int]) -> int:
    t, h, w = grid_thw
    return t * h * w // (MERGE * MERGE)


def merged_cell(box, seen_size: tuple[int, int]) -> int:
    """The merged cell (row-major over the tower's output tokens) that holds the centre of `box`, a box in the
    pixels of the image the tower sees, of `seen_size` (height, width)."""
    cell = PATCH * MERGE
    rows, columns = seen_size[0] // cell, seen_size[1] // cell
    x1, y1, x2, y2 = box
    row = min(rows - 1, int((y1 + y2) / 2 // cell))
    column = min(columns - 1, int((x1 + x2) / 2 // cell))
    return row * columns + column
