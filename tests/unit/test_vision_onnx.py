"""Fixed-grid ONNX export of the Qwen2.5-VL vision tower (engines/vision_onnx.py).

Tiny tower built offline from a config: depth 4 with full-attention blocks [1, 3] and windowed blocks [0, 2];
window_size 56 at 112 px gives 4 equal windows of 16 patches, at 140 px 9 unequal windows (mask path).

Weights are re-initialised so that the checks have teeth (at std 0.02 attention is
near uniform and a broken window mask moves outputs by only ~1e-3): qkv at std 0.3 makes attention sharp;
the other Linear/Conv weights get std 1/sqrt(fan_in) so activations stay O(1) through the residual stream
and absolute tolerances mean something (with std 0.3 everywhere outputs reach ~50 and fp32 rounding alone
is ~1e-3). Sharp attention is ill-conditioned in fp32: at this init HF's own fp32 output is ~5e-5 away from
its float64 result (at qkv std 0.4: 1.7e-4, and ORT is then the *closer* of the two to float64), hence the
ORT tolerance of 2e-4; the torch wrapper is additionally checked in float64, where it must agree to ~1e-12.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from engines.vision_onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    FixedGridVisionTower,
    _hf_reference,
    export_vision_onnx,
    onnx_parity,
    vision_grid,
)

TOL = 1e-4  # torch wrapper vs HF, both fp32
ORT_TOL = 2e-4  # ORT vs HF fp32 (see module docstring)


@pytest.fixture(scope="module")
def visual():
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    torch.manual_seed(0)
    cfg = Qwen2_5_VLVisionConfig(
        depth=4,
        hidden_size=64,
        num_heads=4,
        intermediate_size=128,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1, 3],
    )
    v = Qwen2_5_VisionTransformerPretrainedModel(cfg).eval()
    with torch.no_grad():
        for name, m in v.named_modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, 0.3 if name.endswith("attn.qkv") else 1.0 / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.05)
    return v


def _pixels(n: int, p: int = 64, d: int = 1176, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, p, d, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- vision_grid
def test_vision_grid_values():
    assert vision_grid(112, 14, 2) == (1, 8, 8)
    assert vision_grid(448, 14, 2) == (1, 32, 32)
    assert vision_grid(140, 14, 2) == (1, 10, 10)


@pytest.mark.parametrize(
    "args",
    [(100, 14, 2), (126, 14, 2), (0, 14, 2), (-28, 14, 2), (112.0, 14, 2), (112, 0, 2), (112, 14, 0), (True, 14, 2)],
)
def test_vision_grid_rejects(args):
    with pytest.raises(ValueError):
        vision_grid(*args)


def test_wrapper_rejects_bad_size(visual):
    with pytest.raises(ValueError, match="divisible"):
        FixedGridVisionTower(visual, 126)


# ---------------------------------------------------------------- torch wrapper vs HF
@pytest.mark.parametrize("image_size,equal", [(112, True), (140, False)])
@pytest.mark.parametrize("n", [1, 3])
def test_wrapper_matches_hf(visual, image_size, equal, n):
    w = FixedGridVisionTower(visual, image_size).eval()
    assert w.equal_windows is equal and len(w.window_lengths) > 1
    x = _pixels(n, p=w.num_patches)
    with torch.no_grad():
        got = w(x)
    ref = _hf_reference(visual, x, w.grid)
    assert got.shape == (n, w.num_patches // 4, 64)
    diff = (got - ref).abs().max().item()
    print(f"torch wrapper vs HF, {image_size}px, {n} img: {diff:.3g}")
    assert diff < TOL


@pytest.mark.parametrize("image_size", [112, 140])
def test_wrapper_matches_hf_float64(visual, image_size):
    """Same semantics, not just close: in float64 the wrapper equals HF up to rounding."""
    import copy

    v64 = copy.deepcopy(visual).double()
    w = FixedGridVisionTower(v64, image_size).eval()
    x = _pixels(2, p=w.num_patches).double()
    with torch.no_grad():
        diff = (w(x) - _hf_reference(v64, x, w.grid)).abs().max().item()
    print(f"torch wrapper vs HF float64, {image_size}px: {diff:.3g}")
    assert diff < 1e-10


def test_window_structure_has_teeth(visual):
    """Full attention in the windowed blocks must be caught by a wide margin at this init."""
    x = _pixels(2)
    ref = _hf_reference(visual, x, (1, 8, 8))
    with torch.no_grad():
        broken = FixedGridVisionTower(visual, 112, window_attention=False)(x)
    diff = (broken - ref).abs().max().item()
    print(f"no-window-mask vs HF: {diff:.3g} (output max {ref.abs().max().item():.3g})")
    assert diff > 100 * ORT_TOL


def test_processor_rows_layout(visual):
    """PIXEL_VALUES[i] is exactly the processor's rows for image i."""
    import skimage.data
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    imgs = [Image.fromarray(a).resize((112, 112)) for a in (skimage.data.astronaut(), skimage.data.coffee())]
    proc = Qwen2VLImageProcessorPil(min_pixels=112 * 112, max_pixels=112 * 112)
    out = proc(images=imgs, return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]
    pv = out["pixel_values"].float()
    with torch.no_grad():
        ref = visual(pv, out["image_grid_thw"]).pooler_output
        got = FixedGridVisionTower(visual, 112)(pv.reshape(2, 64, -1))
    assert (got.reshape(ref.shape) - ref).abs().max().item() < TOL


# ---------------------------------------------------------------- ONNX export + ORT
@pytest.fixture(scope="module")
def exported(visual, tmp_path_factory):
    import time

    t0 = time.perf_counter()
    path = export_vision_onnx(visual, 112, tmp_path_factory.mktemp("vision112"))
    print(f"export 112px: {time.perf_counter() - t0:.1f} s")
    return path


@pytest.mark.slow
def test_export_files_and_signature(exported):
    import onnx

    assert exported.name == "model.onnx" and exported.is_file()
    m = onnx.load(str(exported), load_external_data=False)
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.name == INPUT_NAME and out.name == OUTPUT_NAME
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert isinstance(in_dims[0], str) and in_dims[1:] == [64, 1176]
    assert isinstance(out_dims[0], str) and out_dims[1:] == [16, 64]
    # any side file is referenced by a relative name next to the model
    locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    for loc in locs:
        assert not os.path.isabs(loc) and (exported.parent / loc).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 3])
def test_ort_matches_hf(visual, exported, n):
    diff = onnx_parity(visual, exported, 112, n_images=n, seed=n)
    print(f"ORT vs HF, 112px, {n} img: {diff:.3g}")
    assert diff < ORT_TOL


@pytest.mark.slow
def test_ort_loads_from_other_cwd(visual, exported, tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.chdir(tmp_path)
    sess = ort.InferenceSession(os.path.relpath(exported, tmp_path), providers=["CPUExecutionProvider"])
    x = _pixels(2, seed=7)
    (got,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    ref = _hf_reference(visual, x, (1, 8, 8)).numpy()
    assert np.abs(got - ref).max() < ORT_TOL


@pytest.mark.slow
def test_export_unequal_windows(visual, tmp_path):
    path = export_vision_onnx(visual, 140, tmp_path / "model140.onnx")
    assert path == tmp_path / "model140.onnx"
    diff = onnx_parity(visual, path, 140, n_images=2)
    print(f"ORT vs HF, 140px (masked windows), 2 img: {diff:.3g}")
    assert diff < ORT_TOL
