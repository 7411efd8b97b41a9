"""client/processes.py on this test's own process: liveness and /dev/shm regions (no process started)."""

from __future__ import annotations

import ctypes
import mmap
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.processes import SHM_DIR, SHM_REGION_PREFIX, descendant_pids, find_shm_regions, pid_alive


@pytest.fixture
def shm_name() -> Iterator[Path]:
    """A unique /dev/shm path with the python-backend prefix, removed afterwards."""
    path = SHM_DIR / f"{SHM_REGION_PREFIX}spotvlm-unit-{uuid.uuid4()}"
    yield path
    path.unlink(missing_ok=True)


def test_find_shm_regions_ignores_unlinked_and_dead(shm_name: Path) -> None:
    with open(shm_name, "wb") as f:
        f.truncate(4096)
    fd = os.open(shm_name, os.O_RDWR)
    try:
        m = mmap.mmap(fd, 4096)
        assert find_shm_regions([os.getpid()]) == {shm_name}
        shm_name.unlink()  # now "(deleted)": nothing left to clean
        assert find_shm_regions([os.getpid()]) == set()
        m.close()
    finally:
        os.close(fd)
    assert find_shm_regions([2**22 + 12345]) == set()  # no such pid


def test_open_files_alone_miss_a_region_that_is_only_mapped(shm_name: Path) -> None:
    # libc's mmap, not Python's: mmap.mmap keeps a duplicate of the descriptor open.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    with open(shm_name, "wb") as f:
        f.truncate(4096)
    fd = os.open(shm_name, os.O_RDWR)
    address = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        assert find_shm_regions([os.getpid()], mapped=False) == {shm_name}
        os.close(fd)  # only the mapping keeps it now
        assert find_shm_regions([os.getpid()], mapped=False) == set()
        assert find_shm_regions([os.getpid()]) == {shm_name}
    finally:
        libc.munmap(address, 4096)


def test_liveness_and_descendants_of_this_process_and_of_no_process() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(2**22 + 12345)
    assert os.getpid() not in descendant_pids(os.getpid())
    assert descendant_pids(2**22 + 12345) == []
