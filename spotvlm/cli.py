"""The `spotvlm` command: serve, ask, demo, stream, bench, load, eval."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
from pathlib import Path

from client.triton_client import DEFAULT_PORTS, ClientError, VLMClient, default_url

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STREAM_FRAMES = 50
REPOSITORIES = {side: PROJECT_ROOT / "model_repository" / side for side in ("edge", "cloud")}


def cmd_serve(args: argparse.Namespace) -> int:
    from client.launcher import TritonServer, serve_forever

    http, grpc, metrics = DEFAULT_PORTS[args.side]
    repository = Path(args.repository) if args.repository else REPOSITORIES[args.side]
    from client.model_repository import unrendered_templates

    if unrendered_templates(repository) or not any(repository.glob("*/config.pbtxt")):
        print(
            f"spotvlm serve: {repository} has no rendered config.pbtxt; run ./build_engines.sh first", file=sys.stderr
        )
        return 2
    server = TritonServer(
        repository,
        http_port=args.http_port or http,
        grpc_port=args.grpc_port or grpc,
        metrics_port=args.metrics_port or metrics,
        log_path=Path(args.log_file) if args.log_file else None,
        log_verbose=args.log_verbose,
    )
    return serve_forever(server, ready_timeout_s=args.ready_timeout)


def cmd_ask(args: argparse.Namespace) -> int:
    from client.frames import load_image_file

    url = args.url or default_url(args.server, args.protocol)
    image = load_image_file(args.image)
    try:
        with VLMClient(url, args.protocol) as client:
            if args.server == "edge":
                answer = client.ask_svlm(image, args.prompt, max_tokens=args.max_tokens)
                result = {"text": answer.text, "latency_ms": round(answer.latency_ms, 1)}
            else:
                answer = client.ask_lvlm(image, args.prompt, max_tokens=args.max_tokens)
                result = {
                    "text": answer.text,
                    "detections": answer.detections,
                    "latency_ms": round(answer.latency_ms, 1),
                }
    except ClientError as exc:
        print(f"spotvlm ask: {exc.status}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from spotvlm.demo import run_demo

    return run_demo(protocol=args.protocol)


def cmd_bench(args: argparse.Namespace) -> int:
    from load_tests.bench import run_from_args

    return run_from_args(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from load_tests.eval_run import run_from_args

    return run_from_args(args)


def _stream_sources(args: argparse.Namespace) -> list:
    from client.frame_sources import open_source

    if args.video:
        kind, arg = "video", args.video
    elif args.images:
        kind, arg = "images", args.images
    else:
        kind, arg = "synthetic", None
    # One source per stream: each stream reads its own copy of the file, and synthetic streams get distinct scenes.
    return [open_source(kind, arg, seed=args.seed + i) for i in range(args.streams)]


def _start_servers(stack: contextlib.ExitStack) -> tuple[str, str]:
    """Starts cloud then edge on free ports, the edge's cloud link pointed at this cloud; returns the edge's URLs
    (http, grpc). The servers stop when `stack` closes."""
    from client.model_repository import check_built
    from client.linked_servers import LinkedServers

    check_built(REPOSITORIES["edge"].parent)
    for repository in REPOSITORIES.values():
        if not any(repository.glob("*/config.pbtxt")):
            raise SystemExit(f"{repository} has no rendered config.pbtxt; run ./build_engines.sh first")
    print("spotvlm stream: starting the cloud and edge Triton servers on free loopback ports ...", file=sys.stderr)
    servers = stack.enter_context(
        LinkedServers(
            REPOSITORIES["edge"].parent,
            on_ready=lambda name, server: print(
                f"  {name:<5} ready: http {server.http_url}  grpc {server.grpc_url}", file=sys.stderr
            ),
        )
    )
    return servers.edge.http_url, servers.edge.grpc_url


def _edge_problem(url: str, protocol: str, model: str) -> str | None:
    """None when the edge answers and `model` is ready, else what is wrong."""
    try:
        with VLMClient(url, protocol, timeout_s=10.0) as client:
            if not client.is_ready():
                return "not reachable"
            try:
                state = client.model_states().get(model)
            except Exception:  # an index the server cannot give must not stop the stream
                return None
            if state is not None and state != "READY":
                return f"up, but its model {model!r} is {state or 'not loaded'}"
            if state is None:
                return f"up, but has no model {model!r}"
    except Exception as exc:  # e.g. a malformed URL
        return f"not reachable ({exc})"
    return None


def _stream_videos(args: argparse.Namespace):
    """--annotate's frame sink: each stream's frames with its answers drawn on them, to MP4s at the stream's fps."""
    from client.annotate import FrameAnnotator, StreamVideos
    from evaluation.runner import box_in_frame
    from load_tests.eval_setup import edge_input_size

    # The edge's boxes are in the pixels of the square it resizes frames to (the locally built repository's).
    input_size = edge_input_size()
    edge_box = (lambda text, size: box_in_frame(text, input_size, size)) if input_size is not None else None
    return StreamVideos(args.annotate, fps=args.fps, annotator=FrameAnnotator(edge_box))


