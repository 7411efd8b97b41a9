"""`spotvlm demo`: both servers on free ports, real photos to each, one table of answers."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from client.frames import SAMPLE_FRAMES, sample_frame
from client.linked_servers import LinkedServers
from client.triton_client import VLMClient
from client.model_repository import check_built
from python_backends.context.served_context import CLOUD_REGION_TRACKED, CLOUD_TEXT, CLOUD_TRACKED

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# CONTEXT's answer_source, as the table says it.
ANSWER_SOURCES = {
    CLOUD_TEXT: "cloud's",
    CLOUD_TRACKED: "cloud's, tracked",
    CLOUD_REGION_TRACKED: "cloud's box, tracked",
}


def _cell(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width) or [""]


def print_table(rows: list[list[str]], widths: list[int], header: list[str]) -> None:
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    print(line)
    print("|" + "|".join(f" {h:<{w}} " for h, w in zip(header, widths)) + "|")
    print(line.replace("-", "="))
    for row in rows:
        cells = [_cell(text, w) for text, w in zip(row, widths)]
        for i in range(max(len(c) for c in cells)):
            print("|" + "|".join(f" {(c[i] if i < len(c) else ''):<{w}} " for c, w in zip(cells, widths)) + "|")
        print(line)


def serves_trained_checkpoints(repository_root: Path) -> bool:
    """Whether the built edge loads a checkpoint trained on the benchmark (its folder has the training report)."""
    from load_tests.eval_setup import rendered_checkpoint

    checkpoint = rendered_checkpoint("edge", repository_root)
    return checkpoint is not None and (checkpoint / "training.json").is_file()


def run_demo(protocol: str = "http", repository_root: Path = PROJECT_ROOT / "model_repository") -> int:
    from load_tests.eval_replay import CLOUD_MAX_INFLIGHT
    from load_tests.eval_setup import WATCH_VOCABULARY, watch_environment

    check_built(repository_root)
    trained = serves_trained_checkpoints(repository_root)
    print("Starting the cloud and edge Triton servers on free loopback ports ...", flush=True)
    # Trained models, as in `spotvlm eval`: every frame goes to the cloud, so context is as fresh as the delay, and
    # the edge watches the benchmark scenes' objects and questions.
    trained_env = {
        "SPOTVLM_CLOUD_MAX_INFLIGHT": str(CLOUD_MAX_INFLIGHT),
        **watch_environment(WATCH_VOCABULARY, own_dataset=False),
    }
    servers = LinkedServers(
        repository_root,
        edge_env=trained_env if trained else None,
        on_ready=lambda name, server: print(
            f"  {name:<5} ready: http {server.http_url}  grpc {server.grpc_url}", flush=True
        ),
    )
    try:
        servers.start()
        cloud, edge = servers.cloud, servers.edge
        if trained:
            with VLMClient(edge.grpc_url, "grpc") as edge_client, VLMClient(cloud.grpc_url, "grpc") as cloud_client:
                edge_client.ask_svlm(sample_frame("rocket"), "warm-up")
                benchmark_demo(edge_client, cloud_client, repository_root.parent / "build" / "demo")
            context_transfer_demo(edge.grpc_url, repository_root.parent / "build" / "demo", repository_root)
            return 0
        pick = (lambda s: s.http_url) if protocol == "http" else (lambda s: s.grpc_url)
        rows = []
        with VLMClient(pick(edge), protocol) as edge_client, VLMClient(pick(cloud), protocol) as cloud_client:
            # One untimed request each first: the first call pays one-off costs (allocations, lazy imports).
            warmup = sample_frame("rocket")
            edge_client.ask_svlm(warmup, "warm-up")
            cloud_client.ask_lvlm(warmup, "warm-up")
            for name, question in SAMPLE_FRAMES.items():
                frame = sample_frame(name)
                edge_answer = edge_client.ask_svlm(frame, question)
                cloud_answer = cloud_client.ask_lvlm(frame, question)
                boxes = "; ".join(f"{d['label']} {d['bbox_2d']}" for d in cloud_answer.detections) or "none"
                rows.append(
                    [
                        f"{name} {frame.shape[1]}x{frame.shape[0]}",
                        question,
                        f"{edge_answer.text!r} ({edge_answer.latency_ms:.0f} ms)",
                        f"{cloud_answer.text!r} ({cloud_answer.latency_ms:.0f} ms)",
                        boxes,
                    ]
                )
        width = shutil.get_terminal_size((160, 40)).columns
        widths = [18, 24, max(24, (width - 110) // 2), max(24, (width - 110) // 2), 22]
        print()
        print_table(rows, widths, ["frame", "question", "edge svlm (latency)", "cloud lvlm (latency)", "detections"])
        print(
            "\nWith tiny random-weight checkpoints the answers show the full path works, not what the models know:"
            " `make demo` serves the checkpoints trained on the benchmark (./build_engines.sh --trained),"
            " --edge-checkpoint/--cloud-checkpoint real ones."
        )
        with VLMClient(edge.grpc_url, "grpc") as edge_client, VLMClient(cloud.grpc_url, "grpc") as cloud_client:
            benchmark_demo(edge_client, cloud_client, repository_root.parent / "build" / "demo")
        stream_demo(edge.grpc_url)
    finally:
        servers.stop()
        print("Both servers stopped.")
    return 0


def benchmark_demo(edge_client: VLMClient, cloud_client: VLMClient, data_dir: Path, questions: int = 8) -> None:
    """Questions of the benchmark's first test video, with their true answers, to the edge alone and to the cloud."""
    from evaluation.dataset import generate_split, load_dataset, load_frame
    from evaluation.questions import QuestionConfig
    from evaluation.scenes import SceneConfig
    from evaluation.scoring import score

    path = data_dir / "test.jsonl"
    if not path.is_file():
        generate_split("test", [1], data_dir, SceneConfig(seconds=4.0), QuestionConfig(per_frame=1, every_k_frames=5))
    examples = load_dataset(path)
    first_of_task = list({e.task: e for e in reversed(examples)}.values())  # one question of each task first
    picked = (first_of_task + [e for e in examples if e not in first_of_task])[:questions]
    rows, right = [], {"edge": 0, "cloud": 0}
    for example in picked:
        frame = load_frame(example)
        answers = {
            "edge": edge_client.ask_svlm(frame, example.question),
            "cloud": cloud_client.ask_lvlm(frame, example.question),
        }
        cells = []
        for side, answer in answers.items():
            correct = score(example, answer.text).correct
            right[side] += correct
            cells.append(f"{'✓' if correct else '✗'} {answer.text!r}")
        rows.append([f"{example.frame_index}", example.question, str(example.answer), *cells])
    print(f"\nBenchmark questions (test video 1, {len(picked)} questions; ✓ scored right):")
    print_table(rows, [5, 34, 20, 30, 30], ["frame", "question", "true answer", "edge svlm", "cloud lvlm"])
    print(f"edge {right['edge']}/{len(picked)} right, cloud {right['cloud']}/{len(picked)} right")


