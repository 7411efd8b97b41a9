"""Which edge serves a stream: a consistent hash of the stream id over the edge URLs (a ring with virtual nodes).

Every request of a Triton sequence must reach the server that holds the sequence, and Triton's sequence id travels in
the request body, where no proxy looks: picking the edge is the client's job. A client either hashes the stream id
itself (`EdgeRing`, used by `client.streaming.StreamSession` when given several edge URLs), or sends through a proxy
that hashes the `x-spotvlm-stream` header every request carries (deploy/envoy.yaml: Envoy's ring hash). Both keep a
stream on one edge while the edges stay; when an edge leaves, only its streams move (about 1/N of them), and a moved
stream starts a new sequence on its new edge, with a fresh context there.

    ring = EdgeRing(["10.0.0.1:8001", "10.0.0.2:8001"])
    ring.edge_for(stream_id)
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence

from client.triton_client import ClientError

# The header (HTTP) / metadata key (gRPC) that carries the stream id for a proxy to hash on.
STREAM_HEADER = "x-spotvlm-stream"
# Virtual nodes per edge: with 100+ the streams split within a few percent of evenly over a handful of edges.
DEFAULT_VNODES = 160


def parse_edge_urls(urls: str | Sequence[str]) -> list[str]:
    """Edge URLs from a comma-separated string or a list, in order, blanks and repeats dropped."""
    parts = urls.split(",") if isinstance(urls, str) else list(urls)
    found: list[str] = []
    for part in parts:
        url = part.strip()
        if url and url not in found:
            found.append(url)
    if not found:
        raise ValueError(f"no edge URL in {urls!r}")
    return found


def _point(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


class EdgeRing:
    """Consistent hashing of stream ids over edge URLs. Not thread-safe to change; lookups are read-only."""

    def __init__(self, urls: Iterable[str], vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        self.vnodes = vnodes
        self._urls: list[str] = []
        self._points: list[int] = []
        self._owners: list[str] = []
        for url in urls:
            self.add(url)

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    def __len__(self) -> int:
        return len(self._urls)

    def add(self, url: str) -> None:
        if url in self._urls:
            return
        self._urls.append(url)
        for replica in range(self.vnodes):
            point = _point(f"{url}#{replica}")
            index = bisect.bisect(self._points, point)
            self._points.insert(index, point)
            self._owners.insert(index, url)

    def remove(self, url: str) -> None:
        """Takes `url` off the ring: its streams go to the next edges along it; every other stream stays."""
        if url not in self._urls:
            return
        self._urls.remove(url)
        kept = [(p, o) for p, o in zip(self._points, self._owners, strict=True) if o != url]
        self._points = [p for p, _ in kept]
        self._owners = [o for _, o in kept]

    def edge_for(self, stream_id: int | str) -> str:
        if not self._points:
            raise LookupError("no edge left on the ring")
        index = bisect.bisect(self._points, _point(f"stream:{stream_id}")) % len(self._points)
        return self._owners[index]


def stream_headers(stream_id: int | str) -> dict[str, str]:
    """The request headers (gRPC metadata) naming the stream, for a proxy's hash."""
    return {STREAM_HEADER: str(stream_id)}


def edge_unreachable(exc: BaseException) -> bool:
    """Whether a request failed because its edge could not be reached (gone, not answering), as opposed to an edge
    that answered with an error."""
    if isinstance(exc, ClientError):
        return "UNAVAILABLE" in (exc.status or "")
    if isinstance(exc, ConnectionError):
        return True
    message = str(exc).lower()
    return any(text in message for text in ("connection refused", "failed to connect", "connection reset"))
