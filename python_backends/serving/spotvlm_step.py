"""The edge model `spotvlm` (over 500 lines, why at the end): the SVLM's answers, improved by the LVLM's late ones.

Per request (a frame of a stream; the stream is the Triton sequence):
1. dispatch the frame to the cloud when the link allows it (never waiting for the cloud);
2. read the stream's context: its recent turns and the LVLM answers that have arrived;
3. context replacement (LVLM answers replace the SVLM's in the history) and visual focus (a crop where the LVLM
   found the objects the question is about);
4. ask `svlm` (or `svlm_focus` for frame + crop) over BLS, all requests of the batch concurrently;
5. answer TEXT and a CONTEXT JSON saying which context was used and where the time went.

`context_ingest` requests arrive here too (input INGEST): Triton routes them by correlation id to the instance that
owns the stream.

The module is over 500 lines because `SpotVLMStep` is one model instance's state (its store, cloud link, counters
and per-stream bookkeeping) that every step above reads and writes; the parts that need none of it already live
apart (spotvlm_config.py, request_fields.py, ingest.py, metrics.py, python_backends/context).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from python_backends.cloud.breaker import CircuitBreaker
from python_backends.cloud.delay import DelayInjector, parse_delay_spec
from python_backends.cloud.link import CloudJob, CloudLink, CloudReply
from python_backends.context.focus import FocusMode, FocusPlan, parse_focus_mode
from python_backends.context.received import MAX_QUESTIONS, ReceivedAnswers
from python_backends.context.report import CloudAnswerReport, ContextReport, LatencyBreakdown
from python_backends.context.replacement import ReplacedHistory, WordBudget
from python_backends.context.served_context import SVLM, AnswerTracking, CarriedAnswer, build_context_input
from python_backends.context.region_questions import grounded_questions
from python_backends.context.served_context import track_answers, track_region
from python_backends.context.store import CloudResult, ContextStore, TurnRecord, question_key, with_new_questions
from python_backends.context.token_budget import TokenizerBudget
from python_backends.errors import InputError
from python_backends.params import model_parameters, with_env_overrides
from python_backends.prompts import history_json
from python_backends.serving.ingest import IngestRecord, parse_ingest_json
from python_backends.serving.lvlm_step import read_image
from python_backends.serving.request_fields import read_max_tokens, read_prompt
from python_backends.serving.spotvlm_config import SpotVLMConfig
from python_backends.triton_io import (
    bool_parameter,
    bytes_tensor,
    error_response,
    first_item,
    get_input,
    request_parameters,
    response,
)

log = logging.getLogger("spotvlm.spotvlm")

SEQUENCE_START = 1
SEQUENCE_END = 2


def _pb():
    import triton_python_backend_utils as pb_utils

    return pb_utils


@dataclass
class FrameRequest:
    stream_id: int
    start: bool
    end: bool
    image: np.ndarray
    image_bytes: bytes | None  # kept so the cloud gets the client's own JPEG, not a re-encoding
    image_tensor: Any  # the request's IMAGE tensor (None for IMAGE_BYTES); forwarded to svlm as is, see _image_input
    prompt: str
    timestamp_ms: int
    max_tokens: int
    focus: FocusMode
    use_context: bool
    text_context: bool  # false: no HISTORY for the SVLM, while the cloud's answers still plan the focus
    tracking: bool  # carry the cloud's boxes to this frame (focus_tracking)
    carry_answers: bool  # answer with the cloud's own answer carried to this frame, where it can be (carry_answers)
    cloud_delay: DelayInjector | None
    received: float  # perf_counter when parsing began


@dataclass
class PreparedFrame:
    frame: FrameRequest
    frame_id: int
    dispatch: str
    history: ReplacedHistory
    plan: FocusPlan
    model: str
    inputs: list = field(default_factory=list)
    prepare_ms: float = 0.0
    context_rtt_ms: float | None = None  # the cloud round trip of the freshest LVLM answer used
    context_detections: int | None = None  # how many boxes that answer carried (0: text only)
    focus_frame: int | None = None  # the frame of the cloud answer whose boxes the focus crop used
    cloud_questions: int | None = None  # how many questions the cloud answers in reach answer
    focus_tracked: bool | None = None  # None: tracking off for this frame
    context_tracking: AnswerTracking | None = None  # the history's freshest cloud answer carried to this frame
    carried_answer: CarriedAnswer | None = None  # answer with this, not the SVLM (ContextInput.carried_answer)
    cloud_answer: CloudAnswerReport | None = None  # the newest cloud answer received to this frame's question


@dataclass
class SvlmReply:
    text: str
    generate_ms: float
    svlm_ms: float


class SvlmError(RuntimeError):
    def __init__(self, message: str, invalid_arg: bool) -> None:
        super().__init__(message)
        self.invalid_arg = invalid_arg


class SpotVLMStep:
    def __init__(self, args: dict, pb_utils: Any = None) -> None:
        pb = pb_utils or _pb()
        self._pb_utils = pb
        # Environment variables SPOTVLM_<PARAMETER> override the config (SPOTVLM_CLOUD_URL=off, ...).
        config = SpotVLMConfig.from_params(with_env_overrides(model_parameters(args["model_config"]), os.environ))
        self.config = config
        self.model_name = args.get("model_name", "spotvlm")
        self.default_max_tokens = config.default_max_tokens
        self.max_tokens_limit = config.max_tokens_limit
        self.max_input_pixels = config.max_input_pixels
        self.max_prompt_tokens = config.max_prompt_tokens
        self.max_context_age_ms = config.max_context_age_ms
        self.default_focus = config.focus_mode
        # History boxes are written in the pixels of the SVLM's square input, as it answers.
        self.svlm_image_size = config.svlm_side()
        self.served = {on: config.served_context(self.svlm_image_size, tracking=on) for on in (True, False)}
        self.budget = _token_budget(config.checkpoint)
        self.store = ContextStore(config.store_limits())
        # Per question, the newest cloud answer the link received (CONTEXT's cloud_answer: the cloud_stale baseline).
        self.received = ReceivedAnswers(
            max_streams=self.store.limits.max_streams, max_questions=max(MAX_QUESTIONS, 2 * config.prompts_per_frame())
        )
        self._lock = threading.Lock()  # guards the dicts below; the cloud thread reads them
        self._next_frame: dict[int, int] = {}
        self._epochs: dict[int, int] = {}  # new at every sequence start: late replies of an old run are dropped
        # Epochs are never reused, not even after END or expiry, when a stream's entry is forgotten.
        self._epoch_counter = itertools.count(1)
        # job -> (epoch, the questions asked of that frame in the job's prompt order, how many of them are the
        # stream's own), while in flight. Keyed by the job itself (CloudJob compares by identity), not (stream,
        # frame): frame ids restart with every run, so a new run's frame would collide with an old run's in-flight job.
        self._dispatched: dict[CloudJob, tuple[int, tuple[str, ...], int]] = {}
        self.watch = config.watch_list()
        self._watch_sent_s: dict[int, float] = {}  # stream -> when a frame last asked the cloud the watch list
        self._delays: dict[str, DelayInjector] = {}
        self.cloud_max_tokens = config.cloud_max_tokens
        # What the LVLM is asked. Real Qwen2.5-VL checkpoints return boxes when told to, e.g.
        # "{question} Outline the position of each object it asks about and output all the coordinates in JSON format."
        self.cloud_prompt = config.cloud_prompt
        self.link = self._start_cloud_link(config)
        try:
            from python_backends.serving.metrics import SpotMetrics

            self.metrics = SpotMetrics(pb, self.model_name)
        except Exception:  # metrics are an aid; a server without them still answers
            log.warning("custom metrics unavailable", exc_info=True)
            self.metrics = None

    # -- cloud link ---------------------------------------------------------------------------------------------

    def _start_cloud_link(self, config: SpotVLMConfig) -> CloudLink | None:
        if config.cloud_off:
            log.info("cloud link off")
            return None
        url = config.cloud_url
        # One breaker per cloud endpoint (cloud_url may name several); cloud_state is down only when all are.
        breaker_factory = functools.partial(
            CircuitBreaker,
            failure_threshold=config.cloud_failure_threshold,
            backoff_s=config.cloud_backoff_ms / 1000.0,
            max_backoff_s=config.cloud_max_backoff_ms / 1000.0,
            slow_ms=config.cloud_slow_ms,
        )
        link = CloudLink(
            url,
            model=config.cloud_model,
            deadline_s=config.cloud_deadline_ms / 1000.0,
            jpeg_quality=config.cloud_jpeg_quality,
            max_side=config.cloud_max_side,
            max_inflight=config.cloud_max_inflight,
            breaker_factory=breaker_factory,
            delay=self._delay(config.cloud_delay),
            on_reply=self._on_cloud_reply,
            on_error=self._on_cloud_error,
        )
        link.start()
        log.info("cloud link to %s started", url)
        return link

    def _delay(self, spec: str | None) -> DelayInjector | None:
        spec = (spec or "").strip()
        if spec in ("", "0"):
            return None
        if spec not in self._delays:
            if len(self._delays) >= 32:  # per-request specs: keep the cache bounded
                self._delays.clear()
            self._delays[spec] = parse_delay_spec(spec)
        return self._delays[spec]

    def _on_cloud_reply(self, reply: CloudReply) -> None:
        """Runs on the cloud link's thread: file the LVLM answer under its stream, unless that run has ended."""
        job = reply.job
        with self._lock:
            sent = self._dispatched.pop(job, None)
            current = self._epochs.get(job.stream_id)
        if sent is None or sent[0] != current:
            return
        _, questions, own = sent
        results = [
            CloudResult(
                frame_id=job.frame_id,
                frame_timestamp_ms=job.frame_timestamp_ms,
                sent_s=reply.sent_s,
                arrived_s=reply.arrived_s,
                text=answer.text,
                detections=tuple(answer.detections),
                frame_size=reply.frame_size,
                question=question,
            )
            for question, answer in zip(questions, reply.answers, strict=True)
        ]
        # One answer per standing question, all on this frame. The frame's own question goes last: of one frame's
        # answers, readers that take the later arrival (context replacement by frame) take the one to what it asked.
        # The watch list's answers are kept only as received: in the store's window they would crowd out the
        # stream's own questions' answers and fill the SVLM's history with objects nobody asked about.
        # The record first: a reader that sees the store's new answers finds the watched ones there too.
        self.received.add(job.stream_id, results)
        self.store.add_cloud_results(job.stream_id, results[:own][::-1])

    def _on_cloud_error(self, job: CloudJob, kind: str) -> None:
        with self._lock:
            sent = self._dispatched.pop(job, None)
            if sent is not None and sent[2] < len(sent[1]) and sent[0] == self._epochs.get(job.stream_id):
                # The watch list went unanswered: the next frame sent asks it again, not one interval later.
                self._watch_sent_s.pop(job.stream_id, None)
        log.debug("cloud request for stream %d frame %d failed: %s", job.stream_id, job.frame_id, kind)

    def _dispatch(self, frame: FrameRequest, frame_id: int) -> str:
        if self.link is None:
            return "off"
        # The frame asks the cloud every standing question of its stream, its own first, so the context keeps an
        # answer on a recent frame to each question the stream asks.
        questions = self.store.ask(frame.stream_id, frame.prompt)
        watching = False
        if frame.tracking:
            # Beside each region question, the box of its object: the edge tracks it to answer the region now.
            questions = grounded_questions(questions, self.served[True].region_rules)
            with self._lock:
                watching = self.watch.due(self._watch_sent_s.get(frame.stream_id), time.monotonic())
        own = len(questions)
        if watching:
            questions = with_new_questions(questions, self.watch.questions())
        prompts = [self.cloud_prompt.replace("{question}", question) for question in questions]
        job = CloudJob(
            stream_id=frame.stream_id,
            frame_id=frame_id,
            frame_timestamp_ms=frame.timestamp_ms,
            prompt=prompts[0],
            other_prompts=tuple(prompts[1:]),
            max_tokens=self.cloud_max_tokens,
            image=None if frame.image_bytes is not None else frame.image,
            image_bytes=frame.image_bytes,
            delay=frame.cloud_delay,
        )
        with self._lock:  # before submit: the reply may come back on the link's thread before submit returns
            self._dispatched[job] = (self._epochs.get(frame.stream_id, 0), tuple(questions), own)
        outcome = self.link.submit(job)
        with self._lock:
            if outcome != "sent":
                self._dispatched.pop(job, None)
            elif watching:  # a skipped frame did not ask: the next one sent does
                self._watch_sent_s[frame.stream_id] = time.monotonic()
        return outcome

    # -- reading requests ---------------------------------------------------------------------------------------

    def _parse(self, request) -> FrameRequest | IngestRecord:
        received = time.perf_counter()
        stream_id = read_stream_id(request)
        flags = int(request.flags())
        ingest = get_input(request, "INGEST", required=False)
        if ingest is not None:
            return parse_ingest_json(stream_id, first_item(ingest, "INGEST"))
        params = request_parameters(request)
        image = read_image(request, self.max_input_pixels)
        encoded = get_input(request, "IMAGE_BYTES", required=False)
        timestamp = get_input(request, "TIMESTAMP_MS", required=False)
        delay_spec = params.get("cloud_delay")
        if delay_spec is not None and str(delay_spec).strip().startswith("trace:"):
            # A trace names a file on the server: only the config or the environment may choose one.
            raise InputError("request parameter cloud_delay: trace: specs are accepted only in the model config")
        try:
            delay = self._delay(str(delay_spec)) if delay_spec is not None else None
        except ValueError as exc:
            raise InputError(f"request parameter cloud_delay: {exc}") from exc
        return FrameRequest(
            stream_id=stream_id,
            start=bool(flags & SEQUENCE_START),
            end=bool(flags & SEQUENCE_END),
            image=image,
            image_bytes=bytes(first_item(encoded, "IMAGE_BYTES")) if encoded is not None else None,
            image_tensor=self._pb_utils.get_input_tensor_by_name(request, "IMAGE"),
            prompt=self._read_prompt(request),
            timestamp_ms=int(first_item(timestamp, "TIMESTAMP_MS")) if timestamp is not None else now_ms(),
            max_tokens=read_max_tokens(request, self.default_max_tokens, self.max_tokens_limit),
            focus=parse_focus_mode(params.get("focus"), self.default_focus),
            use_context=bool_parameter(params, "use_context", True),
            text_context=bool_parameter(params, "text_context", True),
            tracking=bool_parameter(params, "focus_tracking", self.config.focus_tracking),
            carry_answers=bool_parameter(params, "carry_answers", self.config.carry_answers),
            cloud_delay=delay,
            received=received,
        )

    def _read_prompt(self, request) -> str:
        # svlm refuses a prompt over its token limit, but its error reaches a BLS caller as INTERNAL, whatever its code
        # was: refuse a question too long to ever fit here, in the edge tokenizer's tokens, as the client's error.
        prompt = read_prompt(request)
        tokens = self.budget.count(prompt)
        if tokens > self.max_prompt_tokens:
            raise InputError(f"PROMPT is {tokens} tokens, over the limit of {self.max_prompt_tokens}")
        return prompt

    # -- one frame ----------------------------------------------------------------------------------------------

    def _prepare(self, frame: FrameRequest) -> PreparedFrame:
        stream = frame.stream_id
        with self._lock:
            if frame.start or stream not in self._next_frame:
                self._epochs[stream] = next(self._epoch_counter)
                self._next_frame[stream] = 0
            frame_id = self._next_frame[stream]
            self._next_frame[stream] = frame_id + 1
        if frame.start:
            self.store.start_stream(stream)
            self.received.forget(stream)
            with self._lock:
                self._watch_sent_s.pop(stream, None)
            self._cancel_cloud_calls(stream)  # the restarted run's own call, dispatched below, is not touched

        # Every frame, before anything can fail for it: a later cloud answer about it is tracked from here.
        frames = self.store.add_frame(stream, frame_id, frame.timestamp_ms, frame.image)

        dispatch = self._dispatch(frame, frame_id)

        snapshot = self.store.snapshot(stream) if frame.use_context else None
        cloud_questions = None
        served = self.served[frame.tracking]
        context = None
        if snapshot is not None:
            results = [
                r
                for r in self._with_newest_answers(frame, snapshot.cloud_results)
                if frame.timestamp_ms - r.frame_timestamp_ms <= self.max_context_age_ms
            ]
            cloud_questions = len({question_key(r.question) for r in results if r.question is not None})
            tracking = None
            region_track = None
            if frame.tracking and results:
                tracking = track_answers(frames, results, frame_id, frame.prompt, served.max_tracked_boxes)
                if frame.carry_answers and frame.text_context:  # a region read off the box is only ever carried
                    region_track = track_region(frames, results, frame_id, frame.prompt, served.region_rules)
            context = build_context_input(
                frame.image,
                frame.prompt,
                frame.timestamp_ms,
                snapshot.turns,
                results,
                tracking,
                frame.focus,
                served,
                self.budget,
                text_context=frame.text_context,
                region_track=region_track,
            )
        if context is not None:
            history, plan = context.history, context.plan
        else:
            history = ReplacedHistory(turns=[], replaced_turns=0, context_frame=None, context_age_ms=None)
            plan = FocusPlan(mode=FocusMode.OFF, box=None, labels=[], images=[frame.image])

        pb = self._pb_utils
        model = "svlm_focus" if len(plan.images) == 2 else "svlm"
        inputs = [
            _image_input(pb, frame, plan.images[0]),
            pb.Tensor("PROMPT", np.array([[frame.prompt.encode("utf-8")]], dtype=np.object_)),
            pb.Tensor("MAX_TOKENS", np.array([[frame.max_tokens]], dtype=np.int32)),
        ]
        if model == "svlm_focus":
            inputs.append(pb.Tensor("FOCUS_IMAGE", np.ascontiguousarray(plan.images[1])[None]))
        if history.turns:
            inputs.append(pb.Tensor("HISTORY", np.array([[history_json(history.turns).encode("utf-8")]], np.object_)))
        prepared = PreparedFrame(frame, frame_id, dispatch, history, plan, model, inputs)
        prepared.cloud_questions = cloud_questions
        prepared.cloud_answer = self.received.report(stream, frame.prompt, frame.timestamp_ms)
        if context is not None and context.focus_result is not None:
            prepared.focus_frame = context.focus_result.frame_id
            prepared.focus_tracked = context.focus_tracked if frame.tracking else None
        if context is not None and frame.tracking:
            prepared.context_tracking = context.context_tracking
            if frame.carry_answers and frame.text_context:
                prepared.carried_answer = context.carried_answer
        latest = history.context_result  # kept when text_context is off: CONTEXT still names it
        if latest is not None:
            prepared.context_rtt_ms = round(latest.rtt_ms, 1)
            prepared.context_detections = len(latest.detections)
        return prepared

    def _with_newest_answers(self, frame: FrameRequest, results: Sequence[CloudResult]) -> list[CloudResult]:
        """The store's window of the stream's cloud answers, with the newest answer the link received to the question
        asked (and, tracking on, to the grounding question of a region question's object) where the window holds no
        answer to it on that frame or a newer one: a question asked again after other questions still finds the
        cloud's last answer to it. By arrival."""
        asked = [frame.prompt]
        grounding = self.served[True].region_rules.grounding_question(frame.prompt) if frame.tracking else None
        if grounding is not None:
            asked.append(grounding)
        dropped = []
        for text in asked:
            newest = self.received.newest(frame.stream_id, text)
            key = question_key(text)
            held = (r.frame_id for r in results if r.question is not None and question_key(r.question) == key)
            if newest is not None and all(frame_id < newest.frame_id for frame_id in held):
                dropped.append(newest)
        # Stable: one reply's answers, filed together, keep their order.
        return sorted([*dropped, *results], key=lambda r: r.arrived_s)

    async def _answer(self, prepared: PreparedFrame) -> SvlmReply:
        """The cloud's answer carried to this frame where there is one (the SVLM is not asked), else the SVLM's."""
        if prepared.carried_answer is not None:
            return SvlmReply(text=prepared.carried_answer.text, generate_ms=0.0, svlm_ms=0.0)
        return await self._ask_svlm(prepared)

    async def _ask_svlm(self, prepared: PreparedFrame) -> SvlmReply:
        pb = self._pb_utils
        request = pb.InferenceRequest(
            model_name=prepared.model, inputs=prepared.inputs, requested_output_names=["TEXT", "GENERATE_MS"]
        )
        started = time.perf_counter()
        reply = await request.async_exec()
        svlm_ms = (time.perf_counter() - started) * 1000.0
        if reply.has_error():
            error = reply.error()
            invalid = error.code() == pb.TritonError.INVALID_ARG if hasattr(error, "code") else False
            raise SvlmError(f"{prepared.model}: {error.message()}", invalid_arg=invalid)
        text = pb.get_output_tensor_by_name(reply, "TEXT").as_numpy().reshape(-1)[0]
        generate = pb.get_output_tensor_by_name(reply, "GENERATE_MS")
        generate_ms = float(generate.as_numpy().reshape(-1)[0]) if generate is not None else 0.0
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
        return SvlmReply(text=text, generate_ms=generate_ms, svlm_ms=svlm_ms)

    def _finish(self, prepared: PreparedFrame, outcome: SvlmReply | BaseException):
        frame = prepared.frame
        try:
            if isinstance(outcome, BaseException):
                if isinstance(outcome, SvlmError):
                    return error_response(str(outcome), invalid_arg=outcome.invalid_arg)
                log.error("svlm call failed", exc_info=outcome)
                return error_response(f"internal error: {outcome}", invalid_arg=False)
            self.store.add_turn(
                frame.stream_id, TurnRecord(prepared.frame_id, frame.timestamp_ms, frame.prompt, outcome.text)
            )
            history = prepared.history
            context = ContextReport(
                stream_id=frame.stream_id,
                frame_id=prepared.frame_id,
                context_frame=history.context_frame,
                context_age_ms=history.context_age_ms,
                context_rtt_ms=prepared.context_rtt_ms,
                context_detections=prepared.context_detections,
                cloud_state=self.link.state.value if self.link is not None else "off",
                cloud_dispatch=prepared.dispatch,
                cloud_questions=prepared.cloud_questions,
                focus_mode=prepared.plan.mode.value,
                focus_box=list(prepared.plan.box) if prepared.plan.box is not None else None,
                focus_frame=prepared.focus_frame,
                focus_labels=prepared.plan.labels,
                replaced_turns=history.replaced_turns,
                history_turns=len(history.turns),
                svlm_model=prepared.model if prepared.carried_answer is None else None,
                answer_source=SVLM if prepared.carried_answer is None else prepared.carried_answer.source,
                latency_ms=_latency(prepared, outcome),
                **AnswerTracking.report_fields(prepared.context_tracking),
                focus_tracked=prepared.focus_tracked,
                cloud_answer=prepared.cloud_answer,
            )
            if self.metrics is not None:
                self.metrics.record_frame(history.context_age_ms, prepared.plan.mode.value)
            return response([bytes_tensor("TEXT", outcome.text), bytes_tensor("CONTEXT", context.to_json())])
        finally:
            if frame.end:
                self._end_stream(frame.stream_id)

    def _end_if_last(self, request) -> None:
        """A refused frame that carried END still ends its sequence in Triton: drop the stream's state now."""
        try:
            if int(request.flags()) & SEQUENCE_END:
                self._end_stream(read_stream_id(request))
        except Exception:  # no stream id: nothing to drop
            pass

    def _end_stream(self, stream: int) -> None:
        self._forget_counters(stream)
        self.store.end_stream(stream)
        self._cancel_cloud_calls(stream)

    def _cancel_cloud_calls(self, stream: int) -> None:
        """An ended (or restarted) stream's cloud calls could only be dropped: they free the cloud for live ones. A
        cancelled call reports neither reply nor error, so its job (and the frame it holds) is forgotten here."""
        if self.link is None:
            return
        with self._lock:
            for job in [job for job in self._dispatched if job.stream_id == stream]:
                del self._dispatched[job]
        self.link.cancel_stream(stream)

    def _forget_counters(self, stream: int) -> None:
        with self._lock:
            self._next_frame.pop(stream, None)
            self._epochs.pop(stream, None)
            self._watch_sent_s.pop(stream, None)
        self.received.forget(stream)

    # -- context ingest -----------------------------------------------------------------------------------------

    def _ingest(self, record: IngestRecord):
        snapshot = self.store.snapshot(record.stream_id)
        if snapshot is None:
            return error_response(f"stream {record.stream_id} has no context on this edge: it has not sent a frame yet")
        turn = next((t for t in snapshot.turns if t.frame_id == record.frame_id), None)
        timestamp = turn.timestamp_ms if turn is not None else None
        if timestamp is None:
            timestamp = record.frame_timestamp_ms if record.frame_timestamp_ms is not None else now_ms()
        arrived = time.monotonic()
        stored = self.store.add_cloud_result(
            record.stream_id,
            CloudResult(
                frame_id=record.frame_id,
                frame_timestamp_ms=timestamp,
                sent_s=arrived,
                arrived_s=arrived,
                text=record.text,
                detections=tuple(record.detections),
                frame_size=record.frame_size,
                question=turn.question if turn is not None else None,
            ),
        )
        if not stored:
            return error_response(f"stream {record.stream_id} has ended on this edge")
        status = {"stream_id": record.stream_id, "frame_id": record.frame_id, "stored": True}
        return response([bytes_tensor("CONTEXT", json.dumps(status))])

    # -- the batch ----------------------------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        for stream in self.store.purge_expired():
            self._forget_counters(stream)
            self._cancel_cloud_calls(stream)
        if self.metrics is not None and self.link is not None:
            try:
                self.metrics.record_cloud(self.link.drain_stats())
            except Exception:
                log.warning("metrics update failed", exc_info=True)

    async def execute(self, requests: list) -> list:
        self._housekeeping()
        responses: list[Any] = [None] * len(requests)
        prepared: list[tuple[int, PreparedFrame]] = []
        for index, request in enumerate(requests):
            try:
                item = self._parse(request)
                if isinstance(item, IngestRecord):
                    responses[index] = self._ingest(item)
                    continue
                frame_prepared = self._prepare(item)
                frame_prepared.prepare_ms = (time.perf_counter() - item.received) * 1000.0
                prepared.append((index, frame_prepared))
            except InputError as exc:
                responses[index] = error_response(str(exc))
                self._end_if_last(request)
            except Exception as exc:  # one broken request must not fail its neighbours
                log.exception("request %d failed", index)
                responses[index] = error_response(f"internal error: {exc}", invalid_arg=False)
                self._end_if_last(request)
        if prepared:
            outcomes = await asyncio.gather(*(self._answer(p) for _, p in prepared), return_exceptions=True)
            for (index, item), outcome in zip(prepared, outcomes, strict=True):
                responses[index] = self._finish(item, outcome)
        assert all(r is not None for r in responses), "every request must get exactly one response"
        return responses

    def close(self) -> None:
        if self.link is not None:
            self.link.close()


