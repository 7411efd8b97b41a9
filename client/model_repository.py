"""Model repositories: rendering `config.pbtxt.template` -> `config.pbtxt`, and reading or editing a rendered config.

Values that vary by deployment (checkpoint paths, instance counts, batch sizes, the cloud URL) are `${var}`
placeholders in templates, so the same repository serves the tiny defaults and real Qwen2.5-VL checkpoints. Rendering
is idempotent: the template stays in git and the rendered file is rewritten on every build. A rendered config is read
and written as Triton's own `ModelConfig` protobuf (protobuf text format), never with regular expressions.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import ModelConfig

TEMPLATE_NAME = "config.pbtxt.template"
CONFIG_NAME = "config.pbtxt"


class TemplateError(ValueError):
    pass


class ConfigTemplate(string.Template):
    """`${name}` placeholders only: a bare `$name` or `$$` is left as written (config text may hold `$`)."""

    pattern = r"""
        \$(?:
          (?P<escaped>(?!))
        | (?P<named>(?!))
        | \{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}
        | (?P<invalid>(?!))
        )
    """


class _CheckedValues(Mapping[str, str]):
    """The template values as text, each checked as it is filled in: a quote or newline would break the pbtxt."""

    def __init__(self, values: Mapping[str, object]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> str:
        value = str(self._values[name])
        if '"' in value or "\n" in value:
            raise TemplateError(f"value for ${{{name}}} must not contain quotes or newlines: {value!r}")
        return value

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def placeholders(text: str) -> set[str]:
    return set(ConfigTemplate(text).get_identifiers())


def fill_template(text: str, values: Mapping[str, object], allow_missing: bool = False) -> str:
    """Replaces each `${name}` with `values[name]`. Unknown names raise unless `allow_missing`, which keeps them
    (the model then treats the parameter as absent)."""
    template = ConfigTemplate(text)
    missing = sorted(name for name in template.get_identifiers() if name not in values)
    if missing and not allow_missing:
        raise TemplateError(f"no value for template variable(s): {', '.join(missing)}")
    return template.safe_substitute(_CheckedValues(values))


def render_repository(
    repository: Path, values: Mapping[str, object], variants: Mapping[str, str] | None = None
) -> list[Path]:
    """Renders every model's template under `repository`; returns the config files written.

    `variants` picks another template file for a model, e.g. svlm_vision's TensorRT one where TensorRT exists.
    """
    written = []
    for default_template in sorted(Path(repository).glob(f"*/{TEMPLATE_NAME}")):
        model_dir = default_template.parent
        template = model_dir / (variants or {}).get(model_dir.name, TEMPLATE_NAME)
        target = model_dir / CONFIG_NAME
        try:
            rendered = fill_template(template.read_text(), values)
        except TemplateError as exc:
            raise TemplateError(f"{template}: {exc}") from exc
        target.write_text(rendered)
        written.append(target)
    return written


def unrendered_templates(root: Path) -> list[Path]:
    """Templates under `root` (one repository or the folder of both) with no rendered config.pbtxt beside them."""
    return [t for t in sorted(Path(root).rglob(TEMPLATE_NAME)) if not t.with_name(CONFIG_NAME).is_file()]


def check_built(repository_root: Path) -> None:
    """Exits with a message naming the unrendered templates when the repositories have not been built."""
    missing = [str(p.relative_to(repository_root)) for p in unrendered_templates(repository_root)]
    if missing:
        raise SystemExit(f"the model repositories are not built ({', '.join(missing)}); run ./build_engines.sh first")


# -- rendered configs --------------------------------------------------------------------------------------------------


def parse_model_config(text: str) -> ModelConfig:
    """A config.pbtxt text as Triton's ModelConfig; google.protobuf.text_format.ParseError when it is not one."""
    return text_format.Parse(text, ModelConfig())


def format_model_config(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


def read_model_config(path: Path) -> ModelConfig:
    return parse_model_config(Path(path).read_text())


def write_model_config(config: ModelConfig, path: Path) -> Path:
    path = Path(path)
    path.write_text(format_model_config(config))
    return path


def model_parameter(config: ModelConfig, key: str) -> str | None:
    """A `parameters { key: ..., value: { string_value: ... } }` entry of a config, or None when it has none."""
    return config.parameters[key].string_value if key in config.parameters else None


def rendered_parameter(config_path: Path, key: str) -> str | None:
    """A string parameter of a rendered config.pbtxt, or None when the file, its text or the key cannot be read."""
    try:
        return model_parameter(read_model_config(config_path), key)
    except (OSError, text_format.ParseError):
        return None


def instance_count(config: ModelConfig) -> int | None:
    """The first instance_group's count, or None when the config has no instance group."""
    return config.instance_group[0].count if config.instance_group else None


def set_instance_count(config: ModelConfig, count: int) -> ModelConfig:
    """Sets the count of the config's (single) instance_group, in place; returns the config.

    Raises ValueError when the config has no instance_group, or more than one (which group was meant?).
    """
    if count < 1:
        raise ValueError(f"an instance count must be >= 1, got {count}")
    groups = config.instance_group
    if not groups:
        raise ValueError("the config has no `instance_group [ { count: N ... } ]` to rewrite")
    if len(groups) > 1:
        raise ValueError(f"the config has {len(groups)} instance_group counts; expected one")
    groups[0].count = count
    return config


def set_model_parameter(config: ModelConfig, key: str, value: str) -> ModelConfig:
    """Sets (or adds) the string parameter `key` of a config, in place; returns the config."""
    config.parameters[key].string_value = value
    return config
