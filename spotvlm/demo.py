"""`spotvlm demo`: both servers on free ports, real photos to each, one table of answers."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from client.frames import SAMPLE_FRAMES, sample_frame
from client.linked_servers import LinkedServers
from client.triton_client import VLMClient
from client.model_repository import check_built

PROJECT_ROOT = Path(__file__).resolve().parents[1]


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


def run_demo(protocol: str = "http", repository_root: Path = PROJECT_ROOT / "model_repository") -> int:
    check_built(repository_root)
    print("Starting the cloud and edge Triton servers on free loopback ports ...", flush=True)
    servers = LinkedServers(
        repository_root,
        on_ready=lambda name, server: print(
            f"  {name:<5} ready: http {server.http_url}  grpc {server.grpc_url}", flush=True
        ),
    )
    try:
        servers.start()
        cloud, edge = servers.cloud, servers.edge
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
            "\nWith the default tiny random-weight checkpoints the answers show the full path works, not what the"
            " models know: ./build_engines.sh --trained (or `make demo ENGINES=--trained`) serves checkpoints trained"
            " on the benchmark, --edge-checkpoint/--cloud-checkpoint real ones."
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
