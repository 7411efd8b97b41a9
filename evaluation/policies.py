"""The eight answering policies of the evaluation, as pure logic.

Six run inside `spotvlm` and differ only in request parameters (`policy_request_parameters`); the first four form a
2x2 of text context (the stream's history, with the LVLM's answers replacing the SVLM's) by visual focus, and two
ablate context transfer (`focus_tracking`, `carry_answers`; a policy that does not set one takes the edge's default):

    policy              use_context  text_context  focus             what the SVLM sees
    edge_only           false        -             off               the frame alone
    replacement_only    true         true          off               the frame + the replaced text history
    focus_only          true         false         auto              the frame or a crop where the LVLM saw the objects
    context_transfer    true         true          auto              both, the cloud's boxes tracked to the frame
    context_transfer_no_tracking  (as context_transfer, focus_tracking off: the paper's method, the cloud's boxes
                                  where it saw them)
    context_transfer_no_carry     (as context_transfer, carry_answers off: the SVLM answers every frame)

replacement_only and context_transfer carry answers: the cloud's own answer to the question asked, carried to the
frame (boxes where they were tracked to, or where the cloud saw them when lost; a region read off the tracked box of
its object), answers it in place of the SVLM.

`auto` is the edge's configured `focus_mode` (and `focus_questions`): the form of crop must be the one its SVLM
takes. The trained tiny edge learned a crop alone in place of the frame on recognition questions, and
`./build_engines.sh --trained` configures exactly that; shown a frame beside a crop, or a crop for a question about
where something is, it answered worse than with no crop (`spotvlm eval`, before this was so: counting 0.44 with no
focus, 0.23 to 0.29 with it; localisation 0.21 against 0.13 to 0.17). CONTEXT's `focus_mode` says what was done.

`focus_only` relies on spotvlm's request parameter `text_context` (a spotvlm without it ignores the unknown parameter
and silently runs `focus_only` as `context_transfer`; `policy_violations` catches that from CONTEXT):

    text_context  bool, default true. false: spotvlm sends the SVLM no HISTORY at all, neither the LVLM's answers
                  nor the SVLM's own earlier turns, but still reads the stream's LVLM results (use_context true) and
                  plans the focus crop from the newest one as today. CONTEXT then says "history_turns": 0 and
                  "replaced_turns": 0; it still gives context_frame / context_age_ms of the LVLM result the
                  focus came from. With use_context false it changes nothing. Turns are still recorded in the store.

Why no history at all rather than the SVLM's own unreplaced turns: `edge_only` has no history, so `focus_only` then
differs from `edge_only` by the crop alone, and `context_transfer` from `replacement_only` by the crop alone.

Two more are client-side, neither a spotvlm run of its own; before any cloud answer both show `edge_only`'s answer:

- `cloud_stale`: for the question asked at a frame, the newest cloud answer to that question that the
  context_transfer run's cloud link had received by then (CONTEXT's `cloud_answer`): the same frames, arrival times
  and questions the edge's context came from;
- `cloud_stale_ideal`: the cloud's zero-delay answer to the question on the newest frame whose answer would have
  arrived, every frame sent; `CloudStaleReplayer` replays it from per-frame cloud answers and a `LatencyModel`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from evaluation.latency import LatencyModel
from python_backends.context.report import ContextReport

EDGE_ONLY = "edge_only"
CLOUD_STALE = "cloud_stale"
REPLACEMENT_ONLY = "replacement_only"
FOCUS_ONLY = "focus_only"
CONTEXT_TRANSFER = "context_transfer"
CONTEXT_TRANSFER_NO_TRACKING = "context_transfer_no_tracking"
CONTEXT_TRANSFER_NO_CARRY = "context_transfer_no_carry"
CLOUD_STALE_IDEAL = "cloud_stale_ideal"
# Not a policy: the cloud model answering each frame itself with no delay, the top of the "gap closed" ratio.
CLOUD_REFERENCE = "cloud"

POLICIES: tuple[str, ...] = (
    EDGE_ONLY,
    CLOUD_STALE,
    CLOUD_STALE_IDEAL,
    REPLACEMENT_ONLY,
    FOCUS_ONLY,
    CONTEXT_TRANSFER_NO_TRACKING,
    CONTEXT_TRANSFER_NO_CARRY,
    CONTEXT_TRANSFER,
)
SPOTVLM_POLICIES: tuple[str, ...] = (
    EDGE_ONLY,
    REPLACEMENT_ONLY,
    FOCUS_ONLY,
    CONTEXT_TRANSFER_NO_TRACKING,
    CONTEXT_TRANSFER_NO_CARRY,
    CONTEXT_TRANSFER,
)
CLIENT_POLICIES: tuple[str, ...] = (CLOUD_STALE, CLOUD_STALE_IDEAL)

TEXT_CONTEXT = "text_context"  # spotvlm's switch for the text history alone (module docstring)
FOCUS_TRACKING = "focus_tracking"  # spotvlm's switch for tracking the cloud's boxes to the current frame
CARRY_ANSWERS = "carry_answers"  # spotvlm's switch for answering with the cloud's answer carried to the frame

# The one place where policies meet spotvlm's request parameters.
_REQUEST_PARAMETERS: dict[str, dict[str, Any]] = {
    EDGE_ONLY: {"use_context": False, "focus": "off"},
    # Replacement carries the cloud's answers to the frame as spotvlm serves them by default: tracked boxes in the
    # history, and the cloud's answer to the very question (boxes tracked) given in place of the SVLM's.
    REPLACEMENT_ONLY: {"use_context": True, TEXT_CONTEXT: True, "focus": "off", CARRY_ANSWERS: True},
    # "auto": the edge's configured focus_mode, the form of crop its SVLM takes (a trained tiny edge: crop_only).
    FOCUS_ONLY: {"use_context": True, TEXT_CONTEXT: False, "focus": "auto", CARRY_ANSWERS: False},
    CONTEXT_TRANSFER: {
        "use_context": True,
        TEXT_CONTEXT: True,
        "focus": "auto",
        FOCUS_TRACKING: True,
        CARRY_ANSWERS: True,
    },
    CONTEXT_TRANSFER_NO_TRACKING: {"use_context": True, TEXT_CONTEXT: True, "focus": "auto", FOCUS_TRACKING: False},
    # The SVLM answers every frame from the tracked context: what the edge model itself makes of it.
    CONTEXT_TRANSFER_NO_CARRY: {
        "use_context": True,
        TEXT_CONTEXT: True,
        "focus": "auto",
        FOCUS_TRACKING: True,
        CARRY_ANSWERS: False,
    },
}

POLICY_DESCRIPTIONS: dict[str, str] = {
    EDGE_ONLY: "the edge model on the frame alone",
    CLOUD_STALE: "the newest cloud answer to the question that context_transfer's link had received, else the edge"
    " answer",
    CLOUD_STALE_IDEAL: "the cloud's zero-delay answer on the newest frame whose answer would have arrived, else the"
    " edge answer (idealised)",
    REPLACEMENT_ONLY: "the edge model with the text history, the cloud's answers replacing its own (and carried to"
    " the frame as the answer where they answer the question asked)",
    FOCUS_ONLY: "the edge model on the frame plus a crop where the cloud last saw the objects",
    CONTEXT_TRANSFER: "the edge model with both: replaced text history and the focus crop, the cloud's boxes tracked"
    " to the current frame; the cloud's answer to the question itself, carried to the frame, answers it",
    CONTEXT_TRANSFER_NO_CARRY: "context_transfer without carried answers: the edge model answers every frame from"
    " the tracked context",
    CONTEXT_TRANSFER_NO_TRACKING: "context_transfer without tracking: the cloud's boxes where it saw them (the paper's"
    " method)",
    CLOUD_REFERENCE: "the cloud model answering the current frame with no delay (reference)",
}


def policy_request_parameters(policy: str) -> dict[str, Any]:
    """spotvlm's request parameters for `policy` (a fresh dict; add max_tokens / cloud_delay as needed)."""
    if policy in CLIENT_POLICIES:
        raise ValueError(
            f"{policy} is client-side, from the cloud answers context_transfer's link received (cloud_stale) or the"
            " cloud's zero-delay answers (cloud_stale_ideal), and edge_only's answers; it has no spotvlm request"
            " parameters"
        )
    try:
        return dict(_REQUEST_PARAMETERS[policy])
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; spotvlm policies: {', '.join(SPOTVLM_POLICIES)}") from None


