"""Which demo `spotvlm demo` gives: the trained one where the built edge loads a checkpoint with a training report."""

from __future__ import annotations

from pathlib import Path

from spotvlm.demo import serves_trained_checkpoints


def _built_edge(repository_root: Path, checkpoint: Path) -> None:
    config = repository_root / "edge" / "svlm_generate" / "config.pbtxt"
    config.parent.mkdir(parents=True)
    config.write_text(
        'name: "svlm_generate"\nbackend: "python"\n'
        f'parameters {{ key: "checkpoint" value {{ string_value: "{checkpoint}" }} }}\n'
    )


def test_a_checkpoint_with_a_training_report_is_trained(tmp_path):
    checkpoint = tmp_path / "edge-0123456789abcdef"
    checkpoint.mkdir()
    _built_edge(tmp_path / "repo", checkpoint)
    assert not serves_trained_checkpoints(tmp_path / "repo")  # random weights: no training.json
    (checkpoint / "training.json").write_text("{}")
    assert serves_trained_checkpoints(tmp_path / "repo")


def test_an_unbuilt_repository_is_not_trained(tmp_path):
    assert not serves_trained_checkpoints(tmp_path / "nothing")
