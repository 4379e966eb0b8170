"""The transfer attack (natbench.attacks.transfer): it attacks the surrogate only; the suite checks refuse
bad surrogates and objectives; end to end, the surrogate is trained as a recorded dependency run (slow)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from natbench.attacks.cw import CWInf
from natbench.attacks.pgd import pgd_linf
from natbench.attacks.transfer import Transfer
from natbench.config import from_dict
from natbench.contracts import Labels
from natbench.errors import CompositionError, ConfigError
from natbench.registry import get_registry
from natbench.resolve import check_suite, resolve, task_kind_cls
from natbench.runner import Runner
from natbench.taskspec import SuiteSpec

from helpers import digits_task

REG = get_registry()
EPS = 0.2


def _model(task, seed):
    torch.manual_seed(seed)
    return task.build_model().eval().double()


def test_transfer_attacks_the_surrogate_only():
    _, task = digits_task()
    surrogate = _model(task, 1).float()
    atk = Transfer(Transfer.Params(steps=7))
    assert [d.defense for d in atk.dependencies] == ["pgd-at"] and atk.dependencies[0].sets == ("model.arch=resnet50",)
    atk.bind("surrogate", surrogate)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 1, 8, 8, generator=g), torch.randint(0, 10, (20,), generator=g)
    out = atk(Labels(y, 10), x, eps=EPS, generator=torch.Generator().manual_seed(4))  # nothing of the target
    ref = pgd_linf(lambda z: F.cross_entropy(surrogate(z), y, reduction="none"), x, eps=EPS, steps=7,
                   step_size=EPS / 4, random_start=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out, ref)
    cw = Transfer(Transfer.Params(method="cw", steps=7, arch=""))
    assert cw.dependencies[0].sets == ()
    cw.bind("surrogate", surrogate)
    ref = CWInf(CWInf.Params(steps=7))(lambda z: -torch.clamp(  # the CW margin, kappa 50, by hand
        surrogate(z).gather(1, y.view(-1, 1)).squeeze(1)
        - surrogate(z).masked_fill(F.one_hot(y, 10).bool(), -1e4).max(1).values + 50, min=0),
        x, eps=EPS, generator=torch.Generator().manual_seed(4))
    assert torch.equal(cw(Labels(y, 10), x, eps=EPS, generator=torch.Generator().manual_seed(4)), ref)
    assert Transfer.black_box and Transfer.objective_kind == "labels"
    with pytest.raises(RuntimeError, match="no surrogate"):
        Transfer()(Labels(y, 10), x, eps=EPS)


def test_suite_checks_refuse_bad_surrogates_and_objectives():
    r, _ = digits_task("pgd-at")
    kind = task_kind_cls(REG, r.spec)

    def suite(*attacks):
        return from_dict(SuiteSpec, {"suite": "t", "description": "t", "attacks": list(attacks)}, "suite")

    check_suite(REG, suite({"id": "a", "attack": "adaptive"}, {"id": "t", "attack": "transfer"}), r.plan, kind, r.spec)
    with pytest.raises(CompositionError, match="Unknown defense 'pgd-ta'"):
        check_suite(REG, suite({"id": "t", "attack": "transfer", "params": {"surrogate": "pgd-ta"}}), r.plan, kind, r.spec)
    with pytest.raises(ConfigError, match="not offered"):
        check_suite(REG, suite({"id": "t", "attack": "pgd", "objective": "nonsense"}), r.plan, kind, r.spec)
    for name in ("paper-table5", "paper-table6", "blackbox"):
        resolve(REG, "digits", "nat", suite=name)  # the named suites validate


@pytest.mark.slow
def test_nat_run_with_adaptive_and_transfer_attacks_end_to_end(tmp_path):
    """natbench run: the adaptive attack gets NAT's objective with the adversary bound; the transfer
    surrogate (pgd-at, same architecture) is trained as a recorded dependency run, whose own
    evaluation transfers from itself."""
    suite = {"suite": "t", "description": "t", "attacks": [
        {"id": "pgd-5", "attack": "pgd", "params": {"steps": 5}},
        {"id": "adaptive-5", "attack": "adaptive", "params": {"steps": 5}},
        {"id": "transfer-5", "attack": "transfer", "params": {"steps": 5, "arch": ""}}]}
    r = resolve(REG, "digits", "nat", profile="quick", sets=["training.epochs=1"], suite="smoke")
    spec = from_dict(SuiteSpec, suite, "suite")
    r = r.with_suite(spec)  # as --suite would (the stored config carries the suite)
    runner = Runner(tmp_path, registry=REG)
    runner.run(r)
    res = runner.store.results("digits")
    acc = res[(res.metric == "accuracy") & (res.checkpoint == "best")].pivot(index="defense", columns="attack", values="value")
    assert set(acc.index) == {"vanilla", "pgd-at", "pgd-at+nat"}  # NAT's adversary and the surrogate are runs
    nat = acc.loc["pgd-at+nat"]
    assert 0 <= nat["adaptive-5"] <= nat["clean"] and 0 <= nat["transfer-5"] <= nat["clean"]
    # the transfer attack on the surrogate itself is a white-box PGD-5 on it (same model, same budget)
    assert abs(acc.loc["pgd-at", "transfer-5"] - acc.loc["pgd-at", "pgd-5"]) <= 0.03
