"""Reading the request fields and model parameters that the edge steps and the cloud `lvlm` share."""

from __future__ import annotations

from pathlib import Path

from python_backends.generation import check_max_tokens
from python_backends.prompts import decode_prompt
from python_backends.triton_io import first_item, get_input, int_parameter, request_parameters

DEFAULT_MAX_INPUT_PIXELS = 4096 * 4096
MAX_PROMPT_CHARS = 8192


def version_dir(args: dict) -> Path:
    """The model's version folder (where model.onnx lives), from python-backend `initialize` args."""
    return Path(args["model_repository"]) / str(args["model_version"])


def checkpoint_path(params: dict[str, str]) -> Path:
    if "checkpoint" not in params:
        raise ValueError("model parameter 'checkpoint' is not set; run build_engines.sh to fill the templates")
    return Path(params["checkpoint"])


def read_max_tokens(request, default: int, limit: int) -> int:
    """MAX_TOKENS input tensor if given, else the `max_tokens` request parameter, else the default."""
    tensor = get_input(request, "MAX_TOKENS", required=False)
    if tensor is not None:
        value = int(first_item(tensor, "MAX_TOKENS"))
    else:
        value = int_parameter(request_parameters(request), "max_tokens", default)
    return check_max_tokens(value, limit)


def read_prompt(request) -> str:
    return decode_prompt(first_item(get_input(request, "PROMPT"), "PROMPT"), MAX_PROMPT_CHARS)
