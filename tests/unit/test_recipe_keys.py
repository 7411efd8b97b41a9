"""Training cache keys: the golden keys of the default recipes, and every option that changes training changes the key.

A checkpoint is cached under build/training/<model>-<key>. When a golden key below changes, the next `--trained`
build trains again: bump pipeline.KEY_VERSION if the hashing itself changed, and update the table.
"""

from __future__ import annotations

import copy
from dataclasses import fields, is_dataclass
from typing import Any

import pytest

from training import pipeline
from training.fresh_frames import FreshCurriculum
from training.tower_pretraining import TowerPretrainConfig

GOLDEN_KEYS = {
    "edge": ("05b0807279a77465", lambda: pipeline.recipe("edge", 6)),
    "cloud": ("909755c1ea9cfdb5", lambda: pipeline.recipe("cloud", 24)),
    "edge in fp32": ("1fccf5247a761e67", lambda: pipeline.recipe("edge", 6, precision="fp32")),
    "edge, benchmark vocabulary": ("c36fb14dcf794d59", lambda: pipeline.recipe("edge", 6, vocabulary="benchmark")),
    "cloud, constant tower rate": ("07530e7aa00c9420", lambda: pipeline.recipe("cloud", 24, tower_final_lr_fraction=1)),
    "cloud, plain number loss": ("e8285e48dd175f3d", lambda: pipeline.recipe("cloud", 24, number_distance_weight=0)),
    "cloud, 5000 steps on cuda": ("f8bfd055f3867a5d", lambda: pipeline.recipe("cloud", 24, steps=5000, device="cuda")),
    "cloud, end to end": ("c602a7eb26e409ce", lambda: pipeline.recipe("cloud", 24, tower_steps=0)),
}


@pytest.mark.parametrize("name", GOLDEN_KEYS)
def test_golden_keys(name: str) -> None:
    key, make = GOLDEN_KEYS[name]
    assert make().key() == key


def test_checkpoint_folders_are_named_by_model_and_key(tmp_path) -> None:
    edge, cloud = pipeline.recipe("edge", 6), pipeline.recipe("cloud", 24)
    assert pipeline.checkpoint_folder(edge, tmp_path) == tmp_path / f"edge-{GOLDEN_KEYS['edge'][0]}"
    assert pipeline.checkpoint_folder(cloud, tmp_path) == tmp_path / f"cloud-{GOLDEN_KEYS['cloud'][0]}"


def test_equal_recipes_share_a_key() -> None:
    """Asking for a default explicitly, or passing an int for a float, gives the same recipe and key."""
    cloud, edge = pipeline.recipe("cloud", 24), pipeline.recipe("edge", 6)
    assert pipeline.recipe("cloud", 24.0).key() == cloud.key()
    assert pipeline.recipe("cloud", 24, number_weight=1, number_distance_weight=0.1).key() == cloud.key()
    assert pipeline.recipe("cloud", 24, tower_final_lr_fraction=0.1, final_lr_fraction=0.1).key() == cloud.key()
    assert pipeline.recipe("cloud", 24, scene_quota={}, reading_scene_share=0, device="cpu").key() == cloud.key()
    assert pipeline.recipe("edge", 6, precision="bf16", vocabulary="generic", coordinate_bin=2).key() == edge.key()
    assert pipeline.recipe("cloud", 24, number_weight=6).key() == pipeline.recipe("cloud", 24, number_weight=6.0).key()


# What an optional part of the recipe becomes when a variant sets it.
SET_OPTIONALS: dict[str, Any] = {"tower": TowerPretrainConfig(), "fresh": FreshCurriculum(), "precision": "bf16"}


def leaves(node: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, value) of every field of the recipe's dataclass tree that is not itself a dataclass."""
    found = []
    for item in fields(node):
        value = getattr(node, item.name)
        if is_dataclass(value):
            found += leaves(value, (*path, item.name))
        else:
            found.append(((*path, item.name), value))
    return found


def changed(name: str, value: Any) -> Any:
    """Another value of the same kind (the key is a hash: any other value must change it)."""
    if value is None:
        return SET_OPTIONALS.get(name, 1)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, tuple):
        return value + value[:1] if value else ("other",)
    if isinstance(value, dict):
        first = next(iter(value))
        return {**value, first: changed(first, value[first])}
    raise TypeError(f"no other value for {name} = {value!r}")


def with_leaf(node: Any, path: tuple[str, ...], value: Any) -> Any:
    """A copy of `node` with the field at `path` set, without the dataclasses' validation (the key only hashes)."""
    twin = copy.copy(node)
    inner = value if len(path) == 1 else with_leaf(getattr(node, path[0]), path[1:], value)
    object.__setattr__(twin, path[0], inner)
    return twin


@pytest.mark.parametrize("model", ["edge", "cloud"])
def test_every_option_that_changes_training_changes_the_key(model: str) -> None:
    base = pipeline.recipe(model, 6)
    options = leaves(base)
    assert len(options) > 60  # the walk reaches the spec, view, mix, train, data, tower and curriculum fields
    ignored = set(pipeline.KEY_IGNORES)
    unchanged = []
    for path, value in options:
        variant = with_leaf(base, path, changed(path[-1], value))
        if (variant.key() == base.key()) != (path in ignored):
            unchanged.append(".".join(path))
    assert unchanged == [], "options whose change leaves the key as it was (or ignored ones that change it)"


def test_only_the_ignored_fields_are_left_out() -> None:
    base = pipeline.recipe("edge", 6)
    # How often progress is printed, and the wall time that stops a run: neither changes what a step does.
    assert pipeline.KEY_IGNORES == (("train", "log_every_s"), ("train", "max_minutes"))
    assert with_leaf(base, ("train", "log_every_s"), 1.0).key() == base.key()
    assert with_leaf(base, ("train", "max_minutes"), 40.0).key() == base.key()


@pytest.mark.parametrize("version", ["KEY_VERSION", "PIPELINE_VERSION", "GENERATOR_VERSION"])
def test_a_version_bump_changes_every_key(monkeypatch, version: str) -> None:
    before = {name: make().key() for name, (_, make) in GOLDEN_KEYS.items()}
    monkeypatch.setattr(pipeline, version, getattr(pipeline, version) + 1)
    after = {name: make().key() for name, (_, make) in GOLDEN_KEYS.items()}
    assert all(after[name] != before[name] for name in before)
