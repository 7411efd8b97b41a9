"""Visual focus: relevance filter, box mapping between sizes, age-dependent margin, clipping, what each mode shows."""

import numpy as np
import pytest
from PIL import Image

from python_backends.context.focus import (
    FocusConfig,
    FocusMode,
    downscale,
    focus_box,
    focus_margin,
    focus_source,
    mentioned_detections,
    parse_focus_mode,
    plan_focus,
    relevant_detections,
)
from python_backends.detections import Detection
from python_backends.errors import InputError

NO_MARGIN = FocusConfig(margin=0.0, margin_per_s=0.0, max_margin=0.0, min_size=1)


def det(label: str, x1: float, y1: float, x2: float, y2: float) -> Detection:
    return Detection(label=label, bbox=(x1, y1, x2, y2))


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)


# -- parse_focus_mode -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "auto", "AUTO", " auto "])
@pytest.mark.parametrize("default", list(FocusMode))
def test_parse_focus_mode_default(value, default):
    assert parse_focus_mode(value, default) is default


@pytest.mark.parametrize(
    "value, expected",
    [
        ("off", FocusMode.OFF),
        ("crop_only", FocusMode.CROP_ONLY),
        ("crop_and_frame", FocusMode.CROP_AND_FRAME),
        ("CROP_ONLY", FocusMode.CROP_ONLY),
        (" off\n", FocusMode.OFF),
    ],
)
def test_parse_focus_mode_values(value, expected):
    assert parse_focus_mode(value, FocusMode.CROP_AND_FRAME) is expected


@pytest.mark.parametrize("value", ["zoom", "crop", "on", "1", "crop-only"])
def test_parse_focus_mode_unknown_is_input_error(value):
    with pytest.raises(InputError) as info:
        parse_focus_mode(value, FocusMode.OFF)
    message = str(info.value)
    assert repr(value) in message
    for allowed in ("auto", "off", "crop_only", "crop_and_frame"):
        assert allowed in message


def test_focus_mode_is_str_enum():
    assert FocusMode("crop_only") is FocusMode.CROP_ONLY and FocusMode.OFF == "off"


# -- config ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"margin": -0.1}, {"margin_per_s": -1}, {"margin": 0.5, "max_margin": 0.2}, {"min_size": 0}, {"frame_side": 0}],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        FocusConfig(**kwargs)


# -- relevance ------------------------------------------------------------------------------------------------------

CAR, PERSON, DOG = det("car", 0, 0, 10, 10), det("person", 20, 20, 30, 30), det("dog", 40, 40, 50, 50)


@pytest.mark.parametrize(
    "detections, question, expected",
    [
        ([CAR, PERSON], "Where is the car?", [CAR]),
        ([CAR, PERSON], "How many cars are there?", [CAR]),  # plural "s"
        ([CAR, PERSON, DOG], "Is the DOG near the Person?", [PERSON, DOG]),  # case-insensitive, several
        ([CAR, PERSON], "What is happening?", [CAR, PERSON]),  # no match: all of them
        ([CAR, DOG], "Is the cat on the caterpillar?", [CAR, DOG]),  # no substring matches
        ([], "Where is the car?", []),
        ([det("box", 0, 0, 1, 1), CAR], "Count the boxes", [det("box", 0, 0, 1, 1)]),  # plural "es"
        ([det("bus", 0, 0, 1, 1), CAR], "Any buses?", [det("bus", 0, 0, 1, 1)]),
        ([det("horse", 0, 0, 1, 1), CAR], "Where are the horses going?", [det("horse", 0, 0, 1, 1)]),
        ([det("berry", 0, 0, 1, 1), CAR], "Are the berries ripe?", [det("berry", 0, 0, 1, 1)]),
        ([det("cars", 0, 0, 1, 1), PERSON], "Which car is red?", [det("cars", 0, 0, 1, 1)]),  # plural label
        ([det("traffic light", 0, 0, 1, 1), CAR], "Is the light green?", [det("traffic light", 0, 0, 1, 1)]),
        ([det("cup of coffee", 0, 0, 1, 1), DOG], "What kind of dog is it?", [DOG]),  # "of" is no match
        ([det("Car", 0, 0, 1, 1), PERSON], "where's the car", [det("Car", 0, 0, 1, 1)]),
        ([det("", 0, 0, 1, 1), CAR], "the car", [CAR]),
    ],
)
def test_relevant_detections(detections, question, expected):
    assert relevant_detections(detections, question) == expected


def test_relevant_detections_keeps_order_and_duplicates():
    a, b = det("car", 0, 0, 1, 1), det("car", 5, 5, 6, 6)
    assert relevant_detections([a, PERSON, b], "cars?") == [a, b]