def cmd_stream(args: argparse.Namespace) -> int:
    from client.stream_report import print_summary, summarize
    from client.streaming import DEFAULT_PROMPT, run_streams

    if args.start and args.url:
        print("spotvlm stream: --start picks its own ports; drop --url", file=sys.stderr)
        return 2
    for name, value in (("--fps", args.fps), ("--streams", args.streams), ("--frames", args.frames)):
        if value is not None and value <= 0:
            print(f"spotvlm stream: {name} must be > 0", file=sys.stderr)
            return 2
    if args.duration is not None and args.duration <= 0:
        print("spotvlm stream: --duration must be > 0", file=sys.stderr)
        return 2
    frames = args.frames if args.frames is not None or args.duration is not None else DEFAULT_STREAM_FRAMES
    params: dict[str, object] = {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.focus is not None:
        params["focus"] = args.focus
    if args.no_context:
        params["use_context"] = False
    if args.cloud_delay is not None:
        params["cloud_delay"] = args.cloud_delay
    try:
        sources = _stream_sources(args)
    except (OSError, ValueError) as exc:
        print(f"spotvlm stream: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if args.start:
            from client.launcher import ServerStartError

            try:
                http_url, grpc_url = _start_servers(stack)
            except ServerStartError as exc:
                print(f"spotvlm stream: a server did not start: {exc}", file=sys.stderr)
                return 1
            url = http_url if args.protocol == "http" else grpc_url
        else:
            url = args.url or default_url("edge", args.protocol)
            problem = _edge_problem(url, args.protocol, args.model)
            if problem is not None:
                print(
                    f"spotvlm stream: the edge server at {url} ({args.protocol}) is {problem}.\n"
                    "Start the servers in two shells with `spotvlm serve edge` and `spotvlm serve cloud`,"
                    " or pass --start to have this command start both.",
                    file=sys.stderr,
                )
                return 2
        stop = threading.Event()
        videos = stack.enter_context(_stream_videos(args)) if args.annotate else None
        results = run_streams(
            sources,
            url=url,
            protocol=args.protocol,
            fps=args.fps,
            frames=frames,
            duration_s=args.duration,
            prompt=args.prompt or DEFAULT_PROMPT,
            params=params,
            out_path=args.out,
            progress=sys.stderr,
            model=args.model,
            send=args.send,
            timeout_s=args.timeout,
            stop=stop,
            frame_sink=videos,
        )
    print()
    print_summary(summarize(results))
    if args.out:
        print(f"\nper-frame results: {args.out}")
    if videos is not None:
        print(f"\nannotated video: {', '.join(str(path) for path in videos.paths) or 'none (no frame was sent)'}")
    if stop.is_set():
        return 130
    return 0 if results and all(r.error is None for r in results) else 1


def cmd_load(args: argparse.Namespace) -> int:
    from load_tests.load_run import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spotvlm", description="SpotVLM on Triton: cloud-edge real-time VLM serving")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a real tritonserver on the edge or cloud repository")
    serve.add_argument("side", choices=["edge", "cloud"])
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--grpc-port", type=int)
    serve.add_argument("--metrics-port", type=int)
    serve.add_argument("--repository", help="model repository (default: model_repository/<side>)")
    serve.add_argument("--log-file", help="server log (default: a temporary file)")
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for /v2/health/ready")
    serve.set_defaults(func=cmd_serve)

    ask = sub.add_parser("ask", help="send one image and question to the edge svlm or the cloud lvlm")
    ask.add_argument("--server", choices=["edge", "cloud"], default="edge")
    ask.add_argument("--image", required=True, help="image file (JPEG, PNG, ...)")
    ask.add_argument("--prompt", required=True)
    ask.add_argument("--protocol", choices=["http", "grpc"], default="http")
    ask.add_argument("--url", help="host:port (default: the server's default port for the protocol)")
    ask.add_argument("--max-tokens", type=int)
    ask.set_defaults(func=cmd_ask)

    demo = sub.add_parser(
        "demo", help="start both servers and show answers (the benchmark on trained models, else sample photos)"
    )
    demo.add_argument("--protocol", choices=["http", "grpc"], default="http")
    demo.set_defaults(func=cmd_demo)

    from load_tests.bench import add_arguments as add_bench_arguments

    bench = sub.add_parser(
        "bench",
        help="start the servers, measure svlm alone against spotvlm (cloud off, cloud fast, cloud 2 s late); JSON out",
        description="Five phases on the same frames: svlm alone, spotvlm with the cloud off (with and without its text"
        " history), and spotvlm linked to a cloud with cloud_delay 0 and uniform:1000:3000; plus the context store's"
        " memory per stream. Goals are reported, not asserted.",
    )
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    stream = sub.add_parser(
        "stream",
        help="send live streams of frames to the edge spotvlm model and summarise latency and cloud context",
        description="Streams frames to the edge model `spotvlm`, one Triton sequence per stream (sequence id = stream"
        " id 1..N), at a fixed frame rate, with live progress and a per-stream summary at the end. Exit status: 0 when"
        " every frame was answered, 1 when some failed, 2 when the edge is not reachable.",
    )
    source = stream.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", metavar="FILE", help="stream the frames of a video file (decoded with PyAV)")
    source.add_argument("--images", metavar="DIR", help="stream the images of a folder in name order, looping")
    source.add_argument(
        "--synthetic", action="store_true", help="stream a synthetic scene of moving shapes (car, ball, tree)"
    )
    stream.add_argument("--fps", type=float, default=10.0, help="frames per second per stream (default: 10)")
    stream.add_argument("--streams", type=int, default=1, help="number of concurrent streams (default: 1)")
    length = stream.add_mutually_exclusive_group()
    length.add_argument("--frames", type=int, help="frames per stream (default: 50 unless --duration)")
    length.add_argument("--duration", type=float, metavar="S", help="seconds per stream (frames = S x fps)")
    stream.add_argument("--protocol", choices=["grpc", "http"], default="grpc", help="Triton protocol (default: grpc)")
    stream.add_argument("--url", help="edge host:port (default: the edge's default port for the protocol)")
    stream.add_argument("--prompt", default=None, help="the question asked of every frame")
    stream.add_argument(
        "--cloud-delay",
        metavar="SPEC",
        help="extra delay the edge injects on its cloud link, in ms: '1500', '2000+-1000' or 'uniform:1000:3000'",
    )
    stream.add_argument(
        "--focus",
        choices=["auto", "off", "crop_only", "crop_and_frame"],
        help="visual focus on the cloud's boxes (default: the server's setting)",
    )
    stream.add_argument("--no-context", action="store_true", help="ask the edge not to use cloud context")
    stream.add_argument("--max-tokens", type=int, help="answer length limit in tokens (default: the server's)")
    stream.add_argument(
        "--send",
        choices=["raw", "jpeg"],
        default="raw",
        help="send frames as raw RGB (IMAGE) or JPEG-encoded (IMAGE_BYTES) (default: raw)",
    )
    stream.add_argument("--out", metavar="FILE", help="write one JSON line per frame result to FILE")
    stream.add_argument(
        "--annotate",
        metavar="FILE",
        help="write the stream as an MP4 with the edge's answer and box, the cloud's late box, the tracked box and"
        " the context's age drawn on each frame (stream k>1 to FILE's name with .stream<k>)",
    )
    stream.add_argument("--seed", type=int, default=0, help="synthetic scene seed; stream k uses seed+k (default: 0)")
    stream.add_argument(
        "--start",
        action="store_true",
        help="start the cloud and edge servers for this run (free ports, edge linked to that cloud), stop them after",
    )
    stream.add_argument("--model", default="spotvlm", help=argparse.SUPPRESS)
    stream.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds (default: 60)")
    stream.set_defaults(func=cmd_stream)

    from load_tests.load_run import add_arguments as add_load_arguments

    load = sub.add_parser(
        "load",
        help="locust load test of the edge spotvlm model: N streams at a fixed fps, CSV/HTML reports",
        description="Starts both servers (or uses --url), runs locust headless with one Triton sequence per user, and"
        " writes locust's CSV and HTML reports and the cloud-context statistics under --out. Exit status: 0 when every"
        " request succeeded, 1 on any failed request or a server that did not start, 2 for an unreachable --url.",
    )
    add_load_arguments(load)
    load.set_defaults(func=cmd_load)

    from load_tests.eval_run import add_arguments as add_eval_arguments

    evaluate = sub.add_parser(
        "eval",
        help="replay the benchmark's test split through both servers under each cloud latency and policy; report",
        description="Starts the cloud and a linked edge (or uses --edge-url/--cloud-url), asks every question of the"
        " test split (or --split validation, or --dataset) under each cloud latency and policy (edge_only,"
        " cloud_stale, cloud_stale_ideal, replacement_only, focus_only, context_transfer_no_tracking,"
        " context_transfer_no_carry, context_transfer) plus the cloud at 0 delay, and writes report.md (led by the"
        " paired differences), results.json, differences.csv, results.csv and PNG plots to --out. Accuracy is"
        " reported, not asserted.",
    )
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
