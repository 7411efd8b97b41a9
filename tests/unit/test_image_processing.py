"""The numpy/PIL preprocess must match transformers' own Qwen2-VL image processor exactly."""

import io

import numpy as np
import pytest
from PIL import Image

from python_backends.errors import InputError
from python_backends.image_processing import (
    ImageProcessorSpec,
    decode_image_bytes,
    encode_jpeg,
    preprocess,
    resize_square,
    validate_image_array,
)


def _photo(name):
    from skimage import data

    return getattr(data, name)()


def _hf_processor(size):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=size * size, max_pixels=size * size)


@pytest.mark.parametrize("size", [112, 224])
@pytest.mark.parametrize("name", ["astronaut", "rocket", "coffee", "chelsea"])
def test_matches_transformers_processor_bit_for_bit(name, size):
    image = _photo(name)
    spec = ImageProcessorSpec(image_size=size)
    ours = preprocess(image, spec)
    # transformers resizes square photos to size x size itself; other aspects are squashed to the fixed grid first.
    reference_input = image if image.shape[0] == image.shape[1] else resize_square(image, size)
    reference = _hf_processor(size)(images=reference_input, return_tensors="np")
    assert reference["image_grid_thw"].tolist() == [list(spec.grid_thw)]
    assert ours.shape == reference["pixel_values"].shape == (spec.num_patches, spec.patch_dim)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, reference["pixel_values"])


def test_matches_processor_on_random_frame_of_exact_size():
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    reference = _hf_processor(112)(images=image, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(preprocess(image, ImageProcessorSpec(image_size=112)), reference)


def test_spec_geometry():
    spec = ImageProcessorSpec(image_size=448)
    assert spec.grid_thw == (1, 32, 32)
    assert spec.num_patches == 1024 and spec.num_image_tokens == 256 and spec.patch_dim == 1176


def test_spec_rejects_size_not_multiple_of_patch_merge():
    with pytest.raises(ValueError, match="multiple of patch"):
        ImageProcessorSpec(image_size=100)


def test_spec_reads_checkpoint(tiny_edge_checkpoint):
    spec = ImageProcessorSpec.from_checkpoint(tiny_edge_checkpoint, image_size=112)
    assert spec.patch_size == 14 and spec.merge_size == 2 and spec.temporal_patch_size == 2


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4, 3), np.float32), "must be UINT8"),
        (np.zeros((4, 4), np.uint8), r"shape \[H, W, 3\]"),
        (np.zeros((4, 4, 4), np.uint8), r"shape \[H, W, 3\]"),
        (np.zeros((0, 0, 3), np.uint8), "empty"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((101, 100, 3), np.uint8), "over the limit of 10000"),
        (np.zeros((1, 99, 3), np.uint8), None),
    ],
)
def test_validate_image_array(array, message):
    if message is None:
        assert validate_image_array(array, max_pixels=10_000) is array
    else:
        with pytest.raises(InputError, match=message):
            validate_image_array(array, max_pixels=10_000)


def test_decode_jpeg_and_png_round_trip():
    image = _photo("astronaut")[:64, :80]
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    np.testing.assert_array_equal(decode_image_bytes(png.getvalue(), 10**6), image)
    decoded = decode_image_bytes(encode_jpeg(image, 95), 10**6)
    assert decoded.shape == image.shape and np.abs(decoded.astype(int) - image).mean() < 6


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"definitely not an image", "not a decodable"),
        (None, "not a decodable"),  # replaced by a truncated JPEG below
    ],
)
def test_decode_rejects_bad_bytes(data, message):
    if data is None:
        data = encode_jpeg(_photo("coffee"), 90)[:2000]
    with pytest.raises(InputError, match=message):
        decode_image_bytes(data, 10**8)


def test_decode_checks_pixel_limit_before_decoding():
    with pytest.raises(InputError, match="over the limit"):
        decode_image_bytes(encode_jpeg(_photo("coffee"), 90), max_pixels=1000)


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
@pytest.mark.parametrize("quality", [50, 90])
def test_opencv_decode_gives_pils_pixels(name, quality):
    image = _photo(name)
    for data in (encode_jpeg(image, quality), _pil_jpeg(image, quality)):
        np.testing.assert_array_equal(decode_image_bytes(data, 10**7), _pil_decode(data))


def _pil_jpeg(image, quality, **options):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, **options)
    return buffer.getvalue()


def test_decode_grey_jpeg_and_rgba_png_as_pil_does():
    grey = _pil_jpeg(_photo("camera"), 90)
    decoded = decode_image_bytes(grey, 10**7)
    assert decoded.shape == (512, 512, 3)
    np.testing.assert_array_equal(decoded, _pil_decode(grey))
    rgba = io.BytesIO()
    Image.fromarray(np.dstack([_photo("coffee"), np.full((400, 600), 128, np.uint8)])).save(rgba, format="PNG")
    np.testing.assert_array_equal(decode_image_bytes(rgba.getvalue(), 10**7), _photo("coffee"))


def test_decode_ignores_exif_orientation_like_pil():
    image = _photo("coffee")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": PIL leaves the pixels as stored, and so must the OpenCV path
    data = _pil_jpeg(image, 90, exif=exif.tobytes())
    decoded = decode_image_bytes(data, 10**7)
    assert decoded.shape == image.shape
    np.testing.assert_array_equal(decoded, _pil_decode(data))


def test_jpeg_with_bytes_after_its_end_marker_still_decodes():
    data = encode_jpeg(_photo("coffee"), 90)
    np.testing.assert_array_equal(decode_image_bytes(data + b"trailer", 10**7), _pil_decode(data))


def test_encode_jpeg_is_readable_by_pil_at_the_asked_quality():
    image = _photo("chelsea")
    small, large = encode_jpeg(image, 30), encode_jpeg(image, 95)
    assert len(small) < len(large)
    assert _pil_decode(large).shape == image.shape
    assert np.abs(_pil_decode(large).astype(int) - image).mean() < np.abs(_pil_decode(small).astype(int) - image).mean()