# -- margin ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "age_ms, expected", [(0, 0.10), (-500, 0.10), (1000, 0.25), (2000, 0.40), (6000, 1.0), (60_000, 1.0)]
)
def test_focus_margin(age_ms, expected):
    assert focus_margin(age_ms) == pytest.approx(expected)


def test_focus_margin_monotonic():
    ages = np.linspace(-1000, 20_000, 200)
    margins = [focus_margin(a) for a in ages]
    assert all(b >= a for a, b in zip(margins, margins[1:]))


def test_focus_box_grows_monotonically_with_age():
    detections = [det("car", 90, 90, 130, 120)]
    boxes = [focus_box(detections, (224, 224), (480, 640), age) for age in range(0, 12_000, 250)]
    widths = [b[2] - b[0] for b in boxes]
    heights = [b[3] - b[1] for b in boxes]
    assert all(b >= a for a, b in zip(widths, widths[1:]))
    assert all(b >= a for a, b in zip(heights, heights[1:]))
    assert widths[-1] > widths[0] and heights[-1] > heights[0]
    for older, newer in zip(boxes, boxes[1:]):  # each box contains the previous one
        assert newer[0] <= older[0] and newer[1] <= older[1] and newer[2] >= older[2] and newer[3] >= older[3]


@pytest.mark.parametrize(
    "age_ms, expected",
    [
        (0, (144, 108, 336, 252)),  # 10 % of 160 x 120 on each side
        (2000, (96, 72, 384, 288)),  # 40 %
        (60_000, (0, 0, 480, 360)),  # capped at 100 %
    ],
)
def test_focus_box_margin_values(age_ms, expected):
    # 56..112 in 224x224 maps to x 160..320, y 120..240 in 480x640.
    assert focus_box([det("car", 56, 56, 112, 112)], (224, 224), (480, 640), age_ms) == expected


# -- mapping --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bbox, source, target, expected",
    [
        ((56, 56, 112, 112), (224, 224), (480, 640), (160, 120, 320, 240)),  # different aspect ratio
        ((10, 20, 30, 40), (100, 100), (100, 100), (10, 20, 30, 40)),  # same size: identity
        ((100, 50, 300, 150), (480, 640), (240, 320), (50, 25, 150, 75)),  # downscale
        ((10, 10, 20, 20), (100, 100), (1000, 1000), (100, 100, 200, 200)),  # upscale
        ((10.2, 10.7, 20.3, 20.2), (100, 100), (100, 100), (10, 10, 21, 21)),  # rounded outward
        ((0, 0, 224, 224), (224, 224), (480, 640), (0, 0, 640, 480)),  # the whole frame
    ],
)
def test_focus_box_mapping(bbox, source, target, expected):
    box = focus_box([det("x", *bbox)], source, target, 0, NO_MARGIN)
    assert box == expected
    assert all(isinstance(v, int) for v in box)


def test_focus_box_union_of_detections():
    detections = [det("a", 10, 20, 30, 40), det("b", 50, 5, 60, 35)]
    assert focus_box(detections, (100, 100), (100, 100), 0, NO_MARGIN) == (10, 5, 60, 40)


# -- clipping and degenerate boxes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bbox, expected",
    [
        ((-50, -50, 20, 20), (0, 0, 20, 20)),  # partly outside
        ((80, 90, 150, 200), (80, 90, 100, 100)),
        ((-10, 40, 110, 60), (0, 40, 100, 60)),
    ],
)
def test_focus_box_clipped_to_image(bbox, expected):
    assert focus_box([det("x", *bbox)], (100, 100), (100, 100), 0, NO_MARGIN) == expected


@pytest.mark.parametrize("age_ms", [0, 3000, 60_000])
def test_focus_box_margin_clipped_at_edges(age_ms):
    box = focus_box([det("x", 180, 150, 220, 200)], (200, 220), (200, 220), age_ms)
    assert box[2] == 220 and box[3] == 200
    assert 0 <= box[0] < 180 and 0 <= box[1] < 150


@pytest.mark.parametrize(
    "bbox",
    [
        (200, 200, 300, 300),  # entirely outside
        (-30, -30, -1, -1),
        (10, 10, 10, 20),  # zero width
        (10, 20, 30, 20),  # zero height
        (100, 0, 150, 50),  # touches the right edge from outside
    ],
)
def test_focus_box_degenerate_is_none(bbox):
    assert focus_box([det("x", *bbox)], (100, 100), (100, 100), 0) is None


@pytest.mark.parametrize("source, target", [((0, 100), (100, 100)), ((100, 100), (100, 0)), ((-1, 5), (5, 5))])
def test_focus_box_bad_sizes_is_none(source, target):
    assert focus_box([det("x", 1, 1, 2, 2)], source, target, 0) is None


