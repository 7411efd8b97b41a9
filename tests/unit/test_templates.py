import re
from pathlib import Path

import pytest

from python_backends.params import get_param, model_parameters, with_env_overrides
from client.model_repository import TemplateError, fill_template, placeholders, render_repository

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def test_fill_replaces_every_placeholder():
    text = 'max_batch_size: ${batch}\nparameters { key: "ckpt", value: { string_value: "${ckpt}" } }'
    assert fill_template(text, {"batch": 8, "ckpt": "/m/edge"}) == (
        'max_batch_size: 8\nparameters { key: "ckpt", value: { string_value: "/m/edge" } }'
    )


def test_missing_values_raise_with_their_names():
    with pytest.raises(TemplateError, match="a, b"):
        fill_template("${a} ${b} ${c}", {"c": 1})


def test_allow_missing_keeps_placeholder_which_models_read_as_absent():
    text = fill_template('string_value: "${ckpt}"', {}, allow_missing=True)
    assert text == 'string_value: "${ckpt}"'
    params = model_parameters({"parameters": {"ckpt": {"string_value": "${ckpt}"}, "n": {"string_value": "3"}}})
    assert params == {"n": "3"}
    assert get_param(params, "ckpt", "default") == "default"


@pytest.mark.parametrize("bad", ['a"b', "a\nb"])
def test_values_that_would_break_pbtxt_are_refused(bad):
    with pytest.raises(TemplateError, match="quotes or newlines"):
        fill_template('"${x}"', {"x": bad})


def test_render_repository_writes_config_and_picks_variants(tmp_path):
    for model in ("a", "b"):
        (tmp_path / model).mkdir()
        (tmp_path / model / "config.pbtxt.template").write_text(f"name_{model}: ${{value}}")
    (tmp_path / "b" / "config.gpu.pbtxt.template").write_text("gpu: ${value}")
    written = render_repository(tmp_path, {"value": 7}, variants={"b": "config.gpu.pbtxt.template"})
    assert sorted(p.parent.name for p in written) == ["a", "b"]
    assert (tmp_path / "a" / "config.pbtxt").read_text() == "name_a: 7"
    assert (tmp_path / "b" / "config.pbtxt").read_text() == "gpu: 7"
    # idempotent: rendering again with other values rewrites from the template
    render_repository(tmp_path, {"value": 9})
    assert (tmp_path / "b" / "config.pbtxt").read_text() == "name_b: 9"


def test_build_fills_every_placeholder_of_the_shipped_templates():
    from spotvlm.build import ModelFacts, build_parser, template_values

    args = build_parser().parse_args([])
    facts = ModelFacts(text_hidden=64, patch_size=14, merge_size=2, temporal_patch_size=2)
    values = template_values(args, Path("/e"), Path("/c"), 112, facts)
    templates = list(REPOSITORY.glob("*/*/config*.pbtxt.template"))
    assert len(templates) >= 7
    for template in templates:
        assert placeholders(template.read_text()) <= set(values), template
    assert values["num_patches"] == 64 and values["image_tokens"] == 16 and values["patch_dim"] == 1176


HEAVY_MODELS = {"svlm_vision", "svlm_generate", "lvlm"}


def _render_for(argv: list[str], dest: Path) -> dict[str, str]:
    import shutil

    from spotvlm.build import ModelFacts, build_parser, template_values

    shutil.copytree(REPOSITORY, dest, ignore=shutil.ignore_patterns("config.pbtxt", "1"))
    facts = ModelFacts(text_hidden=64, patch_size=14, merge_size=2, temporal_patch_size=2)
    values = template_values(build_parser().parse_args(argv), Path("/e"), Path("/c"), 112, facts)
    written = [p for side in ("edge", "cloud") for p in render_repository(dest / side, values)]
    return {p.parent.name: p.read_text() for p in written}


def test_gpu_puts_the_heavy_models_on_gpu_and_keeps_the_light_steps_on_cpu(tmp_path):
    rendered = _render_for(["--device", "gpu"], tmp_path / "gpu")
    for model, text in rendered.items():
        groups = [line for line in text.splitlines() if line.startswith("instance_group")]
        if model in HEAVY_MODELS:
            assert groups and all("kind: KIND_GPU" in g for g in groups), model
        elif groups:  # the ensembles have none
            assert all("kind: KIND_CPU" in g for g in groups), model


