"""Many questions per training frame (examples.build_frame_examples), their encoding, and the cloud recipe."""

from __future__ import annotations

from collections import Counter

import pytest

from evaluation.dataset import generate_split, load_dataset
from evaluation.questions import QuestionConfig, candidate_questions
from evaluation.scenes import SceneConfig
from evaluation.staleness import TruthIndex
from training import pipeline
from training.__main__ import main as training_main
from training.examples import EDGE_MIX, MixConfig, answer_text, build_examples, build_frame_examples
from training.tower_pretraining import labelled_examples
from training.trainer import IGNORE, TrainConfig, build_model, collate, encode, train

from .test_training import MAX_NUMBER, TINY_SPEC, TINY_VIEW


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> list:
    """One 1 s video, two questions on every other frame: five frames with questions."""
    folder = tmp_path_factory.mktemp("split")
    questions = QuestionConfig(per_frame=2, every_k_frames=2)
    return load_dataset(generate_split("train", [1002], folder, SceneConfig(seconds=1.0), questions))


@pytest.fixture(scope="module")
def tokenizer():
    return build_model(TINY_SPEC, MAX_NUMBER)[1]


def test_one_example_per_frame_asks_distinct_questions_with_their_true_answers(split) -> None:
    frames = sorted({(e.video, e.frame_index) for e in split})
    examples = build_frame_examples(split, TINY_VIEW, MixConfig(), questions_per_frame=6, seed=0)
    assert [(e.source.video, e.source.frame_index) for e in examples] == frames
    truth = TruthIndex()
    for example in examples:
        asked = [(example.question, example.target)] + [(t.question, t.answer) for t in example.follow_ups]
        assert 1 <= len(asked) <= 6 and len({question for question, _ in asked}) == len(asked)
        objects = truth.frames(example.source.video)[example.source.frame_index]
        height, width = 240, 320
        by_task = candidate_questions(objects, width, height)
        allowed = {
            q.question: answer_text(q.task, q.answer, q.question, example.seen_size, (height, width), 4)
            for questions in by_task.values()
            for q in questions
        }
        assert all(allowed[question] == answer for question, answer in asked)
        # The tasks take turns: a task with questions left is never two questions behind another.
        task_of = {q.question: task for task, questions in by_task.items() for q in questions}
        drawn = Counter(task_of[question] for question, _ in asked)
        open_tasks = [task for task, questions in by_task.items() if len(questions) > drawn[task]]
        assert all(drawn[task] >= max(drawn.values()) - 1 for task in open_tasks), (drawn, open_tasks)
        assert example.images[0].shape[:2] == example.seen_size == (56, 56)
    # A frame allows more than six questions, so the draw decides which: same seed, same draw.
    again = build_frame_examples(split, TINY_VIEW, MixConfig(), questions_per_frame=6, seed=0)
    other = build_frame_examples(split, TINY_VIEW, MixConfig(), questions_per_frame=6, seed=1)
    assert [e.follow_ups for e in again] == [e.follow_ups for e in examples]
    assert [e.follow_ups for e in other] != [e.follow_ups for e in examples]
    assert len(labelled_examples(examples)) == len(frames)  # the tower's labels come from the same frames


def test_frame_examples_refuse_context_mixes_and_fewer_than_one_question(split) -> None:
    with pytest.raises(ValueError, match="without history or focus"):
        build_frame_examples(split, TINY_VIEW, EDGE_MIX, questions_per_frame=4, seed=0)
    with pytest.raises(ValueError, match="questions_per_frame"):
        build_frame_examples(split, TINY_VIEW, MixConfig(), questions_per_frame=0, seed=0)


def test_follow_ups_continue_the_chat_and_only_answers_are_labelled(split, tokenizer) -> None:
    (example,) = build_frame_examples(split[:1], TINY_VIEW, MixConfig(), questions_per_frame=4, seed=0)
    assert len(example.follow_ups) == 3
    encoded = encode(tokenizer, example)
    assert len(encoded.answer_spans) == 4
    answers = [example.target] + [t.answer for t in example.follow_ups]
    for (start, end), answer in zip(encoded.answer_spans, answers, strict=True):
        assert tokenizer.decode(encoded.input_ids[start:end]) == answer + "<|im_end|>"
    # Between two answers: the next user turn, asking the follow-up.
    between = tokenizer.decode(encoded.input_ids[encoded.answer_spans[0][1] : encoded.answer_spans[1][0]])
    assert between == f"\n<|im_start|>user\n{example.follow_ups[0].question}<|im_end|>\n<|im_start|>assistant\n"
    batch = collate([encoded], tokenizer.pad_token_id, image_token_id=-1, with_pixels=False)
    labelled = {i for i, label in enumerate(batch["labels"][0].tolist()) if label != IGNORE}
    assert labelled == {i for start, end in encoded.answer_spans for i in range(start, end)}


def test_a_one_question_example_encodes_as_before(split, tokenizer) -> None:
    (example,) = build_examples(split[:1], TINY_VIEW, MixConfig(), seed=0)
    encoded = encode(tokenizer, example)
    ((start, end),) = encoded.answer_spans
    assert end == len(encoded.input_ids)
    assert tokenizer.decode(encoded.input_ids[start:]) == example.target + "<|im_end|>"
    assert tokenizer.decode(encoded.input_ids[:start]).endswith(
        f"{example.question}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_training_on_frame_examples_lowers_the_loss(split) -> None:
    model, tokenizer = build_model(TINY_SPEC, MAX_NUMBER)
    examples = build_frame_examples(split, TINY_VIEW, MixConfig(), questions_per_frame=8, seed=0)
    encoded = [encode(tokenizer, e) for e in examples]
    config = TrainConfig(minutes=5, batch_size=len(encoded), peak_lr=5e-3, warmup_steps=1, max_steps=15, seed=0)
    result = train(model, tokenizer, encoded, config)
    assert result.steps == 15 and result.losses[-1] < result.losses[0] * 0.8


def test_the_cloud_recipe_asks_many_questions_on_a_pretrained_tower_and_the_edge_one_does_not() -> None:
    cloud, edge = pipeline.recipe("cloud", 20), pipeline.recipe("edge", 10)
    assert cloud.questions_per_frame == 12 and cloud.tower.steps == 600
    assert edge.questions_per_frame == 1 and edge.tower is None
    end_to_end = pipeline.recipe("cloud", 20, tower_steps=0, questions_per_frame=1)
    assert end_to_end.tower is None and end_to_end.questions_per_frame == 1
    assert len({cloud.key(), end_to_end.key(), pipeline.recipe("cloud", 20, questions_per_frame=6).key()}) == 3
    assert pipeline.recipe("edge", 10, questions_per_frame=1).key() == edge.key()
    with pytest.raises(ValueError, match="one question per image"):
        pipeline.recipe("edge", 10, questions_per_frame=4)


def test_the_training_command_names_a_recipe_it_cannot_build(capsys) -> None:
    with pytest.raises(SystemExit):
        training_main(["--model", "edge", "--minutes", "1", "--questions-per-frame", "4"])
    assert "one question per image" in capsys.readouterr().err
