"""CloudLink over several endpoints with fake async clients: spreading, failover of the same frame within its deadline,
timeouts when no endpoint is left, per-endpoint counts, the aggregated state, dns:/// endpoints and their metrics."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from tritonclient.utils import InferenceServerException

from python_backends.cloud.breaker import CircuitBreaker, CloudState
from python_backends.cloud.link import CloudLink
from tests.unit import fake_pb_utils
from tests.unit.test_cloud_link import FakeCall, FakeClient, FakeResult, Recorder, answer, job

pb = fake_pb_utils.install()

from python_backends.serving.metrics import SpotMetrics  # after the fake pb_utils


async def refuse(call: FakeCall) -> FakeResult:
    raise InferenceServerException(msg="failed to connect to all addresses", status="StatusCode.UNAVAILABLE")


async def hang(call: FakeCall) -> FakeResult:
    await asyncio.sleep(30)
    raise AssertionError("not reached")


class PerUrlFactory:
    """A fake client per endpoint, each with the behaviour given for its url."""

    def __init__(self, behaviours: dict) -> None:
        self.behaviours = behaviours
        self.clients: dict[str, list[FakeClient]] = {}

    def __call__(self, url: str) -> FakeClient:
        client = FakeClient(self.behaviours[url])
        self.clients.setdefault(url, []).append(client)
        return client

    def calls(self, url: str) -> list[FakeCall]:
        return [c for client in self.clients.get(url, []) for c in client.calls]


@pytest.fixture
def make_link():
    links: list[CloudLink] = []

    def make(behaviours: dict, url: str | None = None, **kwargs):
        factory = PerUrlFactory(behaviours)
        recorder = Recorder()
        kwargs.setdefault(
            "breaker_factory", lambda: CircuitBreaker(failure_threshold=2, backoff_s=60.0, max_backoff_s=60.0)
        )
        link = CloudLink(
            url or ",".join(behaviours),
            client_factory=factory,
            on_reply=recorder.on_reply,
            on_error=recorder.on_error,
            **kwargs,
        )
        link.start()
        links.append(link)
        return link, factory, recorder

    yield make
    for link in links:
        link.close()


def test_idle_endpoints_share_the_streams(make_link):
    link, factory, recorder = make_link({"a:1": answer, "b:2": answer})
    for stream in range(1, 5):
        assert link.submit(job(stream=stream)) == "sent"
    recorder.wait(replies=4)
    assert len(factory.calls("a:1")) == 2 and len(factory.calls("b:2")) == 2
    assert {r.endpoint for r in recorder.replies} == {"a:1", "b:2"}
    stats = link.stats()
    assert stats["sent"] == 4 and stats["replies"] == 4 and stats["retries"] == 0
    assert {url: e["replies"] for url, e in stats["endpoints"].items()} == {"a:1": 2, "b:2": 2}


def test_an_unreachable_endpoint_fails_over_without_losing_the_frame(make_link):
    link, factory, recorder = make_link({"a:1": refuse, "b:2": answer})
    jobs = [job(stream=s, frame=7) for s in (1, 2, 3)]
    for j in jobs:
        assert link.submit(j) == "sent"
    recorder.wait(replies=3)
    assert recorder.errors == []
    assert sorted((r.job.stream_id, r.job.frame_id) for r in recorder.replies) == [(1, 7), (2, 7), (3, 7)]
    assert all(r.endpoint == "b:2" for r in recorder.replies)
    stats = link.stats()
    a, b = stats["endpoints"]["a:1"], stats["endpoints"]["b:2"]
    assert a["errors_by_kind"]["unavailable"] == a["retries"] == stats["retries"] >= 1
    assert a["state"] == "down" and b["state"] == "ok" and stats["state"] == "ok"
    assert stats["errors_by_kind"]["unavailable"] == 0  # no frame failed
    assert link.submit(job(stream=9)) == "sent"  # a's breaker is open: straight to b
    recorder.wait(replies=4)
    assert recorder.replies[-1].endpoint == "b:2"


def test_a_hung_endpoint_gets_half_the_deadline_then_the_frame_goes_elsewhere(make_link):
    link, factory, recorder = make_link({"a:1": hang, "b:2": answer}, deadline_s=2.0)
    assert link.attempt_timeout_s == 1.0
    assert link.submit(job(stream=1)) == "sent"  # round robin from a: the first frame goes to the hung one
    recorder.wait(replies=1)
    (call,) = factory.calls("a:1")
    assert call.cancelled and call.client_timeout <= 1.0
    assert factory.calls("b:2")[0].client_timeout <= 1.0 + 1e-6
    assert link.stats()["endpoints"]["a:1"]["errors_by_kind"]["timeout"] == 1


def test_with_no_endpoint_left_the_frame_counts_as_failed(make_link):
    link, factory, recorder = make_link({"a:1": refuse, "b:2": refuse})
    assert link.submit(job()) == "sent"
    recorder.wait(errors=1)
    assert recorder.errors[0][1] == "unavailable"
    assert len(factory.calls("a:1")) == len(factory.calls("b:2")) == 1  # each endpoint once per frame
    assert link.stats()["errors_by_kind"]["unavailable"] == 1 and link.stats()["retries"] == 1
    assert link.submit(job(stream=2)) == "sent"
    recorder.wait(errors=2)
    assert link.state is CloudState.DOWN  # two failures each: both breakers open
    assert link.submit(job(stream=3)) == "skipped_down"


def test_a_bad_reply_is_not_retried(make_link):
    async def bad(call: FakeCall) -> FakeResult:
        return FakeResult({"TEXT": b"x", "DETECTIONS": b"not json"})

    link, factory, recorder = make_link({"a:1": bad, "b:2": bad})
    link.submit(job())
    recorder.wait(errors=1)
    assert recorder.errors[0][1] == "bad_reply"
    assert len(factory.calls("a:1")) + len(factory.calls("b:2")) == 1


def test_drained_endpoint_counts_reach_the_endpoint_metrics(make_link):
    link, _, recorder = make_link({"a:1": refuse, "b:2": answer})
    link.submit(job(stream=1))
    recorder.wait(replies=1)
    delta = link.drain_stats()
    assert delta["retries"] == 1 and delta["sent"] == 1
    assert delta["endpoints"]["a:1"]["sent"] == 1 and delta["endpoints"]["b:2"]["sent"] == 1
    assert len(delta["endpoints"]["b:2"]["rtt_ms"]) == 1 and delta["endpoints"]["a:1"]["rtt_ms"] == []
    metrics = SpotMetrics(pb, "spotvlm")
    metrics.record_cloud(delta)
    a, b = metrics.endpoints.series["a:1"], metrics.endpoints.series["b:2"]
    assert a["requests"].value() == 1 and a["retries"].value() == 1 and a["errors"]["unavailable"].value() == 1
    assert b["requests"].value() == 1 and len(b["rtt_ms"].observations) == 1 and b["inflight"].value() == 0
    assert a["up"].value() == 1.0  # threshold 2: one failure leaves a's breaker closed
    assert {s.labels["endpoint"] for s in (a["requests"], b["requests"])} == {"a:1", "b:2"}
    again = link.drain_stats()
    assert again["endpoints"]["a:1"]["sent"] == 0 and again["endpoints"]["b:2"]["rtt_ms"] == []


def test_dns_name_becomes_one_endpoint_per_address(make_link):
    answers = [["10.0.0.1:8001", "10.0.0.2:8001"]]
    looked_up = threading.Event()

    def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("cloud.ns.svc", 8001)
        looked_up.set()
        return answers[-1]

    behaviours = {"10.0.0.1:8001": answer, "10.0.0.2:8001": answer, "10.0.0.3:8001": answer}
    link, factory, recorder = make_link(
        behaviours, url="dns:///cloud.ns.svc:8001", resolver=resolver, resolve_interval_s=0.05
    )
    assert link.pool.urls == ["10.0.0.1:8001", "10.0.0.2:8001"]
    assert link.attempt_timeout_s == link.deadline_s / 2
    answers.append(["10.0.0.2:8001", "10.0.0.3:8001"])  # a replica went, another came
    for _ in range(200):  # waits for the link's next lookup, up to 10 s
        if link.pool.urls == answers[-1]:
            break
        time.sleep(0.05)
    assert link.pool.urls == answers[-1]
    link.submit(job(stream=1))
    link.submit(job(stream=2))
    recorder.wait(replies=2)
    assert {r.endpoint for r in recorder.replies} == {"10.0.0.2:8001", "10.0.0.3:8001"}


def test_a_breaker_is_for_a_single_endpoint():
    with pytest.raises(ValueError):
        CloudLink("a:1,b:2", breaker=CircuitBreaker(), on_reply=lambda reply: None)