def policy_violations(policy: str, context: ContextReport) -> list[str]:
    """What spotvlm's CONTEXT reply shows it did against `policy` ([] when it did what the policy asks).

    Checks only what CONTEXT can show: a spotvlm that ignores `text_context` is caught on focus_only as soon as the
    stream has a turn to put in its history.
    """
    params = policy_request_parameters(policy)
    problems = []
    focus_mode = context.focus_mode
    if params["focus"] == "off" and focus_mode not in (None, "off"):
        problems.append(f"{policy}: focus_mode is {focus_mode!r}, expected 'off'")
    no_history = not params["use_context"] or not params.get(TEXT_CONTEXT, True)
    if no_history and context.history_turns:
        problems.append(
            f"{policy}: {context.history_turns} history turns went to the SVLM, expected none"
            + ("" if not params["use_context"] else f" (does spotvlm accept the {TEXT_CONTEXT!r} parameter?)")
        )
    if not params["use_context"] and context.has_context:
        problems.append(f"{policy}: used cloud context from frame {context.context_frame}, expected none")
    if params.get(FOCUS_TRACKING) is False and (context.tracked is not None or context.focus_tracked is not None):
        problems.append(
            f"{policy}: the cloud's boxes were tracked (tracked {context.tracked}, focus_tracked"
            f" {context.focus_tracked}), expected focus_tracking off"
        )
    if not params.get(CARRY_ANSWERS, False) and context.answer_source not in (None, "svlm"):
        problems.append(
            f"{policy}: answered with the cloud's carried answer ({context.answer_source}), expected the SVLM's"
        )
    return problems


# -- cloud_stale -------------------------------------------------------------------------------------------------------

