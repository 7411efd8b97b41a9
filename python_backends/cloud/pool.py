"""The cloud replicas behind the edge's link: which one gets the next frame, and one circuit breaker per replica.

`cloud_url` names one endpoint, several comma-separated ones, or `dns:///HOST:PORT` (gRPC's name syntax): every
address the name resolves to is an endpoint (a Kubernetes headless Service lists one per ready pod), and the link
resolves it again now and then as replicas come and go.

A frame goes to the endpoint with the fewest requests outstanding whose breaker lets it through; ties go round
the pool so an idle pool spreads its frames. A failed endpoint's breaker opens; after its back-off the breaker's
half-open trial is granted the next time the endpoint is picked, and an endpoint with nothing in flight is picked
first, so the next frame probes it back in. The pool is down only when every endpoint is.

Pure logic, thread-safe; the link's loop does the calling and the resolving.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from python_backends.cloud.breaker import CircuitBreaker, CloudState

DNS_SCHEME = "dns:///"


def parse_endpoints(url: str) -> list[str]:
    """The endpoints of a comma-separated `cloud_url`, in order, blanks and repeats dropped."""
    endpoints: list[str] = []
    for part in url.split(","):
        endpoint = part.strip()
        if endpoint and endpoint not in endpoints:
            endpoints.append(endpoint)
    if not endpoints:
        raise ValueError(f"cloud_url names no endpoint: {url!r}")
    if len(endpoints) > 1 and any(e.startswith(DNS_SCHEME) for e in endpoints):
        raise ValueError(f"a {DNS_SCHEME} name must be the only endpoint of cloud_url, got {url!r}")
    return endpoints


def dns_target(endpoints: Sequence[str]) -> tuple[str, int] | None:
    """(host, port) when the endpoints are one `dns:///HOST:PORT` name to resolve, else None."""
    if len(endpoints) != 1 or not endpoints[0].startswith(DNS_SCHEME):
        return None
    target = endpoints[0][len(DNS_SCHEME) :]
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{endpoints[0]!r} must be {DNS_SCHEME}HOST:PORT")
    return host.strip("[]"), int(port)


def address_url(address: str, port: int) -> str:
    """HOST:PORT for gRPC, an IPv6 address in brackets."""
    try:
        is_v6 = ipaddress.ip_address(address).version == 6
    except ValueError:
        is_v6 = False
    return f"[{address}]:{port}" if is_v6 else f"{address}:{port}"


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, as sorted HOST:PORT endpoints (sorted: a stable order between lookups)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({address_url(str(info[4][0]), port) for info in infos})


def aggregate_state(states: Iterable[CloudState]) -> CloudState:
    """The pool's state: OK if any endpoint is, else SLOW if any is, else DOWN (also when there are none)."""
    found = set(states)
    if CloudState.OK in found:
        return CloudState.OK
    if CloudState.SLOW in found:
        return CloudState.SLOW
    return CloudState.DOWN


@dataclass(eq=False)
class Endpoint:
    """One cloud replica. `inflight` is guarded by the pool's lock; the breaker has its own."""

    url: str
    breaker: CircuitBreaker
    inflight: int = 0

    @property
    def state(self) -> CloudState:
        return self.breaker.state


class EndpointPool:
    def __init__(self, urls: Sequence[str], breaker_factory: Callable[[], CircuitBreaker]) -> None:
        self._breaker_factory = breaker_factory
        self._lock = threading.Lock()
        self._endpoints: list[Endpoint] = [Endpoint(url, breaker_factory()) for url in dict.fromkeys(urls)]
        self._turn = 0  # where the round of ties starts

    @property
    def endpoints(self) -> list[Endpoint]:
        with self._lock:
            return list(self._endpoints)

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    def acquire(self, exclude: Collection[str] = ()) -> Endpoint | None:
        """The endpoint for the next request, its in-flight count taken (give it back with `release`), or None when
        every endpoint not excluded is refused by its breaker."""
        with self._lock:
            count = len(self._endpoints)
            order = sorted(
                (
                    (e.inflight, (i - self._turn) % count, i)
                    for i, e in enumerate(self._endpoints)
                    if e.url not in exclude
                )
            )
            for _, _, index in order:
                endpoint = self._endpoints[index]
                # allow() is asked only of the endpoint about to be taken: in half-open it grants the one trial.
                if endpoint.breaker.allow():
                    endpoint.inflight += 1
                    self._turn = index + 1
                    return endpoint
            return None

    def release(self, endpoint: Endpoint) -> None:
        """Gives back one in-flight request of `endpoint` (also of one no longer in the pool)."""
        with self._lock:
            endpoint.inflight = max(0, endpoint.inflight - 1)

    def replace(self, urls: Sequence[str]) -> tuple[list[str], list[str]]:
        """Sets the pool to `urls` (a new DNS answer): kept endpoints keep their breaker and counts, new ones start
        closed. Returns (added, removed) urls."""
        wanted = list(dict.fromkeys(urls))
        with self._lock:
            current = {e.url: e for e in self._endpoints}
            added = [u for u in wanted if u not in current]
            removed = [u for u in current if u not in wanted]
            self._endpoints = [current.get(u) or Endpoint(u, self._breaker_factory()) for u in wanted]
            self._turn = 0
        return added, removed

    @property
    def state(self) -> CloudState:
        return aggregate_state(e.state for e in self.endpoints)

    @property
    def total_inflight(self) -> int:
        with self._lock:
            return sum(e.inflight for e in self._endpoints)