def context_transfer_demo(
    edge_grpc_url: str, data_dir: Path, repository_root: Path, delay_s: float = 0.5, rows_shown: int = 16
) -> None:
    """One benchmark test video replayed through `spotvlm` twice, at its frame times: the edge alone, then with
    context transfer while the cloud's answers arrive `delay_s` late. Each question with its true answer and both
    edge answers, scored; then both accuracies over the whole video."""
    from evaluation.dataset import generate_split, load_dataset, load_frame
    from evaluation.latency import constant_setting
    from evaluation.policies import CONTEXT_TRANSFER, EDGE_ONLY
    from evaluation.questions import QuestionConfig
    from evaluation.runner import StreamRun, group_videos, scored_answer
    from evaluation.scenes import SceneConfig
    from evaluation.scoring import score
    from load_tests.eval_replay import ProgressBar, run_stream
    from load_tests.eval_run import EVAL_HOLD_S
    from load_tests.eval_setup import edge_input_size

    seconds = 8.0
    folder = data_dir / f"stream-{seconds:g}s"
    if not (folder / "test.jsonl").is_file():
        generate_split("test", [1], folder, SceneConfig(seconds=seconds), QuestionConfig(hold_s=EVAL_HOLD_S))
    video = group_videos(load_dataset(folder / "test.jsonl"))[0]
    frames = [load_frame(e) for e in video.examples]
    print(
        f"\nContext transfer on benchmark test video 1 ({len(frames)} questions in {video.duration_s:.0f} s, standing"
        f" questions held {EVAL_HOLD_S:g} s): the edge alone, then with the cloud's answers arriving {delay_s:g} s late"
        " ...",
        flush=True,
    )
    progress = ProgressBar(2 * len(frames))
    answers = {}
    for sequence_id, policy in enumerate((EDGE_ONLY, CONTEXT_TRANSFER), start=1):
        run = StreamRun(video, policy, constant_setting(delay_s), sequence_id)
        answers[policy] = run_stream(run, edge_grpc_url, frames, None, progress, edge_input_size(repository_root))
    progress.close()
    right = {EDGE_ONLY: 0, CONTEXT_TRANSFER: 0}
    rows = []
    step = max(1, len(video.examples) // rows_shown)
    for index, example in enumerate(video.examples):
        cells = []
        for policy in (EDGE_ONLY, CONTEXT_TRANSFER):
            answer = answers[policy][example.id]
            correct = answer.error is None and score(example, scored_answer(example, answer)).correct
            right[policy] += correct
            cells.append(f"{'✓' if correct else '✗'} {answer.error or answer.text!r}")
        if index % step == 0:
            context = answers[CONTEXT_TRANSFER][example.id].context
            age = "-" if context.context_age_ms is None else f"{context.context_age_ms / 1000:.1f} s"
            tracked = {True: ", tracked", False: ", lost", None: ""}[context.tracked]
            source = ANSWER_SOURCES.get(context.answer_source or "", "svlm")
            rows.append(
                [f"{example.time_s:.1f}", example.question, str(example.answer), *cells, f"{age}{tracked}", source]
            )
    print_table(
        rows,
        [5, 30, 20, 26, 26, 14, 16],
        ["t s", "question", "true answer", "edge alone", "context transfer", "cloud context", "answer given"],
    )
    total = len(video.examples)
    print(
        f"edge alone {right[EDGE_ONLY]}/{total} right, with context transfer {right[CONTEXT_TRANSFER]}/{total}"
        f" (the cloud {delay_s:g} s late; `spotvlm eval` measures this over many videos and latencies)"
    )


def stream_demo(edge_grpc_url: str, seconds: float = 6.0, fps: float = 5.0, delay_ms: int = 1500) -> None:
    """Context transfer on two synthetic streams, with the cloud's answers held back by `delay_ms`."""
    import io

    from client.frame_sources import SyntheticSource
    from client.stream_report import print_summary, summarize
    from client.streaming import run_streams

    print(
        f"\nContext transfer: 2 streams at {fps:g} fps for {seconds:g} s to `spotvlm`; the cloud's answers arrive"
        f" {delay_ms} ms late (injected) and become context for later frames ...",
        flush=True,
    )
    results = run_streams(
        [SyntheticSource(seed=1), SyntheticSource(seed=2)],
        url=edge_grpc_url,
        protocol="grpc",
        fps=fps,
        duration_s=seconds,
        prompt="Where is the car?",
        params={"cloud_delay": str(delay_ms)},
        progress=io.StringIO(),
    )
    print("\nstream 1, frame by frame:")
    print("frame  latency ms  cloud dispatch  context frame  context age ms  replaced turns  cloud")
    for r in (r for r in results if r.stream_id == 1):
        c = r.context
        print(
            f"{_dash(c.frame_id if c.frame_id is not None else r.frame_index):>5}  {r.latency_ms:>10.1f}"
            f"  {c.cloud_dispatch or '-':>14}  {_dash(c.context_frame):>13}  {_dash(c.context_age_ms):>14}"
            f"  {c.replaced_turns:>14}  {c.cloud_state or '-'}"
        )
    print()
    print_summary(summarize(results))


def _dash(value) -> str:
    return "-" if value is None else str(value)
