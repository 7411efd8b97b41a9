"""Custom Prometheus metrics of the `spotvlm` model, served on Triton's metrics port (pb_utils.MetricFamily).

The cloud link counts in plain Python from its own thread; `execute` pushes the deltas into Triton's metrics, so
the metrics API is only ever called from the model's own execute path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Milliseconds: a frame budget at the low end, cloud round trips of 0.1 s to 10 s at the high end.
LATENCY_BUCKETS_MS = [25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 3000.0, 5000.0, 10000.0, 30000.0]
CLOUD_ERROR_KINDS = ("timeout", "unavailable", "server", "bad_reply")
SKIP_REASONS = ("busy", "down")
FOCUS_MODES = ("crop_only", "crop_and_frame")


class SpotMetrics:
    """The metric families and their per-model series, created once in `initialize`."""

    def __init__(self, pb_utils: Any, model_name: str) -> None:
        labels = {"model": model_name}
        # Triton deletes a family's series when the family object goes away, so every family is kept here.
        self._families: list[Any] = []

        def family(name: str, description: str, kind: Any) -> Any:
            created = pb_utils.MetricFamily(name, description, kind)
            self._families.append(created)
            return created

        kinds = pb_utils.MetricFamily

        def histogram(name: str, description: str):
            return family(name, description, kinds.HISTOGRAM).Metric(labels=labels, buckets=LATENCY_BUCKETS_MS)

        def counter(name: str, description: str, **extra: str):
            return family(name, description, kinds.COUNTER).Metric(labels={**labels, **extra})

        self.context_age_ms = histogram(
            "spotvlm_context_age_ms",
            "Age of the cloud context a frame was answered with (frame time minus the time "
            "of the frame the cloud answered), ms",
        )
        self.cloud_rtt_ms = histogram(
            "spotvlm_cloud_rtt_ms", "Round trip of a frame to the cloud LVLM and back, injected delay included, ms"
        )
        inflight = family("spotvlm_cloud_inflight", "Frames in flight to the cloud", kinds.GAUGE)
        self.cloud_inflight = inflight.Metric(labels=labels)
        requests = family("spotvlm_cloud_requests_total", "Frames sent to the cloud", kinds.COUNTER)
        self.cloud_requests = requests.Metric(labels=labels)
        errors = family("spotvlm_cloud_errors_total", "Cloud requests that failed, by kind", kinds.COUNTER)
        self.cloud_errors = {kind: errors.Metric(labels={**labels, "kind": kind}) for kind in CLOUD_ERROR_KINDS}
        skipped = family(
            "spotvlm_cloud_frames_skipped_total",
            "Frames not sent to the cloud: its link was busy with this stream's previous frame, or it was down",
            kinds.COUNTER,
        )
        self.frames_skipped = {reason: skipped.Metric(labels={**labels, "reason": reason}) for reason in SKIP_REASONS}
        focus = family("spotvlm_focus_applied_total", "Frames answered with a visual-focus crop", kinds.COUNTER)
        self.focus_applied = {mode: focus.Metric(labels={**labels, "mode": mode}) for mode in FOCUS_MODES}
        frames = family("spotvlm_frames_total", "Frames answered, by whether they had cloud context", kinds.COUNTER)
        self.frames = {has: frames.Metric(labels={**labels, "cloud_context": has}) for has in ("yes", "no")}
        self.endpoints = CloudEndpointMetrics(pb_utils, model_name)

    def record_frame(self, context_age_ms: float | None, focus_mode: str) -> None:
        self.frames["yes" if context_age_ms is not None else "no"].increment(1)
        if context_age_ms is not None:
            self.context_age_ms.observe(float(context_age_ms))
        if focus_mode in self.focus_applied:
            self.focus_applied[focus_mode].increment(1)

    def record_cloud(self, delta: dict[str, Any]) -> None:
        """Pushes the counts the cloud link gathered since the last call, and its current in-flight count
        (CloudLink.drain_stats)."""
        self.cloud_inflight.set(float(delta.get("inflight", 0)))
        _increment(self.cloud_requests, delta.get("sent", 0))
        for kind, count in delta.get("errors_by_kind", {}).items():
            if kind in self.cloud_errors:
                _increment(self.cloud_errors[kind], count)
        _increment(self.frames_skipped["busy"], delta.get("skipped_busy", 0))
        _increment(self.frames_skipped["down"], delta.get("skipped_down", 0))
        for rtt in _as_list(delta.get("rtt_ms", [])):
            self.cloud_rtt_ms.observe(float(rtt))
        for endpoint, counts in delta.get("endpoints", {}).items():
            self.endpoints.record(endpoint, counts)


class CloudEndpointMetrics:
    """Per cloud endpoint (label `endpoint`): its calls' round trips, in-flight calls, requests, errors, retries and
    breaker state. Series are made when an endpoint first shows up: a dns:/// cloud_url finds them as replicas come."""

    def __init__(self, pb_utils: Any, model_name: str) -> None:
        self._labels = {"model": model_name}
        kinds = pb_utils.MetricFamily
        self._families: list[Any] = []  # kept: Triton deletes a family's series when the family object goes away

        def family(name: str, description: str, kind: Any) -> Any:
            created = pb_utils.MetricFamily(name, description, kind)
            self._families.append(created)
            return created

        self._rtt = family(
            "spotvlm_cloud_endpoint_rtt_ms", "Round trip of one cloud call on this endpoint, ms", kinds.HISTOGRAM
        )
        self._inflight = family("spotvlm_cloud_endpoint_inflight", "Calls in flight to this endpoint", kinds.GAUGE)
        self._requests = family(
            "spotvlm_cloud_endpoint_requests_total", "Calls sent to this endpoint, retries included", kinds.COUNTER
        )
        self._errors = family("spotvlm_cloud_endpoint_errors_total", "Failed calls to this endpoint", kinds.COUNTER)
        self._retries = family(
            "spotvlm_cloud_endpoint_retries_total",
            "Frames that failed on this endpoint and were sent to another within their deadline",
            kinds.COUNTER,
        )
        self._up = family(
            "spotvlm_cloud_endpoint_up", "1 while this endpoint's circuit breaker lets frames through", kinds.GAUGE
        )
        self.series: dict[str, dict[str, Any]] = {}

    def _for(self, endpoint: str) -> dict[str, Any]:
        if endpoint not in self.series:
            labels = {**self._labels, "endpoint": endpoint}
            self.series[endpoint] = {
                "rtt_ms": self._rtt.Metric(labels=labels, buckets=LATENCY_BUCKETS_MS),
                "inflight": self._inflight.Metric(labels=labels),
                "requests": self._requests.Metric(labels=labels),
                "errors": {k: self._errors.Metric(labels={**labels, "kind": k}) for k in CLOUD_ERROR_KINDS},
                "retries": self._retries.Metric(labels=labels),
                "up": self._up.Metric(labels=labels),
            }
        return self.series[endpoint]

    def record(self, endpoint: str, delta: dict[str, Any]) -> None:
        """One endpoint's part of CloudLink.drain_stats()["endpoints"]."""
        series = self._for(endpoint)
        series["inflight"].set(float(delta.get("inflight", 0)))
        series["up"].set(0.0 if delta.get("state") == "down" else 1.0)
        _increment(series["requests"], delta.get("sent", 0))
        _increment(series["retries"], delta.get("retries", 0))
        for kind, count in delta.get("errors_by_kind", {}).items():
            if kind in series["errors"]:
                _increment(series["errors"][kind], count)
        for rtt in _as_list(delta.get("rtt_ms", [])):
            series["rtt_ms"].observe(float(rtt))


def _increment(metric: Any, count: float) -> None:
    if count:
        metric.increment(float(count))


def _as_list(values: Iterable[float] | None) -> list[float]:
    return list(values or [])
