"""`spotvlm eval`: replay the benchmark's test split through the real servers and write the report.

    spotvlm eval [--quick] [--out DIR] [--dataset FILE.jsonl] [--latencies 0,0.5,1,2,4,9,trace] ...
    python -m load_tests.eval_run ...                                  (the same options)

Steps (the pure parts are evaluation/runner.py):
1. the dataset: `--dataset FILE.jsonl` (docs/dataset.md), else the synthetic test split, generated once and cached
   under --data-dir (build/eval/data)/<split>-<hash of seeds and settings>, next to the seed-0 latency trace;
2. the servers: the cloud and an edge linked to it on free loopback ports, the edge sending every frame to the cloud
   (SPOTVLM_CLOUD_MAX_INFLIGHT), unless --edge-url and --cloud-url name running servers. A trace setting needs an
   edge with SPOTVLM_CLOUD_DELAY=trace:FILE (spotvlm takes a trace only from its config): it gets its own edge,
   started when that setting's turn comes; with --edge-url it is skipped, with a note in the report;
3. the cloud reference (policy `cloud`): the cloud `lvlm` asked each question on its own frame, with no delay;
4. cloud_stale's extra cloud answers (runner.plan_cloud_stale: the question on an older frame), asked once each;
5. the spotvlm policies: per latency setting, video and policy one Triton sequence, one at a time, each question's
   frame sent at its time in the video (paced), the latency as the request parameter `cloud_delay`;
6. scoring (scoring.score) and the report (report.write_report): report.md, results.csv, gap_closed.csv,
   accuracy.png, gap_closed.png, plus answers.jsonl (every answer with its score) in --out.
A progress bar covers steps 3 to 5 (requests done / total, ETA).

Checkpoints: the servers load what ./build_engines.sh rendered into model_repository. --edge-checkpoint and
--cloud-checkpoint check that the repository was built with those checkpoints (`./build_engines.sh --edge-checkpoint
DIR --cloud-checkpoint DIR`) and stop with that instruction when it was not; with --edge-url/--cloud-url they are
only written into the report. Exit status: 0 when the report was written, 1 when a server failed or requests failed
(the report is still written), 2 for bad options, data or an unbuilt repository, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from evaluation.dataset import DatasetError, Example, default_seeds, generate_split, load_dataset
from evaluation.latency import LatencySetting, ensure_default_trace, trace_setting
from evaluation.policies import CLOUD_REFERENCE, EDGE_ONLY, SPOTVLM_POLICIES
from evaluation.questions import QuestionConfig
from evaluation.report import EvalRecord, write_report
from evaluation.runner import (
    Answer,
    StreamRun,
    VideoPlan,
    box_in_frame,
    cloud_stale_records,
    context_states,
    dataset_cache_dir,
    format_progress,
    group_videos,
    limit_videos,
    parse_latencies,
    plan_cloud_stale,
    plan_runs,
    records_for,
    scored_answer,
    stale_cloud_requests,
    violations_for,
)
from evaluation.scenes import SceneConfig
from evaluation.staleness import TruthIndex
from evaluation.scoring import score

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REPOSITORY_ROOT = PROJECT_ROOT / "model_repository"
DEFAULT_OUT = PROJECT_ROOT / "build" / "eval"
DATA_ROOT = PROJECT_ROOT / "build" / "eval" / "data"
FULL_DEFAULTS = {"videos": 3, "seconds": 10.0, "latencies": "0,0.5,1,2,4,9,trace"}
QUICK_DEFAULTS = {"videos": 2, "seconds": 5.0, "latencies": "0,2"}
# Cloud requests in flight per stream on the edge: every frame of a 10 fps stream at a 9 s delay plus inference.
CLOUD_MAX_INFLIGHT = 120
# Where each edge model's rendered config names its checkpoint.
CHECKPOINT_CONFIGS = {"edge": "edge/svlm_generate/config.pbtxt", "cloud": "cloud/lvlm/config.pbtxt"}
EDGE_PREPROCESS_CONFIG = "edge/svlm_preprocess/config.pbtxt"
# Real-time tasks ask a standing question of the stream; the cloud's late answer to it is what context transfer reuses.
EVAL_HOLD_S = 3.0


ANSWER_MAX_TOKENS = 40


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ProgressBar:
    """runner.format_progress redrawn in place on a terminal; in a log, a line every 10 % or 10 s."""

    def __init__(self, total: int, out: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.done = 0
        self.out = out if out is not None else sys.stderr
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.clock = clock
        self.started = clock()
        self._last_line_s = -1e9
        self._last_decile = -1
        self._lock = threading.Lock()

    def advance(self, count: int = 1, label: str = "") -> None:
        with self._lock:
            self.done += count
            self._draw(label)

    def set_total(self, total: int) -> None:
        with self._lock:
            self.total = max(total, self.done)

    def _draw(self, label: str, final: bool = False) -> None:
        now = self.clock()
        line = format_progress(self.done, self.total, now - self.started, label)
        if self.tty:
            self.out.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            decile = 10 * self.done // max(self.total, 1)
            if not final and decile == self._last_decile and now - self._last_line_s < 10:
                return
            self._last_decile, self._last_line_s = decile, now
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        with self._lock:
            self._draw("done", final=True)


# -- checkpoints and data ----------------------------------------------------------------------------------------------


def rendered_parameter(config: Path, key: str) -> str | None:
    """A string parameter of a rendered config.pbtxt, or None when the file or the key cannot be read."""
    try:
        text = config.read_text()
    except OSError:
        return None
    match = re.search(rf'key:\s*"{re.escape(key)}",\s*value:\s*\{{\s*string_value:\s*"([^"]*)"', text)
    return match.group(1) if match else None


def rendered_checkpoint(side: str, repository_root: Path = REPOSITORY_ROOT) -> Path | None:
    """The checkpoint folder the built repository loads on `side`, or None when it cannot be read."""
    value = rendered_parameter(repository_root / CHECKPOINT_CONFIGS[side], "checkpoint")
    return Path(value).resolve() if value is not None else None


def edge_input_size(repository_root: Path = REPOSITORY_ROOT) -> tuple[int, int] | None:
    """The square the built edge resizes every frame to (its preprocess config's image_size), or None."""
    value = rendered_parameter(repository_root / EDGE_PREPROCESS_CONFIG, "image_size")
    return (int(value),) * 2 if value is not None and value.isdigit() else None


def checkpoint_problems(args: argparse.Namespace, repository_root: Path = REPOSITORY_ROOT) -> list[str]:
    problems = []
    for side in ("edge", "cloud"):
        wanted = getattr(args, f"{side}_checkpoint")
        if wanted is None:
            continue
        built = rendered_checkpoint(side, repository_root)
        if built != Path(wanted).resolve():
            problems.append(
                f"the {side} repository was built with checkpoint {built}, not {Path(wanted).resolve()}: run"
                f" ./build_engines.sh --{side}-checkpoint {wanted} (and the other side's option) first"
            )
    return problems


def load_examples(args: argparse.Namespace, videos: int, seconds: float) -> tuple[list[VideoPlan], str]:
    """The videos to replay and a line saying where they came from. DatasetError / ValueError for bad data."""
    if args.dataset is not None:
        examples = load_dataset(args.dataset)
        plans = group_videos(examples)
        if args.quick or args.videos is not None or args.seconds is not None:
            plans = limit_videos(plans, videos, seconds)
        return plans, f"dataset {args.dataset}"
    seeds = default_seeds("test", videos)
    scene_config = SceneConfig(fps=args.fps, seconds=seconds)
    question_config = QuestionConfig(hold_s=args.hold_s)
    folder = dataset_cache_dir(args.data_dir, "test", seeds, scene_config, question_config)
    path = folder / "test.jsonl"
    if not path.is_file():  # generate_split writes the JSONL last: present means complete
        _say(f"generating the test split ({videos} video(s) of {seconds:g} s, seeds {seeds[0]}..{seeds[-1]}) ...")
        generate_split("test", seeds, folder, scene_config, question_config)
    held = f", standing questions held {args.hold_s:g} s" if args.hold_s else ""
    return group_videos(load_dataset(path)), f"synthetic test split, seeds {seeds[0]}..{seeds[-1]}{held} ({path})"


# -- talking to the servers --------------------------------------------------------------------------------------------


def _ready(url: str) -> bool:
    from client.triton_client import VLMClient

    try:
        with VLMClient(url, "grpc", timeout_s=10.0) as client:
            return client.is_ready()
    except Exception:  # a malformed URL is as unreachable as a dead server
        return False


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
    _say(f"starting the {name} tritonserver ...")
    server.start(ready_timeout)
    _say(f"  {name} ready in {server.ready_time_s or 0:.1f} s (grpc {server.grpc_url})")


# -- the run -----------------------------------------------------------------------------------------------------------


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
                }
            )

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
                    edge_env={"SPOTVLM_CLOUD_MAX_INFLIGHT": str(CLOUD_MAX_INFLIGHT)},
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
        _say(f"cloud reference: {questions} question(s) on {len(videos)} video(s), no delay")
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

        # 4. cloud_stale's answers on older frames
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
                progress.advance(label="cloud_stale's older frames")
        notes.append(
            "cloud_stale replays the cloud's zero-delay answers (the question asked on the newest frame whose answer"
            f" has arrived), every frame sent, with the cloud's median service time {service_s * 1000:.0f} ms added"
            " to each latency setting; before any arrival it shows edge_only's answer and latency"
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
                    if run.video.video not in frames:
                        frames[run.video.video] = [_frame(e) for e in run.video.examples]
                    video_frames = frames[run.video.video]
                    answers = run_stream(run, url, video_frames, args.max_tokens, progress, edge_input)
                    edge_answers[(setting.name, run.video.video, run.policy)] = answers
                    violations += violations_for(run, answers)
                    states = context_states(run.video, answers, truth, video_frames[0].shape[:2])
                    keep(run.policy, setting.name, run.video.examples, answers, states)
        progress.close()

    # cloud_stale, from the answers gathered above
    for (latency, video_name), video_picks in picks.items():
        stale = cloud_stale_records(
            video_picks, latency, cloud_answers[video_name], edge_answers.get((latency, video_name, EDGE_ONLY), {})
        )
        records.extend(stale)
    errors = sum(1 for row in rows if row["error"])
    if errors:
        notes.append(f"{errors} request(s) failed and count as wrong answers (answers.jsonl has each error)")
    if violations:
        notes.append(
            f"{len(violations)} answer(s) where spotvlm's CONTEXT contradicts the policy, e.g. {violations[0]}"
        )
    return EvalResult(records, rows, notes, errors, settings)


# -- command line ------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `spotvlm eval` and `python -m load_tests.eval_run`."""
    q, f = QUICK_DEFAULTS, FULL_DEFAULTS
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{q['videos']} videos of {q['seconds']:g} s, latencies {q['latencies']}, every policy (a few minutes)",
    )
    parser.add_argument("--dataset", type=Path, metavar="FILE", help="a JSONL dataset (docs/dataset.md) instead of"
                        " the synthetic test split")  # fmt: skip
    parser.add_argument("--videos", type=int, help=f"test videos to generate, or to take from --dataset (default:"
                        f" {f['videos']})")  # fmt: skip
    parser.add_argument("--seconds", type=float, help=f"seconds per video (default: {f['seconds']:g})")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DATA_ROOT,
        help=f"where generated test splits and the default trace are cached (default: {DATA_ROOT})",
    )
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of generated videos (default: 10)")
    parser.add_argument(
        "--hold-s",
        type=float,
        default=EVAL_HOLD_S,
        metavar="SECONDS",
        help=f"generated videos ask standing questions, each held this long (default: {EVAL_HOLD_S:g}; 0: a fresh"
        " question every frame)",
    )
    parser.add_argument(
        "--latencies",
        help=f"cloud latency settings: seconds, and `trace` for the fluctuating trace (default: {f['latencies']})",
    )
    parser.add_argument("--trace", type=Path, help="the trace CSV (time_s,latency_ms; default: the seed-0 trace)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=ANSWER_MAX_TOKENS,
        help=f"max_tokens of every request (default {ANSWER_MAX_TOKENS}: a one-object box is about 26 tokens with the"
        " trained tokenizer, more than the edge's default of 24; answers end at <|im_end|> well before)",
    )
    parser.add_argument("--edge-url", help="gRPC host:port of a running edge (with --cloud-url)")
    parser.add_argument("--cloud-url", help="gRPC host:port of the running cloud that edge is linked to")
    parser.add_argument(
        "--edge-checkpoint",
        type=Path,
        help="check that model_repository was built with this edge checkpoint (./build_engines.sh --edge-checkpoint)",
    )
    parser.add_argument(
        "--cloud-checkpoint",
        type=Path,
        help="check that model_repository was built with this cloud checkpoint (./build_engines.sh --cloud-checkpoint)",
    )
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for each server")
    return parser


