"""Reading `parameters` from a Triton model config, where a template never filled counts as absent."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar
from collections.abc import Callable

T = TypeVar("T")


def _raw(parameters: Mapping[str, Any], key: str) -> str | None:
    entry = parameters.get(key)
    if entry is None:
        return None
    value = entry.get("string_value", "") if isinstance(entry, Mapping) else str(entry)
    # A `${var}` left by an unfilled template means "use the default", as in TensorRT-LLM's all_models.
    if value == "" or value.startswith("${"):
        return None
    return value


def model_parameters(model_config: str | Mapping[str, Any]) -> dict[str, str]:
    """`args["model_config"]` (JSON text or dict) -> {key: value} for every filled parameter."""
    config = json.loads(model_config) if isinstance(model_config, str) else model_config
    parameters = config.get("parameters", {}) or {}
    return {key: value for key in parameters if (value := _raw(parameters, key)) is not None}


def with_env_overrides(
    params: Mapping[str, str], environ: Mapping[str, str], prefix: str = "SPOTVLM_"
) -> dict[str, str]:
    """`params` with every `<prefix><KEY>` environment variable in place of parameter `key` (e.g. SPOTVLM_CLOUD_URL
    for cloud_url): one rendered repository serves many deployments, set per container or per test server."""
    merged = dict(params)
    for name, value in environ.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            merged[name[len(prefix) :].lower()] = value
    return merged


def get_param(params: Mapping[str, str], key: str, default: T, cast: Callable[[str], T] | None = None) -> T:
    """A typed parameter with a default; bools accept true/false/1/0/yes/no."""
    value = params.get(key)
    if value is None:
        return default
    if cast is None:
        cast = type(default) if default is not None else str  # type: ignore[assignment]
    if cast is bool:
        lowered = value.strip().lower()
        if lowered not in {"true", "false", "1", "0", "yes", "no"}:
            raise ValueError(f"parameter {key!r} must be a boolean, got {value!r}")
        return lowered in {"true", "1", "yes"}  # type: ignore[return-value]
    try:
        return cast(value)  # type: ignore[misc]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"parameter {key!r}: cannot read {value!r} as {getattr(cast, '__name__', cast)}") from exc
