"""Context replacement: which SVLM answers become LVLM answers, the K-turn window, the token budget and the age tag."""

import pytest

from python_backends.context.replacement import (
    GENERIC_QUESTION,
    ReplacedHistory,
    ReplacementConfig,
    WordBudget,
    build_history,
    matching_results,
    tagged_answer,
)
from python_backends.context.store import CloudResult, TurnRecord
from python_backends.prompts import Turn, build_chat_prompt

TAG_RE_TEMPLATE = "[cloud answer, frame {frame_id}, {age_s:.1f} s old]"


def turn(frame_id: int) -> TurnRecord:
    return TurnRecord(
        frame_id=frame_id, timestamp_ms=1000 * frame_id, question=f"q{frame_id}", answer=f"svlm{frame_id}"
    )


def cloud(frame_id: int, text: str | None = None, timestamp_ms: int | None = None) -> CloudResult:
    return CloudResult(
        frame_id=frame_id,
        frame_timestamp_ms=1000 * frame_id if timestamp_ms is None else timestamp_ms,
        sent_s=0.0,
        arrived_s=1.0,
        text=f"lvlm{frame_id}" if text is None else text,
        detections=(),
        frame_size=(224, 224),
    )


def turns(*frame_ids: int) -> list[TurnRecord]:
    return [turn(f) for f in frame_ids]


def is_replaced(t: Turn) -> bool:
    return t.answer.startswith("[cloud answer")


# -- budget ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [("", 0), ("one", 1), ("a b  c\nd", 4), ("   ", 0)])
def test_word_budget_count(text, expected):
    assert WordBudget().count(text) == expected


@pytest.mark.parametrize(
    "text, limit, expected",
    [("a b c d", 2, "a b"), ("a b", 5, "a b"), ("a b c", 3, "a b c"), ("a b c", 0, ""), ("a\nb c", 2, "a b")],
)
def test_word_budget_truncate(text, limit, expected):
    assert WordBudget().truncate(text, limit) == expected


@pytest.mark.parametrize(
    "kwargs", [{"max_turns": -1}, {"budget_tokens": 0}, {"age_tag": "{nope}"}, {"age_tag": "{age_s:d}"}]
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        ReplacementConfig(**kwargs)


# -- no results -----------------------------------------------------------------------------------------------------


def test_no_results_keeps_svlm_answers():
    history = build_history(turns(1, 2, 3), [], now_ms=5000)
    assert history == ReplacedHistory(
        turns=[Turn("q1", "svlm1"), Turn("q2", "svlm2"), Turn("q3", "svlm3")],
        replaced_turns=0,
        context_frame=None,
        context_age_ms=None,
    )


def test_empty_everything():
    assert build_history([], [], now_ms=0) == ReplacedHistory([], 0, None, None)


@pytest.mark.parametrize("k, n, expected", [(4, 10, [6, 7, 8, 9]), (2, 3, [1, 2]), (4, 2, [0, 1]), (0, 5, [])])
def test_turns_beyond_k_dropped(k, n, expected):
    history = build_history(turns(*range(n)), [], now_ms=0, config=ReplacementConfig(max_turns=k))
    assert [t.question for t in history.turns] == [f"q{f}" for f in expected]


# -- which turns are replaced ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames, result_frames, replaced_frames",
    [
        ([1, 2, 3, 4], [2], [2]),
        ([1, 2, 3, 4], [1, 3], [1, 3]),
        ([1, 2, 3, 4], [4], [4]),
        ([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]),
        ([1, 2, 3, 4], [3, 1], [1, 3]),  # arrival order does not matter
    ],
)
def test_replaces_turns_with_results(frames, result_frames, replaced_frames):
    history = build_history(turns(*frames), [cloud(f) for f in result_frames], now_ms=10_000)
    assert [t.question for t in history.turns] == [f"q{f}" for f in frames]  # questions stay the SVLM's
    for f, t in zip(frames, history.turns):
        if f in replaced_frames:
            assert t.answer.endswith(f"lvlm{f}") and is_replaced(t)
        else:
            assert t.answer == f"svlm{f}"
    assert history.replaced_turns == len(replaced_frames)
    assert history.context_frame == max(result_frames)


