"""client/server_log.py: the tail and the error lines of a tritonserver log."""

from __future__ import annotations

from pathlib import Path

from client.server_log import error_lines, tail_lines


def test_tail_lines_reads_from_the_end(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("".join(f"line {i} " + "x" * 2000 + "\n" for i in range(500)))
    tail = tail_lines(log, 60).splitlines()
    assert len(tail) == 60
    assert tail[0].startswith("line 440 ") and tail[-1].startswith("line 499 ")
    assert tail_lines(tmp_path / "missing", 10) == ""


def test_error_lines_skip_harmless_cpu_noise(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text(
        'E1125 19:16:33.546973 3655 server.cc:241] "CudaDriverHelper has not been initialized."\n'
        'I1125 19:16:34.0 1 x.cc:1] "fine"\n'
        "E1125 19:16:48.032365 3858 model_lifecycle.cc:642] \"failed to load 'broken'\"\n"
    )
    expected = "E1125 19:16:48.032365 3858 model_lifecycle.cc:642] \"failed to load 'broken'\""
    assert error_lines(log) == [expected]
