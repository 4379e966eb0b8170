"""Tests for natbench.provenance (numerics of a result) and natbench.threads. No training."""
from __future__ import annotations

import torch

from natbench import provenance
from natbench.threads import numerics


def test_device_column_round_trip():
    n = {"device": "cuda:0", "threads": 4, "gpu": "NVIDIA H200", "torch": "2.6.0+cu124"}
    col = provenance.device_column(n, {"amp": "bf16", "channels_last": True})
    assert col == "cuda:0 threads=4 gpu=NVIDIA_H200 amp=bf16 channels_last=True"
    back = provenance.from_row(col, {"torch": "2.6.0+cu124"})
    assert back == {"device": "cuda:0", "threads": "4", "gpu": "NVIDIA_H200", "torch": "2.6.0+cu124"}
    assert provenance.key(back) == provenance.key(n)


def test_old_store_rows_have_unknown_threads():
    old = provenance.from_row("cpu", {"torch": torch.__version__})  # written before threads were recorded
    assert old["threads"] == "" and provenance.key(old) != provenance.key(numerics("cpu"))
    assert "threads unknown" in provenance.describe(old)


def test_tag_is_short_and_path_safe():
    assert provenance.tag({"device": "cuda:0", "threads": 1, "gpu": "NVIDIA H200", "torch": "2.6.0+cu124"}) == "cuda-h200-t1-torch2.6.0-cu124"
    assert provenance.tag({"device": "cpu", "threads": 2, "torch": "2.14.1+cu130"}) == "cpu-t2-torch2.14.1-cu130"


def test_weights_digest_sees_any_change():
    a = {"w": torch.randn(3, 3), "n": torch.tensor(5), "h": torch.zeros(2, dtype=torch.bfloat16)}
    b = {k: v.clone() for k, v in a.items()}
    assert provenance.weights_digest(a) == provenance.weights_digest(b)
    b["w"][0, 0] = torch.nextafter(b["w"][0, 0], torch.tensor(1.0))
    assert provenance.weights_digest(a) != provenance.weights_digest(b)


def test_numerics_reports_the_current_threads():
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2 if n != 2 else 1)
        assert numerics(torch.device("cpu")) == {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__}
    finally:
        torch.set_num_threads(n)


def test_leaderboard_shows_a_rerun_with_other_numerics_as_its_own_row(tmp_path):
    from natbench import leaderboard as lb
    from natbench.store import FlagRow, ResultRow, RunRecord, Store

    import numpy as np

    store = Store(tmp_path / "natbench.sqlite")

    def record(run_id, variant, device, finished, acc):
        rec = RunRecord(run_id=run_id, task="digits", defense="pgd-at", profile="default", seed=0, config_hash="h" * 64,
                        git_rev="x", versions={"torch": "2.6.0"}, device=device, started=finished, finished=finished,
                        wall_train_s=1.0, wall_eval_s=1.0, suite=["clean", "pgd-20"], variant=variant)
        rows = [ResultRow(c, a, "accuracy", acc) for c in ("best", "last") for a in ("clean", "pgd-20")]
        flags = [FlagRow(c, a, np.ones(10, bool)) for c in ("best", "last") for a in ("clean", "pgd-20")]
        store.record_run(rec, rows, flags, [])

    record("digits-pgd-at-s0-hhhhhhhh", "", "cpu threads=1", "2026-01-01T00:00:00", 0.5)
    record("digits-pgd-at-s0-hhhhhhhh.cpu-t2-torch2.6.0", "numerics=cpu-t2-torch2.6.0", "cpu threads=2",
           "2026-01-02T00:00:00", 0.6)
    df = lb.table(store, "digits")
    best = df[df["checkpoint"] == "best"]
    assert sorted(best["variant"]) == ["", "numerics=cpu-t2-torch2.6.0"]  # two rows, never one row of "2 seeds"
    assert set(best["seeds"]) == {1}
