#!/usr/bin/env bash
# Builds what the model repositories load: the edge and cloud checkpoints (tiny defaults, made offline, or real
# local ones), the edge vision tower as ONNX (and a TensorRT plan on GPU where TensorRT exists), and the config.pbtxt
# files rendered from their templates for CPU or GPU instances (docs/gpu.md). Idempotent: up-to-date steps are skipped.
#
#   ./build_engines.sh                                   # tiny default models; --device auto: gpu where torch sees CUDA
#   ./build_engines.sh --device cpu                      # every instance on CPU, whatever the machine has
#   ./build_engines.sh --edge-checkpoint /models/Qwen2.5-VL-3B-Instruct --cloud-checkpoint /models/Qwen2.5-VL-7B-Instruct
#   ./build_engines.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import spotvlm, python_backends, torch, transformers, onnx, onnxruntime" 2>/dev/null; then
  echo "build_engines.sh: $PYTHON cannot import the project and its dependencies; run 'make install' first" >&2
  exit 2
fi
export TOKENIZERS_PARALLELISM=false
exec "$PYTHON" -m spotvlm.build "$@"
