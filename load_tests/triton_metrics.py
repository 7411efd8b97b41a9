"""Triton's per-model Prometheus metrics: read with prometheus_client's parser, compared before and after a run."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator, Sequence

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

# The models of the edge path whose Triton metrics are reported (context_ingest and svlm_focus are not used here).
METRIC_MODELS = ("spotvlm", "svlm", "svlm_preprocess", "svlm_vision", "svlm_generate", "svlm_postprocess")
METRIC_NAMES = {
    "nv_inference_request_success": "requests",
    "nv_inference_exec_count": "executions",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_infer_duration_us": "compute_us",
}


def samples(text: str) -> Iterator[tuple[set[str], Sample]]:
    """Every sample of a Prometheus text with the names it answers to. The parser names a counter's samples
    `<family>_total` even where the text has no `_total` (as Triton's nv_inference_* counters): both names count."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names = {sample.name}
            if family.type == "counter" and sample.name == f"{family.name}_total":
                names.add(family.name)
            yield names, sample


def series_values(text: str, name: str, **labels: str) -> list[float]:
    """The values of every sample `name{labels...}` in a Prometheus text (labels not given are not compared)."""
    return [
        sample.value
        for names, sample in samples(text)
        if name in names and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """model -> {requests, executions, queue_us, compute_us} from Triton's Prometheus text (counters summed over
    versions)."""
    out: dict[str, dict[str, float]] = {}
    for names, sample in samples(text):
        key = next((METRIC_NAMES[n] for n in names if n in METRIC_NAMES), None)
        model_name = sample.labels.get("model")
        if key is None or model_name is None:
            continue
        model = out.setdefault(model_name, {})
        model[key] = model.get(key, 0.0) + float(sample.value)
    return out


def metrics_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], models: Sequence[str] = METRIC_MODELS
) -> dict[str, dict[str, float | None]]:
    """Per model over a run: requests, mean batch size, mean queue and compute time per request (ms)."""
    out: dict[str, dict[str, float | None]] = {}
    for model in models:
        if model not in after:
            continue
        d = {k: after[model].get(k, 0.0) - before.get(model, {}).get(k, 0.0) for k in METRIC_NAMES.values()}
        requests, executions = d["requests"], d["executions"]
        out[model] = {
            "requests": int(requests),
            "mean_batch": round(requests / executions, 2) if executions else None,
            "queue_ms_per_request": round(d["queue_us"] / requests / 1000, 2) if requests else None,
            "compute_ms_per_request": round(d["compute_us"] / requests / 1000, 2) if requests else None,
        }
    return out


def read_metrics_text(metrics_url: str, timeout_s: float = 5.0) -> str:
    """The Prometheus text of a Triton metrics endpoint `host:port` (no proxy: the servers are on loopback)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{metrics_url}/metrics", timeout=timeout_s) as response:
        return response.read().decode("utf-8", "replace")


def scrape_metrics(metrics_url: str) -> dict[str, dict[str, float]]:
    """Triton's metrics now; {} when they cannot be read (they are an aid, not the measurement)."""
    try:
        return parse_metrics(read_metrics_text(metrics_url))
    except (OSError, ValueError):
        return {}
