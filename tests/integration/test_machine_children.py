"""CPU accounting of the benchmarks (load_tests/machine.py) with a real child process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from load_tests import machine

pytestmark = pytest.mark.integration


def test_process_tree_cpu_s_of_this_process_a_child_and_a_gone_one() -> None:
    own = machine.process_tree_cpu_s(os.getpid())
    assert own > 0
    # A reaped child's CPU time counts for its parent (children_user / children_system).
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    assert machine.process_tree_cpu_s(os.getpid()) > own
    assert machine.process_tree_cpu_s(2**22 + 12345) == 0  # no such pid
