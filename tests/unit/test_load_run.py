"""The headless locust run's own parts (load_tests/load_run.py): its options and locust's command line. No server.
The locustfile's pure parts and the reading of locust's reports have their own test files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from load_tests import load_run as lr
from spotvlm.cli import build_parser as build_cli_parser

# -- locust's command line ---------------------------------------------------------------------------------------------


def load_args(*argv: str) -> argparse.Namespace:
    return lr.build_parser().parse_args(list(argv))


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_load_run_defaults():
    args = load_args()
    assert (args.users, args.fps, args.duration, args.protocol, args.url) == (16, 5.0, 60.0, "grpc", None)
    assert args.out == lr.DEFAULT_OUT


def test_spotvlm_load_has_the_same_options():
    args = build_cli_parser().parse_args(["load", "--users", "4", "--fps", "5", "--duration", "10"])
    assert (args.users, args.fps, args.duration, args.protocol) == (4, 5.0, 10.0, "grpc")
    assert args.func.__name__ == "cmd_load"


def test_locust_command_for_a_headless_run(tmp_path: Path):
    args = load_args("--users", "8", "--duration", "20.2", "--fps", "2", "--protocol", "http")
    command = lr.locust_command(args, "127.0.0.1:8000", tmp_path / "load", tmp_path / "load.html", python="py")
    assert command[:5] == ["py", "-m", "locust", "-f", str(lr.LOCUSTFILE)]
    assert "--headless" in command and "--only-summary" in command
    assert option(command, "--users") == "8"
    assert option(command, "--spawn-rate") == "8"  # all users within a second by default
    assert option(command, "--run-time") == "21s"  # whole seconds, rounded up
    assert option(command, "--host") == "127.0.0.1:8000"
    assert option(command, "--csv") == str(tmp_path / "load")
    assert option(command, "--html") == str(tmp_path / "load.html")
    assert option(command, "--protocol") == "http"
    assert option(command, "--fps") == "2"
    for absent in ("--prompt", "--max-tokens", "--cloud-delay", "--images"):
        assert absent not in command


def test_locust_command_passes_the_stream_options(tmp_path: Path):
    args = load_args(
        "--spawn-rate", "0.5", "--prompt", "Where is the car?", "--max-tokens", "8", "--cloud-delay", "2000+-1000"
    )
    args.images = tmp_path
    command = lr.locust_command(args, "h:1", tmp_path / "load", tmp_path / "load.html")
    assert option(command, "--spawn-rate") == "0.5"
    assert option(command, "--prompt") == "Where is the car?"
    assert option(command, "--max-tokens") == "8"
    assert option(command, "--cloud-delay") == "2000+-1000"
    assert option(command, "--images") == str(tmp_path)


@pytest.mark.parametrize("argv", [["--users", "0"], ["--fps", "0"], ["--duration", "-5"], ["--protocol", "udp"]])
def test_load_run_refuses_bad_options(argv):
    with pytest.raises(SystemExit):
        load_args(*argv)


# -- locust's stats CSV and the verdict --------------------------------------------------------------------------------


def test_images_must_be_a_folder(tmp_path: Path, capsys):
    args = load_args("--url", "127.0.0.1:1", "--out", str(tmp_path), "--images", str(tmp_path / "missing"))
    assert lr.run(args) == 2
    assert "not a folder" in capsys.readouterr().err
