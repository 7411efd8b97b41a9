"""Evaluation report and latency settings: accuracy with Wilson intervals, the gap closed, the written files, and the
fluctuating trace (deterministic, and read by the same parser as the cloud link)."""

from __future__ import annotations

import csv
import statistics

import pytest

from python_backends.cloud.delay import ConstantDelay, NoDelay, TraceDelay, parse_delay_spec
from evaluation.latency import (
    CONSTANT_DELAYS_S,
    DEFAULT_TRACE_NAME,
    TraceConfig,
    ensure_default_trace,
    generate_trace,
    latency_settings,
    trace_mean_s,
    trace_setting,
    write_trace_csv,
)
from evaluation.policies import CLOUD_REFERENCE, POLICIES
from evaluation.report import write_report
from evaluation.report_csv import CSV_COLUMNS, GAP_CSV_COLUMNS
from evaluation.report_markdown import markdown_report
from evaluation.summary import ALL_TASKS, EvalRecord, _wilson_interval, summarize


def _records(task, policy, latency, correct, wrong, edge_ms=None):
    edge_ms = list(edge_ms) if edge_ms is not None else [None] * (correct + wrong)
    flags = [True] * correct + [False] * wrong
    return [EvalRecord(task, policy, latency, flag, ms) for flag, ms in zip(flags, edge_ms, strict=True)]


