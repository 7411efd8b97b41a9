"""Shared by the build tests: a private copy of the model repositories, so a test build never touches the real one."""

import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def copy_repository_templates(dest: Path) -> Path:
    shutil.copytree(
        PROJECT_ROOT / "model_repository",
        dest,
        ignore=shutil.ignore_patterns("config.pbtxt", "model.onnx*", "model.plan", "export.json", "__pycache__"),
    )
    return dest
