import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))


@pytest.fixture(scope="session")
def tiny_edge_checkpoint(tmp_path_factory) -> Path:
    """The default edge checkpoint, built afresh (about 3 s) so unit tests do not depend on build_engines.sh."""
    from engines.tiny_checkpoint import EDGE_SPEC, build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("checkpoints") / "edge", EDGE_SPEC)


@pytest.fixture(scope="session")
def tiny_cloud_checkpoint(tmp_path_factory) -> Path:
    from engines.tiny_checkpoint import CLOUD_SPEC, build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("checkpoints") / "cloud", CLOUD_SPEC)
