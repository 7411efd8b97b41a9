"""`spotvlm eval`: replay a split of the benchmark through the real servers and write the report.

    spotvlm eval [--quick] [--split validation|test] [--videos N] [--out DIR] [--dataset FILE.jsonl]
                 [--latencies 0,0.5,1,2,4,9,trace] ...
    python -m load_tests.eval_run ...                                  (the same options)

Steps (the pure parts are evaluation/runner.py; the preparation is load_tests/eval_setup.py, the run
load_tests/eval_replay.py):
1. the dataset: `--dataset FILE.jsonl` (docs/dataset.md), else the synthetic --split (test, the default, for the
   figures reported; validation to choose recipes, thresholds and options), generated once and cached
   under --data-dir (build/eval/data)/<split>-<hash of seeds and settings>, next to the seed-0 latency trace;
2. the servers: the cloud and an edge linked to it on free loopback ports, the edge sending every frame to the cloud
   (SPOTVLM_CLOUD_MAX_INFLIGHT), unless --edge-url and --cloud-url name running servers. A trace setting needs an
   edge with SPOTVLM_CLOUD_DELAY=trace:FILE (spotvlm takes a trace only from its config): it gets its own edge,
   started when that setting's turn comes; with --edge-url it is skipped, with a note in the report;
3. the cloud reference (policy `cloud`): the cloud `lvlm` asked each question on its own frame, with no delay;
4. cloud_stale_ideal's extra cloud answers (runner.plan_cloud_stale: the question on an older frame), asked once each;
5. the spotvlm policies: per latency setting, video and policy one Triton sequence, one at a time, each question's
   frame sent at its time in the video (paced), the latency as the request parameter `cloud_delay`;
6. cloud_stale from the cloud answers context_transfer's link received (CONTEXT's cloud_answer), scoring
   (scoring.score) and the report (report.write_report): report.md (leading with the paired differences and their
   bootstrap intervals over videos), results.json, differences.csv, results.csv, gap_closed.csv, the plots, plus
   answers.jsonl (every answer with its score) in --out.
A progress bar covers steps 3 to 5 (requests done / total, ETA).

Checkpoints: the servers load what ./build_engines.sh rendered into model_repository. --edge-checkpoint and
--cloud-checkpoint check that the repository was built with those checkpoints (`./build_engines.sh --edge-checkpoint
DIR --cloud-checkpoint DIR`) and stop with that instruction when it was not; with --edge-url/--cloud-url they are
only written into the report. Exit status: 0 when the report was written, 1 when a server failed or requests failed
(the report is still written), 2 for bad options, data or an unbuilt repository, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from evaluation.dataset import DatasetError
from evaluation.latency import ensure_default_trace, trace_setting
from evaluation.policies import SPOTVLM_POLICIES
from evaluation.questions import QuestionConfig
from evaluation.report import write_report
from evaluation.runner import (
    parse_latencies,
)
from load_tests.eval_replay import ServerStopped, run_eval
from load_tests.eval_setup import (
    REPOSITORY_ROOT,
    WATCH_VOCABULARY,
    checkpoint_problems,
    load_examples,
    rendered_checkpoint,
    say,
    watch_environment,
    watch_list,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = PROJECT_ROOT / "build" / "eval"
DATA_ROOT = PROJECT_ROOT / "build" / "eval" / "data"
FULL_DEFAULTS = {"videos": 3, "seconds": 10.0, "latencies": "0,0.5,1,2,4,9,trace"}
QUICK_DEFAULTS = {"videos": 2, "seconds": 5.0, "latencies": "0,2"}
# Real-time tasks ask a standing question of the stream; the cloud's late answer to it is what context transfer reuses.
EVAL_HOLD_S = 3.0
EVAL_SPLITS = ("validation", "test")


ANSWER_MAX_TOKENS = 40


# -- talking to the servers --------------------------------------------------------------------------------------------


def _ready(url: str) -> bool:
    from client.triton_client import VLMClient

    try:
        with VLMClient(url, "grpc", timeout_s=10.0) as client:
            return client.is_ready()
    except Exception:  # a malformed URL is as unreachable as a dead server
        return False


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
    parser.add_argument(
        "--split",
        choices=EVAL_SPLITS,
        default="test",
        help="the synthetic split to replay: validation (seeds 500..999) to choose recipes, thresholds and options,"
        " test (seeds 1..499, the default) only for the figures reported",
    )
    parser.add_argument(
        "--videos",
        type=int,
        help=f"videos to generate, or to take from --dataset (default: {f['videos']}); the intervals resample videos:"
        " more videos, narrower intervals",
    )
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
    parser.add_argument(
        "--cloud-watch",
        default=WATCH_VOCABULARY,
        metavar="OBJECTS",
        help=f"what the edge's link asks the cloud every 1 s beside the stream's questions (spotvlm's"
        f" `cloud_watch` and `cloud_watch_questions`, on the edges this command starts): `{WATCH_VOCABULARY}` (the"
        " default) every object label of the generated scenes and every recognition and counting question about"
        " them, nothing with --dataset; `off`; or a comma-separated list of objects",
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
    try:
        watch_list(watch_environment(args.cloud_watch, args.dataset is not None))
    except ValueError as exc:
        print(f"{prog}: --cloud-watch: {exc}", file=sys.stderr)
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
    say(
        f"{prog}: {questions} question(s) on {len(plans)} video(s) from the {source}; latencies"
        f" {', '.join(s.name for s in settings)}; policies {', '.join(SPOTVLM_POLICIES)} on the edge, cloud_stale"
        " client-side, and the cloud reference"
    )
    from client.launcher import ServerStartError
    from load_tests.interrupts import interruptible

    try:
        with interruptible():
            result = run_eval(args, plans, settings)
    except ServerStartError as exc:
        print(f"{prog}: a server did not start: {exc}", file=sys.stderr)
        return 1
    except ServerStopped as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
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
    title = "SpotVLM evaluation" + ("" if args.dataset is not None else f" ({args.split} split)")
    files = write_report(result.records, args.out, result.settings, title=title, notes=notes + result.notes)
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
