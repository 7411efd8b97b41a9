"""CPU accounting of the benchmarks (psutil): the server's process tree, this client, everything else."""

from __future__ import annotations

import os

from load_tests import machine


def test_system_busy_s_counts_up() -> None:
    before = machine.system_busy_s()
    assert before > 0
    sum(i * i for i in range(200_000))
    assert machine.system_busy_s() >= before


def test_cpu_snapshot_without_a_server() -> None:
    snapshot = machine.cpu_snapshot(None)
    assert snapshot.server_s == 0.0 and snapshot.client_s > 0 and snapshot.system_busy_s > 0


def test_cpu_usage() -> None:
    before = machine.CpuSnapshot(system_busy_s=100.0, server_s=10.0, client_s=1.0)
    after = machine.CpuSnapshot(system_busy_s=130.0, server_s=30.0, client_s=4.0)
    usage = machine.cpu_usage(before, after, wall_s=20.0, cpus=2)
    assert usage == {
        "wall_s": 20.0,
        "server_cpu_s": 20.0,
        "client_cpu_s": 3.0,
        "other_cpu_s": 7.0,
        "busy_share_of_machine": 0.75,
    }
    unknown = machine.cpu_usage(
        machine.CpuSnapshot(None, 0.0, 0.0), machine.CpuSnapshot(None, 1.0, 1.0), wall_s=2.0, cpus=None
    )
    assert unknown["other_cpu_s"] is None and unknown["busy_share_of_machine"] is None


def test_machine_info() -> None:
    info = machine.machine_info()
    assert info["cpu_count"] == os.cpu_count() and info["usable_cpus"] >= 1


def test_cpu_by_model_names_the_server_and_each_stub_model() -> None:
    parts = machine.process_tree_cpu_by_model(os.getpid())  # other tests' child processes may show up too
    assert parts[machine.SERVER_CORE] > 0
    assert machine.process_tree_cpu_by_model(2**22 + 7) == {}  # no such process
    stub = ["/x/triton_python_backend_stub", "/repo/edge/svlm_generate/1/model.py", "triton_python_backend_shm", "1"]
    assert machine._stub_model(stub) == "svlm_generate"
    assert machine._stub_model(["/usr/bin/python3", "-c", "pass"]) == "python3"


def test_cpu_ms_per_frame_by_part_largest_first() -> None:
    before = {"tritonserver": 1.0, "svlm_generate": 2.0}
    after = {"tritonserver": 1.2, "svlm_generate": 3.0, "svlm_vision": 0.1}
    per = machine.cpu_ms_per_frame(before, after, frames=100)
    assert list(per) == ["svlm_generate", "tritonserver", "svlm_vision", "total"]
    assert per == {"svlm_generate": 10.0, "tritonserver": 2.0, "svlm_vision": 1.0, "total": 13.0}
    assert machine.cpu_ms_per_frame(before, after, frames=0) == {}