def test_focus_box_no_detections_is_none():
    assert focus_box([], (100, 100), (100, 100), 0) is None


# -- min size -------------------------------------------------------------------------------------------------------

MIN32 = FocusConfig(margin=0.0, margin_per_s=0.0, max_margin=0.0, min_size=32)


@pytest.mark.parametrize(
    "bbox, image, expected",
    [
        ((50, 50, 52, 52), (100, 100), (35, 35, 67, 67)),  # grown around its centre
        ((0, 0, 2, 2), (100, 100), (0, 0, 32, 32)),  # at the top-left edge: shifted inward
        ((98, 98, 100, 100), (100, 100), (68, 68, 100, 100)),  # bottom-right edge
        ((5, 5, 10, 10), (20, 20), (0, 0, 20, 20)),  # image smaller than min_size: the whole image
        ((10, 40, 60, 42), (100, 100), (10, 25, 60, 57)),  # wide already, only the height grows
    ],
)
def test_focus_box_min_size(bbox, image, expected):
    assert focus_box([det("x", *bbox)], image, image, 0, MIN32) == expected


@pytest.mark.parametrize("min_size", [1, 16, 64, 100])
def test_focus_box_min_size_respected(min_size):
    config = FocusConfig(min_size=min_size)
    box = focus_box([det("x", 30, 30, 31, 31)], (100, 100), (100, 100), 0, config)
    assert box[2] - box[0] >= min_size and box[3] - box[1] >= min_size
    assert 0 <= box[0] and 0 <= box[1] and box[2] <= 100 and box[3] <= 100


# -- plan_focus -----------------------------------------------------------------------------------------------------

CAR_224 = det("car", 56, 56, 112, 112)  # -> x 160..320, y 120..240 in 480x640


def test_plan_off_shows_frame(frame):
    plan = plan_focus(frame, [CAR_224], (224, 224), "where is the car?", 0, FocusMode.OFF)
    assert plan.mode is FocusMode.OFF and plan.box is None and plan.labels == []
    assert len(plan.images) == 1 and plan.images[0] is frame


def test_plan_crop_only_shows_full_resolution_crop(frame):
    plan = plan_focus(frame, [CAR_224], (224, 224), "where is the car?", 0, FocusMode.CROP_ONLY, NO_MARGIN)
    assert plan.mode is FocusMode.CROP_ONLY
    assert plan.box == (160, 120, 320, 240)
    assert plan.labels == ["car"]
    assert len(plan.images) == 1
    crop = plan.images[0]
    assert crop.shape == (120, 160, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, frame[120:240, 160:320])
    assert not np.shares_memory(crop, frame)


def test_plan_focuses_only_the_questions_its_pattern_finds(frame):
    config = FocusConfig(margin=0.0, margin_per_s=0.0, max_margin=0.0, min_size=1, question_pattern="^what colou?r")
    colour = plan_focus(frame, [CAR_224], (224, 224), "What COLOUR is the car?", 0, FocusMode.CROP_ONLY, config)
    where = plan_focus(frame, [CAR_224], (224, 224), "Where is the car?", 0, FocusMode.CROP_ONLY, config)
    assert colour.mode is FocusMode.CROP_ONLY and colour.box == (160, 120, 320, 240)
    assert where.mode is FocusMode.OFF and where.images[0] is frame, "a crop cannot say where the car is"
    assert NO_MARGIN.focuses_on("anything at all"), "no pattern: every question"


def test_a_question_pattern_that_is_no_regex_is_refused():
    with pytest.raises(ValueError, match="not a regular expression"):
        FocusConfig(question_pattern="what (colour")


