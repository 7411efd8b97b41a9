"""ONNX export of the Qwen2.5-VL vision tower for one fixed image size, with a dynamic image count.

The unmodified ``model.visual`` (``Qwen2_5_VisionTransformerPretrainedModel``) does not export with a
dynamic batch: its window index, rotary position ids and ``cu_seqlens`` are built from ``grid_thw`` with
``.tolist()`` / python loops (dynamo: ``GuardOnDataDependentSymNode``; legacy: the grid is baked in and a
second image breaks in ONNX Runtime).

For a FIXED square image size all of that is a constant of the grid, so :class:`FixedGridVisionTower`
precomputes it once (as buffers) with the HF helpers themselves and keeps only the image count dynamic:

* input  ``PIXEL_VALUES``   ``[N, P, D]`` float32, ``P = (S/patch)^2`` and ``D = 3*temporal_patch*patch^2``:
  exactly the rows ``Qwen2VLImageProcessor`` produces for one image, stacked on a new leading axis;
* output ``IMAGE_FEATURES`` ``[N, P/merge^2, out_hidden_size]``: ``visual(pixel_values.reshape(N*P, D),
  grid_thw).pooler_output`` reshaped per image.

The wrapper reuses the tower's own weights (``patch_embed`` as a matmul, each block's ``norm1``/``attn.qkv``/
``attn.proj``/``norm2``/``mlp``, ``merger``), so it works for any real Qwen2.5-VL checkpoint (e.g. the 3B at
448 px, which mixes windowed and full-attention blocks).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INPUT_NAME = "PIXEL_VALUES"
OUTPUT_NAME = "IMAGE_FEATURES"

log = logging.getLogger(__name__)


def vision_grid(image_size: int, patch_size: int, merge_size: int) -> tuple[int, int, int]:
    """``(1, S/p, S/p)`` for a square ``S``-px image; ``S`` must be a positive multiple of ``patch*merge``."""
    for name, v in (("image_size", image_size), ("patch_size", patch_size), ("merge_size", merge_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    unit = patch_size * merge_size
    if image_size % unit != 0:
        raise ValueError(
            f"image_size {image_size} is not divisible by patch_size*merge_size = {patch_size}*{merge_size} = {unit}"
        )
    g = image_size // patch_size
    return (1, g, g)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _scalar(v) -> int:
    if isinstance(v, (list, tuple)):  # config allows [p, p]
        if len(set(v)) != 1:
            raise ValueError(f"non-square patch/temporal size {v!r} is not supported")
        v = v[0]
    return int(v)


class FixedGridVisionTower(torch.nn.Module):
    """Wraps model.visual for one fixed grid so it exports with a dynamic image count."""

    def __init__(self, visual, image_size: int, window_attention: bool = True):
        """``window_attention=False`` replaces the windowed blocks' attention with full attention. It exists
        only so tests can show that the parity check notices a broken window structure; never export it."""
        super().__init__()
        from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

        cfg = visual.config
        self.visual = visual
        self.patch_size = _scalar(cfg.patch_size)
        self.temporal_patch_size = _scalar(cfg.temporal_patch_size)
        self.in_channels = int(cfg.in_channels)
        self.merge = int(cfg.spatial_merge_size)
        self.unit = self.merge * self.merge
        self.hidden = int(cfg.hidden_size)
        self.num_heads = int(cfg.num_heads)
        self.head_dim = self.hidden // self.num_heads
        self.image_size = int(image_size)
        self.grid = vision_grid(self.image_size, self.patch_size, self.merge)
        _, gh, gw = self.grid
        self.num_patches = gh * gw  # P
        self.num_tokens = self.num_patches // self.unit  # P / merge^2
        self.patch_dim = self.in_channels * self.temporal_patch_size * self.patch_size**2  # D
        self.full_blocks = frozenset(int(i) for i in cfg.fullatt_block_indexes)
        self.window_attention = bool(window_attention)

        grid_thw = torch.tensor([self.grid], dtype=torch.long)
        ref = next(visual.parameters())
        with torch.no_grad():
            # Window order of merge units (window_index) and the window boundaries in patches, from HF itself.
            window_index, cu_window = get_vision_window_index(
                grid_thw,
                spatial_merge_size=self.merge,
                window_size=int(cfg.window_size),
                patch_size=self.patch_size,
            )
            window_index = window_index.long()
            patch_perm = (window_index[:, None] * self.unit + torch.arange(self.unit)).reshape(-1)
            # Rotary cos/sin for the grid, permuted into window order exactly like HF does.
            position_ids = get_vision_position_ids(grid_thw, self.merge)
            cos, sin = visual.rotary_pos_emb(ref, position_ids)
            cos, sin = cos[patch_perm].float(), sin[patch_perm].float()

        self.register_buffer("patch_perm", patch_perm, persistent=False)
        # The patch embedding is a Conv3d whose kernel equals its stride over exactly one patch: the same linear map
        # as a matmul with the flattened kernel, which ONNX Runtime runs about 15x faster than its Conv.
        proj = visual.patch_embed.proj
        one_patch = (
            tuple(proj.kernel_size) == tuple(proj.stride)
            and proj.padding in ("valid", (0, 0, 0), 0)
            and tuple(proj.dilation) == (1, 1, 1)
            and proj.groups == 1
            and proj.weight[0].numel() == self.patch_dim
        )
        if not one_patch:
            raise ValueError(
                f"the patch embedding is not one linear map per patch (kernel {proj.kernel_size}, stride {proj.stride},"
                f" padding {proj.padding}, dilation {proj.dilation}, groups {proj.groups}, patch {self.patch_dim})"
            )
        self.register_buffer("patch_weight", proj.weight.detach().reshape(proj.out_channels, -1).t(), persistent=False)
        self.register_buffer("patch_bias", proj.bias.detach() if proj.bias is not None else None, persistent=False)
        self.register_buffer("token_unperm", torch.argsort(window_index), persistent=False)
        self.register_buffer("rope_cos", cos.reshape(1, 1, self.num_patches, self.head_dim), persistent=False)
        self.register_buffer("rope_sin", sin.reshape(1, 1, self.num_patches, self.head_dim), persistent=False)

        lengths = (cu_window[1:] - cu_window[:-1]).tolist()
        self.window_lengths = tuple(int(n) for n in lengths)
        # Equal windows (the usual case: S a multiple of window_size) -> fold the windows into the
        # "heads" axis of SDPA (a pure view, no mask, no wasted FLOPs). Unequal -> block-diagonal bool mask.
        self.equal_windows = len(set(self.window_lengths)) == 1
        if self.equal_windows:
            self.register_buffer("window_mask", None, persistent=False)
        else:
            seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
            self.register_buffer("window_mask", seg[:, None] == seg[None, :], persistent=False)

    # ------------------------------------------------------------------
    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, windowed: bool) -> torch.Tensor:
        n, h, p, d = q.shape
        scale = self.head_dim**-0.5
        if not (windowed and self.window_attention) or len(self.window_lengths) == 1:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        if self.equal_windows:
            w = len(self.window_lengths)
            L = self.window_lengths[0]
            # [N, H, W*L, d] -> [N, H*W, L, d]: each (head, window) pair attends independently.
            out = F.scaled_dot_product_attention(
                q.reshape(n, h * w, L, d), k.reshape(n, h * w, L, d), v.reshape(n, h * w, L, d), scale=scale
            )
            return out.reshape(n, h, p, d)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.window_mask, scale=scale)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        n = pixel_values.shape[0]
        P, C, H, d = self.num_patches, self.hidden, self.num_heads, self.head_dim
        x = pixel_values.to(self.patch_weight.dtype) @ self.patch_weight  # [N, P, C]: the patch embedding
        if self.patch_bias is not None:
            x = x + self.patch_bias
        x = x.index_select(1, self.patch_perm)  # window order
        cos, sin = self.rope_cos, self.rope_sin
        for i, blk in enumerate(self.visual.blocks):
            h = blk.norm1(x)
            qkv = blk.attn.qkv(h).reshape(n, P, 3, H, d).permute(2, 0, 3, 1, 4)  # [3, N, H, P, d]
            q, k, v = qkv[0], qkv[1], qkv[2]
            # apply_rotary_pos_emb_vision semantics: rotate in float32, cast back.
            dt = q.dtype
            qf, kf = q.float(), k.float()
            q = (qf * cos + _rotate_half(qf) * sin).to(dt)
            k = (kf * cos + _rotate_half(kf) * sin).to(dt)
            a = self._attention(q, k, v, windowed=i not in self.full_blocks)  # [N, H, P, d]
            a = a.transpose(1, 2).reshape(n, P, C)
            x = x + blk.attn.proj(a)
            x = x + blk.mlp(blk.norm2(x))
        merger = self.visual.merger
        y = merger.mlp(merger.ln_q(x).reshape(n, self.num_tokens, C * self.unit))  # [N, T, out]
        return y.index_select(1, self.token_unperm)

    def example_input(self, n_images: int = 2, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        dtype = next(self.visual.parameters()).dtype
        return torch.randn(n_images, self.num_patches, self.patch_dim, generator=g).to(dtype)


# ----------------------------------------------------------------------
def _hf_reference(visual, pixel_values: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """The unmodified HF forward on N stacked images -> [N, T, out]."""
    n, p, d = pixel_values.shape
    grid_thw = torch.tensor([grid] * n, dtype=torch.long)
    with torch.no_grad():
        out = visual(pixel_values.reshape(n * p, d), grid_thw)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return feats.reshape(n, -1, feats.shape[-1])


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the dynamo exporter's console noise (progress prints go to a redirected stdout; this handles
    the 'torchvision is not installed. Skipping torchvision::nms' logger warnings and deprecation warnings)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def export_vision_onnx(visual, image_size: int, out_path: Path, opset: int = 18) -> Path:
    """Export ``visual`` for ``image_size`` px to ``out_path`` (a ``.onnx`` file, or a folder -> ``model.onnx``).

    Exporter choice: the dynamo exporter (``torch.export`` + onnxscript). It is torch's supported path
    (the TorchScript exporter is deprecated), it takes ``dynamic_shapes`` and *proves* the image axis is
    symbolic at export time (a stray specialisation is an export error, not a silently baked constant as
    with the legacy tracer, which is exactly how the unmodified tower fails there), and it emits SDPA as
    plain MatMul/Softmax ops that ORT runs on any EP. It writes weights to ``<name>.onnx.data`` next to the
    model with a *relative* location, so ORT finds it from any cwd when the model is opened by path.
    """
    from torch.export import Dim

    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        out_path = out_path / "model.onnx"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (out_path, out_path.with_name(out_path.name + ".data")):
        stale.unlink(missing_ok=True)

    was_training = visual.training
    visual.eval()
    try:
        tower = FixedGridVisionTower(visual, image_size).eval()
        # A 2-image example: a 1-image example lets torch.export specialise the batch to 1.
        example = tower.example_input(2)
        dynamic_shapes = {"pixel_values": {0: Dim("n_images", min=1, max=4096)}}
        t0 = time.perf_counter()
        sink = io.StringIO()
        with _quiet_exporter(), contextlib.redirect_stdout(sink), torch.no_grad():
            onnx_program = torch.onnx.export(
                tower,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                external_data=True,
                optimize=True,
                verbose=False,
                report=False,
            )
            onnx_program.save(str(out_path), external_data=True)
        log.info("exported vision tower (%d px) to %s in %.1f s", image_size, out_path, time.perf_counter() - t0)
    finally:
        visual.train(was_training)
    return out_path


def _ort_session(onnx_path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(Path(onnx_path).resolve()), sess_options=so, providers=["CPUExecutionProvider"])


def onnx_parity(visual, onnx_path: Path, image_size: int, n_images: int = 2, seed: int = 0) -> float:
    """Max abs diff between ORT (CPU EP) and the unmodified HF ``visual`` forward on random inputs."""
    cfg = visual.config
    patch, merge = _scalar(cfg.patch_size), int(cfg.spatial_merge_size)
    grid = vision_grid(image_size, patch, merge)
    p = grid[1] * grid[2]
    d = int(cfg.in_channels) * _scalar(cfg.temporal_patch_size) * patch * patch
    g = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(n_images, p, d, generator=g)
    was_training = visual.training
    visual.eval()
    try:
        ref = _hf_reference(visual, pixel_values.to(next(visual.parameters()).dtype), grid).float().numpy()
    finally:
        visual.train(was_training)
    sess = _ort_session(onnx_path)
    feed_dtype = np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32
    (got,) = sess.run([OUTPUT_NAME], {INPUT_NAME: pixel_values.numpy().astype(feed_dtype)})
    if got.shape != ref.shape:
        raise AssertionError(f"ORT output shape {got.shape} != HF {ref.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
