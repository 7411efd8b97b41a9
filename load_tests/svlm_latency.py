"""Latency of single `svlm` requests over HTTP and gRPC against a running edge server, as JSON.

    python -m load_tests.svlm_latency --http 127.0.0.1:8000 --grpc 127.0.0.1:8001 --requests 50

or with `--start` to bring up its own edge server on free ports. One request at a time (no concurrency), the
same frames for both protocols, warm-up excluded. The baseline in the same run is the server's own liveness
round trip over HTTP, so `svlm_over_live_ratio` says how much of a request is the model rather than transport.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from tqdm import tqdm

from client.frames import SAMPLE_FRAMES, sample_frame
from client.stats import percentile
from client.triton_client import VLMClient


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50, digits=2),
        "p99_ms": percentile(values, 99, digits=2),
        "mean_ms": round(statistics.fmean(values), 2),
        "n": len(values),
    }


def time_liveness(http_url: str, n: int) -> list[float]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        with opener.open(f"http://{http_url}/v2/health/live", timeout=5) as response:
            response.read()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def time_svlm(
    url: str, protocol: str, frames: list[tuple[np.ndarray, str]], n: int, warmup: int, max_tokens: int, progress: bool
) -> list[float]:
    samples = []
    with VLMClient(url, protocol) as client:
        for i in tqdm(range(warmup + n), desc=protocol, unit="request", file=sys.stderr, disable=not progress):
            image, prompt = frames[i % len(frames)]
            answer = client.ask_svlm(image, prompt, max_tokens=max_tokens)
            if i >= warmup:
                samples.append(answer.latency_ms)
    return samples


def measure(http_url: str, grpc_url: str, requests: int, warmup: int, max_tokens: int, progress: bool = True) -> dict:
    frames = [(sample_frame(name), question) for name, question in SAMPLE_FRAMES.items()]
    http = time_svlm(http_url, "http", frames, requests, warmup, max_tokens, progress)
    grpc = time_svlm(grpc_url, "grpc", frames, requests, warmup, max_tokens, progress)
    live = time_liveness(http_url, requests)
    result = {
        "svlm_http": summarize(http),
        "svlm_grpc": summarize(grpc),
        "baseline_http_live": summarize(live),
        "max_tokens": max_tokens,
        "frames": [f"{image.shape[1]}x{image.shape[0]}" for image, _ in frames],
    }
    result["grpc_over_http_p50_ratio"] = round(result["svlm_grpc"]["p50_ms"] / result["svlm_http"]["p50_ms"], 3)
    result["svlm_over_live_ratio"] = round(result["svlm_http"]["p50_ms"] / result["baseline_http_live"]["p50_ms"], 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", default="127.0.0.1:8000")
    parser.add_argument("--grpc", default="127.0.0.1:8001")
    parser.add_argument("--start", action="store_true", help="start an edge server on free ports for the run")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    server = None
    if args.start:
        from client.launcher import TritonServer

        server = TritonServer(Path(__file__).resolve().parents[1] / "model_repository" / "edge").start()
        args.http, args.grpc = server.http_url, server.grpc_url
    try:
        result = measure(args.http, args.grpc, args.requests, args.warmup, args.max_tokens)
    finally:
        if server is not None:
            server.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
