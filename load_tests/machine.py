"""The machine a benchmark ran on, and the CPU time of a server's processes, this client and everything else (psutil).

Other people's work skews the numbers on a small machine: the load averages and `other_cpu_s` say how much.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model(),
        "torch_cpu_capability": torch_cpu_capability(),
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def cpu_model() -> str | None:
    """The CPU's model name (py-cpuinfo, else what the platform module says)."""
    import cpuinfo

    try:
        brand = cpuinfo.get_cpu_info().get("brand_raw")
    except Exception:  # an unknown platform: the model name is an aid, not a requirement
        brand = None
    return brand or platform.processor() or None


def torch_cpu_capability() -> str | None:
    """The vector instructions torch's CPU kernels use here (e.g. "AVX512", "AVX2", "DEFAULT"); None without torch."""
    try:
        import torch
    except ImportError:
        return None
    return str(torch.backends.cpu.get_cpu_capability())


def process_tree_rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` and its live descendants (a tritonserver and its python-backend stubs);
    0 when it is gone. Shared pages count once per process, so this is an upper bound."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:  # exited meanwhile
            continue
    return total


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def system_busy_s() -> float:
    """CPU seconds spent busy (all CPUs, not idle or waiting for I/O) since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - _guest_s(times)


def _guest_s(times: Any) -> float:
    # Linux counts guest time inside user and nice as well; counted once, as the kernel's first eight fields do.
    return getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid`, its live descendants and the children it has reaped; 0 when gone."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:  # exited meanwhile: its time moves to its parent's children_* fields
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


# The server process itself: gRPC/HTTP, schedulers, batchers, the ensemble, IPC, and any model that runs in it rather
# than in a python-backend stub (a TensorRT svlm_vision, for one).
SERVER_CORE = "tritonserver"


def process_tree_cpu_by_model(pid: int) -> dict[str, float]:
    """User + system CPU seconds of a tritonserver's process tree by part: each python-backend model (its stubs
    summed, named after the model folder of the model.py they run) and SERVER_CORE; empty when it is gone."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    out: dict[str, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
            name = SERVER_CORE if process.pid == pid else _stub_model(process.cmdline())
        except psutil.Error:
            continue
        out[name] = out.get(name, 0.0) + times.user + times.system
    return out


def _stub_model(cmdline: list[str]) -> str:
    # A stub runs `triton_python_backend_stub <repository>/<model>/<version>/model.py ...`.
    for part in cmdline:
        path = Path(part)
        if path.name == "model.py" and len(path.parts) >= 3:
            return path.parts[-3]
    return Path(cmdline[0]).name if cmdline else "?"


def cpu_ms_per_frame(before: dict[str, float], after: dict[str, float], frames: int) -> dict[str, float]:
    """CPU ms per answered frame by part (process_tree_cpu_by_model before and after a run), largest first, and
    their sum as "total"."""
    if frames <= 0:
        return {}
    parts = {name: (after[name] - before.get(name, 0.0)) * 1000.0 / frames for name in after}
    ordered = {name: round(ms, 2) for name, ms in sorted(parts.items(), key=lambda kv: -kv[1]) if ms >= 0.005}
    return {**ordered, "total": round(sum(parts.values()), 2)}


@dataclass
class CpuSnapshot:
    system_busy_s: float | None
    server_s: float
    client_s: float


def cpu_snapshot(server_pid: int | None) -> CpuSnapshot:
    client = psutil.Process().cpu_times()
    server = process_tree_cpu_s(server_pid) if server_pid is not None else 0.0
    return CpuSnapshot(system_busy_s(), server, client.user + client.system)


def cpu_usage(before: CpuSnapshot, after: CpuSnapshot, wall_s: float, cpus: int | None) -> dict[str, float | None]:
    """CPU seconds over a run: the server's process tree, this client, and everything else on the machine."""
    server = after.server_s - before.server_s
    client = after.client_s - before.client_s
    other = None
    if before.system_busy_s is not None and after.system_busy_s is not None:
        other = max(0.0, after.system_busy_s - before.system_busy_s - server - client)
    capacity = wall_s * cpus if cpus else None
    return {
        "wall_s": round(wall_s, 2),
        "server_cpu_s": round(server, 2),
        "client_cpu_s": round(client, 2),
        "other_cpu_s": round(other, 2) if other is not None else None,
        "busy_share_of_machine": round((server + client + (other or 0.0)) / capacity, 3) if capacity else None,
    }
