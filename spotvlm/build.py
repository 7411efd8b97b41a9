"""Builds everything the model repositories load; `build_engines.sh` runs this.

Steps, each skipped when its output is already up to date (so a second run takes seconds):
1. the edge checkpoint: the tiny default, or a real local one given with --edge-checkpoint;
2. the cloud checkpoint: likewise, --cloud-checkpoint;
3. the edge vision tower exported to ONNX at a fixed input size, checked against torch in ONNX Runtime;
4. a TensorRT engine from that ONNX, on --device gpu where TensorRT exists (trtexec or the tensorrt module),
   checked against ONNX Runtime's features;
5. the `config.pbtxt` files rendered from their templates, for --device cpu or gpu (auto: gpu where torch sees CUDA):
   the heavy models (svlm_vision, svlm_generate, lvlm) get KIND_GPU instance groups, `count` of them on every GPU;
   the light python steps stay KIND_CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from client.model_repository import render_repository
from engines import VISION_EXPORT_VERSION
from spotvlm.tensorrt_plan import (
    TENSORRT_TOLERANCE,
    PlanError,
    build_tensorrt_plan,
    check_tensorrt_plan,
    launcher_tensorrt_note,
    tensorrt_available,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Trained tiny checkpoints committed with the repository, one folder per recipe (MODEL-KEY), each with the
# training.json that says how to reproduce it; --trained uses them instead of training when the key matches.
SHIPPED_CHECKPOINTS = PROJECT_ROOT / "checkpoints"
DEFAULT_TRAIN_MINUTES = "6,12"
ONNX_TOLERANCE = 1e-3
DEVICES = ("auto", "cpu", "gpu")
STEPS = 5


class BuildError(RuntimeError):
    pass


def step(number: int, message: str) -> None:
    print(f"[{number}/{STEPS}] {message}", flush=True)


def detail(message: str) -> None:
    print(f"      {message}", flush=True)


@dataclass(frozen=True)
class ModelFacts:
    """What the templates need to know about a checkpoint."""

    text_hidden: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int

    @classmethod
    def read(cls, checkpoint: Path) -> ModelFacts:
        config = json.loads((checkpoint / "config.json").read_text())
        text = config.get("text_config", config)
        vision = config["vision_config"]
        return cls(
            text_hidden=int(text["hidden_size"]),
            patch_size=int(vision.get("patch_size", 14)),
            merge_size=int(vision.get("spatial_merge_size", 2)),
            temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
        )


def checkpoint_fingerprint(checkpoint: Path) -> str:
    """Cheap identity of a checkpoint folder: names, sizes and mtimes of its files."""
    digest = hashlib.sha256()
    for path in sorted(checkpoint.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def ensure_checkpoint(role: str, given: str | None, default_dir: Path, number: int) -> Path:
    from engines.tiny_checkpoint import CLOUD_SPEC, EDGE_SPEC, build_tiny_checkpoint, is_built

    if given:
        path = Path(given).expanduser().resolve()
        step(number, f"{role} checkpoint: using {path}")
        if not (path / "config.json").is_file():
            raise BuildError(f"--{role}-checkpoint {path}: no config.json there (not a transformers checkpoint)")
        if not (path / "preprocessor_config.json").is_file():
            raise BuildError(
                f"--{role}-checkpoint {path}: no preprocessor_config.json (needed for the image processor)"
            )
        return path
    spec = EDGE_SPEC if role == "edge" else CLOUD_SPEC
    if is_built(default_dir, spec):
        step(number, f"{role} checkpoint: {spec.name} is up to date in {default_dir}")
        return default_dir
    step(number, f"{role} checkpoint: building {spec.name} (random weights, seed {spec.seed}) in {default_dir}")
    started = time.monotonic()
    if default_dir.exists():
        shutil.rmtree(default_dir)
    build_tiny_checkpoint(default_dir, spec)
    detail(f"done in {time.monotonic() - started:.1f} s")
    return default_dir


def parse_train_minutes(text: str) -> tuple[float, float]:
    """ "EDGE,CLOUD" minutes -> (edge, cloud); ValueError naming the problem."""
    parts = text.split(",")
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or not all(v > 0 for v in values):
        raise ValueError(f"--train-minutes takes two positive numbers EDGE,CLOUD (e.g. 6,24), got {text!r}")
    return values


def train_checkpoints(
    minutes: tuple[float, float], out_root: Path, shipped_root: Path = SHIPPED_CHECKPOINTS
) -> tuple[str, str]:
    """Trains (or finds cached, or finds shipped with the repository) the edge and cloud checkpoints; the training
    prints its own progress."""
    from training.pipeline import checkpoint_folder, recipe, run

    folders = []
    for role, budget in zip(("edge", "cloud"), minutes, strict=True):
        chosen = recipe(role, budget)
        folder = checkpoint_folder(chosen, out_root)
        if seed_from_shipped(folder, shipped_root):
            print(f"[train] {role}: the shipped checkpoint {shipped_root / folder.name} has this recipe's key; copied")
        else:
            print(f"[train] {role} training: {budget:g} min budget, cache {folder}")
        run(chosen, out_root)
        folders.append(str(folder))
    return folders[0], folders[1]


def seed_from_shipped(folder: Path, shipped_root: Path) -> bool:
    """Copies the shipped checkpoint named like `folder` (MODEL-KEY, so the same recipe) into the training cache
    when the cache has none. True when it did: training then finds it up to date."""
    shipped = shipped_root / folder.name
    if (folder / "training.json").is_file() or not (shipped / "training.json").is_file():
        return False
    staging = folder.with_name(folder.name + ".copying")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(shipped, staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return True


def tiny_image_size(checkpoint: Path) -> int | None:
    info = checkpoint / "spotvlm_build.json"
    if info.is_file():
        return int(json.loads(info.read_text())["spec"]["image_size"])
    return None


def export_vision(checkpoint: Path, image_size: int, onnx_path: Path, force: bool) -> dict:
    stamp_path = onnx_path.with_name("export.json")
    identity = {
        "export_version": VISION_EXPORT_VERSION,
        "checkpoint": str(checkpoint),
        "fingerprint": checkpoint_fingerprint(checkpoint),
        "image_size": image_size,
    }
    if not force and onnx_path.is_file() and stamp_path.is_file():
        stamp = json.loads(stamp_path.read_text())
        if stamp.get("identity") == identity:
            step(3, f"vision ONNX: up to date ({onnx_path}, max |ORT - torch| = {stamp['max_abs_diff']:.2e})")
            return stamp

    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from engines.vision_onnx import export_vision_onnx, onnx_parity

    step(3, f"vision ONNX: exporting the edge tower at {image_size}x{image_size} to {onnx_path}")
    started = time.monotonic()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    visual = model.model.visual
    for stale in (onnx_path, onnx_path.with_name(onnx_path.name + ".data")):
        stale.unlink(missing_ok=True)
    export_vision_onnx(visual, image_size, onnx_path)
    detail(f"exported in {time.monotonic() - started:.1f} s; checking ONNX Runtime against torch (2 images)")
    diff = onnx_parity(visual, onnx_path, image_size, n_images=2)
    detail(f"max |ORT - torch| = {diff:.2e} (tolerance {ONNX_TOLERANCE:.0e})")
    if not diff <= ONNX_TOLERANCE:
        raise BuildError(f"ONNX vision tower differs from torch by {diff:.2e} > {ONNX_TOLERANCE:.0e}")
    stamp = {"identity": identity, "max_abs_diff": diff, "tolerance": ONNX_TOLERANCE}
    stamp_path.write_text(json.dumps(stamp, indent=2))
    return stamp


def torch_sees_cuda() -> bool:
    """The one seam --device auto looks through."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(requested: str) -> str:
    """'cpu' or 'gpu' for --device; auto is gpu exactly where torch sees a CUDA device."""
    if requested not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "auto":
        return "gpu" if torch_sees_cuda() else "cpu"
    return requested


