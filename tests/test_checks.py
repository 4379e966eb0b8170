"""The evaluation checks and their escalations (natbench.checks): an attack must stay in the eps-ball, the
suite checks (a paired sign test) flag masking symptoms, each failed check schedules the attack it calls
for; a deliberately gradient-masking model is flagged and the escalated attack brings it down; a randomized
model is evaluated with EOT; a white-box attack weaker than a black-box one escalates to a transfer attack.

The gradient-masking model (conftest's ``masked``) is a digits CNN behind an input quantiser ``round(4x)/4``:
its input gradient is exactly zero everywhere, so gradient attacks stall while the decision function is as
breakable as before.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natbench.checks import ESCALATIONS, AttackIntegrityError, assert_in_ball, escalations, model_checks, suite_checks
from natbench.config import from_dict
from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.runner import ESCALATED, Runner
from natbench.tasks.classification import ClassificationTask
from natbench.taskspec import SuiteSpec

from helpers import digits_task

REG = get_registry()


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


def test_each_failed_check_schedules_the_attack_it_calls_for():
    obj = ("ce", "cw", "logits", "labels")
    steps = {"pgd-10": 10, "pgd-50": 50}
    suite = {"fgsm": "fgsm", "pgd-10": "pgd", "pgd-50": "pgd"}
    ids = lambda failed, s=suite: [e[0] for e in escalations(failed, s, steps, obj)]  # noqa: E731
    assert ids({"gradient_nonzero", "large_eps_reaches_zero"}) == ["escalated-square"]
    restarts = dict((e[0], e[2]) for e in escalations({"more_steps_not_weaker"}, suite, steps, obj))
    assert restarts == {"escalated-restarts": {"restarts": 10, "steps": 50}, "escalated-square": {}}
    assert ids({"deterministic"}) == ["escalated-eot"] and ids({"clean_is_upper_bound"}) == ["escalated-eot"]
    transfer = escalations({"whitebox_not_above_blackbox"}, suite, steps, obj)
    assert transfer == [("escalated-transfer", "transfer", {"surrogate": "vanilla", "arch": "", "steps": 20})]
    assert ids({"gradient_nonzero"}, {**suite, "sq": "square"}) == []  # the suite already runs Square
    assert escalations({"gradient_nonzero", "deterministic"}, suite, steps, ("ce",)) == []  # no logits objective
    assert ids(set()) == []


@pytest.fixture()
def randomized(tmp_path):
    """A digits CNN behind Gaussian input noise in eval mode too: a randomized defense."""
    from torch import nn

    class Noisy(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x + 0.15 * torch.randn_like(x))

    r, task = digits_task("vanilla", profile="quick", suite="smoke")
    _fake_run(task, Noisy, 4, tmp_path)
    return r, task, tmp_path


def _fake_run(task, wrapper, epochs: int, run_dir):
    """Train ``wrapper(task model)`` with plain CE for ``epochs`` and save it as a run's best/last
    checkpoints; the task then builds that wrapped architecture (the runner loads the checkpoints)."""
    import copy

    torch.manual_seed(0)
    model = wrapper(task.build_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(epochs):
        for b in task.loaders(64, torch.Generator().manual_seed(epoch))[0]:
            loss = F.cross_entropy(model(b.x), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    task.build_model = lambda: copy.deepcopy(model)
    run_dir.mkdir(exist_ok=True)
    for ck in ("best", "last"):
        torch.save(model.state_dict(), run_dir / f"{ck}.pt")


@pytest.mark.slow
def test_a_randomized_model_is_flagged_and_evaluated_with_eot(randomized, monkeypatch, tmp_path_factory):
    r, task, run_dir = randomized
    # AutoAttack-rand at a cut budget (the mechanism, not the budget, is under test: 100 x 20 is minutes on CPU)
    monkeypatch.setitem(ESCALATIONS, "deterministic", [("escalated-eot", "autoattack-rand", {"n_iter": 10, "eot_iter": 4})])
    torch.manual_seed(0)
    results, flags, checks = Runner(tmp_path_factory.mktemp("root"), registry=REG).evaluate(r, task, run_dir, ("best",))
    failed = {c.name for c in checks if not c.passed}
    acc = {x.attack: x.value for x in results if x.metric == "accuracy"}
    assert "deterministic" in failed
    assert "escalated-eot" in acc and any(f.attack == "escalated-eot" for f in flags)
    assert acc["escalated-eot"] <= acc["pgd-5"] + 0.02, acc  # EOT is not weaker than the plain gradient attack


@pytest.mark.slow
def test_whitebox_weaker_than_blackbox_escalates_to_a_transfer_attack(tmp_path, monkeypatch):
    """A quantised (zero-gradient) pgd-at 'run' evaluated with Square in its suite: Square beats the
    white-box attacks, so natbench trains (or reuses) a vanilla surrogate and adds a transfer attack."""
    from torch import nn

    class Quantised(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(torch.round(x * 4) / 4)

    r, task = digits_task("pgd-at", profile="quick", sets=["training.epochs=2"], suite="smoke")
    square = from_dict(SuiteSpec, {"suite": "t", "description": "t", "attacks": [
        {"id": "pgd-5", "attack": "pgd", "params": {"steps": 5}}, {"id": "square", "attack": "square", "params": {"n_queries": 300}}]}, "s")
    r = r.with_suite(square)
    run_dir = tmp_path / "run"
    _fake_run(task, Quantised, 6, run_dir)
    monkeypatch.setitem(ESCALATIONS, "gradient_nonzero", [])  # Square is in the suite already
    root = tmp_path / "root"
    results, _, checks = Runner(root, registry=REG).evaluate(r, task, run_dir, ("best",))
    acc = {x.attack: x.value for x in results if x.metric == "accuracy"}
    assert "escalated-transfer" in acc, acc
    assert acc["escalated-transfer"] < acc["pgd-5"] - 0.2, acc  # the transferred examples break it
    from natbench.store import Store

    assert list(Store(root / "natbench.sqlite").runs().defense) == ["vanilla"]  # the surrogate, a recorded run


def test_assert_in_ball():
    x = torch.rand(2, 1, 3, 3)
    assert_in_ball(x, (x + 0.1).clamp(0, 1), 0.1, "ok")
    with pytest.raises(AttackIntegrityError, match="exceeds eps"):
        assert_in_ball(x, (x + 0.2).clamp(0, 1), 0.1, "too far")
    with pytest.raises(AttackIntegrityError, match=r"\[0, 1\]"):
        assert_in_ball(x, x + 0.05 + (1 - x), 0.5 + 1, "range")


def _flags(n_correct: int, n: int = 200, offset: int = 0) -> torch.Tensor:
    f = torch.zeros(n, dtype=torch.bool)
    f[offset: offset + n_correct] = True
    return f


def test_weaker_is_a_paired_sign_test():
    from natbench.checks import weaker

    a = _flags(100)
    assert not weaker(a, a)[0]
    assert not weaker(_flags(100), _flags(100, offset=3))[0]  # 3 vs 3 discordant: noise
    assert not weaker(_flags(100), _flags(103))[0]  # 0 vs 3: stronger is *stronger*, fine
    flagged, detail = weaker(_flags(120), _flags(100))  # 20 vs 0 discordant: 20 > 2*sqrt(20)
    assert flagged and detail == "20 vs 0 discordant samples"
    assert not weaker(_flags(104), _flags(100))[0]  # 4 vs 0: 4 = 2*sqrt(4), not above


def test_suite_checks_flag_masking_symptoms():
    steps = {"pgd-10": 10, "pgd-20": 20}
    healthy = {"clean": _flags(180), "fgsm": _flags(120), "pgd-10": _flags(100), "pgd-20": _flags(98)}
    assert all(c.passed for c in suite_checks(healthy, steps))
    masked = {"clean": _flags(180), "fgsm": _flags(80), "pgd-10": _flags(100), "pgd-20": _flags(130)}
    failed = {c.name for c in suite_checks(masked, steps) if not c.passed}
    assert failed == {"iterative_beats_single_step", "more_steps_not_weaker"}
    above = {c.name for c in suite_checks({"clean": _flags(100), "fgsm": _flags(140)}, {}) if not c.passed}
    assert above == {"clean_is_upper_bound"}


def test_evaluate_rejects_an_attack_that_leaves_the_ball():
    r = resolve(get_registry(), "digits", "vanilla", suite="smoke")
    task = ClassificationTask(r.spec)
    model = task.build_model()
    loader = task.loaders(64, torch.Generator().manual_seed(0), 64)[2]

    class Cheat:
        name = "cheat"

        def __call__(self, objective, x, *, eps, generator=None):
            return (x + 2 * eps).clamp(0, 1)

    with pytest.raises(AttackIntegrityError):
        task.evaluate(model, loader, Cheat())


def test_assert_in_ball_measures_the_threat_models_norm():
    from natbench.checks import AttackIntegrityError, assert_in_ball
    x = torch.full((2, 1, 2, 2), 0.5)
    d = torch.zeros_like(x)
    d[0, 0, 0, 0], d[0, 0, 1, 1] = 0.3, 0.4  # row 0: L-inf 0.4, L2 0.5, L1 0.7
    assert_in_ball(x, x + d, 0.4, "t")
    assert_in_ball(x, x + d, 0.5, "t", norm="l2")
    assert_in_ball(x, x + d, 0.7, "t", norm="l1")
    for eps, norm in ((0.39, "linf"), (0.49, "l2"), (0.69, "l1")):
        with pytest.raises(AttackIntegrityError, match="distance"):
            assert_in_ball(x, x + d, eps, "t", norm=norm)


def test_with_norm_binds_a_supported_norm_and_refuses_the_others():
    from natbench.attacks._base import LinfAttack, lp_norms, with_norm
    from natbench.errors import ConfigError

    class Both(LinfAttack):
        name, norms = "both", ("linf", "l2")

    assert with_norm(Both(), "l2", "suite.a").norm == "l2"
    assert LinfAttack.norm == "linf"  # the class default is untouched
    with pytest.raises(ConfigError, match=r"suite.a: attack 'both' supports the norms linf, l2, not .*'l1'"):
        with_norm(Both(), "l1", "suite.a")
    with pytest.raises(ConfigError, match="unknown threat-model norm 'l3'"):
        with_norm(Both(), "l3", "suite.a")
    t = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    assert lp_norms(t, "linf").tolist() == [4.0, 0.0]
    assert lp_norms(t, "l2").tolist() == [5.0, 0.0]
    assert lp_norms(t, "l1").tolist() == [7.0, 0.0]


def test_escalations_and_the_large_eps_check_run_in_the_threat_models_norm():
    """Issue 16: an escalation is only scheduled when its attack lists the run's norm; the large-eps check
    uses an eps at which any image is reachable in that norm (L2 sqrt(d), L1 d) with PGD in that norm."""
    from types import SimpleNamespace

    from natbench.checks import reach_eps

    class Reg:
        norms = {"square": ("linf",), "pgd": ("linf", "l2"), "transfer": ("linf",), "autoattack-rand": ("linf", "l2")}

        def load(self, kind, name):
            return SimpleNamespace(norms=self.norms[name])

    obj, steps, suite = ("ce", "cw", "logits", "labels"), {"pgd-10": 10}, {"pgd-10": "pgd"}
    failed = {"more_steps_not_weaker", "gradient_nonzero", "deterministic", "whitebox_not_above_blackbox"}
    l2 = [e[0] for e in escalations(failed, suite, steps, obj, "l2", Reg())]
    assert l2 == ["escalated-eot", "escalated-restarts"]  # no Square, no transfer: L-inf only in this registry
    assert len(escalations(failed, suite, steps, obj)) == 4  # L-inf: as before
    x = torch.zeros(3, 1, 8, 8)
    assert (reach_eps("linf", x), reach_eps("l2", x), reach_eps("l1", x)) == (1.0, 8.0, 64.0)
    r, task = digits_task("pgd-at", sets=["threat_model.norm=l2"])
    torch.manual_seed(0)
    model = task.build_model().eval()
    _, _, test = task.loaders(64, torch.Generator().manual_seed(0), 64)
    few = [next(iter(test))]
    found = {c.name: c for c in model_checks(task, model, few, device="cpu", generator=torch.Generator().manual_seed(0))}
    assert "under L2 PGD-20 at eps 8" in found["large_eps_reaches_zero"].detail  # 8 = sqrt(64): the 8x8 box's diameter


def test_the_large_eps_check_in_l1_runs_apgd_ce_in_l1_or_says_why_not():
    import dataclasses
    from types import SimpleNamespace

    r, task = digits_task("vanilla")
    task.threat = dataclasses.replace(task.threat, norm="l1", eps=2.0)
    torch.manual_seed(0)
    model = task.build_model().eval()
    _, _, test = task.loaders(16, torch.Generator().manual_seed(0), 16)
    few = [next(iter(test))]
    found = {c.name: c for c in model_checks(task, model, few, device="cpu", generator=torch.Generator().manual_seed(0))}
    if "l1" in getattr(REG.load("attacks", "apgd-ce"), "norms", ()):
        assert "under L1 APGD-CE-20 at eps 64" in found["large_eps_reaches_zero"].detail  # 64 = d: the 8x8 box's L1 diameter
    none = SimpleNamespace(load=lambda kind, name: SimpleNamespace(norms=("linf",)))
    found = {c.name: c for c in model_checks(task, model, few, device="cpu", registry=none)}
    assert found["large_eps_reaches_zero"].passed and found["large_eps_reaches_zero"].detail.startswith("skipped")
