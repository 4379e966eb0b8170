"""A deliberately gradient-masking model is flagged, and the escalated attack brings it down.

The model is a digits CNN behind an input quantiser ``round(4x)/4``: its input gradient is exactly
zero everywhere, so gradient attacks stall while the decision function is as breakable as before.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from natbench.checks import model_checks
from natbench.registry import get_registry
from natbench.resolve import resolve, task_kind_cls
from natbench.runner import ESCALATED, Runner

REG = get_registry()


class Quantised(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)  # zero gradient almost everywhere


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    r = resolve(REG, "digits", "vanilla", suite="smoke")
    task = task_kind_cls(REG, r.spec)(r.spec, None)
    torch.manual_seed(0)
    model = Quantised(task.build_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(6):
        train, _, _ = task.loaders(64, torch.Generator().manual_seed(epoch))
        model.train()
        for b in train:
            loss = nn.functional.cross_entropy(model(b.x), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    import copy

    task.build_model = lambda: copy.deepcopy(model)  # the runner builds, then loads the checkpoint
    run_dir = tmp_path_factory.mktemp("masked")
    for ck in ("best", "last"):
        torch.save(model.state_dict(), run_dir / f"{ck}.pt")
    return r, task, model, run_dir


def test_model_checks_flag_zero_gradients_and_large_eps(masked):
    r, task, model, _ = masked
    _, _, test = task.loaders(359, torch.Generator().manual_seed(0), 359)
    found = {c.name: c for c in model_checks(task, model, test, device="cpu", generator=torch.Generator().manual_seed(0))}
    assert found["deterministic"].passed
    assert not found["gradient_nonzero"].passed, found["gradient_nonzero"].detail
    assert not found["large_eps_reaches_zero"].passed, found["large_eps_reaches_zero"].detail


@pytest.mark.slow
def test_runner_escalates_to_square_and_it_breaks_the_masked_model(masked, tmp_path):
    r, task, _, run_dir = masked
    results, flags, checks = Runner(tmp_path, registry=REG).evaluate(r, task, run_dir, ("best",))
    acc = {x.attack: x.value for x in results if x.metric == "accuracy"}
    failed = {c.name for c in checks if not c.passed}
    assert {"gradient_nonzero", "large_eps_reaches_zero"} <= failed
    assert ESCALATED in acc, "no escalated attack was run"
    assert acc["clean"] > 0.8
    assert acc["pgd-5"] > 0.5  # the gradient attack is fooled by the masking...
    assert acc[ESCALATED] < acc["pgd-5"] - 0.3  # ...the gradient-free one is not
    assert "whitebox_not_above_blackbox" in failed


def test_killed_evaluation_resumes_and_never_mixes_configurations(masked, tmp_path, monkeypatch):
    """eval-partial.pt keeps finished (checkpoint, attack) results; a rerun reuses them only when
    the attack's configuration is the same."""
    import dataclasses

    from natbench.runner import PARTIAL

    r, task, _, run_dir = masked
    (run_dir / PARTIAL).unlink(missing_ok=True)  # another test evaluated these checkpoints
    calls = []
    real = type(task).evaluate

    def counting(self, model, loader, attack=None, **kw):
        calls.append(getattr(attack, "name", "clean"))
        if len(calls) == 3 and not getattr(self, "_crashed", False):
            self._crashed = True
            raise KeyboardInterrupt
        return real(self, model, loader, attack, **kw)

    monkeypatch.setattr(type(task), "evaluate", counting)
    runner = Runner(tmp_path, registry=REG)
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate(r, task, run_dir, ("best",))
    assert (run_dir / PARTIAL).exists()
    calls.clear()
    resumed = runner.evaluate(r, task, run_dir, ("best",))
    assert calls[:1] == ["pgd"], calls  # clean and fgsm came from the partial file
    monkeypatch.setattr(type(task), "evaluate", real)
    (run_dir / PARTIAL).unlink()
    fresh = Runner(tmp_path, registry=REG).evaluate(r, task, run_dir, ("best",))
    key = lambda rows: sorted((x.attack, x.metric, x.value) for x in rows)  # noqa: E731
    assert key(resumed[0]) == key(fresh[0])
    # the same attack id with another configuration is evaluated again, not reused
    changed = dataclasses.replace(r.suite.attacks[1], params={"steps": 2})
    r2 = dataclasses.replace(r, suite=dataclasses.replace(r.suite, attacks=(r.suite.attacks[0], changed)))
    monkeypatch.setattr(type(task), "evaluate", counting)
    calls.clear()
    Runner(tmp_path, registry=REG).evaluate(r2, task, run_dir, ("best",))
    assert "pgd" in calls
    (run_dir / PARTIAL).unlink()