# -- Wilson interval ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "correct, total, low, high",
    [
        (8, 10, 0.4902, 0.9433),  # textbook values (e.g. Newcombe 1998, method 3)
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_interval(correct, total, low, high):
    assert _wilson_interval(correct, total) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize("correct, total", [(0, 0), (3, 2), (-1, 5)])
def test_wilson_interval_refuses_impossible_counts(correct, total):
    with pytest.raises(ValueError):
        _wilson_interval(correct, total)


# -- summarize -------------------------------------------------------------------------------------------------------


def test_accuracy_interval_and_edge_percentiles_per_cell():
    records = _records("counting", "edge_only", "0s", 3, 1, edge_ms=[10, 20, 30, 40])
    records += _records("counting", "edge_only", "2s", 1, 1)
    summary = summarize(records)
    cell = summary.cell("counting", "edge_only", "0s")
    assert (cell.n, cell.correct, cell.accuracy) == (4, 3, 0.75)
    assert (cell.ci_low, cell.ci_high) == pytest.approx(_wilson_interval(3, 4))
    assert cell.edge_p50_ms == pytest.approx(25.0)
    assert cell.edge_p99_ms == pytest.approx(39.7)  # numpy's linear interpolation
    other = summary.cell("counting", "edge_only", "2s")
    assert (other.accuracy, other.edge_p50_ms, other.edge_p99_ms) == (0.5, None, None)
    assert summary.cell("counting", "context_transfer", "0s") is None


def test_all_tasks_pool_every_question():
    records = _records("recognition", "edge_only", "0s", 4, 0) + _records("counting", "edge_only", "0s", 0, 4)
    summary = summarize(records)
    assert summary.cell(ALL_TASKS, "edge_only", "0s").accuracy == 0.5
    assert summary.tasks == ["recognition", "counting"]


def test_cloud_reference_records_are_pooled_per_task_and_are_not_a_policy():
    records = _records("recognition", CLOUD_REFERENCE, "0s", 9, 1) + _records("recognition", "edge_only", "0s", 1, 1)
    summary = summarize(records)
    assert summary.policies == ["edge_only"]
    assert summary.reference["recognition"].accuracy == 0.9
    assert summary.reference["recognition"].latency == "0s"


def test_the_reference_latency_is_no_column_of_its_own():
    records = _records("recognition", CLOUD_REFERENCE, "zero", 1, 0) + _records("recognition", "edge_only", "2s", 1, 1)
    assert summarize(records).latencies == ["2s"]


def test_orders_policies_tasks_and_latencies():
    records = []
    for policy in reversed(POLICIES):
        for latency in ("trace", "9s", "0.5s", "0s"):
            records += _records("counting", policy, latency, 1, 0) + _records("recognition", policy, latency, 1, 0)
    summary = summarize(records)
    assert summary.policies == list(POLICIES)
    assert summary.tasks == ["recognition", "counting"]
    assert summary.latencies == ["0s", "0.5s", "9s", "trace"]
    assert summary.fluctuating == {"trace"}


def test_latency_order_and_labels_follow_the_settings(tmp_path):
    settings = latency_settings(ensure_default_trace(tmp_path))
    records = [r for s in reversed(settings) for r in _records("counting", "edge_only", s.name, 1, 0)]
    summary = summarize(records, settings)
    assert summary.latencies == [s.name for s in settings]
    assert summary.latency_label("trace").startswith("trace (mean ")
    assert summary.latency_label("2s") == "2s"


def test_no_records_is_an_error():
    with pytest.raises(ValueError, match="no evaluation records"):
        summarize([])


# -- gap closed --------------------------------------------------------------------------------------------------------


def _gap_records(edge, transfer, cloud, latency="2s", task="recognition", n=20):
    def run(policy, accuracy):
        return _records(task, policy, latency, round(accuracy * n), n - round(accuracy * n))

    return run("edge_only", edge) + run("context_transfer", transfer) + run(CLOUD_REFERENCE, cloud)


@pytest.mark.parametrize(
    "edge, transfer, cloud, expected",
    [
        (0.5, 0.75, 1.0, 0.5),
        (0.4, 0.8, 0.8, 1.0),
        (0.4, 0.4, 0.8, 0.0),
        (0.6, 0.4, 0.8, -1.0),  # worse than the edge alone: negative, not clipped
        (0.2, 0.6, 0.4, 2.0),  # better than the cloud at 0 delay: over 1, not clipped
    ],
)
def test_gap_closed(edge, transfer, cloud, expected):
    gap = summarize(_gap_records(edge, transfer, cloud)).gap("recognition", "2s")
    assert gap.value == pytest.approx(expected)
    assert (gap.edge_only, gap.context_transfer, gap.cloud) == pytest.approx((edge, transfer, cloud))
    assert gap.reason is None


@pytest.mark.parametrize("cloud", [0.5, 0.3])
def test_gap_closed_is_undefined_when_the_cloud_is_no_better_than_the_edge(cloud):
    gap = summarize(_gap_records(0.5, 0.7, cloud)).gap("recognition", "2s")
    assert gap.value is None
    assert "no gap to close" in gap.reason


def test_gap_closed_is_undefined_without_the_terms():
    records = _records("recognition", "edge_only", "2s", 1, 1) + _records("recognition", CLOUD_REFERENCE, "0s", 2, 0)
    gap = summarize(records).gap("recognition", "2s")
    assert gap.value is None and "no context_transfer results" in gap.reason
    no_cloud = summarize(_records("recognition", "edge_only", "2s", 1, 1)).gap("recognition", "2s")
    assert "cloud at 0 delay" in no_cloud.reason


def test_gap_closed_over_all_tasks_pools_the_questions():
    records = _gap_records(0.5, 0.75, 1.0, task="recognition") + _gap_records(0.0, 0.25, 0.5, task="counting")
    summary = summarize(records)
    # Pooled: edge 0.25, context transfer 0.5, cloud 0.75.
    assert summary.gap(ALL_TASKS, "2s").value == pytest.approx(0.5)
    assert summary.gap("counting", "2s").value == pytest.approx(0.5)


# -- written files -----------------------------------------------------------------------------------------------------

TASKS = ("recognition", "localisation", "counting")


def _full_records(settings):
    records = []
    for t_index, task in enumerate(TASKS):
        for p_index, policy in enumerate(POLICIES):
            for l_index, setting in enumerate(settings):
                correct = min(10, 2 + p_index - l_index // 3 + t_index)  # 0..10 of 10 for every policy
                records += _records(task, policy, setting.name, correct, 10 - correct, edge_ms=range(30, 40))
        # counting's cloud is no better than its edge: its gap is undefined and must say so.
        records += _records(task, CLOUD_REFERENCE, "0s", 9 if task != "counting" else 2, 1 if task != "counting" else 8)
    return records


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    settings = latency_settings(ensure_default_trace(out))
    files = write_report(_full_records(settings), out / "report", settings, title="Test eval", notes=["a note"])
    return files, settings


def test_markdown_leads_with_the_gap_closed_table(written):
    files, settings = written
    text = files.markdown.read_text()
    lines = text.splitlines()
    assert lines[0] == "# Test eval"
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[0] == "## Gap closed by context transfer"
    table = [line for line in lines[: lines.index(headings[1])] if line.startswith("|")]
    assert table[0] == "| cloud latency | recognition | localisation | counting | all |"
    assert len(table) == 2 + len(settings)
    assert all(row.count("|") == 6 for row in table)
    assert table[2].startswith("| 0s |") and table[-1].startswith("| trace (mean ")
    # counting's edge_only scores 40% at the first three latencies: one line says why the gap is undefined there.
    assert (
        "- counting at 0s, 0.5s, 1s: the cloud at 0 delay (20.0%) is not more accurate than edge_only (40.0%)" in text
    )
    assert "![accuracy against cloud latency](accuracy.png)" in text
    assert "- a note" in text


def test_markdown_tables_are_rectangular(written):
    tables: list[list[str]] = []
    previous_was_row = False
    for line in written[0].markdown.read_text().splitlines():
        is_row = line.startswith("|")
        if is_row and not previous_was_row:
            tables.append([])
        if is_row:
            tables[-1].append(line)
        previous_was_row = is_row
    assert len(tables) == 2 + len(TASKS) + 1  # gap closed, zero delay, one per task, edge latency
    for table in tables:
        assert set(table[1].strip("|").replace(" ", "").split("|")) <= {"---", "---:"}
        assert {row.count("|") for row in table} == {table[0].count("|")}


def test_csv_has_one_row_per_cell_and_the_reference(written):
    files, settings = written
    with files.csv.open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == len(TASKS) * len(POLICIES) * len(settings) + len(TASKS)
    first = rows[0]
    assert (first["task"], first["policy"], first["latency"], first["n"]) == ("recognition", "edge_only", "0s", "10")
    assert float(first["ci_low"]) <= float(first["accuracy"]) <= float(first["ci_high"])
    assert float(first["edge_p50_ms"]) == pytest.approx(34.5)
    reference = [r for r in rows if r["policy"] == CLOUD_REFERENCE]
    assert [r["task"] for r in reference] == list(TASKS) and reference[0]["edge_p50_ms"] == ""


def test_gap_csv_gives_every_task_and_latency(written):
    files, settings = written
    with files.gap_csv.open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == GAP_CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == (len(TASKS) + 1) * len(settings)
    counting = [r for r in rows if r["task"] == "counting"]
    assert all(r["gap_closed"] == "" and "no gap to close" in r["reason"] for r in counting)
    recognition = [r for r in rows if r["task"] == "recognition"]
    assert all(r["gap_closed"] != "" and r["reason"] == "" for r in recognition)


@pytest.mark.parametrize("name", ["accuracy_png", "gap_png"])
def test_plots_are_readable_pngs(written, name):
    import matplotlib.image

    path = getattr(written[0], name)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert height > 200 and width > 400
    assert image.std() > 0  # something is drawn


def test_markdown_report_without_plots_or_notes():
    text = markdown_report(summarize(_gap_records(0.5, 0.75, 1.0)))
    assert "## Plots" not in text and "## Notes" not in text
    assert "| 2s | 0.50 | 0.50 |" in text


# -- latency settings and the trace ------------------------------------------------------------------------------------


def test_constant_settings_and_their_specs():
    settings = latency_settings()
    assert [s.name for s in settings] == ["0s", "0.5s", "1s", "2s", "4s", "9s"]
    assert [s.spec for s in settings] == ["0", "500", "1000", "2000", "4000", "9000"]
    for setting, seconds in zip(settings, CONSTANT_DELAYS_S, strict=True):
        injector = parse_delay_spec(setting.spec)
        assert isinstance(injector, NoDelay if seconds == 0 else ConstantDelay)
        assert injector.delay_s(0.0) == pytest.approx(seconds) == pytest.approx(setting.nominal_s)
        assert setting.per_request and not setting.fluctuating


def test_the_trace_setting_is_server_side_and_parsed_by_the_cloud_link(tmp_path):
    path = ensure_default_trace(tmp_path)
    assert path.name == DEFAULT_TRACE_NAME
    setting = latency_settings(path)[-1]
    assert setting.name == "trace" and setting.fluctuating and not setting.per_request
    injector = parse_delay_spec(setting.spec)
    assert isinstance(injector, TraceDelay)
    assert len(injector.times) == len(generate_trace())
    assert setting.nominal_s == pytest.approx(trace_mean_s(injector))


def test_trace_generation_is_deterministic_by_seed(tmp_path):
    assert generate_trace(TraceConfig(seed=3)) == generate_trace(TraceConfig(seed=3))
    assert generate_trace(TraceConfig(seed=3)) != generate_trace(TraceConfig(seed=4))
    a = write_trace_csv(tmp_path / "a.csv", TraceConfig(seed=3)).read_bytes()
    b = write_trace_csv(tmp_path / "b.csv", TraceConfig(seed=3)).read_bytes()
    assert a == b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trace_has_a_base_level_jitter_and_multi_second_spikes(tmp_path, seed):
    config = TraceConfig(seed=seed)
    injector = parse_delay_spec(f"trace:{write_trace_csv(tmp_path / 't.csv', config)}")
    latencies = injector.latencies_ms
    times = injector.times
    assert times[0] == 0.0 and all(b - a == pytest.approx(config.step_s) for a, b in zip(times, times[1:]))
    assert all(config.min_ms <= ms <= config.max_ms for ms in latencies)
    assert abs(statistics.median(latencies) - config.base_ms) < 150  # most of the time: the base level
    assert len(set(latencies)) > 50  # jitter, not a step function
    assert max(latencies) > 2000  # at least one spike of seconds
    assert sum(ms > 1500 for ms in latencies) * config.step_s > 1.0  # lasting over a second


def test_trace_mean_of_a_hand_made_trace(tmp_path):
    path = tmp_path / "t.csv"
    # Steps: 100 ms over [0, 1), 400 ms over [1, 3), then 1000 ms over [3, 5) (the last step repeats the gap).
    path.write_text("time_s,latency_ms\n0,100\n1,400\n3,1000\n")
    assert trace_setting(path).nominal_s == pytest.approx((100 * 1 + 400 * 2 + 1000 * 2) / 5 / 1000)


def test_bad_trace_config_is_refused():
    with pytest.raises(ValueError):
        TraceConfig(spike_ms=(3000.0, 1000.0))


@pytest.mark.parametrize("n", [6, 100])
def test_plots_draw_a_trace_setting_answered_all_wrong_or_all_right(tmp_path, n):
    # Error bars are drawn for the trace; at 0 % or 100 % the interval must not poke past the accuracy.
    settings = latency_settings(ensure_default_trace(tmp_path))
    records = []
    for task in TASKS:
        for policy in POLICIES:
            for setting in settings:
                records += _records(task, policy, setting.name, 0 if policy != "context_transfer" else n, n)
    files = write_report(records, tmp_path / "report", settings)
    assert files.accuracy_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