def run_from_args(args: argparse.Namespace, prog: str = "spotvlm eval") -> int:
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    videos = args.videos if args.videos is not None else defaults["videos"]
    seconds = args.seconds if args.seconds is not None else defaults["seconds"]
    if videos < 1 or not seconds > 0 or not args.fps > 0:
        print(f"{prog}: --videos must be >= 1, --seconds and --fps > 0", file=sys.stderr)
        return 2
    try:
        QuestionConfig(hold_s=args.hold_s)  # its own check of the value, with the reason
    except ValueError as exc:
        print(f"{prog}: --hold-s: {exc}", file=sys.stderr)
        return 2
    if (args.edge_url is None) != (args.cloud_url is None):
        print(f"{prog}: give --edge-url and --cloud-url together (the edge linked to that cloud)", file=sys.stderr)
        return 2
    if args.max_tokens is not None and args.max_tokens < 1:
        print(f"{prog}: --max-tokens must be >= 1", file=sys.stderr)
        return 2
    if args.edge_url is None:
        from client.model_repository import unrendered_templates

        missing = unrendered_templates(REPOSITORY_ROOT)
        if missing:
            print(f"{prog}: {missing[0]} is not rendered; run ./build_engines.sh first", file=sys.stderr)
            return 2
        problems = checkpoint_problems(args)
        if problems:
            print("\n".join(f"{prog}: {p}" for p in problems), file=sys.stderr)
            return 2
    try:
        trace_path = args.trace if args.trace is not None else ensure_default_trace(args.data_dir)
        settings = parse_latencies(args.latencies or defaults["latencies"], trace_setting(trace_path))
        plans, source = load_examples(args, videos, seconds)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if not plans:
        print(f"{prog}: no questions to ask", file=sys.stderr)
        return 2
    if args.edge_url is not None:
        unreachable = [url for url in (args.edge_url, args.cloud_url) if not _ready(url)]
        if unreachable:
            print(f"{prog}: no ready Triton server (gRPC) at {', '.join(unreachable)}", file=sys.stderr)
            return 2
    questions = sum(len(p.examples) for p in plans)
    _say(
        f"{prog}: {questions} question(s) on {len(plans)} video(s) from the {source}; latencies"
        f" {', '.join(s.name for s in settings)}; policies {', '.join(SPOTVLM_POLICIES)} on the edge, cloud_stale"
        " client-side, and the cloud reference"
    )
    from client.launcher import ServerStartError

    try:
        result = run_eval(args, plans, settings)
    except ServerStartError as exc:
        print(f"{prog}: a server did not start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    notes = [f"data: {questions} question(s) on {len(plans)} video(s) from the {source}"]
    for side in ("edge", "cloud"):
        given = getattr(args, f"{side}_checkpoint")
        built = rendered_checkpoint(side) if args.edge_url is None else None
        checkpoint = given or built
        if checkpoint is not None:
            notes.append(f"{side} checkpoint: {checkpoint}")
    # The answers first: they are the run's raw results, kept even if a plot fails.
    Path(args.out).mkdir(parents=True, exist_ok=True)
    answers_path = Path(args.out) / "answers.jsonl"
    answers_path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.rows))
    files = write_report(result.records, args.out, result.settings, notes=notes + result.notes)
    plots = " ".join(str(path) for path in (files.accuracy_png, files.gap_png, files.context_png) if path)
    print(f"report: {files.markdown}\nresults: {files.csv}\nplots: {plots}")
    print(f"answers: {answers_path}")
    return 1 if result.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.eval_run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), prog="python -m load_tests.eval_run")


if __name__ == "__main__":
    sys.exit(main())
