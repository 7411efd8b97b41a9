"""client/linked_servers.py with a fake TritonServer: what starts in which order, with which link, and what stops."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from client.server_log import ServerStartError
from client.linked_servers import CLOUD_OFF, CLOUD_URL_ENV, LinkedServers

ROOT = Path("/repos")


class FakeServer:
    """Records start and stop in a shared event list; its gRPC port is known only once started, like a real
    server whose picked port is re-picked during start()."""

    ports = itertools.count(9000)

    def __init__(self, events: list[tuple[str, str]], repository: Path, *, log_path=None, env_overrides=None) -> None:
        self.events = events
        self.repository = Path(repository)
        self.log_path = log_path
        self.env_overrides = dict(env_overrides or {})
        self.side = self.repository.name
        self.grpc_port: int | None = None
        self.stop_error: Exception | None = None

    @property
    def grpc_url(self) -> str:
        assert self.grpc_port is not None, "URL read before the server was ready"
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, ready_timeout_s: float = 120) -> FakeServer:
        self.events.append(("start", self.side))
        self.ready_timeout_s = ready_timeout_s
        self.grpc_port = next(self.ports)
        return self

    def stop(self) -> None:
        self.events.append(("stop", self.side))
        if self.stop_error is not None:
            raise self.stop_error


@pytest.fixture
def events() -> list[tuple[str, str]]:
    return []


def _linked(events: list[tuple[str, str]], **kwargs) -> LinkedServers:
    return LinkedServers(ROOT, server_factory=lambda repository, **kw: FakeServer(events, repository, **kw), **kwargs)


def test_cloud_starts_first_and_the_edge_dials_it(events):
    with _linked(events, ready_timeout_s=7) as servers:
        assert servers.cloud.repository == ROOT / "cloud"
        assert servers.edge.repository == ROOT / "edge"
        assert servers.edge.env_overrides == {CLOUD_URL_ENV: servers.cloud.grpc_url}
        assert servers.cloud.env_overrides == {}
        assert servers.cloud.ready_timeout_s == servers.edge.ready_timeout_s == 7
        assert events == [("start", "cloud"), ("start", "edge")]
    # The edge stops first: it must not dial a cloud that is gone.
    assert events[2:] == [("stop", "edge"), ("stop", "cloud")]


def test_stop_is_idempotent(events):
    servers = _linked(events).start()
    servers.stop()
    servers.stop()
    assert events.count(("stop", "edge")) == 1
    assert events.count(("stop", "cloud")) == 1


def test_log_paths_and_extra_edge_env(events, tmp_path):
    servers = _linked(
        events,
        cloud_log_path=tmp_path / "cloud.log",
        edge_log_path=tmp_path / "edge.log",
        edge_env={"SPOTVLM_CLOUD_MAX_INFLIGHT": "4"},
    ).start()
    assert servers.cloud.log_path == tmp_path / "cloud.log"
    assert servers.edge.log_path == tmp_path / "edge.log"
    assert servers.edge.env_overrides == {
        CLOUD_URL_ENV: servers.cloud.grpc_url,
        "SPOTVLM_CLOUD_MAX_INFLIGHT": "4",
    }
    servers.stop()


def test_cloud_off_starts_only_an_edge_with_its_link_off(events):
    with _linked(events, cloud=False) as servers:
        assert servers.cloud is None
        assert servers.link_url == CLOUD_OFF
        assert servers.edge.env_overrides == {CLOUD_URL_ENV: CLOUD_OFF}
    assert events == [("start", "edge"), ("stop", "edge")]


def test_more_edges_link_to_the_same_cloud_and_stop_before_it(events):
    with _linked(events, edge=False, edge_env={"A": "1"}) as servers:
        assert servers.edge is None
        traced = servers.start_edge(env={"SPOTVLM_CLOUD_DELAY": "trace:x"}, name="edge (trace)")
        unlinked = servers.start_edge(linked=False)
        assert traced.env_overrides == {
            CLOUD_URL_ENV: servers.cloud.grpc_url,
            "A": "1",
            "SPOTVLM_CLOUD_DELAY": "trace:x",
        }
        assert unlinked.env_overrides == {CLOUD_URL_ENV: CLOUD_OFF, "A": "1"}
        traced.stop()  # the caller may stop one early; the pair's stop() leaves it be
    assert events == [
        ("start", "cloud"),
        ("start", "edge"),
        ("start", "edge"),
        ("stop", "edge"),
        ("stop", "edge"),
        ("stop", "edge"),
        ("stop", "cloud"),
    ]


def test_starter_and_on_ready_get_each_servers_name(events):
    started, ready = [], []

    def starter(name, server):
        started.append(name)
        server.start(1)

    servers = _linked(events, edge_name="edge (linked)", starter=starter, on_ready=lambda n, s: ready.append((n, s)))
    servers.start()
    assert started == ["cloud", "edge (linked)"]
    assert ready == [("cloud", servers.cloud), ("edge (linked)", servers.edge)]
    servers.stop()


def test_a_failed_edge_start_stops_the_cloud_and_raises(events):
    def starter(name, server):
        server.start()
        if name == "edge":
            raise ServerStartError("edge log tail")

    servers = _linked(events, starter=starter)
    with pytest.raises(ServerStartError, match="edge log tail"):
        servers.start()
    assert ("stop", "cloud") in events and ("stop", "edge") in events
    assert events.index(("stop", "edge")) < events.index(("stop", "cloud"))


def test_a_failed_cloud_start_makes_no_edge(events):
    def starter(name, server):
        raise ServerStartError(f"{name} did not start")

    with pytest.raises(ServerStartError, match="cloud did not start"):
        _linked(events, starter=starter).start()
    assert events == [("stop", "cloud")]


def test_a_stop_that_raises_still_stops_the_cloud(events):
    servers = _linked(events).start()
    servers.edge.stop_error = RuntimeError("edge stop failed")
    with pytest.raises(RuntimeError, match="edge stop failed"):
        servers.stop()
    assert events[-2:] == [("stop", "edge"), ("stop", "cloud")]
