"""Stream isolation: configurations, the repository copies, the summaries, the table and the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from client.model_repository import instance_count, read_model_config
from load_tests import isolation, isolation_report
from load_tests import stream_isolation as si
from tests.unit.test_model_config import SPOTVLM_CONFIG


# -- repository copies -------------------------------------------------------------------------------------------------


def _fake_repository(root: Path) -> Path:
    for model in ("spotvlm", "svlm_generate", "svlm"):
        (root / model / "1").mkdir(parents=True)
    (root / "spotvlm" / "config.pbtxt").write_text(SPOTVLM_CONFIG)
    (root / "spotvlm" / "config.pbtxt.template").write_text("instance_group [ { count: ${spotvlm_instances} } ]\n")
    (root / "spotvlm" / "1" / "model.py").write_text("# shim\n")
    (root / "spotvlm" / "1" / "__pycache__").mkdir()
    (root / "spotvlm" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    (root / "svlm_generate" / "config.pbtxt").write_text("instance_group [ { count: 1, kind: KIND_CPU } ]\n")
    (root / "svlm" / "config.pbtxt").write_text('platform: "ensemble"\n')
    return root


def test_prepare_repository_rewrites_the_copy_only(tmp_path: Path) -> None:
    source = _fake_repository(tmp_path / "edge")
    config = isolation.parse_config("2:3")
    dest = isolation.prepare_repository(source, tmp_path / "copy", config.counts())
    assert instance_count(read_model_config(dest / "spotvlm" / "config.pbtxt")) == 2
    assert instance_count(read_model_config(dest / "svlm_generate" / "config.pbtxt")) == 3
    assert (dest / "svlm" / "config.pbtxt").read_text() == 'platform: "ensemble"\n'
    assert (dest / "spotvlm" / "1" / "model.py").is_file()
    assert not (dest / "spotvlm" / "1" / "__pycache__").exists()
    # The source is untouched.
    assert (source / "spotvlm" / "config.pbtxt").read_text() == SPOTVLM_CONFIG
    assert instance_count(read_model_config(source / "svlm_generate" / "config.pbtxt")) == 1


def test_prepare_repository_without_rendered_config(tmp_path: Path) -> None:
    source = tmp_path / "edge"
    (source / "spotvlm").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="build_engines.sh"):
        isolation.prepare_repository(source, tmp_path / "copy", {"spotvlm": 1})
    assert not (tmp_path / "copy").exists()


def test_parse_config() -> None:
    assert isolation.parse_config("4") == isolation.IsolationConfig(4, None)
    assert isolation.parse_config("4:2") == isolation.IsolationConfig(4, 2)
    assert isolation.parse_config("4").counts() == {"spotvlm": 4}
    assert isolation.parse_config("4:2").counts() == {"spotvlm": 4, "svlm_generate": 2}
    assert isolation.parse_config("1").name == "spotvlm_instances=1"
    assert isolation.parse_config("4:2").name == "spotvlm_instances=4,svlm_generate_instances=2"
    for bad in ("", "0", "4:0", "a", "4:2:1", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            isolation.parse_config(bad)


# -- summaries ---------------------------------------------------------------------------------------------------------


def test_config_summary_and_goal() -> None:
    phases = {
        "1_stream": {
            "frames": 180,
            "errors": 0,
            "late_frames": 0,
            "client": {"p50_ms": 50.0, "p99_ms": 70.0},
            "server_total": {"p50_ms": 47.0},
        },
        "4_streams": {
            "frames": 720,
            "errors": 1,
            "late_frames": 3,
            "client": {"p50_ms": 59.0, "p99_ms": 90.0},
            "server_total": {"p50_ms": 56.4},
        },
    }
    summary = isolation.config_summary(isolation.IsolationConfig(4), phases, 1.2)
    assert summary["ratio_p50"] == 1.18
    assert summary["meets_goal"] is True
    assert summary["server_ratio_p50"] == 1.2
    assert (summary["frames"], summary["errors"], summary["late_frames"]) == (900, 1, 3)
    assert summary["p99_4_streams_ms"] == 90.0
    phases["4_streams"]["client"]["p50_ms"] = 61.0
    assert isolation.config_summary(isolation.IsolationConfig(4), phases, 1.2)["meets_goal"] is False
    # A phase that measured nothing gives no ratio and does not meet the goal.
    empty = isolation.config_summary(isolation.IsolationConfig(1), {}, 1.2)
    assert empty["ratio_p50"] is None and empty["meets_goal"] is False and empty["frames"] == 0


def test_format_table() -> None:
    rows = [
        {"name": "spotvlm_instances=1", "p50_1_stream_ms": 50.0, "ratio_p50": 2.0, "meets_goal": False, "frames": 9},
        {"name": "spotvlm_instances=4", "error": "server failed to start"},
    ]
    table = isolation_report.format_table(rows).splitlines()
    assert table[0].startswith("config")
    assert "50.0" in table[1] and "2.000" in table[1] and "False" in table[1]
    assert "server failed to start" in table[2]


# -- arguments ---------------------------------------------------------------------------------------------------------


def test_defaults() -> None:
    args = si.parse_args([])
    assert (args.fps, args.duration, args.warmup, args.max_tokens) == (10.0, 20.0, 2.0, None)
    assert args.configs == [isolation.IsolationConfig(1), isolation.IsolationConfig(4)]
    assert args.json is None
    assert args.plot == si.DEFAULT_PLOT
    assert args.repository == isolation.EDGE_REPOSITORY


def test_options() -> None:
    args = si.parse_args(
        ["--fps", "5", "--duration", "10", "--warmup", "0", "--max-tokens", "8", "--configs", "1", "4", "4:2"]
        + ["--json", "out.json", "--plot", "build/x.png"]
    )
    assert (args.fps, args.duration, args.warmup, args.max_tokens) == (5.0, 10.0, 0.0, 8)
    assert args.configs == [isolation.IsolationConfig(1), isolation.IsolationConfig(4), isolation.IsolationConfig(4, 2)]
    assert args.json == Path("out.json") and args.plot == Path("build/x.png")


@pytest.mark.parametrize(
    "argv",
    [
        ["--fps", "0"],
        ["--duration", "-1"],
        ["--warmup", "-1"],
        ["--warmup", "20", "--duration", "20"],
        ["--max-tokens", "0"],
        ["--configs", "0"],
        ["--configs"],
    ],
)
def test_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        si.parse_args(argv)
    assert exc.value.code == 2


def test_effective_max_tokens(tmp_path: Path) -> None:
    repository = _fake_repository(tmp_path / "edge")
    assert si.effective_max_tokens(si.parse_args(["--repository", str(repository)])) == (
        24,
        "server default (spotvlm default_max_tokens)",
    )
    assert si.effective_max_tokens(si.parse_args(["--repository", str(repository), "--max-tokens", "8"]))[0] == 8
    assert si.effective_max_tokens(si.parse_args(["--repository", str(tmp_path / "none")]))[0] is None


def test_write_plot_without_configs_or_matplotlib(tmp_path: Path) -> None:
    note = isolation_report.write_plot({"configs": [{"name": "x", "error": "boom"}], "fps": 10.0}, tmp_path / "p.png")
    assert note is not None and "no plot" in note
    assert not (tmp_path / "p.png").exists()
