"""`spotvlm eval`'s run: the cloud reference, cloud_stale's extra cloud answers and the spotvlm policies replayed
through the real servers (load_tests/eval_run.py describes the steps), gathered into records and answer rows."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from evaluation.dataset import Example
from evaluation.latency import LatencySetting
from evaluation.policies import CLOUD_REFERENCE, CONTEXT_TRANSFER, EDGE_ONLY
from evaluation.report import EvalRecord
from evaluation.runner import (
    Answer,
    StreamRun,
    VideoPlan,
    box_in_frame,
    cloud_stale_records,
    context_states,
    plan_cloud_stale,
    plan_runs,
    received_cloud_stale_records,
    records_for,
    scored_answer,
    stale_cloud_requests,
    violations_for,
)
from evaluation.scoring import score
from evaluation.staleness import TruthIndex
from load_tests.eval_setup import REPOSITORY_ROOT, edge_input_size, say, watch_environment, watch_list

# Cloud requests in flight per stream on the edge: every frame of a 10 fps stream at a 9 s delay plus inference.
CLOUD_MAX_INFLIGHT = 120


class ProgressBar:
    """The run's requests (done / total, rate, ETA) as a tqdm bar on stderr, with what is being asked."""

    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self._bar = tqdm(total=total, desc="eval", unit="request", file=out if out is not None else sys.stderr)

    @property
    def total(self) -> int:
        return int(self._bar.total)

    def advance(self, count: int = 1, label: str = "") -> None:
        self._bar.set_postfix_str(label, refresh=False)
        self._bar.update(count)

    def set_total(self, total: int) -> None:
        self._bar.total = max(total, self._bar.n)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.set_postfix_str("done", refresh=False)
        self._bar.close()


def _frame(example: Example, frame_index: int | None = None) -> np.ndarray:
    from evaluation.dataset import load_frame

    if frame_index is not None and frame_index != example.frame_index:
        example = dataclasses.replace(example, frame_index=frame_index)
    return load_frame(example)


