"""Attention supervision of one language-model head (training/attention_supervision.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.questions import Question
from evaluation.scenes import ObjectTruth
from training.attention_supervision import attention_capture, attention_loss, target_pairs
from training.examples import MixConfig, frame_example
from training.fresh_frames import FreshCurriculum, FreshQuestionStream
from training.trainer import Encoded, TrainConfig, build_model, collate, encode, train
from python_backends.detections import scale_box
from training.views import ModelView, merged_cell

from .test_training import MAX_NUMBER, TINY_SPEC, TINY_VIEW

IMAGE = 7


def test_pairs_cover_every_answer_predicting_position_and_target_cell() -> None:
    # Row 0: image tokens at 2..5, one answer [8, 10) about cells 1 and 3; row 1: an example without cells.
    input_ids = [[0, 0, IMAGE, IMAGE, IMAGE, IMAGE, 0, 0, 0, 0], [0, IMAGE, 0, 0, 0, 0, 0, 0, 0, 0]]
    image = np.zeros((56, 56, 3), np.uint8)
    batch = [Encoded(input_ids[0], ((8, 10),), image, ((1, 3),)), Encoded(input_ids[1], ((5, 6),), image)]
    rows, queries, keys = target_pairs(input_ids, IMAGE, batch)
    assert list(zip(rows, queries, keys, strict=True)) == [(0, 7, 3), (0, 7, 5), (0, 8, 3), (0, 8, 5)]
    with pytest.raises(ValueError, match="outside the image"):
        target_pairs(input_ids, IMAGE, [Encoded(input_ids[0], ((8, 10),), image, ((4,),)), batch[1]])


def test_an_answers_cells_are_those_of_its_objects_centres() -> None:
    frame = np.zeros((112, 112, 3), np.uint8)
    red = ObjectTruth(0, "square", "red", (0, 0, 20, 20), 1.0, False)  # centre in cell 0 of a 2x2 merged grid
    blue = ObjectTruth(1, "circle", "blue", (70, 80, 100, 110), 1.0, False)  # centre (85, 95): cell 3
    assert merged_cell(scale_box(blue.box, (112, 112), (56, 56)), (56, 56)) == 3

    chosen = [
        Question("counting", "How many objects are there?", "2", (0, 1)),
        Question("recognition", "?", "red", (0,)),
    ]
    example = frame_example("f", frame, [red, blue], chosen, ModelView(56, keep_aspect=False), MixConfig())
    assert example.answer_cells == [(0, 3), (0,)]


def _tensors_and_pairs(model, tokenizer, batch) -> tuple[dict, tuple]:
    tensors = collate(batch, tokenizer.pad_token_id, model.config.image_token_id)
    tensors.pop("labels")
    return tensors, target_pairs(tensors["input_ids"], model.config.image_token_id, batch)


def test_the_loss_is_the_attention_the_model_itself_computes() -> None:
    """The recomputed attention (rotary, scaling, grouped keys) equals the eager kernel's weights of that head."""
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    stream = FreshQuestionStream(tokenizer, TINY_VIEW, MixConfig(), 4, FreshCurriculum(seed=5))
    tensors, pairs = _tensors_and_pairs(model, tokenizer, stream(3, 0.5))
    assert len(pairs[0]) > 0
    model.set_attn_implementation("eager")
    with torch.no_grad(), attention_capture(model, [0]) as captured:
        output = model.model(**tensors, output_attentions=True)
        ours = float(attention_loss(captured, pairs, head=1))
    weights = output.attentions[0][:, 1]  # layer 0, head 1: [batch, query, key]
    rows, queries, keys = pairs
    mass: dict[tuple[int, int], float] = {}
    for row, query, key in zip(rows, queries, keys, strict=True):
        mass[(row, query)] = mass.get((row, query), 0.0) + float(weights[row, query, key])
    expected = float(np.mean([-np.log(m + 1e-6) for m in mass.values()]))
    assert ours == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_supervised_training_moves_the_heads_attention_onto_the_asked_objects() -> None:
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    stream = FreshQuestionStream(tokenizer, TINY_VIEW, MixConfig(), 4, FreshCurriculum(seed=1))
    held = stream(8, 0.5)

    def supervision_loss() -> float:
        tensors, pairs = _tensors_and_pairs(model, tokenizer, held)
        with torch.no_grad(), attention_capture(model, [0]) as captured:
            model.model(**tensors)
            return float(attention_loss(captured, pairs))

    before = supervision_loss()
    config = TrainConfig(
        minutes=5, batch_size=4, peak_lr=5e-3, warmup_steps=1, max_steps=40, attention_weight=1.0,
        supervised_layers=(0,),
    )  # fmt: skip
    train(model, tokenizer, [], config, stream=stream)
    assert supervision_loss() < before * 0.8
    assert encode(tokenizer, stream.example(0.5)).answer_cells  # the stream's examples know their cells
