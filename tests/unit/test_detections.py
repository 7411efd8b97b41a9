import pytest

from python_backends.detections import Detection, detections_from_json, detections_to_json, parse_detections

QWEN_REAL = """```json
[
	{"bbox_2d": [135, 114, 1016, 672], "label": "chair"},
	{"bbox_2d": [10, 20, 30, 40], "label": "cup"}
]
```"""


@pytest.mark.parametrize(
    "text, expected",
    [
        (QWEN_REAL, [("chair", (135, 114, 1016, 672)), ("cup", (10, 20, 30, 40))]),
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "car"}]', [("car", (1, 2, 3, 4))]),
        ('Sure! Here it is: [{"bbox_2d": [1.5, 2, 3, 4], "label": "dog"}] Hope it helps.', [("dog", (1.5, 2, 3, 4))]),
        ('```json\n[{"bbox_2d": [5, 6, 7, 8], "label": "a"}]', [("a", (5, 6, 7, 8))]),  # fence never closed
        ('```\n[{"bbox_2d": [5, 6, 7, 8], "label": "b"}]\n```', [("b", (5, 6, 7, 8))]),  # fence without language
        ('[{"bbox_2d": [30, 40, 10, 20], "label": "swapped"}]', [("swapped", (10, 20, 30, 40))]),
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "ok"}, {"bbox_2d": [1, 2, 3], "label": "bad"}]', [("ok", (1, 2, 3, 4))]),
        # cut off by the token limit: the complete objects are kept
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "car"}, {"bbox_2d": [5, 6, 7', [("car", (1, 2, 3, 4))]),
        ('[{"bbox_2d": [1, 2, 3, 4]}]', [("", (1, 2, 3, 4))]),
        ('[{"bbox": [1, 2, 3, 4], "label": "alt key"}]', [("alt key", (1, 2, 3, 4))]),
    ],
)
def test_parses_qwen_grounding_output(text, expected):
    assert [(d.label, d.bbox) for d in parse_detections(text)] == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "a red car on the left",
        "[]",
        "```json\n[]\n```",
        "[1, 2, 3]",
        '{"bbox_2d": [1, 2, 3], "label": "three numbers"}',
        '[{"bbox_2d": ["a", "b", "c", "d"], "label": "x"}]',
        '[{"bbox_2d": [NaN, 1, 2, 3], "label": "x"}]',
        "[[[[",
        "or rocket 122 315u 235#6220",
        None,
    ],
)
def test_unparseable_text_gives_empty_list_never_an_error(text):
    assert parse_detections(text) == []


def test_json_round_trip():
    detections = [Detection("car", (1.0, 2.0, 3.0, 4.0)), Detection("dog", (0.0, 0.0, 9.5, 9.5))]
    assert detections_from_json(detections_to_json(detections)) == detections


@pytest.mark.parametrize("text", ["{", '{"bbox_2d": [1,2,3,4]}', '[{"label": "no box"}]'])
def test_strict_reader_rejects_malformed(text):
    with pytest.raises(ValueError):
        detections_from_json(text)
