"""The `spotvlm` command: serve, ask, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from client.triton_client import DEFAULT_PORTS, ClientError, VLMClient, default_url

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REPOSITORIES = {side: PROJECT_ROOT / "model_repository" / side for side in ("edge", "cloud")}


def cmd_serve(args: argparse.Namespace) -> int:
    from client.launcher import TritonServer, serve_forever

    http, grpc, metrics = DEFAULT_PORTS[args.side]
    repository = Path(args.repository) if args.repository else REPOSITORIES[args.side]
    from python_backends.templates import unrendered_templates

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
    from client.demo import run_demo

    return run_demo(protocol=args.protocol)


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

    demo = sub.add_parser("demo", help="start both servers and show answers on sample photos")
    demo.add_argument("--protocol", choices=["http", "grpc"], default="http")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