def test_result_outside_window_that_is_not_freshest_is_dropped():
    config = ReplacementConfig(max_turns=2)
    history = build_history(turns(1, 2, 3, 4), [cloud(1), cloud(4)], now_ms=5000, config=config)
    assert [t.question for t in history.turns] == ["q3", "q4"]
    assert history.replaced_turns == 1
    assert "lvlm1" not in " ".join(t.answer for t in history.turns)


def test_later_arrival_for_same_frame_wins():
    history = build_history(turns(1, 2), [cloud(2, text="stale"), cloud(2, text="fresh")], now_ms=3000)
    assert history.turns[1].answer.endswith("fresh")
    assert "stale" not in history.turns[1].answer
    assert history.replaced_turns == 1


# -- freshest always included -----------------------------------------------------------------------------------------


def test_freshest_outside_window_is_prepended_with_its_question():
    config = ReplacementConfig(max_turns=3)
    history = build_history(turns(*range(1, 11)), [cloud(5)], now_ms=12_000, config=config)
    assert [t.question for t in history.turns] == ["q5", "q8", "q9", "q10"]
    assert history.turns[0].answer == "[cloud answer, frame 5, 7.0 s old] lvlm5"
    assert history.replaced_turns == 1
    assert history.context_frame == 5 and history.context_age_ms == 7000


def test_freshest_with_unknown_turn_uses_generic_question():
    config = ReplacementConfig(max_turns=2)
    history = build_history(turns(8, 9, 10), [cloud(3)], now_ms=10_000, config=config)
    assert history.turns[0].question == GENERIC_QUESTION == "What do you see?"
    assert history.turns[0].answer.endswith("lvlm3")
    assert [t.question for t in history.turns[1:]] == ["q9", "q10"]


def test_freshest_included_with_no_turns_at_all():
    history = build_history([], [cloud(3)], now_ms=4500)
    assert history.turns == [Turn(GENERIC_QUESTION, "[cloud answer, frame 3, 1.5 s old] lvlm3")]
    assert history.replaced_turns == 1 and history.context_frame == 3 and history.context_age_ms == 1500


def test_freshest_included_with_k_zero():
    history = build_history(turns(1, 2, 3), [cloud(2)], now_ms=3000, config=ReplacementConfig(max_turns=0))
    assert [t.question for t in history.turns] == ["q2"]
    assert history.replaced_turns == 1


def test_freshest_inside_window_is_not_duplicated():
    history = build_history(turns(1, 2, 3), [cloud(2)], now_ms=3000)
    assert len(history.turns) == 3 and history.replaced_turns == 1


def test_freshest_missing_turn_newer_than_window_stays_in_frame_order():
    # The turn for frame 5 was never recorded; its answer belongs after the older turns, not before them.
    history = build_history(turns(1, 2, 7), [cloud(5)], now_ms=8000)
    assert [t.question for t in history.turns] == ["q1", "q2", GENERIC_QUESTION, "q7"]


def test_freshest_is_highest_frame_not_last_arrival():
    config = ReplacementConfig(max_turns=2)
    history = build_history(turns(*range(1, 11)), [cloud(6), cloud(4)], now_ms=10_000, config=config)
    assert history.context_frame == 6
    assert [t.question for t in history.turns] == ["q6", "q9", "q10"]
    assert history.replaced_turns == 1


# -- age tag --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame_ts, now_ms, age_ms, tag_age",
    [(1000, 3500, 2500, "2.5"), (0, 0, 0, "0.0"), (5000, 5049, 49, "0.0"), (1000, 11_000, 10_000, "10.0")],
)
def test_age_tag_text_and_value(frame_ts, now_ms, age_ms, tag_age):
    history = build_history([], [cloud(7, timestamp_ms=frame_ts)], now_ms=now_ms)
    assert history.context_age_ms == age_ms
    assert history.turns[0].answer == f"[cloud answer, frame 7, {tag_age} s old] lvlm7"


def test_age_clamped_at_zero():
    history = build_history([], [cloud(7, timestamp_ms=9000)], now_ms=8000)
    assert history.context_age_ms == 0
    assert history.turns[0].answer.startswith("[cloud answer, frame 7, 0.0 s old]")


