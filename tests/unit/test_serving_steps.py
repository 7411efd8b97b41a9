"""The ensemble's steps run in process with a fake pb_utils: the decomposed pipeline must give the model's own answer,
and a bad request in a batch must fail alone."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.unit import fake_pb_utils

pb = fake_pb_utils.install()

from python_backends.detections import Detection
from python_backends.generation import GenerationRequest
from python_backends.image_processing import ImageProcessorSpec, encode_jpeg, preprocess
from python_backends.serving.lvlm_step import LvlmStep, rescale_detections
from python_backends.serving.svlm_steps import GenerateStep, PostprocessStep, PreprocessStep, VisionStep
from python_backends.text import clean_text


def _args(params: dict, version_dir=None) -> dict:
    config = {"parameters": {k: {"string_value": str(v)} for k, v in params.items()}}
    args = {"model_config": json.dumps(config), "model_version": "1", "model_repository": ""}
    if version_dir is not None:
        args["model_repository"] = str(version_dir.parent)
    return args


@pytest.fixture(scope="module")
def steps(tiny_edge_checkpoint, tmp_path_factory):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from engines.vision_onnx import export_vision_onnx

    version_dir = tmp_path_factory.mktemp("svlm_vision") / "1"
    version_dir.mkdir()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_edge_checkpoint).eval()
    export_vision_onnx(model.model.visual, 112, version_dir / "model.onnx")
    common = {"checkpoint": tiny_edge_checkpoint, "image_size": 112}
    return {
        "pre": PreprocessStep(_args({**common, "max_input_pixels": 10**6})),
        "vision": VisionStep(_args({"intra_op_threads": 1}, version_dir)),
        "generate": GenerateStep(_args({**common, "default_max_tokens": 8})),
        "post": PostprocessStep(_args(common)),
    }


def _run_pipeline(steps, requests):
    """Feeds each step's successful outputs to the next, like the ensemble scheduler."""
    pre = steps["pre"].execute(requests)
    ok = [i for i, r in enumerate(pre) if r.error is None]
    vision = steps["vision"].execute([pb.FakeRequest({"PIXEL_VALUES": pre[i].output("PIXEL_VALUES")}) for i in ok])
    gen_requests = [
        pb.FakeRequest(
            {"IMAGE_FEATURES": v.output("IMAGE_FEATURES"), "PROMPT": requests[i].inputs["PROMPT"]}, requests[i].params
        )
        for i, v in zip(ok, vision)
    ]
    generated = steps["generate"].execute(gen_requests)
    post = steps["post"].execute(
        [pb.FakeRequest({"TOKEN_IDS": g.output("TOKEN_IDS")}) for g in generated if g.error is None]
    )
    return pre, vision, generated, post


def _request(image, prompt="What is this?", **params):
    return pb.FakeRequest({"IMAGE": image[None], "PROMPT": np.array([[prompt.encode()]], dtype=object)}, params)


def test_pipeline_matches_the_models_own_generate(steps):
    from skimage import data

    frame = data.astronaut()
    *_, generated, post = _run_pipeline(steps, [_request(frame)])
    tokens = generated[0].output("TOKEN_IDS")[0].tolist()

    generator = steps["generate"].generator
    spec = ImageProcessorSpec(image_size=112)
    prompt = generator.prompt_text(GenerationRequest("What is this?", 8), [spec.num_image_tokens])
    assert generator.decoder == "functional"
    generator.decoder = "generate"  # the reference is transformers' own generate, pixels through the torch tower
    try:
        reference = generator.generate_ids(
            [generator.encode_prompt(prompt)],
            [8],
            pixel_values=torch.from_numpy(preprocess(frame, spec)),
            image_grid_thw=torch.tensor([spec.grid_thw]),
        )[0]
    finally:
        generator.decoder = "functional"
    assert tokens == reference
    assert post[0].output("TEXT")[0, 0].decode() == clean_text(generator.decode(reference))


def test_bad_requests_fail_alone_with_named_problems(steps):
    from skimage import data

    good = data.coffee()
    requests = [
        _request(good),
        _request(np.zeros((0, 0, 3), np.uint8)),
        _request(np.zeros((2000, 1000, 3), np.uint8)),
        _request(good, prompt="   "),
        _request(good, max_tokens=-2),
        _request(good, prompt="Another question"),
    ]
    pre, _, generated, post = _run_pipeline(steps, requests)
    assert "IMAGE is empty" in pre[1].error.message()
    assert "over the limit of 1000000" in pre[2].error.message()
    assert [g.error.message() if g.error else None for g in generated] == [
        None,
        "PROMPT is empty",
        "max_tokens must be >= 1, got -2",
        None,
    ]
    assert all(g.error is None or g.error.code() == pb.TritonError.INVALID_ARG for g in generated)
    assert len(post) == 2 and all(p.error is None for p in post)


