"""The build pipeline's pure parts, its --device switch and its TensorRT branch (with a stand-in `trtexec`, since
TensorRT cannot be installed on these machines)."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from spotvlm import build
from spotvlm.tensorrt_plan import PlanError, launcher_tensorrt_note, read_trtexec_output
from engines.tiny_checkpoint import EDGE_SPEC, build_tiny_checkpoint, is_built
from tests.build_helpers import copy_repository_templates, tiny_vision_onnx

# Stands in for trtexec's command line: a build writes a "plan" naming its ONNX graph; a run with --loadEngine
# computes the graph in ONNX Runtime (plus FAKE_TRT_OFFSET, to play a plan that drifted) and writes the outputs as
# trtexec's --exportOutput JSON does.
FAKE_TRTEXEC = """#!{python}
import json, os, sys
import numpy as np
import onnxruntime as ort
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
if "saveEngine" in args:
    open({log!r}, "w").write(json.dumps(sys.argv[1:]))
    open(args["saveEngine"], "w").write(args["onnx"])
    sys.exit(0)
name, shape = args["shapes"].split(":")
pixels = np.fromfile(args["loadInputs"].split(":", 1)[1], dtype=np.float32).reshape([int(d) for d in shape.split("x")])
session = ort.InferenceSession(open(args["loadEngine"]).read(), providers=["CPUExecutionProvider"])
out = session.run(["IMAGE_FEATURES"], {{name: pixels}})[0] + float(os.environ.get("FAKE_TRT_OFFSET", "0"))
dims = "x".join(str(d) for d in out.shape)
entry = {{"name": "IMAGE_FEATURES", "dimensions": dims, "values": out.reshape(-1).tolist()}}
open(args["exportOutput"], "w").write(json.dumps([entry]))
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
    assert "--noTF32" in args, "fp32 as ONNX Runtime computes it, so the features check can hold"
    assert plan.read_text() == str(tmp_path / "model.onnx")


def _rendered(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): p.read_text() for p in sorted(repo.rglob("config.pbtxt"))}


