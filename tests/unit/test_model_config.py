"""Reading and editing rendered config.pbtxt files as Triton's ModelConfig (client.model_repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.model_repository import (
    format_model_config,
    instance_count,
    model_parameter,
    parse_model_config,
    read_model_config,
    rendered_parameter,
    set_instance_count,
    set_model_parameter,
    write_model_config,
)

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"

SPOTVLM_CONFIG = """# The public edge model. An instance runs one batch at a time:
# instance_group [ { count: 99, kind: KIND_CPU } ] in a comment must not be touched.
backend: "python"
max_batch_size: 8
sequence_batching {
  oldest { max_candidate_sequences: 16, max_queue_delay_microseconds: 0 }
}
instance_group [ { count: 4, kind: KIND_CPU } ]
parameters { key: "default_max_tokens", value: { string_value: "24" } }
parameters { key: "note", value: { string_value: "a # inside a string" } }
"""


def test_set_instance_count_changes_only_the_count(tmp_path: Path) -> None:
    config = parse_model_config(SPOTVLM_CONFIG)
    assert instance_count(config) == 4  # the commented-out group is no group
    path = write_model_config(set_instance_count(config, 1), tmp_path / "config.pbtxt")
    rewritten = read_model_config(path)
    assert instance_count(rewritten) == 1
    assert set_instance_count(rewritten, 4) == parse_model_config(SPOTVLM_CONFIG)


def test_set_instance_count_multiline_group() -> None:
    text = 'backend: "python"\ninstance_group [\n  {\n    kind: KIND_CPU\n    count: 2\n  }\n]\n'
    rewritten = parse_model_config(format_model_config(set_instance_count(parse_model_config(text), 3)))
    assert instance_count(rewritten) == 3 and rewritten.backend == "python"


def test_set_instance_count_needs_exactly_one_group() -> None:
    with pytest.raises(ValueError, match="no `instance_group"):
        set_instance_count(parse_model_config('platform: "ensemble"\n# instance_group [ { count: 2 } ]\n'), 2)
    two = "instance_group [ { count: 1, kind: KIND_CPU } ]\ninstance_group [ { count: 2, kind: KIND_GPU } ]\n"
    with pytest.raises(ValueError, match="2 instance_group"):
        set_instance_count(parse_model_config(two), 3)
    with pytest.raises(ValueError, match=">= 1"):
        set_instance_count(parse_model_config(SPOTVLM_CONFIG), 0)


def test_model_parameter() -> None:
    config = parse_model_config(SPOTVLM_CONFIG)
    assert model_parameter(config, "default_max_tokens") == "24"
    assert model_parameter(config, "note") == "a # inside a string"
    assert model_parameter(config, "missing") is None


def test_rendered_parameter_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text(SPOTVLM_CONFIG)
    (tmp_path / "broken.pbtxt").write_text("parameters { key: ")
    assert rendered_parameter(tmp_path / "config.pbtxt", "default_max_tokens") == "24"
    assert rendered_parameter(tmp_path / "config.pbtxt", "missing") is None
    assert rendered_parameter(tmp_path / "none.pbtxt", "default_max_tokens") is None
    assert rendered_parameter(tmp_path / "broken.pbtxt", "default_max_tokens") is None


def test_every_rendered_config_reads_as_a_model_config() -> None:
    configs = sorted(REPOSITORY.glob("*/*/config.pbtxt"))
    if not configs:
        pytest.skip("the repositories are not rendered (./build_engines.sh)")
    for path in configs:
        config = read_model_config(path)
        assert parse_model_config(format_model_config(config)) == config, path


def test_set_model_parameter_changes_or_adds_one() -> None:
    config = parse_model_config(SPOTVLM_CONFIG)
    set_model_parameter(config, "default_max_tokens", "8")
    set_model_parameter(config, "store_ttl_s", "1.5")
    again = parse_model_config(format_model_config(config))
    assert model_parameter(again, "default_max_tokens") == "8"
    assert model_parameter(again, "store_ttl_s") == "1.5"
    assert model_parameter(again, "note") == "a # inside a string"
