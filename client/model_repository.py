"""Rendering the model repositories: `config.pbtxt.template` -> `config.pbtxt`, filling `${var}` placeholders.

Values that vary by deployment (checkpoint paths, instance counts, batch sizes, the cloud URL) are templates, so the
same repository serves the tiny defaults and real Qwen2.5-VL checkpoints. Rendering is idempotent: the template
stays in git and the rendered file is rewritten on every build.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TEMPLATE_NAME = "config.pbtxt.template"


class TemplateError(ValueError):
    pass


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def fill_template(text: str, values: Mapping[str, object], allow_missing: bool = False) -> str:
    """Replaces each `${name}` with `values[name]`. Unknown names raise unless `allow_missing`, which keeps them
    (the model then treats the parameter as absent)."""
    missing = sorted(name for name in placeholders(text) if name not in values)
    if missing and not allow_missing:
        raise TemplateError(f"no value for template variable(s): {', '.join(missing)}")

    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            return match.group(0)
        value = str(values[name])
        if '"' in value or "\n" in value:
            raise TemplateError(f"value for ${{{name}}} must not contain quotes or newlines: {value!r}")
        return value

    return PLACEHOLDER.sub(substitute, text)


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
        target = model_dir / "config.pbtxt"
        try:
            rendered = fill_template(template.read_text(), values)
        except TemplateError as exc:
            raise TemplateError(f"{template}: {exc}") from exc
        target.write_text(rendered)
        written.append(target)
    return written


def unrendered_templates(root: Path) -> list[Path]:
    """Templates under `root` (one repository or the folder of both) with no rendered config.pbtxt beside them."""
    return [t for t in sorted(Path(root).rglob(TEMPLATE_NAME)) if not t.with_name("config.pbtxt").is_file()]


def check_built(repository_root: Path) -> None:
    """Exits with a message naming the unrendered templates when the repositories have not been built."""
    missing = [str(p.relative_to(repository_root)) for p in unrendered_templates(repository_root)]
    if missing:
        raise SystemExit(f"the model repositories are not built ({', '.join(missing)}); run ./build_engines.sh first")
