"""Batched generation: left padding, features from outside, per-request token limits."""

import numpy as np
import pytest
import torch

from python_backends.errors import InputError
from python_backends.generation import GenerationRequest, QwenVLGenerator, check_max_tokens
from python_backends.image_processing import ImageProcessorSpec, preprocess


@pytest.fixture(scope="module")
def generator(tiny_edge_checkpoint):
    return QwenVLGenerator(tiny_edge_checkpoint)


@pytest.fixture(scope="module")
def frames():
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea()]


def _features(generator, image):
    spec = ImageProcessorSpec(image_size=112)
    pixels = torch.from_numpy(preprocess(image, spec))
    with torch.no_grad():
        return generator.model.model.visual(pixels, grid_thw=torch.tensor([spec.grid_thw])).pooler_output.numpy()


def _reference_tokens(generator, image, question, max_new_tokens):
    """The model's own path: pixels through the torch tower inside generate()."""
    spec = ImageProcessorSpec(image_size=112)
    prompt = generator.prompt_text(GenerationRequest(question, max_new_tokens), [spec.num_image_tokens])
    return generator.generate_ids(
        [generator.encode_prompt(prompt)],
        [max_new_tokens],
        pixel_values=torch.from_numpy(preprocess(image, spec)),
        image_grid_thw=torch.tensor([spec.grid_thw]),
    )[0]


def test_features_path_equals_pixel_path_and_batch_equals_single(generator, frames):
    questions = ["What color is the car?", "How many cups are on the long wooden table today?", "Animal?"]
    requests = [GenerationRequest(q, 10, image_features=[_features(generator, f)]) for q, f in zip(questions, frames)]
    batched = generator.generate_from_features([generator.prepare_features(r) for r in requests])
    for request, tokens, frame in zip(requests, batched, frames):
        single = generator.generate_from_features([generator.prepare_features(request)])[0]
        assert tokens == single
        assert tokens == _reference_tokens(generator, frame, request.question, 10)
        assert 0 < len(tokens) <= 10


def test_per_request_max_tokens_in_one_batch(generator, frames):
    features = _features(generator, frames[0])
    long, short = generator.generate_from_features(
        [generator.prepare_features(GenerationRequest("Describe.", n, image_features=[features])) for n in (12, 3)]
    )
    assert len(short) <= 3 and long[: len(short)] == short


def test_greedy_is_deterministic(generator, frames):
    request = GenerationRequest("What is this?", 8, image_features=[_features(generator, frames[1])])
    first = generator.generate_from_features([generator.prepare_features(request)])
    assert generator.generate_from_features([generator.prepare_features(request)]) == first


@pytest.mark.parametrize(
    "features, message",
    [
        (np.zeros((16, 7), np.float32), r"must be \[tokens, 64\]"),
        (np.zeros((15, 64), np.float32), "not a square grid"),
        (np.zeros((16,), np.float32), r"must be \[tokens, 64\]"),
    ],
)
def test_bad_features_are_input_errors(generator, features, message):
    with pytest.raises(InputError, match=message):
        generator.prepare_features(GenerationRequest("q", 4, image_features=[features]))


def test_prompt_token_limit(tiny_edge_checkpoint):
    small = QwenVLGenerator(tiny_edge_checkpoint, max_prompt_tokens=40)
    with pytest.raises(InputError, match="over the limit of 40"):
        small.prepare_features(GenerationRequest("word " * 50, 4, image_features=[np.zeros((16, 64), np.float32)]))


@pytest.mark.parametrize("value, ok", [(1, True), (512, True), (0, False), (-3, False), (513, False)])
def test_check_max_tokens(value, ok):
    if ok:
        assert check_max_tokens(value, 512) == value
    else:
        with pytest.raises(InputError, match="max_tokens"):
            check_max_tokens(value, 512)


def test_cloud_path_generates_from_images(tiny_cloud_checkpoint, frames):
    cloud = QwenVLGenerator(tiny_cloud_checkpoint)
    requests = [
        GenerationRequest("Locate the cat.", 6, images=[frames[2]]),
        GenerationRequest("Hi", 4, images=[frames[0]]),
    ]
    batched = cloud.generate_from_images(requests)
    assert [cloud.generate_from_images([r])[0] for r in requests] == batched
    # The cloud keeps the aspect ratio (Qwen's smart resize) within its pixel budget.
    height, width = cloud.model_input_size(frames[2])
    assert height % 28 == 0 and width % 28 == 0 and height * width <= 224 * 224
    assert abs(width / height - 451 / 300) < 0.1
