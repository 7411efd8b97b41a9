"""Shared by the build tests: a private copy of the model repositories, so a test build never touches the real one,
and a tiny vision-step ONNX graph."""

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


def tiny_vision_onnx(path: Path) -> Path:
    """IMAGE_FEATURES = 2 * PIXEL_VALUES, with a dynamic image count: enough graph for a plan check or a provider."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["PIXEL_VALUES", "PIXEL_VALUES"], ["IMAGE_FEATURES"])],
        "tiny",
        [helper.make_tensor_value_info("PIXEL_VALUES", TensorProto.FLOAT, ["N", 4, 6])],
        [helper.make_tensor_value_info("IMAGE_FEATURES", TensorProto.FLOAT, ["N", 4, 6])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path
