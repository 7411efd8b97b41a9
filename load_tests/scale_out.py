"""Scale-out benchmark: the same streams against one edge linked to 1 and then 2 cloud replicas, on the same cores.

    python -m load_tests.scale_out [--streams 4] [--frames 20] [--fps 4] [--out build/scale_out.json]

For each replica count it starts the cloud replicas and an edge with SPOTVLM_CLOUD_URL listing them (free loopback
ports), runs `--streams` streams of synthetic frames at `--fps` (client.streaming.run_streams), and reports as JSON:
the context age of the frames answered with cloud context (from CONTEXT), the cloud round trip (the edge's
spotvlm_cloud_rtt_ms histogram) and per replica the calls it got. Replicas on one machine share its cores: the gain
measured here is what a second replica buys when the cloud's queue, not its compute, is the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from client.frame_sources import SyntheticSource
from client.launcher import TritonServer
from client.streaming import run_streams
from client.stats import percentile
from load_tests.triton_metrics import read_metrics_text, series_values

REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "mean": None}
    return {
        "p50": percentile(values, 50, digits=1),
        "p90": percentile(values, 90, digits=1),
        "mean": round(float(np.mean(values)), 1),
    }


def _histogram_mean(text: str, name: str) -> float | None:
    total = sum(series_values(text, f"{name}_sum"))
    count = sum(series_values(text, f"{name}_count"))
    return round(total / count, 1) if count else None


def run_setting(replicas: int, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        clouds = []
        for index in range(replicas):
            cloud = TritonServer(REPOSITORY / "cloud", log_path=log_dir / f"cloud{replicas}_{index}.log")
            stack.callback(cloud.stop)
            clouds.append(cloud.start(ready_timeout_s=args.ready_timeout))
        env = {
            "SPOTVLM_CLOUD_URL": ",".join(c.grpc_url for c in clouds),
            "SPOTVLM_CLOUD_MAX_INFLIGHT": str(args.cloud_max_inflight),
        }
        edge = TritonServer(REPOSITORY / "edge", log_path=log_dir / f"edge{replicas}.log", env_overrides=env)
        stack.callback(edge.stop)
        edge.start(ready_timeout_s=args.ready_timeout)
        sources = [SyntheticSource(seed, size=(120, 160)) for seed in range(args.streams)]
        results = run_streams(
            sources, url=edge.grpc_url, protocol="grpc", fps=args.fps, frames=args.frames, progress=None
        )
        # One more frame makes the edge push its cloud link's last counts into its metrics.
        run_streams(sources[:1], url=edge.grpc_url, fps=args.fps, frames=1, progress=None, stream_ids=[10_000])
        metrics = read_metrics_text(edge.metrics_url, timeout_s=10)
    answered = [r for r in results if r.ok]
    ages = [float(r.context.context_age_ms) for r in answered if r.has_context and r.context.context_age_ms is not None]
    per_replica = {
        c.grpc_url: sum(series_values(metrics, "spotvlm_cloud_endpoint_requests_total", endpoint=c.grpc_url))
        for c in clouds
    }
    return {
        "replicas": replicas,
        "frames": len(results),
        "errors": len(results) - len(answered),
        "context_share": round(sum(r.has_context for r in answered) / len(answered), 3) if answered else None,
        "context_age_ms": _percentiles(ages),
        "cloud_rtt_ms_mean": _histogram_mean(metrics, "spotvlm_cloud_rtt_ms"),
        "cloud_calls": sum(series_values(metrics, "spotvlm_cloud_requests_total")),
        "cloud_calls_per_replica": list(per_replica.values()),
        "frames_skipped_busy": sum(series_values(metrics, "spotvlm_cloud_frames_skipped_total", reason="busy")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--frames", type=int, default=20, help="frames per stream")
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="cloud replica counts to compare")
    parser.add_argument("--cloud-max-inflight", type=int, default=2, help="cloud calls in flight per stream")
    parser.add_argument("--ready-timeout", type=float, default=240.0)
    parser.add_argument("--out", type=Path, default=Path("build/scale_out.json"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = args.out.parent / "scale_out_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "streams": args.streams,
        "frames_per_stream": args.frames,
        "fps": args.fps,
        "settings": [run_setting(n, args, log_dir) for n in args.replicas],
    }
    text = json.dumps(report, indent=1)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