def test_each_replaced_turn_has_its_own_age():
    history = build_history(turns(1, 2, 3), [cloud(1), cloud(3)], now_ms=4000)
    assert history.turns[0].answer.startswith("[cloud answer, frame 1, 3.0 s old]")
    assert history.turns[2].answer.startswith("[cloud answer, frame 3, 1.0 s old]")
    assert history.context_age_ms == 1000  # the freshest one's


def test_custom_age_tag():
    config = ReplacementConfig(age_tag="<f{frame_id} {age_ms}ms>")
    history = build_history([], [cloud(2, timestamp_ms=100)], now_ms=350, config=config)
    assert history.turns[0].answer == "<f2 250ms> lvlm2"


def test_empty_lvlm_text_gives_tag_only():
    history = build_history(turns(1), [cloud(1, text="   ")], now_ms=1000)
    assert history.turns[0].answer == "[cloud answer, frame 1, 0.0 s old]"


# -- budget truncation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [8, 10, 12, 20, 48])
def test_tagged_answer_fits_budget(budget):
    text = " ".join(f"w{i}" for i in range(100))
    config = ReplacementConfig(budget_tokens=budget)
    answer = build_history(turns(1), [cloud(1, text=text)], now_ms=1000, config=config).turns[0].answer
    tag = "[cloud answer, frame 1, 0.0 s old]"
    assert WordBudget().count(answer) == budget
    assert answer.startswith(tag + " w0")  # the tag is whole, the text is cut at its end
    assert answer == tag + " " + " ".join(f"w{i}" for i in range(budget - WordBudget().count(tag)))


def test_short_answer_not_truncated():
    text = "a red car turns left"
    answer = build_history(turns(1), [cloud(1, text=text)], now_ms=1000).turns[0].answer
    assert answer.endswith(text)


@pytest.mark.parametrize("budget", [1, 3, 6])
def test_tag_is_never_cut_even_over_budget(budget):
    config = ReplacementConfig(budget_tokens=budget)
    answer = build_history([], [cloud(1, text="a b c")], now_ms=1000, config=config).turns[0].answer
    assert answer == "[cloud answer, frame 1, 0.0 s old]"


class CharBudget:
    """A non-additive tokenizer: one token per 4 characters of the whole string, spaces included."""

    def count(self, text: str) -> int:
        return (len(text) + 3) // 4

    def truncate(self, text: str, max_tokens: int) -> str:
        return text[: max_tokens * 4]


@pytest.mark.parametrize("budget", [12, 13, 20, 30])
def test_custom_budget_fits(budget):
    config = ReplacementConfig(budget_tokens=budget)
    result = cloud(1, text="x" * 500)
    answer = tagged_answer(result, 1000, config, CharBudget())
    assert CharBudget().count(answer) <= budget
    assert answer.startswith("[cloud answer, frame 1, 0.0 s old] x")


def test_history_feeds_chat_prompt():
    history = build_history(turns(1, 2), [cloud(1)], now_ms=2000)
    prompt = build_chat_prompt("what now?", [4], history=history.turns)
    assert "[cloud answer, frame 1, 1.0 s old] lvlm1" in prompt and "svlm2" in prompt and "svlm1" not in prompt


def test_pure_function_does_not_mutate_inputs():
    ts, rs = turns(1, 2, 3), [cloud(2)]
    ts_copy, rs_copy = list(ts), list(rs)
    build_history(ts, rs, now_ms=4000)
    assert ts == ts_copy and rs == rs_copy


# -- the whole history's token budget ------------------------------------------------------------------------------


def test_long_questions_drop_the_oldest_turns_until_the_history_fits():
    long_question = " ".join(["word"] * 40)
    turns = [TurnRecord(i, 1000 * i, long_question, "an answer") for i in range(4)]
    config = ReplacementConfig(max_turns=4, budget_tokens=8, history_tokens=100)
    history = build_history(turns, [], now_ms=5000, config=config)
    assert [t.question for t in history.turns] == [long_question] * 2, "42 tokens per turn: two fit in 100"
    assert sum(len(t.question.split()) + len(t.answer.split()) for t in history.turns) <= 100


