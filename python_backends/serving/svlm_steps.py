"""The four steps of the edge `svlm` ensemble, as plain classes that the model.py shims delegate to.

Each step reads its config parameters once, and answers a batch with `answer_batch`: every request is parsed
alone (a bad one gets INVALID_ARG), the valid ones are computed together.
"""

from __future__ import annotations

import json
import time

import numpy as np

from python_backends.device import instance_device, place_instance, report
from python_backends.image_processing import ImageProcessorSpec, preprocess, validate_image_array
from python_backends.params import get_param, model_parameters
from python_backends.prompts import parse_history
from python_backends.serving.request_fields import (
    DEFAULT_MAX_INPUT_PIXELS,
    checkpoint_path,
    read_max_tokens,
    read_prompt,
    version_dir,
)
from python_backends.text import clean_text
from python_backends.triton_io import (
    answer_batch,
    bytes_tensor,
    first_item,
    get_input,
    output_tensor,
    response,
    unbatch,
)


class PreprocessStep:
    def __init__(self, args: dict) -> None:
        params = model_parameters(args["model_config"])
        self.spec = ImageProcessorSpec.from_checkpoint(
            checkpoint_path(params),
            image_size=get_param(params, "image_size", 112, int),
            max_input_pixels=get_param(params, "max_input_pixels", DEFAULT_MAX_INPUT_PIXELS, int),
        )

    def execute(self, requests: list) -> list:
        return answer_batch(
            requests,
            parse=lambda r: validate_image_array(unbatch(get_input(r, "IMAGE"), "IMAGE"), self.spec.max_input_pixels),
            compute=lambda images: [preprocess(image, self.spec) for image in images],
            respond=lambda rows: response([output_tensor("PIXEL_VALUES", rows[None])]),
        )


def image_count_profile(config: dict) -> tuple[int, int, int] | None:
    """(max images, patches, patch_dim) of svlm_vision's PIXEL_VALUES input, from its model config."""
    dims = next((i.get("dims") for i in config.get("input", []) if i.get("name") == "PIXEL_VALUES"), None)
    if not dims or len(dims) != 2:
        return None
    return max(1, int(config.get("max_batch_size", 1))), int(dims[0]), int(dims[1])


class VisionStep:
    def __init__(self, args: dict) -> None:
        from python_backends.vision_runtime import OnnxVisionEncoder

        config = json.loads(args["model_config"]) if isinstance(args["model_config"], str) else args["model_config"]
        params = model_parameters(config)
        self.encoder = OnnxVisionEncoder(
            version_dir(args) / params.get("onnx_file", "model.onnx"),
            intra_op_threads=get_param(params, "intra_op_threads", 0, int),
            provider=params.get("provider", "auto"),
            device=instance_device(args),
            profile=image_count_profile(config),
        )
        report(f"{args.get('model_name', 'svlm_vision')} ready: ONNX Runtime on {self.encoder.runs_on}")

    def execute(self, requests: list) -> list:
        def compute(batch: list[np.ndarray]) -> list[np.ndarray]:
            features = self.encoder.encode(np.stack(batch))
            return list(features)

        return answer_batch(
            requests,
            parse=lambda r: self.encoder.check(unbatch(get_input(r, "PIXEL_VALUES"), "PIXEL_VALUES")),
            compute=compute,
            respond=lambda features: response([output_tensor("IMAGE_FEATURES", features[None])]),
        )


class GenerateStep:
    def __init__(self, args: dict) -> None:
        from python_backends.generation import QwenVLGenerator

        params = model_parameters(args["model_config"])
        self.default_max_tokens = get_param(params, "default_max_tokens", 32, int)
        self.max_tokens_limit = get_param(params, "max_tokens_limit", 256, int)
        self.placement = place_instance(args, params.get("dtype", "auto"))
        self.generator = QwenVLGenerator(
            checkpoint_path(params),
            num_threads=get_param(params, "intra_op_threads", 0, int),
            device=self.placement.device.torch_name,
            dtype=self.placement.dtype,
            # The token loop: "functional" (python_backends.greedy_decode), or "generate" to compare with transformers.
            decoder=params.get("decoder", "functional"),
        )
        report(
            f"{args.get('model_name', 'svlm_generate')} ready: torch on {self.placement.description}, "
            f"{self.generator.decoder} token loop"
        )

    def _parse(self, request):
        from python_backends.generation import GenerationRequest

        # The frame first, then the focus crop when `svlm_focus` sends one: the prompt gets two images in that order.
        features = [unbatch(get_input(request, "IMAGE_FEATURES"), "IMAGE_FEATURES")]
        focus = get_input(request, "FOCUS_FEATURES", required=False)
        if focus is not None:
            features.append(unbatch(focus, "FOCUS_FEATURES"))
        history = get_input(request, "HISTORY", required=False)
        generation = GenerationRequest(
            question=read_prompt(request),
            max_new_tokens=read_max_tokens(request, self.default_max_tokens, self.max_tokens_limit),
            image_features=features,
            history=parse_history(first_item(history, "HISTORY")) if history is not None else [],
        )
        return self.generator.prepare_features(generation)

    def _generate(self, batch: list) -> list[tuple[list[int], float]]:
        # The batch's wall time is every member's generate time: they ran together.
        started = time.perf_counter()
        tokens = self.generator.generate_from_features(batch)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return [(t, elapsed_ms) for t in tokens]

    def execute(self, requests: list) -> list:
        return answer_batch(
            requests,
            parse=self._parse,
            compute=self._generate,
            respond=lambda result: response(
                [
                    output_tensor("TOKEN_IDS", np.asarray([result[0]], dtype=np.int64)),
                    output_tensor("GENERATE_MS", np.asarray([[result[1]]], dtype=np.float32)),
                ]
            ),
        )


class PostprocessStep:
    def __init__(self, args: dict) -> None:
        # The bare `tokenizers` library decodes exactly as transformers' fast tokenizer does (a unit test checks it),
        # without importing torch: this stub stays at ~40 MB instead of ~330 MB.
        from tokenizers import Tokenizer

        params = model_parameters(args["model_config"])
        self.tokenizer = Tokenizer.from_file(str(checkpoint_path(params) / "tokenizer.json"))

    def execute(self, requests: list) -> list:
        return answer_batch(
            requests,
            parse=lambda r: unbatch(get_input(r, "TOKEN_IDS"), "TOKEN_IDS").tolist(),
            compute=lambda batch: [clean_text(t) for t in self.tokenizer.decode_batch(batch, skip_special_tokens=True)],
            respond=lambda text: response([bytes_tensor("TEXT", text)]),
        )
