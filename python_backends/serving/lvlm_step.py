"""The cloud `lvlm` model: the large VLM in torch, answering with text and grounded detections."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from python_backends.detections import Detection, detections_to_json, parse_detections, scale_box
from python_backends.device import place_instance, report
from python_backends.errors import InputError
from python_backends.image_processing import decode_image_bytes, validate_image_array
from python_backends.params import get_param, model_parameters
from python_backends.serving.request_fields import (
    DEFAULT_MAX_INPUT_PIXELS,
    checkpoint_path,
    read_max_tokens,
    read_prompt,
)
from python_backends.text import clean_text
from python_backends.triton_io import answer_batch, bytes_tensor, first_item, get_input, response, unbatch


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


@dataclass
class CloudAnswer:
    text: str
    detections: list[Detection]


class LvlmStep:
    def __init__(self, args: dict) -> None:
        from python_backends.generation import QwenVLGenerator

        params = model_parameters(args["model_config"])
        self.max_pixels = get_param(params, "max_input_pixels", DEFAULT_MAX_INPUT_PIXELS, int)
        self.default_max_tokens = get_param(params, "default_max_tokens", 64, int)
        self.max_tokens_limit = get_param(params, "max_tokens_limit", 512, int)
        self.placement = place_instance(args, params.get("dtype", "auto"))
        self.generator = QwenVLGenerator(
            checkpoint_path(params),
            num_threads=get_param(params, "intra_op_threads", 0, int),
            device=self.placement.device.torch_name,
            dtype=self.placement.dtype,
        )
        report(f"{args.get('model_name', 'lvlm')} ready: torch on {self.placement.description}")

    def _parse(self, request):
        from python_backends.generation import GenerationRequest

        return GenerationRequest(
            question=read_prompt(request),
            max_new_tokens=read_max_tokens(request, self.default_max_tokens, self.max_tokens_limit),
            images=[read_image(request, self.max_pixels)],
        )

    def _compute(self, batch) -> list[CloudAnswer]:
        outputs = self.generator.generate_from_images(batch)
        answers = []
        for request, tokens in zip(batch, outputs, strict=True):
            raw = self.generator.decode(tokens)
            image = request.images[0]
            seen = self.generator.model_input_size(image)
            detections = rescale_detections(parse_detections(raw), seen, image.shape[:2])
            answers.append(CloudAnswer(text=clean_text(raw), detections=detections))
        return answers

    def execute(self, requests: list) -> list:
        return answer_batch(
            requests,
            parse=self._parse,
            compute=self._compute,
            respond=lambda a: response(
                [bytes_tensor("TEXT", a.text), bytes_tensor("DETECTIONS", detections_to_json(a.detections))]
            ),
        )