def _image_input(pb, frame: FrameRequest, image: np.ndarray):
    """svlm's IMAGE. The unchanged frame goes as the request's own tensor, which already lives in the shared memory
    that BLS passes on, so it is not copied (a 1080p frame is 6 MB); a crop or a downscaled frame is a new tensor."""
    if image is frame.image and frame.image_tensor is not None:
        return frame.image_tensor
    return pb.Tensor("IMAGE", np.ascontiguousarray(image)[None])


def _latency(prepared: PreparedFrame, reply: SvlmReply) -> LatencyBreakdown:
    """Where the frame's time went. `vision` is the svlm time outside the language model: image preprocessing,
    the vision encoder, detokenising and the ensemble's hops; `preprocess` is this model's own work before it."""
    total = (time.perf_counter() - prepared.frame.received) * 1000.0
    return LatencyBreakdown(
        preprocess=round(prepared.prepare_ms, 2),
        vision=round(max(0.0, reply.svlm_ms - reply.generate_ms), 2),
        generate=round(reply.generate_ms, 2),
        total=round(total, 2),
    )


def _token_budget(checkpoint: str):
    if checkpoint and os.path.isfile(os.path.join(checkpoint, "tokenizer.json")):
        return TokenizerBudget.from_file(os.path.join(checkpoint, "tokenizer.json"))
    return WordBudget()


def read_stream_id(request) -> int:
    stream = request.correlation_id()
    if isinstance(stream, str):
        # isdigit() alone admits "²", which int() refuses; an id over 64 bits could not be a UINT64 STREAM_ID.
        if not (stream.isascii() and stream.isdigit() and len(stream) <= 20) or int(stream) >= 2**64:
            raise InputError(f"sequence id must be an unsigned integer below 2**64 (the stream id), got {stream!r}")
        stream = int(stream)
    if not stream:
        raise InputError("missing sequence id: every frame must carry its stream id as the sequence id")
    return int(stream)


def now_ms() -> int:
    return int(time.time() * 1000)
