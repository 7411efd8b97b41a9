"""SpotVLMConfig: spotvlm's config parameters in one dataclass, and the README's tables generated from it."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from python_backends.context.focus import FocusMode
from python_backends.errors import InputError
from python_backends.params import model_parameters, with_env_overrides
from python_backends.serving.spotvlm_config import REQUEST_PARAMETERS, SpotVLMConfig, parameter_tables

README = Path(__file__).resolve().parents[2] / "README.md"
TEMPLATE = Path(__file__).resolve().parents[2] / "model_repository" / "edge" / "spotvlm" / "config.pbtxt.template"


def test_the_readme_holds_the_generated_parameter_tables() -> None:
    assert parameter_tables() in README.read_text(), (
        "README.md's parameter tables are out of date: paste `python -m python_backends.serving.spotvlm_config`"
    )


def test_every_field_has_a_one_line_doc_and_every_request_parameter_one() -> None:
    for item in fields(SpotVLMConfig):
        doc = item.metadata["doc"]
        assert doc and "\n" not in doc and "|" not in doc, item.name
    assert {p.name for p in REQUEST_PARAMETERS} == {
        "max_tokens",
        "focus",
        "use_context",
        "text_context",
        "focus_tracking",
        "carry_answers",
        "cloud_delay",
    }


def test_the_template_names_only_known_parameters() -> None:
    names = {item.name for item in fields(SpotVLMConfig)}
    config = {"parameters": {}}
    for line in TEMPLATE.read_text().splitlines():
        if line.startswith("parameters {"):
            key = line.split('key: "', 1)[1].split('"', 1)[0]
            config["parameters"][key] = {"string_value": "x"}
    assert set(config["parameters"]) <= names


def test_an_unfilled_template_gives_the_defaults() -> None:
    config = {"parameters": {"cloud_url": {"string_value": "${cloud_url}"}, "context_turns": {"string_value": ""}}}
    assert SpotVLMConfig.from_params(model_parameters(config)) == SpotVLMConfig()


def test_parameters_are_read_with_their_types() -> None:
    params = {
        "cloud_url": " 127.0.0.1:8101 ",
        "cloud_deadline_ms": "2500",
        "cloud_max_inflight": "20",
        "focus_mode": "crop_only",
        "context_match": "ANY",
        "store_turns": "2",
        "context_turns": "6",
        "unrelated": "kept out",
    }
    config = SpotVLMConfig.from_params(params)
    assert config.cloud_url == "127.0.0.1:8101" and not config.cloud_off
    assert config.cloud_deadline_ms == 2500.0 and isinstance(config.cloud_deadline_ms, float)
    assert config.cloud_max_inflight == 20 and config.focus_mode is FocusMode.CROP_ONLY
    assert config.context_match == "any" and not config.replacement().match_question
    assert config.replacement().max_turns == 6 and config.store_limits().max_turns == 6  # at least context_turns


def test_the_environment_overrides_the_config() -> None:
    params = with_env_overrides(
        {"cloud_url": "cloud:8101"}, {"SPOTVLM_CLOUD_URL": "off", "SPOTVLM_FOCUS_MARGIN": "0.3"}
    )
    config = SpotVLMConfig.from_params(params)
    assert config.cloud_off and config.focus().margin == 0.3


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"context_match": "some"}, ValueError, "context_match must be 'question' or 'any'"),
        ({"cloud_prompt": "no placeholder"}, ValueError, "must contain {question}"),
        ({"cloud_max_inflight": "many"}, ValueError, "cloud_max_inflight"),
        ({"focus_mode": "zoom"}, InputError, "focus must be one of"),
    ],
)
def test_bad_parameters_are_refused_by_name(params, error, message) -> None:
    with pytest.raises(error, match=message):
        SpotVLMConfig.from_params(params)