def test_the_freshest_cloud_answer_survives_the_history_budget():
    long_question = " ".join(["word"] * 40)
    turns = [TurnRecord(i, 1000 * i, long_question, "an answer") for i in range(4)]
    result = CloudResult(0, 0, 0.0, 1.0, "a red car", (), (10, 10))
    config = ReplacementConfig(max_turns=4, budget_tokens=16, history_tokens=60)
    history = build_history(turns, [result], now_ms=5000, config=config)
    assert history.context_frame == 0 and history.replaced_turns == 1
    assert any("a red car" in t.answer for t in history.turns)
    assert len(history.turns) == 1, "only the cloud answer's turn fits"


def test_history_budget_below_the_answer_budget_is_refused():
    with pytest.raises(ValueError, match="history_tokens"):
        ReplacementConfig(budget_tokens=48, history_tokens=10)


# -- matching the question -----------------------------------------------------------------------------------------


def asked(frame_id: int, question: str) -> TurnRecord:
    return TurnRecord(frame_id=frame_id, timestamp_ms=1000 * frame_id, question=question, answer=f"svlm{frame_id}")


def answered(frame_id: int, question: str | None) -> CloudResult:
    return CloudResult(
        frame_id=frame_id,
        frame_timestamp_ms=1000 * frame_id,
        sent_s=0.0,
        arrived_s=1.0,
        text=f"lvlm{frame_id}",
        detections=(),
        frame_size=(224, 224),
        question=question,
    )


STANDING = [asked(0, "Where is the red circle?"), asked(1, "How many stars?"), asked(2, "Where is the red circle?")]


def test_only_turns_and_cloud_answers_about_the_question_asked_make_the_history():
    results = [answered(0, "Where is the red circle?"), answered(1, "How many stars?")]
    history = build_history(STANDING, results, now_ms=3000, question="where is the  RED circle?")
    assert [t.question for t in history.turns] == ["Where is the red circle?", "Where is the red circle?"]
    assert [t.answer for t in history.turns] == ["[cloud answer, frame 0, 3.0 s old] lvlm0", "svlm2"]
    assert (history.context_frame, history.context_age_ms, history.replaced_turns) == (0, 3000, 1)


def test_a_question_nothing_answered_gets_no_history():
    results = [answered(1, "How many stars?")]
    history = build_history(STANDING, results, now_ms=3000, question="What colour is the square?")
    assert history == ReplacedHistory(turns=[], replaced_turns=0, context_frame=None, context_age_ms=None)


def test_matching_off_keeps_the_freshest_answer_to_any_question():
    results = [answered(0, "Where is the red circle?"), answered(1, "How many stars?")]
    config = ReplacementConfig(match_question=False)
    history = build_history(STANDING, results, now_ms=3000, config=config, question="Where is the red circle?")
    assert [t.question for t in history.turns] == [t.question for t in STANDING]
    assert history.context_frame == 1


def test_a_cloud_answer_of_unknown_question_serves_every_question():
    history = build_history([], [answered(1, None)], now_ms=3000, question="How many stars?")
    assert history.context_frame == 1 and history.turns == [
        Turn(GENERIC_QUESTION, "[cloud answer, frame 1, 2.0 s old] lvlm1")
    ]


def test_the_freshest_answers_turn_keeps_the_question_it_answered_after_that_turn_left_the_store():
    # K = 0: only the freshest matching cloud answer, as the trained edge model reads its context.
    config = ReplacementConfig(max_turns=0)
    history = build_history(
        [], [answered(5, "How many stars?")], now_ms=9000, config=config, question="How many stars?"
    )
    assert history.turns == [Turn("How many stars?", "[cloud answer, frame 5, 4.0 s old] lvlm5")]


def test_matching_results_filters_by_question_unless_matching_is_off():
    results = [answered(0, "A?"), answered(1, "b?"), answered(2, None)]
    assert [r.frame_id for r in matching_results(results, "a?", ReplacementConfig())] == [0, 2]
    assert matching_results(results, "a?", ReplacementConfig(match_question=False)) == results
    assert matching_results(results, None, ReplacementConfig()) == results
