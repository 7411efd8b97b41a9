"""Watched objects and questions: the cloud is asked, now and then, where each of a configured list of objects is,
and each of a configured list of questions.

A question the stream has not asked before has no cloud answer of its own until the cloud has answered it, a whole
cloud delay later: with a 2 s delay and questions that stand 3 s, most of a question's life. Questions about where an
object is (a grounding question, "Locate the red circle ...", or a region question, "Where is the red circle?") can
do better when the cloud has recently located that object anyway. So a frame sent to the cloud also asks, at most
once every `interval_s` per stream, the grounding question of every watched object (`questions`), and the edge keeps
the newest answer to each as it keeps the answers to the stream's own questions (context/received.py). A grounding or
region question about a watched object then finds the cloud's box for it, tracked to the frame in front of the edge,
before its own first answer arrives. A watched question (`extra_questions`, asked as written) likewise has an
answer no older than the cloud's delay and the interval when the stream first asks it.

The lists name what a deployment cares about (its classes, the questions its application asks, or every object and
question of a closed vocabulary); the cloud is asked about each object whether it is in the frame or not. Their cost
is one larger cloud request per interval: one image encoding, one more generated answer per object and question.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_backends.context.region_questions import DEFAULT_GROUNDING_PROMPT

DEFAULT_INTERVAL_S = 1.0


@dataclass(frozen=True)
class WatchList:
    """`objects` as the grounding prompt names them; `prompt` has `{object}` where the name goes; `extra_questions`
    are asked as written."""

    objects: tuple[str, ...] = ()
    prompt: str = DEFAULT_GROUNDING_PROMPT
    interval_s: float = DEFAULT_INTERVAL_S
    extra_questions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.objects and "{object}" not in self.prompt:
            raise ValueError(f"the watch list's grounding prompt must contain {{object}}, got {self.prompt!r}")
        if not self.interval_s >= 0:
            raise ValueError(f"the watch interval must be >= 0 seconds, got {self.interval_s}")

    @classmethod
    def parse(cls, objects: str, prompt: str, interval_s: float = DEFAULT_INTERVAL_S, questions: str = "") -> WatchList:
        """From a comma-separated list of object names ("red circle, blue square") and a `;`-separated list of
        questions ("How many cars are there?; Is the door open?"); empty or `off`: none. Items are kept as written,
        spacing aside; one given twice (case aside) is asked once."""
        return cls(_items(objects, ",", "name"), prompt, interval_s, _items(questions, ";", "question"))

    @property
    def enabled(self) -> bool:
        return bool(self.objects or self.extra_questions)

    def questions(self) -> list[str]:
        """The grounding question of every watched object, then every watched question, in the lists' order."""
        return [self.prompt.replace("{object}", name) for name in self.objects] + list(self.extra_questions)

    def due(self, last_sent_s: float | None, now_s: float) -> bool:
        """Whether a frame sent now should carry the watch questions, the last frame that did having been sent at
        `last_sent_s` (None: none yet)."""
        return self.enabled and (last_sent_s is None or now_s - last_sent_s >= self.interval_s)


def _items(text: str, separator: str, kind: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "off"):
        return ()
    items: list[str] = []
    seen: set[str] = set()
    for item in text.split(separator):
        cleaned = " ".join(item.split())
        if not cleaned:
            raise ValueError(f"the watch list {text!r} has an empty {kind} (two {separator!r}, or one at an end)")
        if cleaned.casefold() not in seen:
            seen.add(cleaned.casefold())
            items.append(cleaned)
    return tuple(items)
