"""Past one machine, on loopback with real tritonservers and the real tritonclient (gRPC):

- one edge linked to two cloud replicas (SPOTVLM_CLOUD_URL="grpc1,grpc2"): one replica is killed by its PID mid-stream;
  no edge frame fails, the frames sent to it are retried on the other or counted as failed (the edge's per-endpoint
  metrics say which), and cloud context keeps arriving from the other replica;
- two edges with eight streams placed by the consistent hash: every frame of a stream lands on one edge (its CONTEXT
  frame ids run on without a gap and the edges' frame counters add up), and when one edge stops, only its streams move,
  restarting their sequence on the other edge.

Small on purpose (few frames, small images): the machine has two cores. Waits are bounded, nothing is timed.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from client.frame_sources import SyntheticSource
from client.launcher import TritonServer
from client.sharding import EdgeRing
from client.streaming import FrameResult, StreamSession
from load_tests.triton_metrics import read_metrics_text, series_values

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
READY_TIMEOUT_S = 240
ENDPOINT_REQUESTS = "spotvlm_cloud_endpoint_requests_total"


def _start(server: TritonServer, name: str) -> TritonServer:
    try:
        return server.start(ready_timeout_s=READY_TIMEOUT_S)
    except Exception as exc:
        pytest.fail(f"{name} did not start: {exc}\n{server.log_tail()}")


def _metric(server: TritonServer, name: str, **labels: str) -> float:
    return sum(series_values(read_metrics_text(server.metrics_url, timeout_s=10), name, **labels))


def _frames(seed: int):
    return iter(SyntheticSource(seed, size=(96, 128)))


@pytest.fixture
def servers(tmp_path):
    started: list[TritonServer] = []

    def start(side: str, name: str, **env: str) -> TritonServer:
        server = TritonServer(REPOSITORY / side, log_path=tmp_path / f"{name}.log", env_overrides=env)
        started.append(server)
        return _start(server, name)

    yield start
    for server in reversed(started):
        server.stop()


def test_a_killed_cloud_replica_loses_no_edge_frame(servers):
    cloud_a = servers("cloud", "cloud_a")
    cloud_b = servers("cloud", "cloud_b")
    endpoints = f"{cloud_a.grpc_url},{cloud_b.grpc_url}"
    # Every frame goes to the cloud (one stream may have two in flight), with a short deadline.
    edge = servers(
        "edge", "edge", SPOTVLM_CLOUD_URL=endpoints, SPOTVLM_CLOUD_DEADLINE_MS="6000", SPOTVLM_CLOUD_MAX_INFLIGHT="2"
    )
    sessions = {sid: StreamSession(edge.grpc_url, "grpc", sid, "Where is the car?", timeout_s=60) for sid in (1, 2)}
    sources = {sid: _frames(sid) for sid in sessions}
    results: list[FrameResult] = []

    def send_round(first: bool = False) -> None:
        for sid, session in sessions.items():
            results.append(session.send(next(sources[sid]), start=first, end=False))

    try:
        send_round(first=True)
        # Until both replicas have answered frames (the pool spreads idle work); bounded by a frame count.
        for _ in range(20):
            send_round()
            if all(_metric(edge, ENDPOINT_REQUESTS, endpoint=c.grpc_url) > 0 for c in (cloud_a, cloud_b)):
                break
        assert all(_metric(edge, ENDPOINT_REQUESTS, endpoint=c.grpc_url) > 0 for c in (cloud_a, cloud_b))
        killed_pid = cloud_a.pid
        assert killed_pid is not None
        os.kill(killed_pid, signal.SIGKILL)
        killed_at = len(results)
        # Frames go on; cloud context must come again from frames sent after the kill (only cloud_b can answer them),
        # and the killed replica's breaker must open, which takes a few failed calls (its failure threshold), not one.
        first_after = {sid: results[-1].frame_index + 1 for sid in sessions}
        fresh = killed_down = False
        for _ in range(40):
            send_round()
            recent = results[-len(sessions) :]
            fresh = fresh or any(
                r.context.context_frame is not None and r.context.context_frame >= first_after[r.stream_id]
                for r in recent
            )
            # The edge pushes its cloud link's state into the metrics at each frame.
            killed_down = _metric(edge, "spotvlm_cloud_endpoint_up", endpoint=cloud_a.grpc_url) == 0
            if fresh and killed_down:
                break
        assert fresh, "no cloud context from frames sent after the kill"
        assert killed_down, "the killed replica was never reported down"
        send_round()  # the edge pushes its cloud link's counts into the metrics at its next frame
    finally:
        for session in sessions.values():
            session.close()

    assert [r.error for r in results if not r.ok] == []
    assert all(r.context.cloud_state != "down" for r in results[killed_at:])
    failed_on_killed = _metric(edge, "spotvlm_cloud_endpoint_errors_total", endpoint=cloud_a.grpc_url)
    retried_from_killed = _metric(edge, "spotvlm_cloud_endpoint_retries_total", endpoint=cloud_a.grpc_url)
    assert failed_on_killed >= 1 and retried_from_killed >= 1
    # Each failed call was retried on the other replica or its frame counted as a cloud error: none vanished.
    frame_errors = _metric(edge, "spotvlm_cloud_errors_total")
    assert retried_from_killed + frame_errors >= failed_on_killed
    assert _metric(edge, "spotvlm_cloud_endpoint_up", endpoint=cloud_b.grpc_url) == 1
    # The counts, for the record (shown with `pytest -s`).
    print(
        f"\nfailover: {len(results)} edge frames, {sum(not r.ok for r in results)} failed; calls to the killed replica"
        f" failed {failed_on_killed:.0f}, retried on the other {retried_from_killed:.0f}; frames whose cloud call"
        f" failed {frame_errors:.0f}"
    )


def _balanced_streams(edges: list[str], per_edge: int) -> list[int]:
    """The first stream ids that give each edge `per_edge` streams under the ring (ports differ between runs)."""
    ring = EdgeRing(edges)
    taken: Counter[str] = Counter()
    chosen = []
    for sid in range(1, 10_000):
        edge = ring.edge_for(sid)
        if taken[edge] < per_edge:
            taken[edge] += 1
            chosen.append(sid)
        if len(chosen) == per_edge * len(edges):
            return chosen
    raise AssertionError("the ring never balanced")


def test_streams_stay_on_their_edge_and_only_a_gone_edges_streams_restart(servers):
    edges = [servers("edge", f"edge_{i}", SPOTVLM_CLOUD_URL="off") for i in (0, 1)]
    urls = [e.grpc_url for e in edges]
    stream_ids = _balanced_streams(urls, per_edge=4)
    sessions = {sid: StreamSession(urls, "grpc", sid, "What is there?", timeout_s=60) for sid in stream_ids}
    sources = {sid: _frames(sid) for sid in stream_ids}
    results: dict[int, list[tuple[str, FrameResult]]] = {sid: [] for sid in stream_ids}

    def send_round(first: bool = False) -> None:
        for sid, session in sessions.items():
            result = session.send(next(sources[sid]), start=first, end=False)
            results[sid].append((session.url, result))

    try:
        for index in range(2):
            send_round(first=index == 0)
        home = {sid: session.url for sid, session in sessions.items()}
        for sid in stream_ids:
            assert {url for url, _ in results[sid]} == {home[sid]}  # every frame on one edge
            assert [r.context.frame_id for _, r in results[sid]] == [0, 1]  # one sequence, no gap
        counted = {e.grpc_url: _metric(e, "spotvlm_frames_total") for e in edges}
        assert counted == {url: 2.0 * list(home.values()).count(url) for url in urls}

        gone = edges[1]
        # Killed at once, as a lost pod: a slow graceful stop could outlast the edge's 10 s sequence idle timeout,
        # and the other edge would then drop its own idle sequences too.
        assert gone.pid is not None
        os.kill(gone.pid, signal.SIGKILL)
        for _ in range(2):
            send_round()
    finally:
        for session in sessions.values():
            session.close()

    moved = {sid for sid in stream_ids if home[sid] == gone.grpc_url}
    for sid in stream_ids:
        after = [r for _, r in results[sid][2:]]
        assert all(r.ok for r in after), [r.error for r in after]
        assert {url for url, _ in results[sid][2:]} == {edges[0].grpc_url}
        if sid in moved:
            # Its edge went: the stream restarted its sequence on the other edge (frame ids start again).
            assert [r.restarted for r in after] == [True, False]
            assert [r.context.frame_id for r in after] == [0, 1]
        else:
            assert not any(r.restarted for r in after)
            assert [r.context.frame_id for r in after] == [2, 3]
    assert len(moved) == 4
