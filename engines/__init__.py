"""Building what the model repositories load: tiny checkpoints and the edge vision tower's ONNX export."""

# The vision tower's ONNX export format: changes whenever the exported graph does, so the build re-exports a file an
# older wrapper made (kept here, apart from engines.vision_onnx, so checking a stamp does not import torch).
VISION_EXPORT_VERSION = 2
