"""Batched generation: left padding, features from outside, per-request token limits."""

import numpy as np
import pytest
import torch

from python_backends.errors import InputError
from python_backends.generation import GenerationRequest, QwenVLGenerator, check_max_tokens
from python_backends.image_processing import ImageProcessorSpec, preprocess
from python_backends.prompts import Turn


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
        return (
            generator.model.model.visual(pixels, grid_thw=torch.tensor([spec.grid_thw])).pooler_output.float().numpy()
        )


def _reference_tokens(generator, image, question, max_new_tokens):
    """The model's own path: pixels through the torch tower inside transformers' generate()."""
    spec = ImageProcessorSpec(image_size=112)
    prompt = generator.prompt_text(GenerationRequest(question, max_new_tokens), [spec.num_image_tokens])
    saved, generator.decoder = generator.decoder, "generate"
    try:
        return generator.generate_ids(
            [generator.encode_prompt(prompt)],
            [max_new_tokens],
            pixel_values=torch.from_numpy(preprocess(image, spec)),
            image_grid_thw=torch.tensor([spec.grid_thw]),
        )[0]
    finally:
        generator.decoder = saved


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


# -- the greedy decode loop against transformers' generate ---------------------------------------------------------

LOOPS = ("functional", "modules")


def _mixed_edge_batch(generator, frames):
    """Prompts of different lengths (left padding), different max_tokens, with and without a focus image and history."""
    history = [Turn("What is in the frame?", "A person near a car."), Turn("Which color?", "Red.")]
    shape = [
        ("What color is the car?", 24, 1, []),
        ("How many cups are on the long wooden table today, and who put them there?", 5, 2, history),
        ("Animal?", 17, 2, []),
        ("Describe it.", 1, 1, history[:1]),
        ("Is anyone walking toward the camera right now?", 30, 1, []),
    ]
    requests = []
    for index, (question, tokens, images, turns) in enumerate(shape):
        features = [_features(generator, frames[(index + i) % len(frames)]) for i in range(images)]
        requests.append(GenerationRequest(question, tokens, image_features=features, history=turns))
    return [generator.prepare_features(r) for r in requests]


def _run(generator, decoder, batch, method="generate_from_features"):
    """`method(batch)` with the generator's token loop set to `decoder` for the call."""
    saved = generator.decoder
    generator.decoder = decoder
    try:
        return getattr(generator, method)(batch)
    finally:
        generator.decoder = saved


@pytest.mark.parametrize("loop", LOOPS)
def test_loop_equals_generate_on_a_mixed_edge_batch(generator, frames, loop):
    prepared = _mixed_edge_batch(generator, frames)
    lengths = {len(p.prompt_ids) for p in prepared}
    assert len(lengths) == len(prepared)  # every row padded differently
    expected = _run(generator, "generate", prepared)
    got = _run(generator, loop, prepared)
    assert got == expected
    assert [len(t) <= p.max_new_tokens for t, p in zip(got, prepared)] == [True] * len(prepared)
    # Each row alone (no padding: the unmasked attention path) gives the same tokens.
    for one, tokens in zip(prepared, expected):
        assert _run(generator, loop, [one])[0] == tokens
        assert _run(generator, "generate", [one])[0] == tokens


def test_loop_is_the_default_decoder(generator):
    assert generator.decoder == "functional"


def test_rows_stop_at_their_own_end_token(generator, frames):
    """A token that comes up mid-answer made an end token: rows stop there, others run on, as with generate."""
    prepared = _mixed_edge_batch(generator, frames)
    plain = _run(generator, "generate", prepared)
    stop = plain[0][3]
    config = generator.model.generation_config
    saved_config, saved_ids = config.eos_token_id, set(generator.eos_token_ids)
    config.eos_token_id = sorted(saved_ids | {stop})
    generator.eos_token_ids = saved_ids | {stop}
    try:
        expected = _run(generator, "generate", prepared)
        for loop in LOOPS:
            assert _run(generator, loop, prepared) == expected
    finally:
        config.eos_token_id, generator.eos_token_ids = saved_config, saved_ids
    assert expected[0] == plain[0][:3]
    assert any(len(tokens) > 3 and stop not in tokens for tokens in expected)


def test_loop_applies_the_checkpoints_repetition_penalty(generator, frames):
    """Real Qwen2.5-VL checkpoints ask for a repetition penalty, which greedy generate applies."""
    prepared = _mixed_edge_batch(generator, frames)
    config = generator.model.generation_config
    config.repetition_penalty = 1.5
    try:
        expected = _run(generator, "generate", prepared)
        assert _run(generator, "functional", prepared) == expected
    finally:
        config.repetition_penalty = 1.0
    assert expected != _run(generator, "generate", prepared)


def test_unsupported_generation_settings_fall_back_to_generate(tiny_edge_checkpoint):
    from transformers import GenerationConfig

    from python_backends.greedy_decode import unsupported_generation_settings

    assert unsupported_generation_settings(GenerationConfig(do_sample=False, repetition_penalty=1.05)) == []
    assert unsupported_generation_settings(GenerationConfig(no_repeat_ngram_size=3)) == ["no_repeat_ngram_size=3"]
    with pytest.raises(ValueError, match="decoder must be one of"):
        QwenVLGenerator(tiny_edge_checkpoint, decoder="fast")


def test_loop_equals_generate_in_bfloat16(tiny_edge_checkpoint, frames):
    half = QwenVLGenerator(tiny_edge_checkpoint, dtype="bfloat16")
    prepared = _mixed_edge_batch(half, frames)
    expected = _run(half, "generate", prepared)
    assert half.generate_from_features(prepared) == expected


def test_loop_equals_generate_on_the_cloud_checkpoint(tiny_cloud_checkpoint, frames):
    cloud = QwenVLGenerator(tiny_cloud_checkpoint)
    history = [Turn("What is it?", "A cat on a bed.")]
    requests = [
        GenerationRequest("Locate the cat.", 6, images=[frames[2]]),
        GenerationRequest("How many people are in this picture and what are they holding?", 20, images=[frames[0]]),
        GenerationRequest("Hi", 1, images=[frames[1]], history=history),
        GenerationRequest("Describe the table.", 13, images=[frames[1], frames[2]]),
    ]
    expected = _run(cloud, "generate", requests, "generate_from_images")
    for loop in LOOPS:
        assert _run(cloud, loop, requests, "generate_from_images") == expected
    assert [cloud.generate_from_images([r])[0] for r in requests] == expected


def test_left_padding_matches_the_tokenizers(generator, frames, monkeypatch):
    prepared = _mixed_edge_batch(generator, frames)
    prompt_ids = [p.prompt_ids for p in prepared]
    expected = generator.tokenizer.pad({"input_ids": prompt_ids}, padding=True, return_tensors="pt")
    seen = {}

    def capture(model, input_ids, attention_mask, *args, **kwargs):
        seen["input_ids"], seen["attention_mask"] = input_ids, attention_mask
        return [[] for _ in prompt_ids]

    monkeypatch.setattr("python_backends.greedy_decode.greedy_generate", capture)
    generator.generate_ids(prompt_ids, [1] * len(prompt_ids))
    assert torch.equal(seen["input_ids"], expected.input_ids)
    assert torch.equal(seen["attention_mask"], expected.attention_mask)
