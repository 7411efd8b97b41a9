"""The cloud `lvlm` model: the large VLM in torch, answering with text and grounded detections.

A request's PROMPT may hold several prompts ([1, n]): every one is asked of the request's image, which is encoded once,
in one batched generation with the rest of the batch; TEXT and DETECTIONS hold one answer per prompt ([1, n]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from python_backends.detections import Detection, detections_to_json, parse_detections, scale_box
from python_backends.device import place_instance, report
from python_backends.errors import InputError
from python_backends.image_processing import decode_image_bytes, validate_image_array
from python_backends.params import get_param, model_parameters
from python_backends.prompts import decode_prompt
from python_backends.serving.request_fields import (
    DEFAULT_MAX_INPUT_PIXELS,
    MAX_PROMPT_CHARS,
    checkpoint_path,
    read_max_tokens,
)
from python_backends.text import clean_text
from python_backends.triton_io import answer_batch, first_item, get_input, output_tensor, response, unbatch

DEFAULT_MAX_PROMPTS = 64
# Prompts in one generation: a dynamic batch of requests with many prompts each is generated in parts of this many,
# so that its memory (every sequence carries the image's tokens) stays bounded however the requests batch.
DEFAULT_MAX_GENERATION_PROMPTS = 64


def read_image(request, max_pixels: int) -> np.ndarray:
    """Exactly one of IMAGE_BYTES (JPEG/PNG) or IMAGE (UINT8 RGB) must be given."""
    encoded = get_input(request, "IMAGE_BYTES", required=False)
    raw = get_input(request, "IMAGE", required=False)
    if encoded is not None and raw is not None:
        raise InputError("give either IMAGE_BYTES or IMAGE, not both")
    if encoded is not None:
        data = first_item(encoded, "IMAGE_BYTES")
        return decode_image_bytes(bytes(data) if not isinstance(data, bytes) else data, max_pixels)
    if raw is not None:
        return validate_image_array(unbatch(raw, "IMAGE"), max_pixels)
    raise InputError("missing image: give IMAGE_BYTES (JPEG/PNG) or IMAGE (UINT8 [H, W, 3])")


def rescale_detections(
    detections: list[Detection], seen: tuple[int, int], original: tuple[int, int]
) -> list[Detection]:
    """Boxes from the model's resized input (h, w) back to the received frame's pixels, clipped to it."""
    height, width = original
    limits = (width, height, width, height)
    result = []
    for d in detections:
        box = tuple(round(min(max(v, 0.0), limit), 1) for v, limit in zip(scale_box(d.bbox, seen, original), limits))
        result.append(Detection(label=d.label, bbox=box))
    return result


def read_prompts(request, max_prompts: int) -> list[str]:
    """PROMPT: one prompt ([1, 1]) or several of the same image ([1, n]), each non-empty."""
    array = get_input(request, "PROMPT")
    if array.ndim > 2 or (array.ndim == 2 and array.shape[0] != 1) or array.size == 0:
        raise InputError(f"PROMPT must be [1, n] prompts of one request, got shape {list(array.shape)}")
    values = array.reshape(-1)
    if values.size > max_prompts:
        raise InputError(f"PROMPT holds {values.size} prompts, over the limit of {max_prompts}")
    if values.size == 1:
        return [decode_prompt(values[0], MAX_PROMPT_CHARS)]
    prompts = []
    for index, value in enumerate(values):
        try:
            prompts.append(decode_prompt(value, MAX_PROMPT_CHARS))
        except InputError as exc:
            raise InputError(f"prompt {index} of {values.size}: {exc}") from exc
    return prompts


@dataclass
class CloudAnswer:
    text: str
    detections: list[Detection]


@dataclass
class ImageQuestions:
    """One request: its image and the generation request of each of its prompts, all sharing that image."""

    image: np.ndarray
    questions: list = field(default_factory=list)  # GenerationRequest per prompt, in PROMPT's order


class LvlmStep:
    def __init__(self, args: dict) -> None:
        from python_backends.generation import QwenVLGenerator

        params = model_parameters(args["model_config"])
        self.max_pixels = get_param(params, "max_input_pixels", DEFAULT_MAX_INPUT_PIXELS, int)
        self.default_max_tokens = get_param(params, "default_max_tokens", 64, int)
        self.max_tokens_limit = get_param(params, "max_tokens_limit", 512, int)
        self.max_prompts = get_param(params, "max_prompts", DEFAULT_MAX_PROMPTS, int)
        if self.max_prompts < 1:
            raise ValueError(f"model parameter max_prompts must be at least 1, got {self.max_prompts}")
        self.max_generation_prompts = get_param(params, "max_generation_prompts", DEFAULT_MAX_GENERATION_PROMPTS, int)
        if self.max_generation_prompts < 1:
            raise ValueError(
                f"model parameter max_generation_prompts must be at least 1, got {self.max_generation_prompts}"
            )
        self.placement = place_instance(args, params.get("dtype", "auto"))
        self.generator = QwenVLGenerator(
            checkpoint_path(params),
            num_threads=get_param(params, "intra_op_threads", 0, int),
            device=self.placement.device.torch_name,
            dtype=self.placement.dtype,
        )
        report(f"{args.get('model_name', 'lvlm')} ready: torch on {self.placement.description}")

    def _parse(self, request) -> ImageQuestions:
        from python_backends.generation import GenerationRequest

        prompts = read_prompts(request, self.max_prompts)
        max_new_tokens = read_max_tokens(request, self.default_max_tokens, self.max_tokens_limit)
        image = read_image(request, self.max_pixels)
        # The same array in every question: the generator encodes it once.
        questions = [GenerationRequest(question=p, max_new_tokens=max_new_tokens, images=[image]) for p in prompts]
        return ImageQuestions(image, questions)

    def _compute(self, batch: list[ImageQuestions]) -> list[list[CloudAnswer]]:
        # Every prompt of every request, in generations of at most max_generation_prompts; the answers go back to
        # their requests in order. A part holds each image once, however many of its prompts it holds.
        questions = [q for item in batch for q in item.questions]
        size = self.max_generation_prompts
        parts = [questions[start : start + size] for start in range(0, len(questions), size)]
        outputs = iter([out for part in parts for out in self.generator.generate_from_images(part)])
        answers = []
        for item in batch:
            seen = self.generator.model_input_size(item.image)
            mine = []
            for _ in item.questions:
                raw = self.generator.decode(next(outputs))
                detections = rescale_detections(parse_detections(raw), seen, item.image.shape[:2])
                mine.append(CloudAnswer(text=clean_text(raw), detections=detections))
            answers.append(mine)
        return answers

    def execute(self, requests: list) -> list:
        return answer_batch(requests, parse=self._parse, compute=self._compute, respond=respond)


def _texts_tensor(name: str, texts: list[str]):
    """A BYTES output of shape [1, n]: one text per prompt of the request."""
    return output_tensor(name, np.array([[text.encode("utf-8") for text in texts]], dtype=np.object_))


def respond(answers: list[CloudAnswer]):
    return response(
        [
            _texts_tensor("TEXT", [a.text for a in answers]),
            _texts_tensor("DETECTIONS", [detections_to_json(a.detections) for a in answers]),
        ]
    )
