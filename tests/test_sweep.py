"""Variants and sweeps: runs whose --set values differ from the spec are separate leaderboard rows."""
from __future__ import annotations

import pytest

from natbench import leaderboard as lb
from natbench.cli import _sweep_sets, main
from natbench.registry import get_registry
from natbench.resolve import resolve, with_defense
from natbench.store import Store

REG = get_registry()


def test_variant_lists_only_values_that_differ_from_the_spec():
    assert resolve(REG, "digits", "nat").variant == ""
    assert resolve(REG, "digits", "nat", sets=["nat.omega=0.006"]).variant == ""  # the default value
    r = resolve(REG, "digits", "nat", sets=["nat.omega=6e-2", "training.epochs=4"])
    assert r.variant == "nat.omega=0.06 training.epochs=4"
    assert resolve(REG, "digits", "nat", sets=["nat.omega=0.06"], seed=3).variant == "nat.omega=0.06"  # seed is not a variant
    eps = resolve(REG, "digits", "pgd-at", sets=["threat_model.eps=8/255"]).variant
    assert eps.startswith("threat_model.eps=0.0313")


def test_dependency_variant_keeps_task_sets_and_drops_component_sets():
    r = resolve(REG, "digits", "nat", sets=["nat.omega=0.06", "training.epochs=4"])
    dep = with_defense(REG, r, "vanilla")
    assert dep.variant == "training.epochs=4"
    arch = with_defense(REG, r, "vanilla", ("model.width=8",))
    assert arch.variant == "model.width=8 training.epochs=4"
    assert arch.config_hash != dep.config_hash


def test_sweep_sets_are_the_cartesian_product():
    assert _sweep_sets([]) == [()]
    assert _sweep_sets(["nat.omega=0.006,0.06"]) == [("nat.omega=0.006",), ("nat.omega=0.06",)]
    assert len(_sweep_sets(["a.b=1,2,3", "c.d=x,y"])) == 6


@pytest.mark.slow
def test_sweep_gives_one_leaderboard_row_per_value(tmp_path):
    rc = main(["run", "--task", "digits", "--defense", "vanilla", "--profile", "quick", "--suite", "smoke",
               "--set", "training.epochs=1", "--sweep", "training.lr=0.05,0.1", "--root", str(tmp_path),
               "--device", "cpu", "--no-leaderboard"])
    assert rc == 0
    df = lb.table(Store(tmp_path / "natbench.sqlite"), "digits")
    assert "variant" in df.columns
    assert sorted(set(df["variant"])) == ["training.epochs=1", "training.epochs=1 training.lr=0.1"]
    assert set(df["seeds"]) == {1}
    assert len(df) == 4  # 2 values x {best, last}


def test_decode_threads_change_neither_hash_nor_variant():
    a = resolve(REG, "digits", "vanilla")
    b = resolve(REG, "digits", "vanilla", sets=["data.num_workers=4"])
    assert a.config_hash == b.config_hash and b.variant == ""
    assert b.config["task"]["data"]["num_workers"] == 4  # still saved in config.yaml
