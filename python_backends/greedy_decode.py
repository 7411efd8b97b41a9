"""Greedy decoding for Qwen2.5-VL without `generate`'s per-token machinery, token-for-token equal to it.

The prompt (prefill) runs through the model's own forward, exactly as `generate` runs it. Each new token then runs
through the language model's decoder layers with a preallocated key/value cache, cos/sin looked up from a table
computed once per batch, and the decode attention mask built once per batch, so a step costs the model's arithmetic
plus a handful of tensor ops instead of `generate`'s mask building, cache bookkeeping and logits processors. A row
leaves the batch at its own end token or its own `max_new_tokens`; the rest continue.

`layers="functional"` runs each decoder layer as the same torch ops the transformers modules run (RMSNorm, linear,
rotary, SDPA with the same mask choice) without the module call overhead; `layers="modules"` calls the transformers
decoder layers themselves. The unit tests hold both to `generate`'s tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DecodeSettings:
    eos_token_ids: frozenset[int]
    bad_token_ids: tuple[int, ...]
    repetition_penalty: float = 1.0


def unsupported_generation_settings(generation_config) -> list[str]:
    """Settings of a checkpoint's generation_config that greedy `generate` would honour and this loop does not."""
    checks = {
        "no_repeat_ngram_size": (None, 0),
        "encoder_no_repeat_ngram_size": (None, 0),
        "min_length": (None, 0),
        "min_new_tokens": (None, 0),
        "suppress_tokens": (None,),
        "begin_suppress_tokens": (None,),
        "forced_bos_token_id": (None,),
        "forced_eos_token_id": (None,),
        "sequence_bias": (None,),
        "num_beams": (None, 1),
        "guidance_scale": (None, 1, 1.0),
        "exponential_decay_length_penalty": (None,),
        "renormalize_logits": (None, False),
        "stop_strings": (None,),
    }
    found = []
    for name, fine in checks.items():
        value = getattr(generation_config, name, None)
        if value not in fine and value != []:
            found.append(f"{name}={value!r}")
    return found


def unsupported_model(model) -> list[str]:
    """Text-model features outside what the decode step implements."""
    config = model.config.text_config
    found = []
    if getattr(config, "use_sliding_window", False):
        found.append("use_sliding_window")
    if config._attn_implementation not in ("sdpa",):
        found.append(f"attn_implementation={config._attn_implementation}")
    if config.hidden_act != "silu":
        found.append(f"hidden_act={config.hidden_act}")
    return found


class _StaticKV:
    """Per-layer key/value buffers [batch, kv_heads, capacity, head_dim], filled up to `length`.

    `update` has the signature of a transformers Cache, so the transformers decoder layers can write into it too."""

    def __init__(self, prefill_cache, capacity: int) -> None:
        self.keys, self.values = [], []
        self.length = 0
        for layer in prefill_cache.layers:
            keys, values = layer.keys, layer.values
            batch, heads, length, dim = keys.shape
            self.length = length
            k = keys.new_empty(batch, heads, capacity, dim)
            v = values.new_empty(batch, heads, capacity, values.shape[-1])
            k[:, :, :length] = keys
            v[:, :, :length] = values
            self.keys.append(k)
            self.values.append(v)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        end = self.length + key.shape[2]
        self.keys[layer_idx][:, :, self.length : end] = key
        self.values[layer_idx][:, :, self.length : end] = value
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def select_rows(self, rows: torch.Tensor) -> None:
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


