"""A cloud tritonserver and an edge tritonserver linked to it, started and stopped as one.

The edge's ``spotvlm`` model reads its cloud link from ``SPOTVLM_CLOUD_URL``; without it, it would dial the cloud's
default port rather than the cloud started here. Both servers listen on free loopback ports and are stopped by their
own PIDs (``TritonServer.stop``), the edges first so that none dials a cloud that is already gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path

from client.server_process import TritonServer

CLOUD_URL_ENV = "SPOTVLM_CLOUD_URL"
# What the edge's spotvlm reads as "no cloud": it answers from the edge model alone.
CLOUD_OFF = "off"

# Starts one server and returns once it is ready (or raises); gets the server's name ("cloud", "edge", ...).
Starter = Callable[[str, TritonServer], None]


class LinkedServers:
    """The cloud server under ``repository_root/cloud`` and an edge under ``repository_root/edge`` linked to it.

    :meth:`start` starts the cloud, then the edge with ``SPOTVLM_CLOUD_URL`` set to the cloud's gRPC URL. The edge is
    made only once the cloud is ready: a start that loses a picked port to another process retries on new ports, so
    the cloud's URL is final only then. With ``cloud=False`` no cloud runs and the edge's link is off; with
    ``edge=False`` only the cloud starts (edges can then be added with :meth:`start_edge`).

    ``edge_env`` goes into every edge's environment (after the link); ``starter`` replaces the default
    ``server.start(ready_timeout_s)``; ``on_ready`` runs after each server is ready. A failed :meth:`start` stops
    what it had started before raising. :meth:`stop` is idempotent. Also a context manager.
    """

    def __init__(
        self,
        repository_root: Path | str,
        *,
        cloud: bool = True,
        edge: bool = True,
        edge_env: Mapping[str, str] | None = None,
        cloud_log_path: Path | str | None = None,
        edge_log_path: Path | str | None = None,
        cloud_name: str = "cloud",
        edge_name: str = "edge",
        ready_timeout_s: float = 120,
        starter: Starter | None = None,
        on_ready: Callable[[str, TritonServer], None] | None = None,
        server_factory: Callable[..., TritonServer] = TritonServer,
    ) -> None:
        self.repository_root = Path(repository_root)
        self.with_cloud = cloud
        self.with_edge = edge
        self.edge_env = dict(edge_env or {})
        self.cloud_log_path = cloud_log_path
        self.edge_log_path = edge_log_path
        self.cloud_name = cloud_name
        self.edge_name = edge_name
        self.ready_timeout_s = ready_timeout_s
        self._starter = starter
        self._on_ready = on_ready
        self._server_factory = server_factory
        self.cloud: TritonServer | None = None
        self.edge: TritonServer | None = None
        # Unwinds in reverse start order: edges (latest first), then the cloud; goes on past a stop that raises.
        self._stops = contextlib.ExitStack()

    @property
    def link_url(self) -> str:
        """What the edges get as ``SPOTVLM_CLOUD_URL``: the cloud's gRPC URL, or ``off`` without a cloud."""
        return self.cloud.grpc_url if self.cloud is not None else CLOUD_OFF

    def start(self) -> LinkedServers:
        try:
            if self.with_cloud:
                self.cloud = self._start(self.cloud_name, self.repository_root / "cloud", self.cloud_log_path, {})
            if self.with_edge:
                self.edge = self.start_edge(name=self.edge_name, log_path=self.edge_log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def start_edge(
        self,
        *,
        env: Mapping[str, str] | None = None,
        linked: bool = True,
        name: str = "edge",
        log_path: Path | str | None = None,
    ) -> TritonServer:
        """Starts one more edge (linked to this cloud unless ``linked=False``); it is stopped with the others, or
        earlier by the caller."""
        link = self.link_url if linked else CLOUD_OFF
        overrides = {CLOUD_URL_ENV: link, **self.edge_env, **(env or {})}
        return self._start(name, self.repository_root / "edge", log_path, overrides)

    def _start(self, name: str, repository: Path, log_path: Path | str | None, env: dict[str, str]) -> TritonServer:
        server = self._server_factory(repository, log_path=log_path, env_overrides=env or None)
        self._stops.callback(server.stop)  # safe on a server that never started
        if self._starter is not None:
            self._starter(name, server)
        else:
            server.start(self.ready_timeout_s)
        if self._on_ready is not None:
            self._on_ready(name, server)
        return server

    def stop(self) -> None:
        """Stops every edge, then the cloud, each by its own PID."""
        self._stops.close()

    def __enter__(self) -> LinkedServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
