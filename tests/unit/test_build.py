"""The build pipeline's pure parts and its TensorRT branch (with a stand-in `trtexec`, since TensorRT cannot be
installed on these machines)."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from spotvlm import build
from engines.tiny_checkpoint import EDGE_SPEC, build_tiny_checkpoint, is_built
from tests.build_helpers import copy_repository_templates

FAKE_TRTEXEC = """#!{python}
import json, sys
args = sys.argv[1:]
open({log!r}, "w").write(json.dumps(args))
engine = next(a.split("=", 1)[1] for a in args if a.startswith("--saveEngine="))
open(engine, "wb").write(b"fake plan")
"""


@pytest.fixture
def fake_trtexec(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "trtexec_args.json"
    script = bin_dir / "trtexec"
    script.write_text(FAKE_TRTEXEC.format(python=sys.executable, log=str(log)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_no_tensorrt_here_by_default():
    if build.shutil.which("trtexec"):
        pytest.skip("this machine has trtexec")
    assert build.tensorrt_available() in (None, "python")


def test_trtexec_gets_a_dynamic_image_count_profile(fake_trtexec, tmp_path):
    assert build.tensorrt_available() == "trtexec"
    plan = tmp_path / "model.plan"
    build.build_tensorrt_plan(tmp_path / "model.onnx", plan, (64, 1176), max_batch=8, how="trtexec")
    args = json.loads(fake_trtexec.read_text())
    assert f"--saveEngine={plan}" in args
    assert "--minShapes=PIXEL_VALUES:1x64x1176" in args
    assert "--optShapes=PIXEL_VALUES:4x64x1176" in args
    assert "--maxShapes=PIXEL_VALUES:8x64x1176" in args
    assert plan.read_bytes() == b"fake plan"


def test_with_tensorrt_the_vision_step_becomes_a_plan_and_the_ensemble_is_unchanged(
    fake_trtexec, tmp_path, tiny_edge_checkpoint, tiny_cloud_checkpoint, capsys
):
    repo = copy_repository_templates(tmp_path / "repo")
    code = build.main(
        [
            "--edge-checkpoint",
            str(tiny_edge_checkpoint),
            "--cloud-checkpoint",
            str(tiny_cloud_checkpoint),
            "--repository-root",
            str(repo),
            "--build-dir",
            str(tmp_path / "build"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "[4/5] TensorRT: found (trtexec)" in out
    vision = (repo / "edge" / "svlm_vision" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in vision and "backend:" not in vision
    assert 'name: "PIXEL_VALUES", data_type: TYPE_FP32, dims: [ 64, 1176 ]' in vision
    assert 'name: "IMAGE_FEATURES", data_type: TYPE_FP32, dims: [ 16, 64 ]' in vision
    assert (repo / "edge" / "svlm_vision" / "1" / "model.plan").is_file()
    ensemble = (repo / "edge" / "svlm" / "config.pbtxt").read_text()
    assert 'model_name: "svlm_vision"' in ensemble


def test_failures_exit_nonzero_with_a_clear_message(tmp_path, capsys):
    code = build.main(["--edge-checkpoint", str(tmp_path / "nowhere"), "--build-dir", str(tmp_path / "b")])
    assert code == 1
    assert "no config.json there" in capsys.readouterr().err


def test_tiny_checkpoint_is_deterministic(tmp_path):
    from safetensors.numpy import load_file

    a = build_tiny_checkpoint(tmp_path / "a", EDGE_SPEC)
    b = build_tiny_checkpoint(tmp_path / "b", EDGE_SPEC)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all((weights_a[k] == weights_b[k]).all() for k in weights_a)
    assert is_built(a, EDGE_SPEC)
    from dataclasses import replace

    assert not is_built(a, replace(EDGE_SPEC, seed=EDGE_SPEC.seed + 1))


def test_model_facts_read_a_checkpoint(tiny_edge_checkpoint):
    facts = build.ModelFacts.read(Path(tiny_edge_checkpoint))
    assert (facts.text_hidden, facts.patch_size, facts.merge_size, facts.temporal_patch_size) == (64, 14, 2, 2)


def test_trained_trains_each_side_with_its_budget_and_serves_the_cached_folders(monkeypatch, tmp_path):
    from training import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run", lambda recipe, out_root: calls.append((recipe.model, recipe.train.minutes)))
    edge, cloud = build.train_checkpoints((3.0, 7.0), tmp_path)
    assert calls == [("edge", 3.0), ("cloud", 7.0)]
    assert edge == str(pipeline.checkpoint_folder(pipeline.recipe("edge", 3.0), tmp_path))
    assert cloud == str(pipeline.checkpoint_folder(pipeline.recipe("cloud", 7.0), tmp_path))
    assert Path(edge).parent == tmp_path and Path(edge).name.startswith("edge-") and edge != cloud


def test_trained_refuses_explicit_checkpoints(capsys):
    with pytest.raises(SystemExit):
        build.main(["--trained", "--cloud-checkpoint", "/models/x"])
    assert "cannot be combined" in capsys.readouterr().err
