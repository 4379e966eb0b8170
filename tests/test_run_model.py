"""natbench.run_model: a finished run's model without a Runner (config.yaml -> task -> verified weights)."""
from __future__ import annotations

import pytest
import torch
import yaml

from natbench.errors import RunError
from natbench.integrity import sha256_file
from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.run_model import build_task, load_model, load_run, run_from_dir
from natbench.store import ResultRow, RunRecord, open_store

REG = get_registry()


def _finished_run(root, data):
    """A digits run written by hand: config.yaml, best.pt (seeded init), a store row with its sha256."""
    r = resolve(REG, "digits", "vanilla", profile="quick")
    task = build_task(r, data, REG)
    torch.manual_seed(3)
    model = task.build_model()
    run_dir = root / r.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(r.config, sort_keys=False))
    torch.save(model.state_dict(), run_dir / "best.pt")
    rec = RunRecord(run_id=r.run_id, task=r.task, defense=r.defense, profile=r.profile_name, seed=0,
                    config_hash=r.config_hash, git_rev="g", versions={}, device="cpu", started="2024-01-01T00:00:00Z",
                    finished="2024-01-01T00:01:00Z", wall_train_s=1.0, wall_eval_s=1.0, config=r.config,
                    suite=["clean"], variant=r.variant)
    with open_store(root) as store:
        store.record_run(rec, [ResultRow("best", "clean", "accuracy", 0.5)], [], [],
                         checkpoints={"best": sha256_file(run_dir / "best.pt")})
    return r, model


def test_load_run_gives_the_checkpoint_weights_and_refuses_a_changed_file(tmp_path):
    root = tmp_path / "runs"
    r, model = _finished_run(root, None)
    assert run_from_dir(root, r.run_id, REG).config_hash == r.config_hash
    with open_store(root, readonly=True) as store:
        got = load_run(root, r.run_id, "best", registry=REG, store=store)
        assert got.resolved.run_id == r.run_id and not got.model.training
        for k, v in model.state_dict().items():
            assert torch.equal(got.model.state_dict()[k], v), k
        # a changed checkpoint file is not the one the results were computed from
        changed = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
        torch.save(changed, root / r.run_id / "best.pt")
        with pytest.raises(RunError, match="not the file its results were computed from"):
            load_model(got.task, root, r.run_id, "best", store=store)
        # already verified by the caller (or no store): loaded as it is
        m = load_model(got.task, root, r.run_id, "best", store=store, verified=True)
        assert torch.equal(next(iter(m.state_dict().values())), next(iter(changed.values())))
    with pytest.raises(RunError, match="no .*config.yaml"):
        run_from_dir(root, "digits-vanilla-s0-00000000", REG)