def test_plan_crop_and_frame(frame):
    plan = plan_focus(frame, [CAR_224], (224, 224), "where is the car?", 0, FocusMode.CROP_AND_FRAME, NO_MARGIN)
    assert plan.mode is FocusMode.CROP_AND_FRAME
    assert len(plan.images) == 2
    small, crop = plan.images
    assert small.shape == (336, 448, 3) and small.dtype == np.uint8
    np.testing.assert_array_equal(crop, frame[120:240, 160:320])
    expected = np.asarray(Image.fromarray(frame).resize((448, 336), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small, expected)


@pytest.mark.parametrize(
    "shape, side, expected",
    [
        ((480, 640, 3), 448, (336, 448, 3)),
        ((640, 480, 3), 448, (448, 336, 3)),
        ((1080, 1920, 3), 448, (252, 448, 3)),
        ((200, 100, 3), 448, (200, 100, 3)),  # never upscaled
        ((448, 448, 3), 448, (448, 448, 3)),
        ((1000, 10, 3), 100, (100, 1, 3)),
    ],
)
def test_downscale_shapes(shape, side, expected):
    assert downscale(np.zeros(shape, dtype=np.uint8), side).shape == expected


def test_plan_crop_and_frame_small_image_not_upscaled():
    image = np.full((120, 200, 3), 7, dtype=np.uint8)
    plan = plan_focus(image, [det("car", 10, 10, 50, 50)], (120, 200), "car", 0, FocusMode.CROP_AND_FRAME)
    assert plan.images[0].shape == (120, 200, 3)


@pytest.mark.parametrize("mode", [FocusMode.CROP_ONLY, FocusMode.CROP_AND_FRAME])
def test_plan_without_detections_falls_back_to_frame(frame, mode):
    plan = plan_focus(frame, [], (224, 224), "where is the car?", 0, mode)
    assert plan.mode is FocusMode.OFF and plan.box is None and plan.labels == []
    assert len(plan.images) == 1 and plan.images[0] is frame


@pytest.mark.parametrize("mode", [FocusMode.CROP_ONLY, FocusMode.CROP_AND_FRAME])
def test_plan_degenerate_box_falls_back_to_frame(frame, mode):
    plan = plan_focus(frame, [det("car", 300, 300, 400, 400)], (224, 224), "car", 0, mode)
    assert plan.mode is FocusMode.OFF and plan.box is None and plan.images[0] is frame


def test_plan_uses_only_relevant_detections(frame):
    detections = [CAR_224, det("person", 0, 0, 20, 20)]
    plan = plan_focus(frame, detections, (224, 224), "Is the car moving?", 0, FocusMode.CROP_ONLY, NO_MARGIN)
    assert plan.labels == ["car"] and plan.box == (160, 120, 320, 240)
    plan = plan_focus(frame, detections, (224, 224), "What is going on?", 0, FocusMode.CROP_ONLY, NO_MARGIN)
    assert plan.labels == ["car", "person"] and plan.box == (0, 0, 320, 240)


def test_plan_box_grows_with_age(frame):
    young = plan_focus(frame, [CAR_224], (224, 224), "car", 0, FocusMode.CROP_ONLY)
    old = plan_focus(frame, [CAR_224], (224, 224), "car", 3000, FocusMode.CROP_ONLY)
    assert old.images[0].shape[0] > young.images[0].shape[0]
    assert old.images[0].shape[1] > young.images[0].shape[1]
    x1, y1, x2, y2 = old.box
    np.testing.assert_array_equal(old.images[0], frame[y1:y2, x1:x2])


def test_plan_crop_on_grayscale_image():
    image = np.arange(100 * 100, dtype=np.uint8).reshape(100, 100)
    plan = plan_focus(image, [det("x", 10, 20, 30, 40)], (100, 100), "x", 0, FocusMode.CROP_ONLY, NO_MARGIN)
    np.testing.assert_array_equal(plan.images[0], image[20:40, 10:30])


@pytest.mark.parametrize("shape", [(0, 10, 3), (10, 0, 3), (10,), (2, 2, 2, 3)])
def test_plan_rejects_bad_image(shape):
    with pytest.raises(InputError):
        plan_focus(np.zeros(shape, dtype=np.uint8), [CAR_224], (224, 224), "car", 0, FocusMode.CROP_ONLY)


def _answer(frame_id: int, *labels: str, arrived_s: float = 0.0):
    from python_backends.context.store import CloudResult

    detections = tuple(Detection(label, (0.0, 0.0, 10.0, 10.0)) for label in labels)
    return CloudResult(frame_id, 100 * frame_id, 0.0, arrived_s, "text", detections, (64, 64))


def test_mentioned_detections_may_be_none_where_relevant_falls_back_to_all():
    boxes = [Detection("red circle", (0, 0, 5, 5)), Detection("blue star", (5, 5, 9, 9))]
    assert mentioned_detections(boxes, "How many squares?") == []
    assert relevant_detections(boxes, "How many squares?") == boxes
    assert mentioned_detections(boxes, "What colour is the circle?") == boxes[:1]


def test_focus_source_prefers_the_newest_answer_whose_boxes_the_question_names():
    circle, star, text_only = _answer(1, "red circle"), _answer(2, "blue star"), _answer(3)
    results = [circle, star, text_only]
    assert focus_source(results, "What colour is the circle?") is circle, "an older box of the object asked about"
    assert focus_source(results, "What is happening?") is star, "else the newest answer with any box"
    assert focus_source([text_only], "What is happening?") is None, "an answer without boxes cannot focus"
    assert focus_source([], "Anything?") is None
    again = _answer(1, "red circle", arrived_s=5.0)
    assert focus_source([circle, again], "Where is the circle?") is again, "one frame answered twice: the later"
