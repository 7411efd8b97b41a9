"""Region questions answered from where their object is now.

A region question ("Where is the red circle?") is answered by a cell of a 3x3 grid over the frame: a function of
where the object is. The cloud's region answer goes stale as soon as the object moves; its box does not, once it is
tracked to the current frame. So the cloud link asks the cloud, beside each standing region question, for the box of
the object it names (`grounding_question`), and spotvlm answers the region question with the cell of that box tracked
to the frame in front of it (`carried_region`), where the box agrees with the cloud's own region answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from python_backends.context.store import with_new_questions
from python_backends.text import normalise

# The cells a region answer names, row by row (top, middle, bottom), each row left to right; the middle one is
# "center". The benchmark's region questions are answered in these words.
REGIONS = (
    "top left",
    "top center",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom center",
    "bottom right",
)

DEFAULT_REGION_PATTERN = r"^\s*where is the (?P<object>.+?)\s*\?*\s*$"
DEFAULT_GROUNDING_PROMPT = "Locate the {object} and give its bbox_2d in JSON."

# Words a region answer may carry besides the cell's own ("it is in the upper left corner of the image").
_REGION_FILLER = frozenset(
    {"it", "is", "its", "in", "at", "on", "of", "to", "towards", "toward", "corner", "side", "part", "area",
     "region", "image", "frame", "picture", "screen", "edge", "s"}
)  # fmt: skip
_ROW_WORDS = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_COLUMN_WORDS = {"left": "left", "right": "right"}
_CENTRE_WORDS = frozenset({"center", "centre", "middle", "mid", "central"})


@dataclass(frozen=True)
class RegionQuestions:
    """Which questions are region questions and how the cloud is asked for their object's box. A `pattern` of `off`
    turns this off (as does an empty one from Python; an empty model parameter means the default): region questions
    are then carried as the cloud answered them."""

    pattern: str = DEFAULT_REGION_PATTERN  # case-insensitive; its group `object` names the object
    grounding_prompt: str = DEFAULT_GROUNDING_PROMPT  # `{object}` is replaced by that name
    _compiled: re.Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern.strip().lower() in ("", "off"):
            return
        try:
            compiled = re.compile(self.pattern, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"region question pattern {self.pattern!r} is not a regular expression: {exc}") from exc
        if "object" not in compiled.groupindex:
            raise ValueError(f"region question pattern {self.pattern!r} needs a group named `object`")
        if "{object}" not in self.grounding_prompt:
            raise ValueError(f"region grounding prompt must contain {{object}}, got {self.grounding_prompt!r}")
        object.__setattr__(self, "_compiled", compiled)

    @property
    def enabled(self) -> bool:
        return self._compiled is not None

    def object_of(self, question: str) -> str | None:
        """The object a region question names, as asked; None for any other question."""
        if self._compiled is None:
            return None
        match = self._compiled.match(question)
        if match is None or not match.group("object").strip():
            return None
        return " ".join(match.group("object").split())

    def grounding_question(self, question: str) -> str | None:
        """What the cloud is asked for the box of a region question's object; None for any other question."""
        name = self.object_of(question)
        return None if name is None else self.grounding_prompt.replace("{object}", name)


def parse_region(text: str) -> str | None:
    """The 3x3 grid cell a prediction names (one of REGIONS), or None when it names none or says more."""
    words = [w for w in normalise(text).split() if w not in _REGION_FILLER]
    if not words:
        return None
    rows, columns = set(), set()
    for word in words:
        if word in _ROW_WORDS:
            rows.add(_ROW_WORDS[word])
        elif word in _COLUMN_WORDS:
            columns.add(_COLUMN_WORDS[word])
        elif word not in _CENTRE_WORDS:
            return None  # a word that is not about position: not a plain region answer
    if len(rows) > 1 or len(columns) > 1 or len(words) > 2:
        return None
    row = rows.pop() if rows else "middle"
    column = columns.pop() if columns else "center"
    if row == "middle" and column == "center":
        return "center"
    if row != "middle" and column == "center":
        return f"{row} center"
    return f"{row} {column}"


def region_at(x: float, y: float) -> str:
    """The cell of a point given as fractions of the frame's width and height (clipped into the frame)."""
    column, row = (min(2, max(0, int(v * 3))) for v in (x, y))
    return REGIONS[row * 3 + column]


def region_of_box(box: Sequence[float], size: tuple[int, int]) -> str:
    """The cell of a box's centre in an image of `size` (height, width)."""
    return region_at((box[0] + box[2]) / 2 / size[1], (box[1] + box[3]) / 2 / size[0])


def carried_region(
    cloud_box: Sequence[float],
    cloud_size: tuple[int, int],
    tracked_box: Sequence[float],
    frame_size: tuple[int, int],
    cloud_text: str | None = None,
) -> str | None:
    """The region of the object now: the cell of its box tracked to the current frame (`tracked_box`, in that
    frame's pixels of `frame_size`). None when the cloud also named a region for the same frame (`cloud_text`) and
    its box (in the pixels of the image of `cloud_size` it saw) lies in another cell: one of the two is wrong, the
    cloud names regions more reliably than it draws boxes, and a wrong box is tracked to the wrong place."""
    named = parse_region(cloud_text) if cloud_text is not None else None
    if named is not None and region_of_box(cloud_box, cloud_size) != named:
        return None
    return region_of_box(tracked_box, frame_size)


def grounded_questions(questions: Sequence[str], regions: RegionQuestions) -> list[str]:
    """`questions` (a stream's standing questions), then the grounding question of each region question among them
    that is not already standing (case and spacing aside): what a frame sent to the cloud asks."""
    groundings = (regions.grounding_question(question) for question in questions)
    return with_new_questions(questions, (g for g in groundings if g is not None))
