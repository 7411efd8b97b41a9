"""Helpers for the end-to-end tests of an edge linked to a cloud: repository copies with changed parameters, streams
that run in the background while a test breaks the cloud, `context_ingest` calls and the edge's Prometheus counters.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from client.frame_sources import SyntheticSource
from client.model_repository import read_model_config, set_model_parameter, write_model_config
from client.streaming import FrameResult, StreamSession, pacing_delay, scheduled_time
from load_tests.triton_metrics import read_metrics_text, series_values
from tests.integration.conftest import PROJECT_ROOT, _require_built

FRAME_SIZE = (240, 320)
# The per-frame deadline: a reply later than this is a client timeout, i.e. an error. Generous for a loaded 2-core
# machine; an edge answers a frame in well under a second.
FRAME_DEADLINE_S = 5.0


def repository_copy(side: str, dest_parent: Path, model: str, params: dict[str, str]) -> Path:
    """A copy of the built `side` repository whose `model` has the given config parameters (set or added)."""
    _require_built()
    dest = dest_parent / side
    shutil.copytree(PROJECT_ROOT / "model_repository" / side, dest, ignore=shutil.ignore_patterns("__pycache__"))
    path = dest / model / "config.pbtxt"
    config = read_model_config(path)
    for key, value in params.items():
        set_model_parameter(config, key, value)
    write_model_config(config, path)
    return dest


# -- context_ingest ----------------------------------------------------------------------------------------------------


def ingest_tensors(url: str, stream_id: int, frame_id: int, detections: bytes, frame_size, text: str | bytes) -> bytes:
    """Calls `context_ingest` with these tensors as given (tests of bad input pass bad ones); returns STATUS."""
    tensors = {
        "STREAM_ID": np.array([[stream_id]], dtype=np.uint64),
        "FRAME_ID": np.array([[frame_id]], dtype=np.int64),
        "TEXT": np.array([[text.encode() if isinstance(text, str) else text]], dtype=np.object_),
        "DETECTIONS": np.array([[detections]], dtype=np.object_),
        "FRAME_SIZE": np.array([list(frame_size)], dtype=np.int32),
    }
    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        return client.infer("context_ingest", inputs).as_numpy("STATUS").reshape(-1)[0]


def ingest(url: str, stream_id: int, frame_id: int, detections: list[dict], frame_size: tuple[int, int], text: str):
    """Pushes an LVLM result through `context_ingest`, as a replay tool would."""
    return json.loads(ingest_tensors(url, stream_id, frame_id, json.dumps(detections).encode(), frame_size, text))


# -- metrics -----------------------------------------------------------------------------------------------------------


def metric_value(metrics_port: int, name: str, **labels: str) -> float:
    """The value of the series `name{labels...}` on a server's metrics port (labels not given are not compared);
    0 when there is no such series yet."""
    return sum(series_values(read_metrics_text(f"127.0.0.1:{metrics_port}", timeout_s=10), name, **labels))


def wait_for_metric(metrics_port: int, name: str, at_least: float, timeout_s: float, **labels: str) -> float:
    """Waits until the series reaches `at_least` and returns its value. An edge instance pushes its cloud link's counts
    at its next frame, so a count shows some frames after the event."""
    deadline = time.monotonic() + timeout_s
    while (value := metric_value(metrics_port, name, **labels)) < at_least:
        assert time.monotonic() < deadline, f"{name}{labels} is {value} after {timeout_s} s, expected >= {at_least}"
        time.sleep(0.2)
    return value


# -- streams in the background -----------------------------------------------------------------------------------------


class LiveStreams:
    """Streams of synthetic frames to `spotvlm` over gRPC, one thread and one `StreamSession` each, paced at `fps`
    until `close()`, whose last frame carries END. Results can be read while the streams run, so a test can break the
    cloud between checks as a camera keeps sending. `timeout_s` is each frame's deadline (past it: an error)."""

    def __init__(
        self,
        url: str,
        stream_ids: Iterable[int],
        params: dict | None = None,
        fps: float = 5.0,
        prompt: str = "What is moving?",
        timeout_s: float = FRAME_DEADLINE_S,
    ) -> None:
        self.fps = fps
        self.sessions = {
            sid: StreamSession(url, "grpc", sid, prompt, params=params, timeout_s=timeout_s) for sid in stream_ids
        }
        self.results: dict[int, list[FrameResult]] = {sid: [] for sid in self.sessions}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(sid, k / (len(self.sessions) * fps)), daemon=True)
            for k, sid in enumerate(self.sessions)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, stream_id: int, offset: float) -> None:
        session = self.sessions[stream_id]
        frames = iter(SyntheticSource(seed=stream_id, size=FRAME_SIZE))
        t0 = time.monotonic() + offset
        index = 0
        while not self._stop.is_set():
            delay, _ = pacing_delay(scheduled_time(t0, index, self.fps), time.monotonic())
            if delay > 0 and self._stop.wait(delay):
                break
            self._record(session.send(next(frames), start=index == 0, end=False))
            index += 1
        self._record(session.send(next(frames), start=index == 0, end=True))

    def _record(self, result: FrameResult) -> None:
        with self._lock:
            self.results[result.stream_id].append(result)

    def set_params(self, params: dict) -> None:
        """Request parameters of the frames from now on."""
        for session in self.sessions.values():
            session.params = dict(params)

    def mark(self) -> dict[int, int]:
        """How many frames each stream has had answered so far: pass it to `wait_for` to look only at later ones."""
        with self._lock:
            return {sid: len(results) for sid, results in self.results.items()}

    def wait_for(
        self,
        condition: Callable[[FrameResult], bool],
        what: str,
        timeout_s: float,
        since: dict[int, int] | None = None,
    ) -> dict[int, FrameResult]:
        """Waits until every stream has a frame (after `since`) that meets `condition`; returns the first of each.
        A frame with an error fails at once: no fault may cost a frame its answer."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                snapshot = {sid: list(results) for sid, results in self.results.items()}
            errors = [r for results in snapshot.values() for r in results if r.error]
            assert not errors, f"while waiting for {what}: frame errors {[(r.stream_id, r.error) for r in errors]}"
            found = {}
            for sid, results in snapshot.items():
                later = results[(since or {}).get(sid, 0) :]
                found[sid] = next((r for r in later if condition(r)), None)
            if all(r is not None for r in found.values()):
                return found
            if time.monotonic() > deadline:
                last = {sid: [_brief(r) for r in results[-8:]] for sid, results in snapshot.items()}
                raise AssertionError(f"no {what} within {timeout_s} s; last frames per stream: {last}")
            time.sleep(0.1)

    def close(self) -> dict[int, list[FrameResult]]:
        """Ends the streams (each sends its END frame) and returns every frame's result, per stream, in order."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        for session in self.sessions.values():
            session.close()
        assert not any(t.is_alive() for t in self._threads), "a stream did not end"
        return self.results

    def __enter__(self) -> LiveStreams:
        return self

    def __exit__(self, *exc) -> None:
        if not self._stop.is_set():
            self.close()


def _brief(result: FrameResult) -> dict:
    keys = ("frame_id", "cloud_state", "cloud_dispatch", "context_frame", "context_detections")
    return {"error": result.error} if result.error else {k: getattr(result.context, k) for k in keys}


def assert_answered_once(results: dict[int, list[FrameResult]], sessions: dict[int, StreamSession]) -> None:
    """Every frame sent got exactly one answer, without error (nor client timeout), and no stream was restarted:
    the edge's frame ids of each stream are 0..n-1 in the order sent."""
    for sid, stream in results.items():
        assert stream, f"stream {sid} sent nothing"
        assert [r.error for r in stream if r.error] == [], f"stream {sid}"
        assert [r.frame_index for r in stream] == list(range(len(stream))), f"stream {sid}: one result per frame"
        assert [r.context.frame_id for r in stream] == list(range(len(stream))), f"stream {sid}: frames lost"
        assert not any(r.restarted for r in stream) and sessions[sid].restarts == 0, f"stream {sid} restarted"
