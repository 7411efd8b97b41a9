"""Attention supervision: one language-model head is taught to look, while answering, at the asked object's tokens.

Why (measured on 2 cores): answering needs the language model to find the object a question names among
the image tokens. Unsupervised, it barely did within the budget: recognition, which needs the object found by its
shape or colour, stayed between 0.20 and 0.45 on 600 test questions in every probe. With head 0 of layers 1 and 2
supervised, recognition-only training on fresh frames (a frozen tower) kept a quarter of that head's attention on
the asked object (about one object in four) until about 1,300 steps, then rose to about 0.6 of it by 2,254 steps,
and scored recognition 0.62 on those 600 questions (README, "Not built yet").

The loss is -log of the attention mass that head `head` of each supervised layer puts, at every position that
predicts an answer token, on the merged-cell tokens of the question's target objects (examples.frame_example gives
them). The attention is recomputed for those positions only, from the layer's own projections and rotary
embeddings captured by a forward pre-hook, so the model itself keeps its fast attention kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np


@contextlib.contextmanager
def attention_capture(model, layers: Sequence[int]) -> Iterator[dict]:
    """Within the block, every forward stores each layer's attention inputs in the yielded dict (layer -> inputs)."""
    captured: dict[int, tuple] = {}
    handles = []
    for layer in layers:
        attention = model.model.language_model.layers[layer].self_attn

        def hook(module, args, kwargs, layer=layer):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            captured[layer] = (module, hidden, kwargs["position_embeddings"])

        handles.append(attention.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def target_pairs(input_ids, image_token_id: int, batch: Sequence) -> tuple[np.ndarray, ...]:
    """(row, query position, key position) for every answer-predicting position and target cell of a batch of
    trainer.Encoded: row b's `answer_spans` [start, end) and the merged-cell indices each answer is about."""
    rows, queries, keys = [], [], []
    ids = np.asarray(input_ids)
    for row, encoded in enumerate(batch):
        row_spans, row_cells = encoded.answer_spans, encoded.answer_cells
        image_positions = np.flatnonzero(ids[row] == image_token_id)
        if not len(image_positions) or not row_cells:  # no image, or an example that does not know its cells
            continue
        for (start, end), targets in zip(row_spans, row_cells, strict=True):
            for query in range(start - 1, end - 1):  # the positions whose next token is an answer token
                for cell in targets:
                    if cell >= len(image_positions):
                        raise ValueError(f"cell {cell} is outside the image's {len(image_positions)} tokens")
                    rows.append(row)
                    queries.append(query)
                    keys.append(int(image_positions[cell]))
    return np.asarray(rows, np.int64), np.asarray(queries, np.int64), np.asarray(keys, np.int64)


def attention_loss(captured: dict, pairs: tuple[np.ndarray, ...], head: int = 0, float32_scores: bool = False):
    """Mean -log attention mass on the target tokens, over every supervised (row, query) and layer; None when the
    batch has no target. `float32_scores`: the scores in float32 under autocast too, as the model's own are then
    (precision.float32_score_attention)."""
    import torch

    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

    if not len(pairs[0]):
        return None
    device = next(iter(captured.values()))[1].device
    rows, queries, keys = (torch.from_numpy(a).to(device) for a in pairs)
    # One term per (row, query): several target cells add their mass.
    unique, inverse = torch.unique(torch.stack([rows, queries]), dim=1, return_inverse=True)
    total = 0.0
    for module, hidden, (cos, sin) in captured.values():
        dim = module.head_dim
        kv_head = head // (module.config.num_attention_heads // module.config.num_key_value_heads)
        batch, length, _ = hidden.shape
        query = module.q_proj(hidden)[..., head * dim : (head + 1) * dim].view(batch, 1, length, dim)
        key = module.k_proj(hidden)[..., kv_head * dim : (kv_head + 1) * dim].view(batch, 1, length, dim)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        # Scores of every position against its row's keys, then the supervised rows: gathering a copy of the keys
        # for each (row, query) pair instead would copy them once per answer token.
        # Outside autocast the float32 operands stay float32; inside it, they are cast to bfloat16 as before.
        with torch.autocast(device.type, enabled=False) if float32_scores else contextlib.nullcontext():
            scores = (query[:, 0].float() @ key[:, 0].float().transpose(1, 2))[unique[0], unique[1]] * module.scaling
        causal = torch.arange(length, device=device)[None, :] > unique[1][:, None]
        # In float32 under bfloat16 autocast too: the mass is summed into a float32 tensor.
        probabilities = scores.float().masked_fill(causal, float("-inf")).softmax(-1)
        mass = torch.zeros(len(unique[0]), device=device).index_add(0, inverse, probabilities[inverse, keys])
        total = total + (-torch.log(mass + 1e-6)).mean()
    return total / len(captured)
