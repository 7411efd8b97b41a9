"""The locust load test as a user runs it: real locust, real tritonclient users, real edge and cloud tritonservers.

The CI-sized run is `python -m load_tests.load_run` starting its own linked pair of servers: 8 users (streams) for
20 s at 5 fps over gRPC. The shorter runs use the session's edge (cloud link off) through `spotvlm load --url`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests.load_run import CONTEXT_NAME, CONTEXT_TYPE, PROJECT_ROOT, Reports, read_stats_csv

pytestmark = pytest.mark.integration

SPOTVLM = str(Path(sys.executable).with_name("spotvlm"))
USERS, FPS, DURATION_S = 8, 2, 20


def run_logged(command: list[str], out: Path, timeout_s: float) -> tuple[int, str]:
    """Runs a load command with its output in out/run.log; returns (exit code, output)."""
    log_path = out.parent / f"{out.name}_run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # SIGTERM to our own child: locust stops and the launcher stops the servers it started.
            process.terminate()
            process.wait(timeout=90)
            pytest.fail(f"{command} did not finish in {timeout_s} s\n{explain(out, log_path.read_text())}")
    return returncode, log_path.read_text()


def explain(out: Path, output: str) -> str:
    """The command's output and the tails of the server logs it left, for a failure message."""
    parts = ["--- output (last 150 lines) ---\n" + "\n".join(output.splitlines()[-150:])]
    for name in ("cloud_server.log", "edge_server.log"):
        path = out / name
        if path.exists():
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-60:])
            parts.append(f"--- {name} (last 60 lines) ---\n{tail}")
    return "\n".join(parts)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def frames_in_csv(reports: Reports) -> dict[str, int]:
    with open(reports.stats_csv, newline="") as file:
        return {f"{row['Type']} {row['Name']}": int(row["Request Count"]) for row in csv.DictReader(file)}


def test_ci_load_run_starts_a_cloud_and_two_sharded_edges_and_passes(tmp_path: Path):
    out = tmp_path / "load"
    command = [sys.executable, "-m", "load_tests.load_run", "--users", str(USERS), "--duration", str(DURATION_S)]
    command += ["--fps", str(FPS), "--protocol", "grpc", "--edges", "2", "--out", str(out)]
    returncode, output = run_logged(command, out, timeout_s=DURATION_S + 480)
    failure = explain(out, output)
    assert returncode == 0, failure

    reports = Reports(out)
    totals = read_stats_csv(reports.stats_csv)
    assert totals.failures == 0, failure
    # constant pacing caps a user at fps*duration + 1 frames plus its END frame; a busy machine only lowers the count.
    nominal = USERS * FPS * DURATION_S
    assert nominal * 0.5 <= totals.requests <= USERS * (FPS * DURATION_S + 2), failure
    rows = frames_in_csv(reports)
    assert rows["grpc spotvlm"] == totals.requests, "the CONTEXT entry must not count as requests"

    html = reports.html.read_text()
    assert "<html" in html.lower() and "spotvlm" in html

    context = json.loads(reports.context_json.read_text())
    # Every frame locust counted was answered (no failures) and went into the context statistics.
    assert context["frames"] == totals.requests, failure
    assert context["context_share"] > 0, f"no frame had cloud context: {context}\n{failure}"
    assert context["context_age_ms"]["count"] > 0 and context["context_age_ms"]["p50"] >= 0
    assert rows[f"{CONTEXT_TYPE} {CONTEXT_NAME}"] == context["context_age_ms"]["count"]
    assert context["errors"] == 0
    assert "ok" in context["cloud_states"]
    assert context["run"]["protocol"] == "grpc" and context["run"]["users"] == USERS

    # Locust's summary and the run's verdict were shown, and the three servers it started are gone.
    assert "Aggregated" in output and "load: OK" in output
    assert (out / "edge_server.log").is_file() and (out / "edge2_server.log").is_file()
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
    assert len(pids) == 3, output
    assert not [pid for pid in pids if alive(pid)]


def test_spotvlm_load_over_http_against_a_running_edge(edge_server, tmp_path: Path):
    out = tmp_path / "load_http"
    command = [SPOTVLM, "load", "--users", "2", "--duration", "4", "--fps", "5", "--protocol", "http"]
    command += ["--url", edge_server.http_url, "--max-tokens", "8", "--out", str(out)]
    returncode, output = run_logged(command, out, timeout_s=300)
    failure = explain(out, output) + "\n" + edge_server.logs()
    assert returncode == 0, failure
    totals = read_stats_csv(Reports(out).stats_csv)
    assert totals.failures == 0 and totals.requests > 0, failure
    assert frames_in_csv(Reports(out))["http spotvlm"] == totals.requests
    context = json.loads(Reports(out).context_json.read_text())
    # The session's edge has its cloud link off: every frame says so, none has context.
    assert context["cloud_states"] == {"off": totals.requests}
    assert context["context_share"] == 0
    assert not (out / "edge_server.log").exists(), "--url must not start servers"


def test_failed_requests_fail_the_run(edge_server, tmp_path: Path):
    out = tmp_path / "load_bad"
    command = [SPOTVLM, "load", "--users", "2", "--duration", "2", "--fps", "2"]
    command += ["--url", edge_server.grpc_url, "--max-tokens", "100000", "--out", str(out)]
    returncode, output = run_logged(command, out, timeout_s=300)
    assert returncode == 1, explain(out, output)
    totals = read_stats_csv(Reports(out).stats_csv)
    assert totals.requests > 0 and totals.failures == totals.requests
    # The edge's INVALID_ARG message reaches locust's failure report and the run's output.
    assert "max_tokens" in output and "load: FAILED" in output


def test_an_unreachable_edge_is_a_usage_error(tmp_path: Path):
    from client.launcher import free_port

    out = tmp_path / "load_none"
    returncode, output = run_logged(
        [SPOTVLM, "load", "--url", f"127.0.0.1:{free_port()}", "--duration", "1", "--out", str(out)], out, 120
    )
    assert returncode == 2, output
    assert "not reachable" in output
