"""Qwen2-VL / Qwen2.5-VL image preprocessing in numpy + PIL, for the `svlm_preprocess` Triton step.

The edge vision tower is exported to ONNX for one fixed square input size, so every frame is first resized to
that size. From there the steps are exactly those of transformers' `Qwen2VLImageProcessorPil` (bicubic resize,
rescale in float64 then float32, normalise, patchify with the temporal axis broadcast), which the unit tests
check bit-for-bit. Keeping this in numpy avoids importing transformers (and torch) in the preprocess model.

Speed on the frame's path: JPEG/PNG decoding and JPEG encoding use OpenCV (2-3x faster than PIL, the same pixels
on decode; PIL still reads the header, so the format and pixel checks come before any decoding). The resize stays
PIL's: OpenCV's bicubic has no antialiasing and differs from the processor's. Rescale and normalise are one lookup
per channel (a uint8 has 256 values), applied after patchifying the uint8 pixels: the same float32 numbers as the
arithmetic, for a fraction of its time.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from python_backends.errors import InputError

# OpenAI CLIP statistics: the Qwen2-VL family's defaults.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageProcessorSpec:
    """What the vision tower expects: the fixed input size and the processor's constants."""

    image_size: int = 112
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    max_input_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        factor = self.patch_size * self.merge_size
        if self.image_size <= 0 or self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be a positive multiple of patch*merge = {factor}")

    @property
    def grid_hw(self) -> int:
        """Patches along one side of the (square) input."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_hw * self.grid_hw

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def num_image_tokens(self) -> int:
        """Tokens one image becomes in the language model, after the spatial merge."""
        return self.num_patches // (self.merge_size * self.merge_size)

    @property
    def grid_thw(self) -> tuple[int, int, int]:
        return (1, self.grid_hw, self.grid_hw)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, image_size: int, **overrides) -> ImageProcessorSpec:
        """Reads the constants from a checkpoint's `preprocessor_config.json` (real or tiny)."""
        cfg = json.loads((Path(checkpoint) / "preprocessor_config.json").read_text())
        return cls(
            image_size=image_size,
            patch_size=int(cfg.get("patch_size", 14)),
            temporal_patch_size=int(cfg.get("temporal_patch_size", 2)),
            merge_size=int(cfg.get("merge_size", 2)),
            image_mean=tuple(cfg.get("image_mean", CLIP_MEAN)),
            image_std=tuple(cfg.get("image_std", CLIP_STD)),
            rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
            **overrides,
        )


def validate_image_array(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """Checks an IMAGE tensor (UINT8 [H, W, 3]) and returns it; raises InputError naming the problem."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"IMAGE must be an array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"IMAGE must be UINT8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"IMAGE must have shape [H, W, 3] (RGB), got {list(image.shape)}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise InputError(f"IMAGE is empty: shape {list(image.shape)}")
    if height * width > max_pixels:
        raise InputError(f"IMAGE has {height}x{width} = {height * width} pixels, over the limit of {max_pixels}")
    if max(height, width) / min(height, width) > 200:
        raise InputError(f"IMAGE aspect ratio {height}x{width} is over 200:1")
    return image


def _opencv_decode(data: bytes, image_format: str, mode: str) -> np.ndarray | None:
    """OpenCV's decode where it gives PIL's pixels (8-bit RGB or grey JPEG, 8-bit RGB PNG), else None."""
    if (image_format, mode) not in (("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB")):
        return None
    if image_format == "JPEG" and not data.rstrip(b"\x00")[-2:] == b"\xff\xd9":
        return None  # no end marker: maybe cut short, which OpenCV fills with grey and PIL reports
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_image_bytes(data: bytes, max_pixels: int) -> np.ndarray:
    """Decodes JPEG/PNG bytes to UINT8 RGB [H, W, 3]; raises InputError on anything undecodable."""
    if not data:
        raise InputError("IMAGE_BYTES is empty")
    try:
        # Only the two formats the API promises: every other PIL plugin is attack surface, not a feature.
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(f"IMAGE_BYTES decodes to {height}x{width} pixels, over the limit of {max_pixels}")
            array = _opencv_decode(data, img.format, img.mode)
            if array is None or array.shape[:2] != (height, width):
                img.load()  # forces a full decode, so truncated files fail here and not later
                array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except InputError:
        raise
    except UnidentifiedImageError:
        # PIL's own message names a BytesIO object at some address, which tells the client nothing.
        raise InputError(
            f"IMAGE_BYTES is not a decodable JPEG/PNG image: unrecognised or cut-short header (starts {data[:8]!r})"
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"IMAGE_BYTES is not a decodable JPEG/PNG image: {exc}") from exc
    return validate_image_array(array, max_pixels)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of UINT8 RGB [H, W, 3] (4:2:0 chroma, as PIL writes it)."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {list(image.shape)} image as JPEG")
    return encoded.tobytes()


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of UINT8 RGB to size x size, the resampling Qwen's processor uses."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), resample=Image.Resampling.BICUBIC))


def patchify(image_chw: np.ndarray, spec: ImageProcessorSpec, dtype=np.float32) -> np.ndarray:
    """[C, H, W] -> [num_patches, patch_dim] `dtype` in the Qwen2-VL merge-window order."""
    channels, height, width = image_chw.shape
    p, m, t = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    grid_h, grid_w = height // p, width // p
    patches = image_chw.reshape(channels, grid_h // m, m, p, grid_w // m, m, p)
    patches = patches.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh, gw, mh, mw, C, ph, pw)
    # A still image is its own temporal pair: repeat it along the temporal patch axis.
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, p, p))
    return np.ascontiguousarray(patches.reshape(grid_h * grid_w, channels * t * p * p), dtype=dtype)


def _normalise_table(spec: ImageProcessorSpec) -> np.ndarray:
    """[3, 256] float32: every uint8 value of each channel rescaled (float64 then float32) and normalised (float32),
    the processor's arithmetic done once for all 256 values."""
    values = (np.arange(256, dtype=np.float64) * spec.rescale_factor).astype(np.float32)
    mean = np.asarray(spec.image_mean, dtype=np.float32)[:, None]
    std = np.asarray(spec.image_std, dtype=np.float32)[:, None]
    return (values[None, :] - mean) / std


_TABLES: dict[ImageProcessorSpec, np.ndarray] = {}


def preprocess(image: np.ndarray, spec: ImageProcessorSpec) -> np.ndarray:
    """UINT8 RGB [H, W, 3] of any size -> float32 pixel rows [num_patches, patch_dim] for the vision tower."""
    table = _TABLES.get(spec)
    if table is None:
        table = _TABLES[spec] = _normalise_table(spec)
    resized = resize_square(image, spec.image_size)
    # Patchify the uint8 pixels (a quarter of the bytes to move), then look each one up in its channel's table.
    rows = patchify(resized.transpose(2, 0, 1), spec, dtype=np.uint8)
    channel_offset = np.repeat(np.arange(3, dtype=np.intp) * 256, rows.shape[1] // 3)
    return np.take(table.reshape(-1), rows + channel_offset)