@dataclass
class LayerWeights:
    """One decoder layer's tensors, read off the modules once: attribute lookups on modules cost more than the
    tiny models' arithmetic."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    eps: float
    q_weight: torch.Tensor
    q_bias: torch.Tensor
    k_weight: torch.Tensor
    k_bias: torch.Tensor
    v_weight: torch.Tensor
    v_bias: torch.Tensor
    o_weight: torch.Tensor
    gate_weight: torch.Tensor
    up_weight: torch.Tensor
    down_weight: torch.Tensor
    head_dim: int
    groups: int
    scaling: float


def layer_weights(model) -> list[LayerWeights]:
    result = []
    for layer in model.model.language_model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        result.append(
            LayerWeights(
                input_norm=layer.input_layernorm.weight,
                post_norm=layer.post_attention_layernorm.weight,
                eps=layer.input_layernorm.variance_epsilon,
                q_weight=attn.q_proj.weight,
                q_bias=attn.q_proj.bias,
                k_weight=attn.k_proj.weight,
                k_bias=attn.k_proj.bias,
                v_weight=attn.v_proj.weight,
                v_bias=attn.v_proj.bias,
                o_weight=attn.o_proj.weight,
                gate_weight=mlp.gate_proj.weight,
                up_weight=mlp.up_proj.weight,
                down_weight=mlp.down_proj.weight,
                head_dim=attn.head_dim,
                groups=attn.num_key_value_groups,
                scaling=attn.scaling,
            )
        )
    return result


def _rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Qwen2_5_VLRMSNorm.forward, op for op.
    dtype = hidden.dtype
    hidden32 = hidden.to(torch.float32)
    variance = hidden32.pow(2).mean(-1, keepdim=True)
    hidden32 = hidden32 * torch.rsqrt(variance + eps)
    return weight * hidden32.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # transformers' apply_rotary_pos_emb: x * cos + rotate_half(x) * sin.
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def _functional_layer(w: LayerWeights, hidden, mask, cos, sin, cache: _StaticKV, index: int) -> torch.Tensor:
    """One Qwen2_5_VLDecoderLayer for a single new token, as the transformers modules compute it with SDPA."""
    batch = hidden.shape[0]
    residual = hidden
    hidden = _rms_norm(hidden, w.input_norm, w.eps)
    query = F.linear(hidden, w.q_weight, w.q_bias).view(batch, 1, -1, w.head_dim).transpose(1, 2)
    key = F.linear(hidden, w.k_weight, w.k_bias).view(batch, 1, -1, w.head_dim).transpose(1, 2)
    value = F.linear(hidden, w.v_weight, w.v_bias).view(batch, 1, -1, w.head_dim).transpose(1, 2)
    key, value = cache.update(_rotate(key, cos, sin), value, index)
    groups = w.groups
    extra = {}
    if groups > 1:
        # transformers' sdpa_attention_forward: native GQA without a mask, repeated heads with one.
        if mask is None and key.shape[-1] == value.shape[-1] <= 256:
            extra = {"enable_gqa": True}
        else:
            heads, length, dim = key.shape[1], key.shape[2], key.shape[3]
            key = key[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)
            value = value[:, :, None].expand(batch, heads, groups, length, value.shape[-1])
            value = value.reshape(batch, heads * groups, length, -1)
    out = F.scaled_dot_product_attention(
        _rotate(query, cos, sin), key, value, attn_mask=mask, dropout_p=0.0, scale=w.scaling, is_causal=False, **extra
    )
    hidden = residual + F.linear(out.transpose(1, 2).reshape(batch, 1, -1), w.o_weight)
    residual = hidden
    hidden = _rms_norm(hidden, w.post_norm, w.eps)
    gated = F.silu(F.linear(hidden, w.gate_weight)) * F.linear(hidden, w.up_weight)
    return residual + F.linear(gated, w.down_weight)


def prefill_position_ids(model, input_ids, attention_mask, mm_token_type_ids, image_grid_thw) -> torch.Tensor:
    """[4, batch, length] position ids as `generate` builds them: text positions, then the three M-RoPE rows."""
    text = attention_mask.long().cumsum(-1) - 1
    text = text.masked_fill(attention_mask == 0, 0)
    if image_grid_thw is not None:
        vision, _ = model.model.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
    else:
        vision = text.unsqueeze(0).expand(3, -1, -1)
    return torch.cat([text[None], vision], dim=0)


@torch.inference_mode()
def greedy_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    max_new_tokens: list[int],
    settings: DecodeSettings,
    layers: list[LayerWeights] | None = None,
    **vision_kwargs,
) -> list[list[int]]:
    """Each row's new tokens, up to and including its end token, at most its own `max_new_tokens`.

    `layers` (from `layer_weights`) runs the functional decode step; None calls the transformers decoder layers."""
    from transformers import DynamicCache

    device = input_ids.device
    batch, prompt_length = input_ids.shape
    text_model = model.model.language_model
    position_ids = prefill_position_ids(
        model, input_ids, attention_mask, mm_token_type_ids, vision_kwargs.get("image_grid_thw")
    )
    prefill_cache = DynamicCache(config=model.config.text_config)
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mm_token_type_ids=mm_token_type_ids,
        position_ids=position_ids,
        past_key_values=prefill_cache,
        use_cache=True,
        logits_to_keep=1,
        **vision_kwargs,
    )
    logits = output.logits[:, -1, :].to(dtype=torch.float32)
    longest = max(max_new_tokens)
    capacity = prompt_length + longest
    cache = _StaticKV(prefill_cache, capacity)
    del prefill_cache, output

    # The decode mask: the prompt's padding, then every generated position visible.
    mask_rows = torch.ones(batch, capacity, dtype=torch.bool, device=device)
    mask_rows[:, :prompt_length] = attention_mask.bool()
    padded = (attention_mask == 0).any(dim=1).tolist()
    # New tokens sit on one line in all three M-RoPE axes, after the prompt's last position.
    next_position = position_ids[1, :, -1] + 1
    table_positions = torch.arange(int(next_position.max()) + longest, device=device)
    dtype = text_model.embed_tokens.weight.dtype
    cos_table, sin_table = text_model.rotary_emb(
        torch.empty(0, dtype=dtype, device=device), table_positions.view(1, 1, -1).expand(3, 1, -1)
    )
    cos_table, sin_table = cos_table[0], sin_table[0]
    bad = torch.tensor(settings.bad_token_ids, dtype=torch.long, device=device)
    sequences = input_ids if settings.repetition_penalty != 1.0 else None

    rows = list(range(batch))  # original row of each live batch slot
    limits = list(max_new_tokens)
    answers: list[list[int]] = [[] for _ in range(batch)]
    step = 0
    while True:
        if sequences is not None:
            scores = torch.gather(logits, 1, sequences)
            scores = torch.where(scores < 0, scores * settings.repetition_penalty, scores / settings.repetition_penalty)
            logits = logits.scatter(1, sequences, scores)
        if len(bad):
            logits[:, bad] = float("-inf")
        tokens = logits.argmax(dim=-1)
        step += 1
        keep = []
        for slot, token in enumerate(tokens.tolist()):
            row = rows[slot]
            answers[row].append(token)
            if token not in settings.eos_token_ids and step < limits[slot]:
                keep.append(slot)
        if not keep:
            return answers
        if len(keep) < len(rows):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            tokens = tokens.index_select(0, index)
            cache.select_rows(index)
            mask_rows = mask_rows.index_select(0, index)
            next_position = next_position.index_select(0, index)
            if sequences is not None:
                sequences = sequences.index_select(0, index)
            rows = [rows[s] for s in keep]
            limits = [limits[s] for s in keep]
            padded = [padded[s] for s in keep]
        if sequences is not None:
            sequences = torch.cat([sequences, tokens[:, None]], dim=1)

        length = cache.length + 1
        # transformers skips the mask when no row is padded (SDPA then runs unmasked, with native GQA).
        mask = mask_rows[:, None, None, :length] if any(padded) else None
        cos = cos_table[next_position][:, None]
        sin = sin_table[next_position][:, None]
        hidden = text_model.embed_tokens(tokens[:, None])
        if layers is not None:
            cos4, sin4 = cos[:, None], sin[:, None]
            for index, weights in enumerate(layers):
                hidden = _functional_layer(weights, hidden, mask, cos4, sin4, cache, index)
        else:
            for layer in text_model.layers:
                hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), past_key_values=cache)
        cache.length = length
        hidden = text_model.norm(hidden)
        logits = model.lm_head(hidden[:, -1, :]).to(dtype=torch.float32)
        next_position = next_position + 1
