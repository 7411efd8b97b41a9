"""Edge sharding without a server: the consistent-hash ring, and a StreamSession over several edges with fake clients
(the stream header on every request, a gone edge handing only its streams to the next edge as restarts)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from client.sharding import (
    STREAM_HEADER,
    EdgeRing,
    edge_unreachable,
    parse_edge_urls,
    stream_headers,
)
from client.streaming import StreamSession
from client.triton_client import ClientError

EDGES = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]
STREAMS = range(1, 3001)
FRAME = np.zeros((8, 8, 3), dtype=np.uint8)


def test_parse_edge_urls():
    assert parse_edge_urls(" a:1, b:2 ,a:1,") == ["a:1", "b:2"]
    assert parse_edge_urls(["a:1", "b:2"]) == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        parse_edge_urls(" , ")


def test_the_ring_is_deterministic_and_spreads_the_streams():
    ring = EdgeRing(EDGES)
    again = EdgeRing(list(reversed(EDGES)))  # the order the edges are listed in does not matter
    owners = {s: ring.edge_for(s) for s in STREAMS}
    assert owners == {s: again.edge_for(s) for s in STREAMS}
    counts = Counter(owners.values())
    assert set(counts) == set(EDGES)
    assert min(counts.values()) > len(STREAMS) / len(EDGES) * 0.7


def test_when_an_edge_leaves_only_its_streams_move():
    ring = EdgeRing(EDGES)
    before = {s: ring.edge_for(s) for s in STREAMS}
    ring.remove(EDGES[1])
    after = {s: ring.edge_for(s) for s in STREAMS}
    moved = {s for s in STREAMS if before[s] != after[s]}
    assert moved == {s for s in STREAMS if before[s] == EDGES[1]}
    assert all(after[s] != EDGES[1] for s in STREAMS)
    ring.add(EDGES[1])  # it comes back: its streams return to it, the others stay
    assert {s: ring.edge_for(s) for s in STREAMS} == before


def test_an_empty_ring_and_bad_vnodes():
    ring = EdgeRing(["a:1"])
    ring.remove("a:1")
    with pytest.raises(LookupError):
        ring.edge_for(1)
    with pytest.raises(ValueError):
        EdgeRing(EDGES, vnodes=0)


def test_unreachable_errors():
    assert edge_unreachable(ClientError("failed to connect", status="StatusCode.UNAVAILABLE"))
    assert edge_unreachable(ConnectionRefusedError("refused"))
    assert edge_unreachable(OSError("[Errno 111] Connection refused"))
    assert not edge_unreachable(ClientError("bad input", status="StatusCode.INVALID_ARGUMENT"))
    assert not edge_unreachable(ClientError("must specify the START flag", status="400"))
    assert stream_headers(7) == {STREAM_HEADER: "7"}


class FakeEdge:
    """A fake edge's client: holds sequences like Triton (a frame without START of an unknown sequence is refused);
    `down` makes it unreachable."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.down = False
        self.live: set[int] = set()
        self.calls: list[dict] = []
        self.closed = False

    def infer(self, model, inputs, outputs, parameters=None, **kwargs):
        if self.down:
            raise ClientError("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
        self.calls.append(kwargs)
        sid = kwargs["sequence_id"]
        if kwargs["sequence_start"]:
            self.live.add(sid)
        elif sid not in self.live:
            raise ClientError(f"inference request for sequence {sid} must specify the START flag", status="400")
        context = f'{{"stream_id": {sid}}}'.encode()
        return {"TEXT": np.array([[b"ok"]], dtype=np.object_), "CONTEXT": np.array([[context]], dtype=np.object_)}

    def close(self) -> None:
        self.closed = True


def test_sessions_follow_the_ring_and_a_gone_edge_moves_only_its_streams():
    edges = {url: FakeEdge(url) for url in EDGES}
    ring = EdgeRing(EDGES)
    sessions = [
        StreamSession(",".join(EDGES), "grpc", sid, "q", client_factory=edges.__getitem__) for sid in range(1, 25)
    ]
    assert {s.stream_id: s.url for s in sessions} == {sid: ring.edge_for(sid) for sid in range(1, 25)}
    for index in range(3):
        for session in sessions:
            result = session.send(FRAME, start=index == 0, end=False)
            assert result.ok and not result.restarted
    for url, edge in edges.items():
        # Every frame of a stream went to its own edge, each carrying the stream header for a proxy.
        assert {c["sequence_id"] for c in edge.calls} == {s.stream_id for s in sessions if s.url == url}
        assert all(c["headers"] == {STREAM_HEADER: str(c["sequence_id"])} for c in edge.calls)
    gone = EDGES[0]
    edges[gone].down = True
    owners_before = {s.stream_id: s.url for s in sessions}
    results = {s.stream_id: s.send(FRAME, start=False, end=False) for s in sessions}
    assert all(r.ok for r in results.values())
    restarted = {sid for sid, r in results.items() if r.restarted}
    assert restarted == {sid for sid, url in owners_before.items() if url == gone}
    assert restarted  # the test's streams do land on every edge
    for session in sessions:
        assert session.url != gone
        if session.stream_id not in restarted:
            assert session.url == owners_before[session.stream_id]
    for session in sessions:
        session.close()
    assert all(edge.closed for url, edge in edges.items() if url != gone)


def test_the_last_edge_gone_is_an_error_not_a_loop():
    edges = {url: FakeEdge(url) for url in EDGES[:2]}
    session = StreamSession(EDGES[:2], "grpc", 5, "q", client_factory=edges.__getitem__)
    assert session.send(FRAME, start=True, end=False).ok
    for edge in edges.values():
        edge.down = True
    result = session.send(FRAME, start=False, end=False)
    assert not result.ok and "UNAVAILABLE" in result.error
