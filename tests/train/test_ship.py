"""``sglang_dspark.train.ship``: the export step of ``make drafter``, on the tiny recipe."""

from __future__ import annotations

import json

import pytest

from sglang_dspark.train.recipe import load_recipe
from sglang_dspark.train.ship import acceptance_floor, FloorSpec, ShipError, measure_acceptance, ship_drafter
from sglang_dspark.train.trainer import run_training

from .conftest import REPO, TINY_RECIPE

FLOOR = FloorSpec(num_prompts=2, max_new_tokens=16, margin=0.1)


@pytest.fixture(scope="module")
def tiny_run(tiny_target_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ship-run")
    run_training(tiny_target_dir, load_recipe(TINY_RECIPE), out, seed=0, progress=False)
    return out


def test_ships_files_metadata_and_a_floor_that_holds(tiny_run, tiny_target_dir, tmp_path):
    dest = tmp_path / "drafters" / "tiny"
    meta = ship_drafter(tiny_run, tiny_target_dir, dest, floor=FLOOR, root=REPO, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == [
        "config.json", "metadata.json", "model.safetensors", "recipe.json",
        "sts_calibration.json", "training_summary.json",
    ]
    assert json.loads((dest / "metadata.json").read_text()) == meta
    assert json.loads((dest / "recipe.json").read_text())["name"] == "tiny-drafter"
    assert meta["size_bytes"] <= meta["size_limit_bytes"] == 25_000_000
    floor = meta["floor"]
    assert floor["min_mean_accept_length"] == acceptance_floor(floor["measured_mean_accept_length"], 0.1)
    # What the shipped-drafter test does: re-measure with the recorded settings.
    again = measure_acceptance(dest, tiny_target_dir, REPO / floor["prompts"],
                               num_prompts=floor["num_prompts"],
                               max_new_tokens=floor["max_new_tokens"])
    assert again.mean_accept_length >= floor["min_mean_accept_length"]
    assert not list(dest.parent.glob(".tiny.tmp-*"))


def test_refuses_oversize_and_unfinished_runs(tiny_run, tiny_target_dir, tmp_path):
    dest = tmp_path / "big"
    with pytest.raises(ShipError, match="over the 0.0 MB limit"):
        ship_drafter(tiny_run, tiny_target_dir, dest, floor=FLOOR, root=REPO, size_limit=1000,
                     progress=False)
    assert not dest.exists() and not list(tmp_path.glob(".big.tmp-*"))
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(ShipError, match="has not finished"):
        ship_drafter(tmp_path / "unfinished", tiny_target_dir, dest, floor=FLOOR, root=REPO)


def test_acceptance_floor_stays_above_one_for_a_weak_drafter():
    assert acceptance_floor(2.5, 0.1) == 2.4
    # 1.078 - 0.1 would be below 1, a floor every drafter meets: keep half the gain instead.
    assert acceptance_floor(1.078, 0.1) == 1.039
    assert acceptance_floor(1.0, 0.1) == 1.0
