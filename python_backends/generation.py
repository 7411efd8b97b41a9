"""Qwen2.5-VL generation with transformers, batched across requests.

Two entry points share one left-padded batching path:
- `generate_from_features`: the edge. The image features come from the ONNX vision tower (`svlm_vision`), so
  only the language model runs here (`mm_encoder_outputs`, which gives tokens identical to the torch path).
- `generate_from_images`: the cloud. The whole model runs in torch, with the checkpoint's own image processor.

Decoding runs in `python_backends.greedy_decode` (a greedy loop with a preallocated KV cache, token-for-token equal
to transformers' `generate`, at a fraction of its per-token cost); `decoder="generate"` keeps transformers' own loop,
for comparison, and checkpoints whose generation settings the loop does not implement use it too. Each row of a
batch stops at its own end token and its own `max_tokens`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from python_backends.errors import InputError
from python_backends.prompts import DEFAULT_SYSTEM, Turn, build_chat_prompt

log = logging.getLogger("spotvlm.generation")

DECODERS = ("functional", "modules", "generate")


@dataclass
class GenerationRequest:
    question: str
    max_new_tokens: int
    image_features: list[np.ndarray] = field(default_factory=list)  # edge: one [tokens, hidden] per image
    images: list[np.ndarray] = field(default_factory=list)  # cloud: one UINT8 [H, W, 3] per image
    history: list[Turn] = field(default_factory=list)


@dataclass
class PreparedRequest:
    prompt_ids: list[int]
    grids: list[tuple[int, int, int]]
    features: list[np.ndarray]
    max_new_tokens: int


def check_max_tokens(value: int, limit: int) -> int:
    if value < 1:
        raise InputError(f"max_tokens must be >= 1, got {value}")
    if value > limit:
        raise InputError(f"max_tokens {value} is over the limit of {limit}")
    return int(value)


class QwenVLGenerator:
    """A Qwen2.5-VL checkpoint (tiny default or real) loaded from a local folder, for batched greedy generation."""

    def __init__(
        self,
        checkpoint: str | Path,
        num_threads: int = 0,
        max_prompt_tokens: int = 4096,
        system_prompt: str = DEFAULT_SYSTEM,
        device: str = "cpu",
        dtype: str = "float32",
        decoder: str = "functional",
    ) -> None:
        """`device` ("cpu", "cuda:0") and `dtype` ("float32", "bfloat16", "float16") come from
        `python_backends.device.place_instance`, which keeps half precision off the CPU. `decoder` is the token loop:
        "functional" (fastest), "modules" (transformers' decoder layers in the same loop) or "generate"."""
        import torch
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self._torch = torch
        path = Path(checkpoint)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no checkpoint at {path} (config.json missing); run build_engines.sh")
        self.checkpoint = path
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        config = self.model.config
        self.hidden_size = config.text_config.hidden_size
        self.merge_size = config.vision_config.spatial_merge_size
        self.image_token_id = config.image_token_id
        self.eos_token_ids = self._eos_ids()
        self.max_prompt_tokens = max_prompt_tokens
        self.system_prompt = system_prompt
        # Generating a vision placeholder would corrupt the next turn's prompt, so those ids are never sampled.
        self._bad_words = [
            [config.image_token_id],
            [config.video_token_id],
            [config.vision_start_token_id],
            [config.vision_end_token_id],
        ]
        self._image_processor = None
        self.decoder = self._choose_decoder(decoder)
        self._layer_weights = None

    def _choose_decoder(self, decoder: str) -> str:
        from python_backends.greedy_decode import unsupported_generation_settings, unsupported_model

        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        if decoder == "generate":
            return decoder
        unsupported = unsupported_generation_settings(self.model.generation_config) + unsupported_model(self.model)
        if unsupported:
            log.warning("%s: decoding with transformers' generate, for %s", self.checkpoint, ", ".join(unsupported))
            return "generate"
        return decoder

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        ids = {i for i in ids if i is not None}
        ids.add(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        return ids

    # -- shared batching path -------------------------------------------------------------------------------------

    def _features_grid(self, features: np.ndarray) -> tuple[int, int, int]:
        """The (t, h, w) patch grid an image's features came from. The edge tower sees square inputs."""
        if features.ndim != 2 or features.shape[1] != self.hidden_size:
            raise InputError(f"IMAGE_FEATURES must be [tokens, {self.hidden_size}], got {list(features.shape)}")
        side = math.isqrt(features.shape[0])
        if side * side != features.shape[0] or side == 0:
            raise InputError(f"IMAGE_FEATURES has {features.shape[0]} tokens, not a square grid")
        return (1, side * self.merge_size, side * self.merge_size)

    def prompt_text(self, request: GenerationRequest, image_tokens: list[int]) -> str:
        return build_chat_prompt(request.question, image_tokens, request.history, self.system_prompt)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a full prompt; raises InputError when it is over the configured limit."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) > self.max_prompt_tokens:
            raise InputError(f"prompt is {len(ids)} tokens with its images, over the limit of {self.max_prompt_tokens}")
        return ids

    def generate_ids(self, prompt_ids: list[list[int]], max_new_tokens: list[int], **vision_kwargs) -> list[list[int]]:
        """Greedy generation for a batch of encoded prompts (left-padded together); returns each answer's ids."""
        torch = self._torch
        # Left padding as `tokenizer.pad` does it, without its per-call overhead (a unit test compares the two).
        longest = max(len(ids) for ids in prompt_ids)
        padded = np.full((len(prompt_ids), longest), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(prompt_ids), longest), dtype=np.int64)
        for row, ids in enumerate(prompt_ids):
            padded[row, longest - len(ids) :] = ids
            mask[row, longest - len(ids) :] = 1
        input_ids = torch.from_numpy(padded).to(self.device)
        attention_mask = torch.from_numpy(mask).to(self.device)
        mm_token_type_ids = (input_ids == self.image_token_id).int()
        if self.decoder != "generate":
            from python_backends.greedy_decode import DecodeSettings, greedy_generate, layer_weights

            if self.decoder == "functional" and self._layer_weights is None:
                self._layer_weights = layer_weights(self.model)

            settings = DecodeSettings(
                eos_token_ids=frozenset(self.eos_token_ids),
                bad_token_ids=tuple(ids[0] for ids in self._bad_words),
                repetition_penalty=float(self.model.generation_config.repetition_penalty or 1.0),
            )
            new_tokens = greedy_generate(
                self.model,
                input_ids,
                attention_mask,
                mm_token_type_ids,
                max_new_tokens,
                settings,
                layers=self._layer_weights if self.decoder == "functional" else None,
                **vision_kwargs,
            )
            return [self._trim(tokens, limit) for tokens, limit in zip(new_tokens, max_new_tokens, strict=True)]
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                mm_token_type_ids=mm_token_type_ids,
                max_new_tokens=max(max_new_tokens),
                do_sample=False,
                bad_words_ids=self._bad_words,
                pad_token_id=self.tokenizer.pad_token_id,
                **vision_kwargs,
            )
        new_tokens = output[:, input_ids.shape[1] :].tolist()
        return [self._trim(tokens, limit) for tokens, limit in zip(new_tokens, max_new_tokens, strict=True)]

    def _trim(self, tokens: list[int], limit: int) -> list[int]:
        tokens = tokens[:limit]
        for index, token in enumerate(tokens):
            if token in self.eos_token_ids:
                return tokens[:index]
        return tokens

    # -- edge: features from the ONNX tower ---------------------------------------------------------------------

    def prepare_features(self, request: GenerationRequest) -> PreparedRequest:
        """Validates one edge request (raising InputError) so a bad one can be answered alone."""
        grids = [self._features_grid(f) for f in request.image_features]
        prompt = self.prompt_text(request, [f.shape[0] for f in request.image_features])
        return PreparedRequest(self.encode_prompt(prompt), grids, request.image_features, request.max_new_tokens)

    def generate_from_features(self, prepared: list[PreparedRequest]) -> list[list[int]]:
        """One batched generate over requests checked by `prepare_features`."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        torch = self._torch
        grids = [grid for p in prepared for grid in p.grids]
        # The tower's fp32 features, in the language model's dtype and on its device (they replace token embeddings).
        features = tuple(
            torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32)).to(self.device, self.dtype)
            for p in prepared
            for f in p.features
        )
        kwargs = {}
        if features:
            kwargs["image_grid_thw"] = torch.tensor(grids, dtype=torch.long, device=self.device)
            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        return self.generate_ids([p.prompt_ids for p in prepared], [p.max_new_tokens for p in prepared], **kwargs)

    # -- cloud: the whole model in torch ------------------------------------------------------------------------

    @property
    def image_processor(self):
        if self._image_processor is None:
            # The PIL class: the default one wants torchvision, which does not import beside the CPU torch wheel.
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            self._image_processor = Qwen2VLImageProcessorPil.from_pretrained(self.checkpoint)
        return self._image_processor

    def model_input_size(self, image: np.ndarray) -> tuple[int, int]:
        """(height, width) the image processor resizes `image` to: the pixel frame of the model's boxes."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        processor = self.image_processor
        size = processor.size
        return smart_resize(
            image.shape[0],
            image.shape[1],
            factor=processor.patch_size * processor.merge_size,
            min_pixels=size["shortest_edge"],
            max_pixels=size["longest_edge"],
        )

    def generate_from_images(self, requests: list[GenerationRequest]) -> list[list[int]]:
        """Requests that share an image (the same array: several questions about one frame) have it encoded once: the
        vision tower runs once per distinct image, and its features fill every prompt that shows it."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        torch = self._torch
        prompts, pixel_values, grids = [], [], []
        encoded: dict[int, int] = {}  # id(image) -> its index in pixel_values and grids
        shown: list[int] = []  # for every image of every request in order, the index of its encoding
        for request in requests:
            tokens = []
            for image in request.images:
                index = encoded.get(id(image))
                if index is None:
                    processed = self.image_processor(images=image, return_tensors="np")
                    index = encoded[id(image)] = len(grids)
                    pixel_values.append(processed["pixel_values"])
                    grids.append([int(v) for v in processed["image_grid_thw"][0]])
                grid = grids[index]
                shown.append(index)
                tokens.append(grid[0] * grid[1] * grid[2] // self.merge_size**2)
            prompts.append(self.encode_prompt(self.prompt_text(request, tokens)))
        kwargs = {}
        if pixel_values:
            pixels = torch.from_numpy(np.concatenate(pixel_values, axis=0)).to(self.device, self.dtype)
            with torch.inference_mode():
                features = self.model.get_image_features(
                    pixels, torch.tensor(grids, dtype=torch.long, device=self.device), return_dict=True
                ).pooler_output
            kwargs["image_grid_thw"] = torch.tensor([grids[i] for i in shown], dtype=torch.long, device=self.device)
            pooled = BaseModelOutputWithPooling(pooler_output=tuple(features[i] for i in shown))
            kwargs["mm_encoder_outputs"] = {"image": pooled}
        return self.generate_ids(prompts, [r.max_new_tokens for r in requests], **kwargs)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