def test_generate_step_batch_equals_transformers_generate(steps, tiny_edge_checkpoint):
    """A mixed batch (prompt lengths, max_tokens, a focus image, history) gives the tokens of transformers' generate."""
    from skimage import data

    reference_step = GenerateStep(
        _args({"checkpoint": tiny_edge_checkpoint, "image_size": 112, "default_max_tokens": 8, "decoder": "generate"})
    )
    assert reference_step.generator.decoder == "generate" and steps["generate"].generator.decoder == "functional"
    frames = [data.astronaut(), data.coffee(), data.chelsea()]
    pre = steps["pre"].execute([_request(f) for f in frames])
    vision = steps["vision"].execute([pb.FakeRequest({"PIXEL_VALUES": r.output("PIXEL_VALUES")}) for r in pre])
    features = [v.output("IMAGE_FEATURES") for v in vision]
    history = np.array([[json.dumps([{"question": "What is it?", "answer": "A red car."}]).encode()]], dtype=object)
    rows = [
        ({"IMAGE_FEATURES": features[0]}, "What is this?", 24),
        ({"IMAGE_FEATURES": features[1], "FOCUS_FEATURES": features[2]}, "How many cups are on the table?", 5),
        ({"IMAGE_FEATURES": features[2], "HISTORY": history}, "And now, which way is it facing?", 17),
        ({"IMAGE_FEATURES": features[0], "FOCUS_FEATURES": features[1], "HISTORY": history}, "Color?", 1),
    ]

    def requests():
        return [
            pb.FakeRequest({**inputs, "PROMPT": np.array([[prompt.encode()]], dtype=object)}, {"max_tokens": tokens})
            for inputs, prompt, tokens in rows
        ]

    got = [r.output("TOKEN_IDS")[0].tolist() for r in steps["generate"].execute(requests())]
    expected = [r.output("TOKEN_IDS")[0].tolist() for r in reference_step.execute(requests())]
    assert got == expected
    assert [len(t) <= n for t, (_, _, n) in zip(got, rows)] == [True] * len(rows)


def test_vision_checks_pixel_shape(steps):
    (response,) = steps["vision"].execute([pb.FakeRequest({"PIXEL_VALUES": np.zeros((1, 3, 1176), np.float32)})])
    assert (
        response.error.code() == pb.TritonError.INVALID_ARG
        and "PIXEL_VALUES must be FP32 [64, 1176]" in response.error.message()
    )


@pytest.fixture(scope="module")
def lvlm(tiny_cloud_checkpoint):
    return LvlmStep(_args({"checkpoint": tiny_cloud_checkpoint, "default_max_tokens": 6, "max_input_pixels": 10**6}))


def test_lvlm_answers_bytes_and_raw_images_alike(lvlm):
    from skimage import data

    frame = data.chelsea()
    prompt = np.array([[b"Locate the cat."]], dtype=object)
    png = io.BytesIO()
    Image.fromarray(frame).save(png, format="PNG")
    responses = lvlm.execute(
        [
            pb.FakeRequest({"IMAGE": frame[None], "PROMPT": prompt}),
            pb.FakeRequest({"IMAGE_BYTES": np.array([[png.getvalue()]], dtype=object), "PROMPT": prompt}),
            pb.FakeRequest({"IMAGE_BYTES": np.array([[encode_jpeg(frame)]], dtype=object), "PROMPT": prompt}),
        ]
    )
    assert all(r.error is None for r in responses)
    texts = [r.output("TEXT")[0, 0] for r in responses]
    assert texts[0] == texts[1], "lossless PNG gives the same answer as the raw array"
    for r in responses:
        assert isinstance(json.loads(r.output("DETECTIONS")[0, 0]), list)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({}, "missing image"),
        ({"IMAGE": np.zeros((1, 8, 8, 3), np.uint8), "IMAGE_BYTES": np.array([[b"x"]], dtype=object)}, "not both"),
        ({"IMAGE_BYTES": np.array([[b"GIF89a broken"]], dtype=object)}, "not a decodable"),
    ],
)
def test_lvlm_image_errors(lvlm, inputs, message):
    request = pb.FakeRequest({**inputs, "PROMPT": np.array([[b"q"]], dtype=object)})
    (response,) = lvlm.execute([request])
    assert response.error.code() == pb.TritonError.INVALID_ARG and message in response.error.message()


def test_rescale_detections_maps_model_pixels_to_frame_and_clips():
    detections = [Detection("car", (28.0, 56.0, 112.0, 300.0))]
    (mapped,) = rescale_detections(detections, seen=(224, 112), original=(448, 224))
    assert mapped.bbox == (56.0, 112.0, 224.0, 448.0)


def test_postprocess_decodes_like_transformers(steps, tiny_edge_checkpoint):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tiny_edge_checkpoint)
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, len(reference), size=n).tolist() for n in (0, 1, 7, 40)]
    batch.append([1, 2, 5, 5, 300, 2])  # special tokens among text
    responses = steps["post"].execute([pb.FakeRequest({"TOKEN_IDS": np.array([ids], dtype=np.int64)}) for ids in batch])
    for ids, response in zip(batch, responses):
        expected = clean_text(reference.decode(ids, skip_special_tokens=True))
        assert response.output("TEXT")[0, 0].decode() == expected
