"""Injected cloud delay: every spec form, bad specs, and trace replay with looping."""

from __future__ import annotations

import random

import pytest

from python_backends.cloud.delay import ConstantDelay, NoDelay, TraceDelay, UniformDelay, parse_delay_spec


@pytest.mark.parametrize("spec", [None, "", "  ", "0", "0.0"])
def test_no_delay_specs(spec):
    injector = parse_delay_spec(spec)
    assert isinstance(injector, NoDelay)
    assert injector.delay_s(0.0) == 0.0
    assert injector.delay_s(123.0) == 0.0
    assert isinstance(injector.spec, str)


@pytest.mark.parametrize("spec, seconds", [("1500", 1.5), ("250.5", 0.2505), (" 40 ", 0.04)])
def test_constant(spec, seconds):
    injector = parse_delay_spec(spec)
    assert isinstance(injector, ConstantDelay)
    assert injector.delay_s(0.0) == pytest.approx(seconds)
    assert injector.delay_s(99.0) == pytest.approx(seconds)
    assert injector.spec == spec


@pytest.mark.parametrize("spec", ["2000+-1000", "2000±1000", "2000 +- 1000", "uniform:1000:3000"])
def test_uniform_bounds_and_spread(spec):
    injector = parse_delay_spec(spec, rng=random.Random(7))
    assert isinstance(injector, UniformDelay)
    values = [injector.delay_s(float(i)) for i in range(2000)]
    assert all(1.0 <= v <= 3.0 for v in values)
    # Jitter, not a constant: the draws cover most of the range.
    assert min(values) < 1.1 and max(values) > 2.9
    assert injector.spec == spec


def test_uniform_is_reproducible_with_a_seeded_rng():
    a = parse_delay_spec("uniform:10:20", rng=random.Random(3))
    b = parse_delay_spec("uniform:10:20", rng=random.Random(3))
    assert [a.delay_s(0) for _ in range(5)] == [b.delay_s(0) for _ in range(5)]


def test_uniform_equal_bounds_is_constant():
    injector = parse_delay_spec("uniform:500:500")
    assert injector.delay_s(0.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "spec",
    [
        "abc",
        "-5",
        "nan",
        "inf",
        "1000+-2000",  # jitter over the mean
        "x+-1",
        "uniform:3000:1000",
        "uniform:1000",
        "uniform:a:b",
        "uniform:1:2:3",
        "trace:/nonexistent/trace.csv",
        "trace:",
    ],
)
def test_bad_specs_raise_naming_spec_and_forms(spec):
    with pytest.raises(ValueError) as info:
        parse_delay_spec(spec)
    message = str(info.value)
    assert repr(spec) in message


def test_bad_spec_message_lists_accepted_forms():
    with pytest.raises(ValueError, match="uniform:LOW_MS:HIGH_MS"):
        parse_delay_spec("fast")


def _trace(tmp_path, text: str) -> str:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return f"trace:{path}"


def test_trace_replays_step_wise_from_first_use_and_loops(tmp_path):
    spec = _trace(tmp_path, "time_s,latency_ms\n# a comment\n0,100\n1,200\n\n2,300  # trailing comment\n")
    injector = parse_delay_spec(spec)
    assert isinstance(injector, TraceDelay)
    assert injector.spec == spec
    start = 1000.0  # the first use fixes time zero
    assert injector.delay_s(start) == pytest.approx(0.1)
    assert injector.delay_s(start + 0.99) == pytest.approx(0.1)
    assert injector.delay_s(start + 1.0) == pytest.approx(0.2)
    assert injector.delay_s(start + 1.5) == pytest.approx(0.2)
    assert injector.delay_s(start + 2.5) == pytest.approx(0.3)
    # Period = last time + last step = 3 s: then it starts over.
    assert injector.delay_s(start + 3.2) == pytest.approx(0.1)
    assert injector.delay_s(start + 4.1) == pytest.approx(0.2)
    assert injector.delay_s(start + 8.5) == pytest.approx(0.3)


def test_trace_without_header_and_late_first_row(tmp_path):
    injector = parse_delay_spec(_trace(tmp_path, "0.5,50\n1.5,150\n"))
    assert injector.delay_s(10.0) == pytest.approx(0.05)  # before the first row: the first row applies
    assert injector.delay_s(10.6) == pytest.approx(0.05)
    assert injector.delay_s(11.6) == pytest.approx(0.15)


def test_single_row_trace_is_constant(tmp_path):
    injector = parse_delay_spec(_trace(tmp_path, "0,700\n"))
    assert injector.delay_s(0.0) == pytest.approx(0.7)
    assert injector.delay_s(1e6) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "time_s,latency_ms\n",
        "0,100\n1\n",
        "0,100\n1,abc\n",
        "0,100\n0,200\n",  # times must increase
        "1,100\n0,200\n",
        "0,-5\n",
        "header\nanother header\n0,100\n",
    ],
)
def test_bad_trace_files_raise(tmp_path, text):
    spec = _trace(tmp_path, text)
    with pytest.raises(ValueError) as info:
        parse_delay_spec(spec)
    assert repr(spec) in str(info.value)