def template_values(args: argparse.Namespace, edge: Path, cloud: Path, image_size: int, facts: ModelFacts) -> dict:
    """Every `${var}` the repository templates use, from the build options and the checkpoints."""
    grid = image_size // facts.patch_size
    num_patches = grid * grid
    heavy_kind = "KIND_GPU" if resolve_device(args.device) == "gpu" else "KIND_CPU"
    return {
        "edge_checkpoint": edge,
        "cloud_checkpoint": cloud,
        "image_size": image_size,
        "num_patches": num_patches,
        "patch_dim": 3 * facts.temporal_patch_size * facts.patch_size**2,
        "image_tokens": num_patches // facts.merge_size**2,
        "text_hidden": facts.text_hidden,
        "max_batch_size": args.max_batch_size,
        "lvlm_max_batch_size": args.max_batch_size,
        "max_queue_delay_us": args.max_queue_delay_us,
        "batch_window_us": args.batch_window_us,
        "preprocess_instances": args.instances,
        "vision_instances": args.instances,
        "generate_instances": args.generate_instances or args.instances,
        "lvlm_instances": args.lvlm_instances,
        "intra_op_threads": args.intra_op_threads,
        # svlm_vision, svlm_generate and lvlm; Triton makes `count` instances on every GPU of a KIND_GPU group.
        "heavy_instance_kind": heavy_kind,
        "default_max_tokens": args.default_max_tokens,
        "lvlm_default_max_tokens": max(args.default_max_tokens, 48),
        "max_tokens_limit": 512,
        "max_input_pixels": 4096 * 4096,
        "cloud_url": args.cloud_url,
        "cloud_delay": args.cloud_delay,
        "spotvlm_instances": args.spotvlm_instances,
        "streams_per_instance": args.streams_per_instance,
        "sequence_idle_us": int(args.sequence_idle_s * 1_000_000),
        "sequence_idle_s": args.sequence_idle_s,
        "focus_mode": args.focus_mode or ("crop_only" if args.trained else "crop_and_frame"),
        # Backslashes doubled: config.pbtxt strings take C escapes, and "\b" must reach the model as a word boundary.
        "focus_questions": focus_questions(args).replace("\\", "\\\\"),
        "context_turns": context_turns(args),
    }