def ask_cloud(client: Any, frame: np.ndarray, question: str, max_tokens: int | None) -> Answer:
    started = time.perf_counter()
    try:
        reply = client.ask_lvlm(frame, question, max_tokens=max_tokens)
    except Exception as exc:  # one failed request is a wrong answer, not the end of the run
        return Answer("", (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}")
    # lvlm's DETECTIONS are already in the frame's pixels (its TEXT is in those of its resized input).
    box = tuple(reply.detections[0]["bbox_2d"]) if reply.detections else None
    return Answer(reply.text, reply.latency_ms, box=box)


class ServerStopped(RuntimeError):
    """A server the evaluation started stopped before the evaluation ended."""


def check_running(servers: Sequence[Any]) -> None:
    """Raises ServerStopped, with the server's log tail, for the first of `servers` (TritonServer, or None for one
    not started) that is no longer running."""
    for server in servers:
        if server is not None and not server.is_running():
            raise ServerStopped(
                f"the server at {server.grpc_url} stopped (exit status {server.returncode}); its log ends:\n"
                f"{server.log_tail()}"
            )


def run_stream(
    run: StreamRun,
    url: str,
    frames: Sequence[np.ndarray],
    max_tokens: int | None,
    progress: ProgressBar,
    edge_input: tuple[int, int] | None = None,
) -> dict[str, Answer]:
    """One Triton sequence: each question's frame at its time after the start, one request in flight. `edge_input`:
    the edge model's input size, which its boxes are in (None: unknown, the text is scored as it is)."""
    from client.streaming import StreamSession

    session = StreamSession(url, "grpc", run.sequence_id, params=run.request_parameters(max_tokens), timeout_s=60.0)
    answers: dict[str, Answer] = {}
    examples = run.video.examples
    label = f"{run.setting.name} {run.policy}"
    try:
        t0 = time.monotonic()
        for index, (example, offset) in enumerate(zip(examples, run.send_offsets_s())):
            wait = t0 + offset - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            session.prompt = example.question
            result = session.send(frames[index], start=index == 0, end=index == len(examples) - 1)
            box = box_in_frame(result.text, edge_input, frames[index].shape[:2]) if edge_input else None
            answers[example.id] = Answer(result.text, result.latency_ms, result.error, result.context, box)
            progress.advance(label=label)
    finally:
        session.close()
    return answers


def _start(server: Any, name: str, ready_timeout: float) -> None:
    """Starts one server; read its URLs only after this returns (see run_eval)."""
    say(f"starting the {name} tritonserver ...")
    server.start(ready_timeout)
    say(f"  {name} ready in {server.ready_time_s or 0:.1f} s (grpc {server.grpc_url})")


@dataclasses.dataclass
class EvalResult:
    records: list[EvalRecord]
    rows: list[dict[str, Any]]  # answers.jsonl
    notes: list[str]
    errors: int
    settings: list[LatencySetting]  # the settings measured (a trace is skipped with --edge-url)


def run_eval(args: argparse.Namespace, videos: list[VideoPlan], settings: list[LatencySetting]) -> EvalResult:
    from client.linked_servers import LinkedServers
    from client.triton_client import VLMClient

    notes: list[str] = []
    own_servers = args.edge_url is None
    if not own_servers:
        skipped = [s.name for s in settings if not s.per_request]
        if skipped:
            notes.append(
                f"skipped {', '.join(skipped)}: a trace is set only in the edge's config, and --edge-url names a"
                " running edge; start one with SPOTVLM_CLOUD_DELAY=trace:FILE to measure it"
            )
            settings = [s for s in settings if s.per_request]
    runs = plan_runs(videos, settings, first_sequence_id=1_000_000 * (1 + int(time.time()) % 1000))
    questions = sum(len(v.examples) for v in videos)
    edge_requests = sum(len(r.video.examples) for r in runs)
    # cloud_stale's extra cloud requests are known after the reference; until then count one per question and setting.
    progress = ProgressBar(questions + questions * len(settings) + edge_requests)
    rows: list[dict[str, Any]] = []
    records: list[EvalRecord] = []

    def keep(
        policy: str,
        latency: str,
        examples: Sequence[Example],
        answers: dict[str, Answer],
        states: dict[str, str] | None = None,
    ) -> None:
        records.extend(records_for(policy, latency, examples, answers, states))
        for example in examples:
            answer = answers.get(example.id) or Answer("", None, "no answer")
            rows.append(
                {
                    "id": example.id,
                    "task": example.task,
                    "policy": policy,
                    "latency": latency,
                    "question": example.question,
                    "expected": list(example.answer) if isinstance(example.answer, tuple) else example.answer,
                    "answer": answer.text,
                    "correct": answer.error is None and score(example, scored_answer(example, answer)).correct,
                    "latency_ms": None if answer.latency_ms is None else round(answer.latency_ms, 1),
                    "error": answer.error,
                    "context_frame": answer.context.context_frame,
                    "context_age_ms": answer.context.context_age_ms,
                    "context_state": (states or {}).get(example.id),
                    "answer_source": answer.context.answer_source,  # svlm, or the cloud's answer carried (how)
                    # What the link had received for this question (cloud_stale's source on context_transfer).
                    "cloud_answer": answer.context.cloud_answer.to_dict() if answer.context.cloud_answer else None,
                }
            )

    watch = watch_environment(args.cloud_watch, args.dataset is not None)
    if own_servers:
        watched = watch_list(watch)
        notes.append(
            f"beside the stream's questions, the edge's link asks the cloud every {watched.interval_s:g} s where each"
            f" of {len(watched.objects)} watched object(s) is (cloud_watch) and {len(watched.extra_questions)} watched"
            " question(s) (cloud_watch_questions)"
            if watched.enabled
            else "nothing watched (cloud_watch off)"
        )
    else:
        notes.append("the running edge watches what its own config says (cloud_watch, cloud_watch_questions)")
    with contextlib.ExitStack() as stack:
        linked_edge_url = args.edge_url
        if own_servers:
            # Each URL read once its server is ready: a start that loses a picked port to another process retries on
            # new ports, so a URL read before start() can name a port nobody listens on.
            servers = stack.enter_context(
                LinkedServers(
                    REPOSITORY_ROOT,
                    edge=any(s.per_request for s in settings),
                    edge_name="edge (linked to the cloud)",
                    edge_env={"SPOTVLM_CLOUD_MAX_INFLIGHT": str(CLOUD_MAX_INFLIGHT), **watch},
                    starter=lambda name, server: _start(server, name, args.ready_timeout),
                )
            )
            cloud_url = servers.cloud.grpc_url
            if servers.edge is not None:
                linked_edge_url = servers.edge.grpc_url
        else:
            cloud_url = args.cloud_url
        cloud_client = stack.enter_context(VLMClient(cloud_url, "grpc", timeout_s=60.0))

        # 3. the cloud reference
        say(f"cloud reference: {questions} question(s) on {len(videos)} video(s), no delay")
        cloud_answers: dict[str, dict[tuple[int, str], Answer]] = {}  # video -> (frame, question) -> answer
        reference_latencies = []
        for video in videos:
            per_video = cloud_answers.setdefault(video.video, {})
            reference: dict[str, Answer] = {}
            for example in video.examples:
                answer = ask_cloud(cloud_client, _frame(example), example.question, args.max_tokens)
                reference[example.id] = answer
                per_video[(example.frame_index, example.question)] = answer
                if answer.error is None and answer.latency_ms is not None:
                    reference_latencies.append(answer.latency_ms)
                progress.advance(label="cloud reference")
            keep(CLOUD_REFERENCE, "0s", video.examples, reference)
        service_s = statistics.median(reference_latencies) / 1000 if reference_latencies else 0.0

        # 4. cloud_stale_ideal's answers on older frames
        picks = {(s.name, v.video): plan_cloud_stale(v, s, service_s) for s in settings for v in videos}
        extra = {
            v.video: stale_cloud_requests(pick for (_, name), ps in picks.items() if name == v.video for pick in ps)
            for v in videos
        }
        progress.set_total(progress.total - questions * len(settings) + sum(len(e) for e in extra.values()))
        for video in videos:
            first = video.examples[0]
            for frame_index, question in extra[video.video]:
                answer = ask_cloud(cloud_client, _frame(first, frame_index), question, args.max_tokens)
                cloud_answers[video.video][(frame_index, question)] = answer
                progress.advance(label="cloud_stale_ideal's older frames")
        notes.append(
            "cloud_stale replays the cloud answers context_transfer's link received: for each question, the newest"
            " answer to it that had arrived when the edge read the frame (CONTEXT's cloud_answer); before any, it"
            " shows edge_only's answer. Every cloud_stale answer carries edge_only's latency"
        )
        notes.append(
            "cloud_stale_ideal replays the cloud's zero-delay answers (the question asked on the newest frame whose"
            " answer would have arrived), every frame sent, with the cloud's median service time"
            f" {service_s * 1000:.0f} ms added to each latency setting; before any arrival it shows edge_only's answer"
        )

        # 5. the spotvlm policies: per-request settings on one linked edge, each trace on an edge of its own
        edge_answers: dict[tuple[str, str, str], dict[str, Answer]] = {}
        edge_input = edge_input_size()  # the edge's boxes are in these pixels (the locally built repository's)
        notes.append(
            "boxes are scored in the frame's pixels: the cloud's from its DETECTIONS, the edge's mapped from its"
            + (f" {edge_input[1]}x{edge_input[0]} input" if edge_input else " input (size unknown: scored as written)")
        )
        violations: list[str] = []
        frames: dict[str, list[np.ndarray]] = {}
        truth = TruthIndex()
        for setting in settings:
            with contextlib.ExitStack() as trace_stack:
                if setting.per_request:
                    assert linked_edge_url is not None
                    url = linked_edge_url
                else:  # only with servers of our own (skipped above otherwise)
                    edge = servers.start_edge(
                        env={"SPOTVLM_CLOUD_DELAY": setting.spec},
                        name=f"edge ({setting.name}: cloud_delay {setting.spec})",
                    )
                    trace_stack.callback(edge.stop)
                    url = edge.grpc_url
                for run in (r for r in runs if r.setting.name == setting.name):
                    if own_servers:  # a server that died would fail every request left: stop, with its log
                        check_running([servers.cloud, servers.edge, *([] if setting.per_request else [edge])])
                    if run.video.video not in frames:
                        frames[run.video.video] = [_frame(e) for e in run.video.examples]
                    video_frames = frames[run.video.video]
                    answers = run_stream(run, url, video_frames, args.max_tokens, progress, edge_input)
                    edge_answers[(setting.name, run.video.video, run.policy)] = answers
                    violations += violations_for(run, answers)
                    states = context_states(run.video, answers, truth, video_frames[0].shape[:2])
                    keep(run.policy, setting.name, run.video.examples, answers, states)
        progress.close()

    # cloud_stale and cloud_stale_ideal, from the answers gathered above
    by_name = {video.video: video for video in videos}
    for (latency, video_name), video_picks in picks.items():
        edge_only = edge_answers.get((latency, video_name, EDGE_ONLY), {})
        if (latency, video_name, CONTEXT_TRANSFER) in edge_answers:
            size = frames[video_name][0].shape[:2] if video_name in frames else None
            transfer = edge_answers[(latency, video_name, CONTEXT_TRANSFER)]
            records.extend(received_cloud_stale_records(by_name[video_name], latency, transfer, edge_only, size))
        records.extend(cloud_stale_records(video_picks, latency, cloud_answers[video_name], edge_only))
    errors = sum(1 for row in rows if row["error"])
    if errors:
        notes.append(f"{errors} request(s) failed and count as wrong answers (answers.jsonl has each error)")
    if violations:
        notes.append(
            f"{len(violations)} answer(s) where spotvlm's CONTEXT contradicts the policy, e.g. {violations[0]}"
        )
    return EvalResult(records, rows, notes, errors, settings)
