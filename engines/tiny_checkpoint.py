"""Tiny Qwen2.5-VL checkpoints built fully offline: the project's embedded default models.

Each checkpoint is a real `Qwen2_5_VLForConditionalGeneration` with random weights (fixed seed), a byte-level BPE
tokenizer trained in process with Qwen's special tokens, and a Qwen2-VL image-processor config. It loads with the
same `from_pretrained` code path as Qwen2.5-VL-3B/7B, so the serving code never special-cases it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from python_backends.image_processing import CLIP_MEAN, CLIP_STD

# Qwen2.5-VL's special tokens, in the order their ids are assigned (ids start at 0 here).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
)

BUILD_INFO_FILE = "spotvlm_build.json"


@dataclass(frozen=True)
class TinyVLMSpec:
    """Sizes of one tiny checkpoint. `image_size` is the fixed square input the serving path uses."""

    name: str
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    mrope_section: tuple[int, int, int]
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    fullatt_block_indexes: tuple[int, ...]
    image_size: int
    vocab_size: int = 1024
    seed: int = 0
    # M-RoPE base. Qwen2.5-VL's 1e6 suits head_dim 128 and long contexts; with a tiny head_dim the height and width
    # sections get only the slowest frequencies, which barely turn across a 4 to 9 token image grid.
    rope_theta: float = 1_000_000.0

    def identity(self) -> dict:
        """The fields that determine the weights; a default rope_theta is left out, so digests and training cache
        keys from before the field existed stay valid."""
        spec = asdict(self)
        if spec["rope_theta"] == 1_000_000.0:
            del spec["rope_theta"]
        return spec

    def digest(self) -> str:
        """Hash of everything that determines the checkpoint's bytes, for idempotent builds."""
        payload = json.dumps({"spec": self.identity(), "format": 1}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# The edge model is small and sees 112x112 (16 image tokens); the cloud one is larger and sees 224x224.
EDGE_SPEC = TinyVLMSpec(
    name="tiny-qwen2.5-vl-edge",
    text_hidden=64,
    text_layers=2,
    text_heads=4,
    text_kv_heads=2,
    text_intermediate=128,
    mrope_section=(2, 3, 3),
    vision_hidden=64,
    vision_depth=2,
    vision_heads=4,
    vision_intermediate=128,
    fullatt_block_indexes=(1,),
    image_size=112,
    seed=1234,
)
CLOUD_SPEC = TinyVLMSpec(
    name="tiny-qwen2.5-vl-cloud",
    text_hidden=128,
    text_layers=4,
    text_heads=4,
    text_kv_heads=2,
    text_intermediate=256,
    mrope_section=(4, 6, 6),
    vision_hidden=96,
    vision_depth=4,
    vision_heads=4,
    vision_intermediate=192,
    fullatt_block_indexes=(1, 3),
    image_size=224,
    seed=5678,
)


def _tokenizer_corpus(seed: int) -> list[str]:
    """Text shaped like what the models read and write: scene questions, answers and grounding JSON."""
    rng = random.Random(seed)
    colors = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
    shapes = ["circle", "square", "triangle", "car", "person", "dog", "cat", "cup", "rocket", "ball"]
    templates = [
        "What color is the {s}?",
        "How many {s}s are there?",
        "Where is the {c} {s}?",
        "Describe the scene.",
        "There is a {c} {s} on the left.",
        "The {s} is {c}.",
        "I see {n} {s}s.",
        "Locate every {s}.",
    ]
    lines = []
    for _ in range(3000):
        c, s, n = rng.choice(colors), rng.choice(shapes), rng.randint(0, 12)
        lines.append(rng.choice(templates).format(c=c, s=s, n=n))
        box = sorted(rng.sample(range(0, 448), 4))
        lines.append(json.dumps([{"bbox_2d": [box[0], box[1], box[2], box[3]], "label": f"{c} {s}"}]))
    lines.append("```json\n[]\n```")
    lines.append("0 1 2 3 4 5 6 7 8 9 10 11 12 top bottom left right center middle corner")
    return lines


def train_tokenizer(vocab_size: int, seed: int, corpus: Sequence[str] | None = None):
    """A byte-level BPE with Qwen's special tokens, wrapped as a `PreTrainedTokenizerFast`, its merges learned from
    `corpus` (default: the generic scene text of `_tokenizer_corpus`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus if corpus is not None else _tokenizer_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens={"image_token": "<|image_pad|>"},
    )


def _model_config(spec: TinyVLMSpec, tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": list(spec.mrope_section),
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.text_hidden,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=list(spec.fullatt_block_indexes),
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _image_processor_config(spec: TinyVLMSpec) -> dict:
    pixels = spec.image_size * spec.image_size
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
        "min_pixels": pixels,
        "max_pixels": pixels,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }


def is_built(out_dir: Path, spec: TinyVLMSpec) -> bool:
    info = Path(out_dir) / BUILD_INFO_FILE
    return info.is_file() and json.loads(info.read_text()).get("digest") == spec.digest()


def build_tiny_checkpoint(out_dir: Path, spec: TinyVLMSpec) -> Path:
    """Writes a loadable checkpoint folder. Deterministic for a given spec (seeded init and tokenizer)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    tokenizer = train_tokenizer(spec.vocab_size, spec.seed)
    config = _model_config(spec, tokenizer)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        do_sample=False,
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(_image_processor_config(spec), indent=2))
    (out_dir / BUILD_INFO_FILE).write_text(json.dumps({"digest": spec.digest(), "spec": asdict(spec)}, indent=2))
    return out_dir