# The questions the trained edge model saw focus crops on (training/examples.py crops recognition examples only).
TRAINED_FOCUS_QUESTIONS = "^what (colour|shape) is the "


def focus_questions(args: argparse.Namespace) -> str:
    """The trained edge learned crops, alone in place of the frame, on recognition questions only: --trained focuses
    those alone (in crop_only, its focus mode); other checkpoints focus every question."""
    if args.focus_questions is not None:
        return args.focus_questions
    return TRAINED_FOCUS_QUESTIONS if args.trained else ""


def _regex(text: str) -> str:
    from python_backends.context.focus import FocusConfig  # the check spotvlm applies to focus_questions

    try:
        FocusConfig(question_pattern=text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def context_turns(args: argparse.Namespace) -> int:
    """K, the SVLM turns kept in the history beside the freshest cloud answer. The trained edge model learned to read
    one cloud answer and nothing else (training/examples.py), so --trained serves it exactly that (K = 0)."""
    from python_backends.context.replacement import ReplacementConfig

    if args.context_turns is not None:
        return args.context_turns
    return 0 if args.trained else ReplacementConfig.max_turns


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_engines.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--edge-checkpoint", help="local Qwen2.5-VL checkpoint folder for the edge (default: tiny, built here)"
    )
    parser.add_argument(
        "--cloud-checkpoint", help="local Qwen2.5-VL checkpoint folder for the cloud (default: tiny, built here)"
    )
    parser.add_argument(
        "--edge-image-size", type=int, help="fixed square input of the edge tower (default: 112 tiny, 448 real)"
    )
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=0,
        help="dynamic batcher wait for more requests in every edge step after svlm_preprocess (which takes "
        "--batch-window-us) and in lvlm; 0 batches what is already queued (lowest latency)",
    )
    parser.add_argument(
        "--batch-window-us",
        type=int,
        default=0,
        help="how long the edge ensemble's first step (svlm_preprocess) waits to batch frames of different streams; "
        "they reach the later steps close together, which then batch what is queued. Adds up to this much to every "
        "frame's latency; measured against the capacity in docs/benchmark.md",
    )
    parser.add_argument("--instances", type=int, default=1, help="instances of each edge model step")
    parser.add_argument(
        "--generate-instances",
        type=int,
        default=2,
        help="instances of svlm_generate, the edge's heaviest step: streams that overlap in time need more than one "
        "(4 streams at 10 fps with 24 tokens need 2; see load_tests/stream_isolation.py); 0 = --instances",
    )
    parser.add_argument("--lvlm-instances", type=int, default=1)
    parser.add_argument(
        "--intra-op-threads", type=int, default=1, help="torch/ORT threads per model instance (0 = library default)"
    )
    parser.add_argument("--default-max-tokens", type=int, default=24)
    parser.add_argument(
        "--cloud-url",
        default="127.0.0.1:8101",
        help="gRPC address of the cloud Triton ('off' disables the cloud link; env SPOTVLM_CLOUD_URL overrides it)",
    )
    parser.add_argument(
        "--cloud-delay",
        default="0",
        help="extra delay injected on the cloud link, for experiments: 1500, 2000+-1000, "
        "uniform:1000:3000 or trace:FILE.csv (ms)",
    )
    parser.add_argument(
        "--spotvlm-instances",
        type=int,
        default=4,
        help="instances of the spotvlm model: an instance runs one batch at a time, so size it to the streams expected",
    )
    parser.add_argument(
        "--streams-per-instance", type=int, default=16, help="sequence slots (max_candidate_sequences) per instance"
    )
    parser.add_argument(
        "--sequence-idle-s", type=float, default=10.0, help="Triton drops a stream idle for this long (and its context)"
    )
    parser.add_argument(
        "--focus-mode",
        choices=["crop_and_frame", "crop_only", "off"],
        help="visual focus when a request says focus=auto (default: crop_only with --trained, as its edge learned; "
        "else crop_and_frame)",
    )
    parser.add_argument(
        "--focus-questions",
        type=_regex,
        metavar="REGEX",
        help="focus only questions this regular expression finds, case aside (default: the recognition questions "
        "with --trained, else every question)",
    )
    parser.add_argument(
        "--context-turns",
        type=_non_negative_int,
        help="SVLM turns kept in the history besides the freshest cloud answer (default: 0 with --trained, else 4)",
    )
    parser.add_argument(
        "--trained",
        action="store_true",
        help="serve tiny checkpoints trained here on the benchmark's train split (training), cached "
        "under BUILD_DIR/training by a hash of their inputs; the first run trains for --train-minutes",
    )
    parser.add_argument(
        "--train-minutes",
        default=DEFAULT_TRAIN_MINUTES,
        help="EDGE,CLOUD training budgets for --trained, in minutes of the reference machine (default"
        f" {DEFAULT_TRAIN_MINUTES}: the checkpoints shipped in checkpoints/)",
    )
    parser.add_argument("--build-dir", type=Path, default=PROJECT_ROOT / "build")
    parser.add_argument("--repository-root", type=Path, default=PROJECT_ROOT / "model_repository")
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where the heavy models run: KIND_GPU instance groups for svlm_vision, svlm_generate and lvlm with "
        "gpu, KIND_CPU with cpu; auto (default) is gpu where torch sees CUDA. The light steps stay on CPU",
    )
    parser.add_argument("--no-tensorrt", action="store_true", help="keep ONNX Runtime even where TensorRT exists")
    parser.add_argument("--force", action="store_true", help="rebuild the ONNX export even if up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.trained:
        if args.edge_checkpoint or args.cloud_checkpoint:
            parser.error("--trained builds both checkpoints; it cannot be combined with --edge/--cloud-checkpoint")
        try:
            minutes = parse_train_minutes(args.train_minutes)
        except ValueError as exc:
            parser.error(str(exc))
    started = time.monotonic()
    try:
        if args.trained:
            args.edge_checkpoint, args.cloud_checkpoint = train_checkpoints(minutes, args.build_dir / "training")
        edge = ensure_checkpoint("edge", args.edge_checkpoint, args.build_dir / "checkpoints" / "edge", 1)
        cloud = ensure_checkpoint("cloud", args.cloud_checkpoint, args.build_dir / "checkpoints" / "cloud", 2)
        image_size = args.edge_image_size or tiny_image_size(edge) or 448
        facts = ModelFacts.read(edge)
        if image_size % (facts.patch_size * facts.merge_size):
            raise BuildError(
                f"--edge-image-size {image_size} must be a multiple of {facts.patch_size * facts.merge_size}"
            )

        vision_dir = args.repository_root / "edge" / "svlm_vision" / "1"
        onnx_path = vision_dir / "model.onnx"
        export_vision(edge, image_size, onnx_path, args.force)

        requested_device, args.device = args.device, resolve_device(args.device)
        values = template_values(args, edge, cloud, image_size, facts)
        vision_variant = "config.pbtxt.template"
        plan_path = vision_dir / "model.plan"
        how = None
        if args.device != "gpu":
            step(4, "TensorRT: not used on CPU; svlm_vision runs in ONNX Runtime")
        elif args.no_tensorrt:
            step(4, "TensorRT: off (--no-tensorrt); svlm_vision runs in ONNX Runtime")
        elif (how := tensorrt_available()) is None:
            step(4, "TensorRT: not found (no trtexec on PATH, no tensorrt module); svlm_vision stays on ONNX Runtime")
        else:
            step(4, f"TensorRT: found ({how}); building {plan_path}")
            shape = (values["num_patches"], values["patch_dim"])
            build_tensorrt_plan(onnx_path, plan_path, shape, args.max_batch_size, how)
            args.build_dir.mkdir(parents=True, exist_ok=True)
            diff = check_tensorrt_plan(onnx_path, plan_path, shape, how, args.build_dir)
            detail(f"max |TensorRT - ONNX Runtime| = {diff:.2e} (tolerance {TENSORRT_TOLERANCE:.0e})")
            vision_variant = "config.tensorrt_plan.pbtxt.template"
            if note := launcher_tensorrt_note():
                detail(f"note: {note}")
        if how is None:
            plan_path.unlink(missing_ok=True)

        why = f" (--device auto: torch sees {'a' if args.device == 'gpu' else 'no'} CUDA device)"
        step(
            5, f"rendering config.pbtxt from the templates for {args.device}{why if requested_device == 'auto' else ''}"
        )
        written = []
        for side in ("edge", "cloud"):
            written += render_repository(args.repository_root / side, values, variants={"svlm_vision": vision_variant})
        for path in written:
            detail(str(path.relative_to(args.repository_root)))
        args.build_dir.mkdir(parents=True, exist_ok=True)
        manifest = {
            "values": {k: str(v) for k, v in values.items()},
            "device": args.device,
            "tensorrt": how,
            "vision_template": vision_variant,
        }
        (args.build_dir / "engines.json").write_text(json.dumps(manifest, indent=2))
    except (BuildError, PlanError) as exc:
        print(f"build_engines: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"build_engines: done in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