def test_auto_without_cuda_renders_cpu_byte_for_byte(tmp_path, monkeypatch):
    from spotvlm import build

    monkeypatch.setattr(build, "torch_sees_cuda", lambda: False)
    cpu = _render_for(["--device", "cpu"], tmp_path / "cpu")
    assert _render_for(["--device", "auto"], tmp_path / "auto") == cpu
    assert "KIND_GPU" not in "".join(cpu.values()) and len(cpu) == 9


def test_the_batch_window_is_the_first_steps_queue_delay_only(tmp_path):
    rendered = _render_for(["--batch-window-us", "25000", "--max-queue-delay-us", "500"], tmp_path / "window")
    delays = {
        model: re.findall(r"max_queue_delay_microseconds: (\d+)", text)
        for model, text in rendered.items()
        if model.startswith("svlm_")
    }
    assert delays == {
        "svlm_preprocess": ["25000"],
        "svlm_vision": ["500"],
        "svlm_generate": ["500"],
        "svlm_postprocess": ["500"],
        "svlm_focus": [],
    }


@pytest.mark.parametrize(
    "argv, turns",
    [([], 4), (["--trained"], 0), (["--trained", "--context-turns", "2"], 2), (["--context-turns", "0"], 0)],
)
def test_the_trained_edge_reads_only_the_freshest_cloud_answer_unless_told_otherwise(argv, turns):
    from spotvlm.build import ModelFacts, build_parser, template_values

    facts = ModelFacts(text_hidden=64, patch_size=14, merge_size=2, temporal_patch_size=2)
    values = template_values(build_parser().parse_args(argv), Path("/e"), Path("/c"), 112, facts)
    assert values["context_turns"] == turns


@pytest.mark.parametrize(
    "argv, mode, questions",
    [
        ([], "crop_and_frame", ""),
        (["--trained"], "crop_only", "^what (colour|shape) is the "),
        (["--trained", "--focus-mode", "crop_and_frame", "--focus-questions", ""], "crop_and_frame", ""),
        (["--focus-questions", r"\bcolou?r\b"], "crop_and_frame", r"\\bcolou?r\\b"),
    ],
)
def test_the_trained_edge_is_focused_as_it_learned(argv, mode, questions):
    from spotvlm.build import ModelFacts, build_parser, template_values

    facts = ModelFacts(text_hidden=64, patch_size=14, merge_size=2, temporal_patch_size=2)
    values = template_values(build_parser().parse_args(argv), Path("/e"), Path("/c"), 112, facts)
    assert (values["focus_mode"], values["focus_questions"]) == (mode, questions)


def test_a_focus_questions_that_is_no_regex_is_refused(capsys):
    from spotvlm.build import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--focus-questions", "what (colour"])
    assert "not a regular expression" in capsys.readouterr().err


def test_a_negative_context_turns_is_refused(capsys):
    from spotvlm.build import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--context-turns", "-1"])
    assert "must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "raw, default, expected",
    [("true", False, True), ("0", True, False), ("12", 1, 12), ("2.5", 1.0, 2.5), ("x", "d", "x")],
)
def test_get_param_casts_to_default_type(raw, default, expected):
    assert get_param({"k": raw}, "k", default) == expected


def test_get_param_names_the_bad_parameter():
    with pytest.raises(ValueError, match="'k'"):
        get_param({"k": "many"}, "k", 1)


def test_unrendered_templates_lists_models_not_yet_built(tmp_path):
    from client.model_repository import unrendered_templates

    for side, model in (("edge", "a"), ("edge", "b"), ("cloud", "c")):
        (tmp_path / side / model).mkdir(parents=True)
        (tmp_path / side / model / "config.pbtxt.template").write_text("x: ${v}")
    render_repository(tmp_path / "edge", {"v": 1})
    assert [p.parent.name for p in unrendered_templates(tmp_path)] == ["c"]
    assert unrendered_templates(tmp_path / "edge") == []


def test_environment_variables_override_parameters_by_name():
    params = {"cloud_url": "cloud:8001", "focus_mode": "off"}
    environ = {"SPOTVLM_CLOUD_URL": "off", "SPOTVLM_CLOUD_MAX_INFLIGHT": "4", "SPOTVLM_": "x", "PATH": "/bin"}
    merged = with_env_overrides(params, environ)
    assert merged == {"cloud_url": "off", "focus_mode": "off", "cloud_max_inflight": "4"}
    assert params["cloud_url"] == "cloud:8001", "the config's own mapping is not changed"
