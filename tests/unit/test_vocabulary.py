"""The trained checkpoints' tokenizer, learned from the benchmark's own chats (vocabulary.py)."""

from __future__ import annotations

import re

import pytest

from engines.tiny_checkpoint import train_tokenizer
from evaluation.scenes import COLOURS, SHAPES
from training import pipeline
from training.__main__ import main as training_main
from training.examples import CLOUD_MIX
from training.trainer import build_model
from training.views import ModelView
from training.vocabulary import benchmark_corpus

VIEW = ModelView(224, keep_aspect=True)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return benchmark_corpus(VIEW, CLOUD_MIX, frames=60)


def test_the_corpus_is_deterministic_chats_in_the_serving_template(corpus) -> None:
    assert corpus == benchmark_corpus(VIEW, CLOUD_MIX, frames=60)
    assert len(corpus) == 60
    assert all(chat.startswith("<|im_start|>system\n") and chat.endswith("<|im_end|>") for chat in corpus)
    text = "\n".join(corpus)
    assert '"bbox_2d": [' in text and "<|im_start|>assistant\n" in text

    # Every other chat opens with the previous chat's first turn as history, question and answer.
    def first_turn(chat: str) -> str:
        return chat.split("<|im_start|>user\n")[1].split("<|im_start|>user\n")[0]

    for earlier, later in zip(corpus[0::2], corpus[1::2], strict=True):
        assert first_turn(later) == first_turn(earlier)
    assert first_turn(corpus[2]) != first_turn(corpus[1])


def test_benchmark_words_become_whole_tokens_and_chats_get_shorter(corpus) -> None:
    tokenizer = train_tokenizer(1024, 0, corpus)
    generic = train_tokenizer(1024, 0)
    for word in ("assistant", "user", "system"):
        assert tokenizer.tokenize(word) == [word]
    for word in (" object", " objects", *(f" {c}" for c in COLOURS), *(f" {s}" for s in SHAPES)):
        assert len(tokenizer.tokenize(word)) == 1, word
    for shape in SHAPES:  # a one-word answer (no leading space) is one choice to learn
        assert len(tokenizer.tokenize(shape)) == 1, shape
    chat = corpus[0]
    assert len(tokenizer(chat).input_ids) < 0.75 * len(generic(chat).input_ids)
    assert tokenizer.decode(tokenizer(chat).input_ids) == chat


def test_built_models_keep_numbers_whole_with_the_benchmark_vocabulary(corpus) -> None:
    _, tokenizer = build_model(pipeline.CLOUD_TRAINED_SPEC, 448, corpus)
    answer = '[{"bbox_2d": [204, 92, 232, 116], "label": "purple star"}]'
    pieces = tokenizer.tokenize(answer)
    assert all(number in pieces for number in ("204", "92", "232", "116"))
    assert tokenizer.decode(tokenizer(answer).input_ids) == answer


def test_the_vocabulary_option_changes_the_key_only_when_set(capsys) -> None:
    cloud, edge = pipeline.recipe("cloud", 20), pipeline.recipe("edge", 10)
    assert cloud.vocabulary == "benchmark" and edge.vocabulary == "generic"
    assert pipeline.recipe("edge", 10, vocabulary="generic").key() == edge.key()
    assert pipeline.recipe("edge", 10, vocabulary="benchmark").key() != edge.key()
    assert pipeline.recipe("cloud", 20, vocabulary="generic").key() != cloud.key()
    with pytest.raises(ValueError, match="vocabulary"):
        pipeline.recipe("cloud", 20, vocabulary="words")
    with pytest.raises(SystemExit):
        training_main(["--model", "cloud", "--minutes", "1", "--vocabulary", "words"])
    assert "--vocabulary" in capsys.readouterr().err


def test_the_edge_recipe_learns_its_vocabulary_from_a_plain_mix() -> None:
    edge = pipeline.recipe("edge", 10, vocabulary="benchmark")
    assert edge.mix.has_context  # the edge's own mix adds history, which fresh scenes cannot
    corpus = benchmark_corpus(edge.view, pipeline.plain_mix(edge.mix), frames=6)
    # Its boxes are written as the edge's answers are: on its coordinate grid.
    corners = [int(v) for box in re.findall(r'"bbox_2d": \[([0-9, ]+)\]', "".join(corpus)) for v in box.split(",")]
    assert len(corpus) == 6 and corners
    assert all(v % edge.mix.coordinate_bin == 0 for v in corners)
