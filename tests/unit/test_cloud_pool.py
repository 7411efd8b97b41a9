"""The cloud endpoint pool without a server: parsing cloud_url, fewest-outstanding choice, per-endpoint breakers,
probing a failed endpoint back in, the aggregated state, DNS answers replacing the endpoints."""

from __future__ import annotations

import pytest

from python_backends.cloud.breaker import CircuitBreaker, CloudState
from python_backends.cloud.pool import (
    EndpointPool,
    address_url,
    aggregate_state,
    dns_target,
    parse_endpoints,
    resolve_addresses,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_pool(urls, clock=None, threshold: int = 1) -> EndpointPool:
    clock = clock or FakeClock()
    return EndpointPool(urls, lambda: CircuitBreaker(failure_threshold=threshold, backoff_s=1.0, clock=clock))


@pytest.mark.parametrize(
    "url, endpoints",
    [
        ("cloud:8001", ["cloud:8001"]),
        (" a:1 , b:2,,a:1 ", ["a:1", "b:2"]),
        ("dns:///cloud.svc:8001", ["dns:///cloud.svc:8001"]),
    ],
)
def test_parse_endpoints(url, endpoints):
    assert parse_endpoints(url) == endpoints


@pytest.mark.parametrize("url", ["", " , ", "a:1,dns:///b:2"])
def test_parse_endpoints_refuses(url):
    with pytest.raises(ValueError):
        parse_endpoints(url)


def test_dns_target():
    assert dns_target(["dns:///cloud.ns.svc:8001"]) == ("cloud.ns.svc", 8001)
    assert dns_target(["cloud:8001"]) is None
    assert dns_target(["a:1", "b:2"]) is None
    with pytest.raises(ValueError):
        dns_target(["dns:///cloud"])


def test_address_url_and_a_real_lookup():
    assert address_url("10.0.0.7", 8001) == "10.0.0.7:8001"
    assert address_url("::1", 8001) == "[::1]:8001"
    assert "127.0.0.1:8001" in resolve_addresses("127.0.0.1", 8001)


def test_fewest_outstanding_wins_and_ties_go_round():
    pool = make_pool(["a", "b", "c"])
    first = [pool.acquire().url for _ in range(3)]
    assert first == ["a", "b", "c"]  # all idle: spread round the pool
    by_url = {e.url: e for e in pool.endpoints}
    pool.release(by_url["b"])
    assert pool.acquire().url == "b"  # the only one with nothing outstanding
    pool.release(by_url["a"])
    pool.release(by_url["c"])
    assert {pool.acquire().url, pool.acquire().url} == {"a", "c"}
    assert pool.total_inflight == 3


def test_exclude_and_nothing_left():
    pool = make_pool(["a", "b"])
    assert pool.acquire(exclude=["a"]).url == "b"
    assert pool.acquire(exclude=["a", "b"]) is None


def test_breaker_per_endpoint_and_probe_back_in():
    clock = FakeClock()
    pool = make_pool(["a", "b"], clock)
    a = pool.acquire()
    assert a.url == "a"
    a.breaker.record_failure("unavailable")  # threshold 1: a is open
    pool.release(a)
    assert a.state is CloudState.DOWN and pool.state is CloudState.OK
    picks = []
    for _ in range(3):
        endpoint = pool.acquire()
        picks.append(endpoint.url)
        pool.release(endpoint)
    assert picks == ["b", "b", "b"]  # a is skipped while its back-off runs
    clock.now = 1.5
    probe = pool.acquire()
    assert probe.url == "a"  # after the back-off, the idle failed endpoint gets the trial
    assert pool.acquire().url == "b"  # one trial only: the next frame goes to b
    probe.breaker.record_success(20.0)
    pool.release(probe)
    assert pool.state is CloudState.OK and probe.state is CloudState.OK


def test_down_only_when_every_endpoint_is():
    pool = make_pool(["a", "b"])
    endpoints = pool.endpoints
    endpoints[0].breaker.record_failure("unavailable")
    assert pool.state is CloudState.OK
    endpoints[1].breaker.record_failure("timeout")
    assert pool.state is CloudState.DOWN
    assert pool.acquire() is None


@pytest.mark.parametrize(
    "states, expected",
    [
        ([], CloudState.DOWN),
        ([CloudState.DOWN, CloudState.SLOW], CloudState.SLOW),
        ([CloudState.SLOW, CloudState.OK, CloudState.DOWN], CloudState.OK),
        ([CloudState.DOWN, CloudState.DOWN], CloudState.DOWN),
    ],
)
def test_aggregate_state(states, expected):
    assert aggregate_state(states) is expected


def test_replace_keeps_known_endpoints_and_their_breakers():
    pool = make_pool(["10.0.0.1:8001", "10.0.0.2:8001"])
    kept = pool.endpoints[1]
    kept.breaker.record_failure("unavailable")
    held = pool.acquire()  # a call in flight to the endpoint about to go
    assert held.url == "10.0.0.1:8001"
    added, removed = pool.replace(["10.0.0.2:8001", "10.0.0.3:8001"])
    assert added == ["10.0.0.3:8001"] and removed == ["10.0.0.1:8001"]
    assert pool.urls == ["10.0.0.2:8001", "10.0.0.3:8001"]
    assert pool.endpoints[0] is kept and kept.state is CloudState.DOWN
    pool.release(held)  # the call on the removed endpoint ends without harm
    assert held.inflight == 0 and pool.total_inflight == 0
