"""What psutil tells about a server's processes: descendants, liveness, process-group members, /dev/shm regions.

The python backend keeps its IPC buffers in ``/dev/shm`` and only removes them
on a clean shutdown; a killed server leaks them. A server records the regions
that *its* processes hold while they run (:func:`find_shm_regions`), so that it
can unlink the recorded ones that survive it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

logger = logging.getLogger("spotvlm.launcher")

SHM_DIR = Path("/dev/shm")
# Default of the python backend's `shm-region-prefix-name` backend config
# (libtriton_python.so builds it as "triton_" + "python" + "_backend_shm_region_").
SHM_REGION_PREFIX = "triton_python_backend_shm_region_"


def descendant_pids(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children, grandchildren, ...); empty when ``pid`` is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie is only waiting to be reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``.

    Zombies are skipped: once the server is gone its stubs are reparented to
    init, which may take a while to reap them, and they hold nothing.
    """
    members: list[int] = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except OSError:
            continue  # exited while we looked
    return members


def _shm_region(path: str, prefix: str | None) -> Path | None:
    region = Path(path)
    if region.parent != SHM_DIR or (prefix is not None and not region.name.startswith(prefix)):
        return None
    # psutil drops the " (deleted)" of an unlinked mapping: an unlinked region needs no cleanup.
    return region if region.exists() else None


def find_shm_regions(pids: Iterable[int], prefix: str | None = SHM_REGION_PREFIX, *, mapped: bool = True) -> set[Path]:
    """``/dev/shm`` files held open, or (with ``mapped``) mapped, by ``pids``.

    Only names starting with ``prefix`` count (``None``: any): a server also maps
    regions that clients register through the shared-memory API, and those
    belong to the clients. The python backend keeps its regions open, so
    ``mapped=False`` finds them too at a fraction of the cost: a stub that loaded
    torch has about a thousand mappings, and psutil reads each one's statistics.
    """
    found: set[Path] = set()
    for pid in pids:
        try:
            process = psutil.Process(pid)
            paths = [f.path for f in process.open_files()]
            if mapped:
                paths += [m.path for m in process.memory_maps(grouped=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # gone, or not ours to read
        found.update(region for path in paths if (region := _shm_region(path, prefix)) is not None)
    return found


def kill_group(pgid: int) -> None:
    """SIGKILL to every process in group ``pgid`` (none left is fine)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def reap_group(pgid: int, grace_s: float) -> None:
    """Kill the members of a server's group that outlive it by ``grace_s`` (stubs stuck in a model).

    The group's ID stays reserved while any member lives, so signalling it
    after the leader is reaped still only reaches processes the server started.
    """
    deadline = time.monotonic() + grace_s
    while members := group_members(pgid):
        if time.monotonic() >= deadline:
            logger.warning("pids %s of tritonserver group %d outlived it; killing them", members, pgid)
            kill_group(pgid)
            return
        time.sleep(0.05)


def unlink_regions(regions: Iterable[Path]) -> None:
    """Remove the shm regions a stopped server left behind (a killed backend cannot remove its own)."""
    for region in sorted(regions):
        try:
            region.unlink()
            logger.info("removed leftover shm region %s", region)
        except FileNotFoundError:
            pass  # the backend removed it on a clean shutdown
        except OSError as exc:
            logger.warning("could not remove shm region %s: %s", region, exc)