A = TypeVar("A")


@dataclass(frozen=True)
class StaleChoice(Generic[A]):
    """What cloud_stale shows at one time: a cloud answer and where it came from, or the edge's fallback."""

    answer: A
    source: str  # "cloud" or "edge"
    cloud_frame_id: int | None = None
    context_age_s: float | None = None  # the shown time minus the cloud frame's send time


@dataclass(frozen=True)
class _Sent(Generic[A]):
    frame_id: int
    sent_s: float
    arrival_s: float | None  # None: past the deadline, never arrives
    free_s: float  # when the in-flight slot frees: the arrival, or the deadline
    answer: A


class CloudStaleReplayer(Generic[A]):
    """Replays which cloud answer a client that shows the cloud's late answers would show, at any time.

    Frames are offered in send order. A frame goes to the cloud only if fewer than `max_inflight` frames are there
    (spotvlm's `cloud_max_inflight`, default 1: frames are skipped while the cloud is busy, as on the real link);
    None sends every frame. A frame sent at t arrives at t + latency.latency_s(t), or never when that is over
    `deadline_s` (spotvlm's `cloud_deadline_ms`; its slot frees at the deadline). `answer(edge, at_s)` gives the
    answer of the newest frame (latest send time) that has arrived by `at_s` (inclusive), so a late answer for an
    older frame never displaces a newer one, as in spotvlm; before any arrival, the edge answer.

    Times are explicit (`sent_s`, `at_s`) or read from `clock` when left out, so tests drive a fake clock.
    """

    def __init__(
        self,
        latency: LatencyModel,
        clock: Callable[[], float] = time.monotonic,
        max_inflight: int | None = 1,
        deadline_s: float | None = None,
    ) -> None:
        if max_inflight is not None and max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1 or None, got {max_inflight}")
        if deadline_s is not None and deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0 or None, got {deadline_s}")
        self.latency = latency
        self.clock = clock
        self.max_inflight = max_inflight
        self.deadline_s = deadline_s
        self._sent: list[_Sent[A]] = []
        self._last_offer_s: float | None = None

    def inflight(self, at_s: float) -> int:
        return sum(1 for s in self._sent if s.sent_s <= at_s < s.free_s)

    def offer(self, frame_id: int, cloud_answer: A, sent_s: float | None = None) -> bool:
        """Sends the frame to the (replayed) cloud if a slot is free at `sent_s`; returns whether it went."""
        now = self.clock() if sent_s is None else sent_s
        if self._last_offer_s is not None and now < self._last_offer_s:
            raise ValueError(f"frames must be offered in send order: {now} after {self._last_offer_s}")
        self._last_offer_s = now
        if self.max_inflight is not None and self.inflight(now) >= self.max_inflight:
            return False
        latency = self.latency.latency_s(now)
        if latency < 0:
            raise ValueError(f"latency model gave a negative latency {latency} for a frame sent at {now}")
        if self.deadline_s is not None and latency > self.deadline_s:
            self._sent.append(_Sent(frame_id, now, None, now + self.deadline_s, cloud_answer))
        else:
            self._sent.append(_Sent(frame_id, now, now + latency, now + latency, cloud_answer))
        return True

    def answer(self, edge_answer: A, at_s: float | None = None) -> StaleChoice[A]:
        now = self.clock() if at_s is None else at_s
        arrived = [s for s in self._sent if s.arrival_s is not None and s.arrival_s <= now]
        if not arrived:
            return StaleChoice(edge_answer, "edge")
        newest = max(arrived, key=lambda s: (s.sent_s, s.frame_id))
        return StaleChoice(newest.answer, "cloud", newest.frame_id, now - newest.sent_s)


@dataclass(frozen=True)
class ReplayFrame(Generic[A]):
    frame_id: int
    time_s: float  # the frame's time in the video; it is sent and shown at this time
    cloud_answer: A  # the cloud's answer for this frame, as if it had no delay
    edge_answer: A  # edge_only's answer for this frame


def replay_cloud_stale(
    frames: Sequence[ReplayFrame[A]],
    latency: LatencyModel,
    max_inflight: int | None = 1,
    deadline_s: float | None = None,
) -> list[StaleChoice[A]]:
    """cloud_stale's answer for every frame of one video, in the order given.

    Each frame is offered, then shown, at its time: with no latency at all a frame shows its own cloud answer, so
    cloud_stale at zero latency and zero service time equals the cloud reference.
    """
    replayer: CloudStaleReplayer[A] = CloudStaleReplayer(latency, max_inflight=max_inflight, deadline_s=deadline_s)
    choices: list[StaleChoice[A] | None] = [None] * len(frames)
    # The replay runs in time order; the answers come back in the caller's order.
    for index in sorted(range(len(frames)), key=lambda i: (frames[i].time_s, frames[i].frame_id)):
        frame = frames[index]
        replayer.offer(frame.frame_id, frame.cloud_answer, sent_s=frame.time_s)
        choices[index] = replayer.answer(frame.edge_answer, at_s=frame.time_s)
    return choices  # type: ignore[return-value]