def test_the_device_switch_renders_cpu_auto_and_gpu_with_a_checked_plan(
    fake_trtexec, tmp_path, tiny_edge_checkpoint, tiny_cloud_checkpoint, capsys, monkeypatch
):
    repo = copy_repository_templates(tmp_path / "repo")
    common = ["--edge-checkpoint", str(tiny_edge_checkpoint), "--cloud-checkpoint", str(tiny_cloud_checkpoint)]
    common += ["--repository-root", str(repo), "--build-dir", str(tmp_path / "build")]

    # cpu: no plan even though trtexec is here, every instance group on CPU.
    assert build.main([*common, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "[4/5] TensorRT: not used on CPU" in out and "[5/5] rendering config.pbtxt from the templates for cpu" in out
    cpu = _rendered(repo)
    assert "KIND_GPU" not in "".join(cpu.values())
    assert not (repo / "edge" / "svlm_vision" / "1" / "model.plan").exists()

    # auto where torch sees no CUDA is cpu, byte for byte.
    monkeypatch.setattr(build, "torch_sees_cuda", lambda: False)
    assert build.main([*common, "--device", "auto"]) == 0
    assert "for cpu (--device auto: torch sees no CUDA device)" in capsys.readouterr().out
    assert _rendered(repo) == cpu

    # gpu with TensorRT: the plan is built, checked against ONNX Runtime, and served as tensorrt_plan.
    assert build.main([*common, "--device", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "[4/5] TensorRT: found (trtexec)" in out
    assert "max |TensorRT - ONNX Runtime| = 0.00e+00" in out
    vision = (repo / "edge" / "svlm_vision" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in vision and "backend:" not in vision
    assert 'name: "PIXEL_VALUES", data_type: TYPE_FP32, dims: [ 64, 1176 ]' in vision
    assert 'name: "IMAGE_FEATURES", data_type: TYPE_FP32, dims: [ 16, 64 ]' in vision
    assert "kind: KIND_GPU" in vision
    assert (repo / "edge" / "svlm_vision" / "1" / "model.plan").is_file()
    ensemble = (repo / "edge" / "svlm" / "config.pbtxt").read_text()
    assert 'model_name: "svlm_vision"' in ensemble
    assert json.loads((tmp_path / "build" / "engines.json").read_text())["device"] == "gpu"

    # Back to cpu: the stale plan goes, svlm_vision is the python model again.
    assert build.main([*common, "--device", "cpu"]) == 0
    assert _rendered(repo) == cpu and not (repo / "edge" / "svlm_vision" / "1" / "model.plan").exists()


@pytest.mark.parametrize("offset, passes", [(0.0, True), (1e-4, True), (0.05, False)])
def test_a_plan_that_drifts_from_onnx_runtime_fails_the_build_and_is_removed(
    fake_trtexec, tmp_path, monkeypatch, offset, passes
):
    monkeypatch.setenv("FAKE_TRT_OFFSET", str(offset))
    onnx_path, plan = tiny_vision_onnx(tmp_path / "model.onnx"), tmp_path / "model.plan"
    build.build_tensorrt_plan(onnx_path, plan, (4, 6), max_batch=4, how="trtexec")
    if passes:
        diff = build.check_tensorrt_plan(onnx_path, plan, (4, 6), "trtexec", tmp_path)
        assert diff == pytest.approx(offset, abs=1e-6) and plan.is_file()
    else:
        with pytest.raises(PlanError, match="differs from ONNX Runtime by 5.00e-02 > 1e-03; build with --no-tensorrt"):
            build.check_tensorrt_plan(onnx_path, plan, (4, 6), "trtexec", tmp_path)
        assert not plan.exists()


def test_trtexec_output_json_is_read_by_name(tmp_path):
    path = tmp_path / "out.json"
    path.write_text(
        json.dumps(
            [
                {"name": "OTHER", "dimensions": "1", "values": [0]},
                {"name": "IMAGE_FEATURES", "dimensions": "2x1x3", "values": [1, 2, 3, 4, 5, 6]},
            ]
        )
    )
    got = read_trtexec_output(path, "IMAGE_FEATURES")
    assert got.shape == (2, 1, 3) and got[1, 0, 2] == 6
    with pytest.raises(PlanError, match="no MISSING"):
        read_trtexec_output(path, "MISSING")


@pytest.mark.parametrize(
    "requested, cuda, expected",
    [("cpu", True, "cpu"), ("gpu", False, "gpu"), ("auto", True, "gpu"), ("auto", False, "cpu")],
)
def test_device_auto_is_gpu_exactly_where_torch_sees_cuda(monkeypatch, requested, cuda, expected):
    monkeypatch.setattr(build, "torch_sees_cuda", lambda: cuda)
    assert build.resolve_device(requested) == expected


def test_device_auto_on_this_machine_asks_torch():
    import torch

    assert build.resolve_device("auto") == ("gpu" if torch.cuda.is_available() else "cpu")


def test_a_bad_device_is_refused(capsys):
    with pytest.raises(SystemExit):
        build.build_parser().parse_args(["--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_the_launchers_server_without_a_tensorrt_backend_is_named(tmp_path, monkeypatch):
    from client import launcher

    root = tmp_path / "tritonserver"
    (root / "bin").mkdir(parents=True)
    (root / "backends" / "python").mkdir(parents=True)
    install = launcher.TritonInstall(binary=root / "bin" / "tritonserver", from_wheel=True)
    monkeypatch.setattr(launcher, "locate_tritonserver", lambda: install)
    note = launcher_tensorrt_note()
    assert "nvidia-pytriton's tritonserver, the one `spotvlm serve` starts, has no tensorrt backend" in note
    assert "holds only python" in note and "docs/gpu.md" in note
    (root / "backends" / "tensorrt").mkdir()
    assert launcher_tensorrt_note() is None


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


def test_trained_copies_a_shipped_checkpoint_of_the_same_recipe_instead_of_training(monkeypatch, tmp_path):
    from training import pipeline

    shipped_root, cache = tmp_path / "shipped", tmp_path / "cache"
    edge_name = pipeline.checkpoint_folder(pipeline.recipe("edge", 3.0), cache).name
    (shipped_root / edge_name).mkdir(parents=True)
    (shipped_root / edge_name / "training.json").write_text('{"steps": 1}')
    (shipped_root / edge_name / "model.safetensors").write_bytes(b"weights")
    (shipped_root / "cloud-0000000000000000").mkdir()  # another recipe's: not used
    (shipped_root / "cloud-0000000000000000" / "training.json").write_text("{}")
    seen = []
    monkeypatch.setattr(pipeline, "run", lambda recipe, out_root: seen.append(recipe.model))
    edge, cloud = build.train_checkpoints((3.0, 7.0), cache, shipped_root)
    assert (Path(edge) / "model.safetensors").read_bytes() == b"weights"
    assert not Path(cloud).exists()  # no shipped cloud of this recipe: it trains (here: the stubbed run)
    assert seen == ["edge", "cloud"]  # run() finds the copied edge up to date
    # A cached checkpoint is never overwritten by the shipped one.
    (Path(edge) / "model.safetensors").write_bytes(b"retrained")
    assert not build.seed_from_shipped(Path(edge), shipped_root)
    assert (Path(edge) / "model.safetensors").read_bytes() == b"retrained"


def test_trained_refuses_explicit_checkpoints(capsys):
    with pytest.raises(SystemExit):
        build.main(["--trained", "--cloud-checkpoint", "/models/x"])
    assert "cannot be combined" in capsys.readouterr().err


def test_the_shipped_checkpoints_are_the_default_trained_recipes():
    """`make demo` serves them: a recipe change that moves the default key must ship checkpoints trained on it."""
    from training.pipeline import checkpoint_folder, recipe

    total = 0
    minutes = build.parse_train_minutes(build.DEFAULT_TRAIN_MINUTES)
    for role, budget in zip(("edge", "cloud"), minutes, strict=True):
        folder = build.SHIPPED_CHECKPOINTS / checkpoint_folder(recipe(role, budget)).name
        info = json.loads((folder / "training.json").read_text())
        assert info["recipe"]["model"] == role and not info["stopped_by_guard"]
        assert build.ModelFacts.read(folder).text_hidden > 0
        total += sum(path.stat().st_size for path in folder.iterdir())
    assert total <= 60 * 2**20
