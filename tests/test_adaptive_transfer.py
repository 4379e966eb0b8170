"""Adaptive attacks (the defense's own training objective), transfer attacks, escalations, and the
evaluation plumbing around them (out-of-memory splitting, bf16 refusal on CPU)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from natbench.attacks.adaptive import Adaptive
from natbench.attacks.apgd import APGDCE
from natbench.attacks.cw import CWInf
from natbench.attacks.pgd import PGD, pgd_linf
from natbench.attacks.transfer import Transfer
from natbench.checks import ESCALATIONS, escalations
from natbench.compose import Composite
from natbench.config import from_dict
from natbench.contracts import Batch, Labels, LogitsObjective
from natbench.errors import CompositionError, ConfigError
from natbench.registry import get_registry
from natbench.resolve import check_suite, resolve, task_kind_cls
from natbench.runner import Runner
from natbench.taskspec import SuiteSpec

REG = get_registry()
EPS = 0.2


def _task(defense="vanilla", **kw):
    r = resolve(REG, "digits", defense, **kw)
    return r, task_kind_cls(REG, r.spec)(r.spec, None)


def _model(task, seed):
    torch.manual_seed(seed)
    return task.build_model().eval().double()


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g))


def _composite(defense, task, adversary=None):
    r = resolve(REG, "digits", defense)
    c = Composite.build(r.plan, r.params)
    for comp, dep in c.dependencies():
        comp.bind(dep.role, adversary)
    return c


# --------------------------------------------------------------------------- the defense objective
def test_nat_objective_is_eq14_and_differentiates_through_the_adversary():
    _, task = _task()
    target, adversary = _model(task, 0), _model(task, 1)
    c = _composite("nat", task, adversary)
    nat = c.regularizers[0].params
    b = _batch()
    x_adv = (b.x + 0.1 * torch.rand_like(b.x)).clamp(0, 1).requires_grad_(True)
    obj = c.adaptive_objective(target, b, task)
    loss = obj(x_adv)
    zt, za = target(x_adv), adversary(x_adv)
    pt, pa = F.softmax(zt / nat.tau, 1), F.softmax(za / nat.tau, 1)
    kl = (pt * (pt.log() - pa.log())).sum(1)  # KL(p_t || p_a) per sample, by hand
    expected = F.cross_entropy(zt, b.y, reduction="none") - nat.omega * nat.tau ** 2 * kl  # Eq. 14 (pgd-at's CE)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(loss.sum(), x_adv)
    (g_ref,) = torch.autograd.grad(expected.sum(), x_adv, retain_graph=True)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    frozen = F.cross_entropy(zt, b.y, reduction="none") - nat.omega * nat.tau ** 2 * (pt * (pt.log() - pa.detach().log())).sum(1)
    (g_frozen,) = torch.autograd.grad(frozen.sum(), x_adv)
    assert not torch.allclose(g, g_frozen), "the adversary's dependence on x' must be differentiated"
    assert all(not p.requires_grad for p in adversary.parameters())
    # loss_logits on a subset of rows: the same numbers as the full batch's rows
    idx = torch.tensor([3, 0, 7])
    sub, z = obj.loss_logits(x_adv.detach()[idx], idx)
    torch.testing.assert_close(sub, loss.detach()[idx])
    torch.testing.assert_close(z, target(x_adv.detach()[idx]))


@pytest.mark.parametrize("defense", ["pgd-at", "fast-at", "free-at", "trades", "mart"])
def test_adaptive_loss_averages_to_the_training_loss(defense):
    """For bases whose loss is a batch mean over per-sample terms, the mean of the adaptive
    objective at x' is exactly the training loss the defense computes with x_adv = x'."""
    _, task = _task()
    model = _model(task, 0)
    c = _composite(defense, task)
    b = _batch()
    x_adv = (b.x + 0.15 * (2 * torch.rand_like(b.x) - 1)).clamp(0, 1)
    training = c.base.loss(model, b, task, {"x_adv": x_adv, "ce_on": c.base.ce_on}).loss
    torch.testing.assert_close(c.adaptive_objective(model, b, task)(x_adv).mean(), training, rtol=1e-9, atol=1e-12)


def test_vanilla_trades_nuat_and_regularizer_terms_by_hand():
    _, task = _task()
    model, b = _model(task, 0), _batch()
    x_adv = (b.x + 0.1).clamp(0, 1)
    z, za = model(b.x), model(x_adv)
    ce_adv = F.cross_entropy(za, b.y, reduction="none")
    torch.testing.assert_close(_composite("vanilla", task).adaptive_objective(model, b, task)(x_adv), ce_adv)
    kl = (F.softmax(z, 1) * (F.log_softmax(z, 1) - F.log_softmax(za, 1))).sum(1)
    torch.testing.assert_close(_composite("trades", task).adaptive_objective(model, b, task)(x_adv),
                               F.cross_entropy(z, b.y, reduction="none") + 6.0 * kl)
    nuat = _composite("nuat", task)
    lam = nuat.base.params.lam_max
    got = nuat.adaptive_objective(model, b, task)(x_adv)
    one = torch.stack([torch.linalg.matrix_norm((z - za)[i:i + 1], ord="nuc") for i in range(len(b))])  # B = 1
    torch.testing.assert_close(got, F.cross_entropy(z, b.y, reduction="none") + lam * one)
    p = F.softmax(za, 1)
    emr = _composite("pgd-at+emr", task)
    torch.testing.assert_close(emr.adaptive_objective(model, b, task)(x_adv),
                               ce_adv + emr.regularizers[0].params.lam * -(p * p.log()).sum(1))
    nnr = _composite("pgd-at+nnr", task)
    torch.testing.assert_close(nnr.adaptive_objective(model, b, task)(x_adv),
                               ce_adv - nnr.regularizers[0].params.lam * p.norm(dim=1))
    # LASSO (no input) and mixup (couples samples) add nothing; AWP/EMA are weight-level
    for spec in ("pgd-at+lasso", "pgd-at+mixup", "pgd-at+awp", "pgd-at+ema"):
        torch.testing.assert_close(_composite(spec, task).adaptive_objective(model, b, task)(x_adv), ce_adv)


def test_vanilla_plus_nat_treats_the_attacked_input_as_the_clean_one():
    _, task = _task()
    target, adversary = _model(task, 0), _model(task, 1)
    c = _composite("vanilla+nat", task, adversary)
    b = _batch()
    x_adv = (b.x + 0.1).clamp(0, 1)
    nat = c.regularizers[0].params
    zt, za = target(x_adv), adversary(x_adv)
    pt, pa = F.softmax(zt / nat.tau, 1), F.softmax(za / nat.tau, 1)
    expected = F.cross_entropy(zt, b.y, reduction="none") - nat.omega * nat.tau ** 2 * (pt * (pt / pa).log()).sum(1)
    torch.testing.assert_close(c.adaptive_objective(target, b, task)(x_adv), expected)


def test_every_base_defense_defines_its_adaptive_objective():
    for name in REG.names("defenses"):
        assert callable(getattr(REG.load("defenses", name), "adaptive_loss", None)), name


# --------------------------------------------------------------------------- the adaptive attack
def test_adaptive_apgd_on_a_vanilla_model_is_apgd_ce_bit_for_bit():
    _, task = _task()
    model = _model(task, 0).float()
    g = torch.Generator().manual_seed(3)
    b = Batch(torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g))
    with torch.no_grad():
        b.y[:30] = model(b.x[:30]).argmax(1)  # most points start correct
    obj = _composite("vanilla", task).adaptive_objective(model, b, task)
    ours = Adaptive(Adaptive.Params(steps=10))(obj, b.x, eps=0.1, generator=torch.Generator().manual_seed(0))
    ref = APGDCE(APGDCE.Params(steps=10))(LogitsObjective(model, b.y, 10), b.x, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ours, ref)
    pgd = Adaptive(Adaptive.Params(method="pgd", steps=5))(obj, b.x, eps=0.1, generator=torch.Generator().manual_seed(1))
    ref = PGD(PGD.Params(steps=5))(task.objective(model, b, "ce"), b.x, eps=0.1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pgd, ref)


def test_adaptive_needs_a_defense_objective():
    _, task = _task()
    model, b = _model(task, 0).float(), _batch().x.float()
    with pytest.raises(ConfigError, match="objective kind 'defense'"):
        Adaptive()(task.objective(model, Batch(b, torch.zeros(len(b), dtype=torch.long)), "ce"), b, eps=0.1)
    with pytest.raises(ConfigError):
        Adaptive(Adaptive.Params(method="fgsm"))


# --------------------------------------------------------------------------- transfer
def test_transfer_attacks_the_surrogate_only():
    _, task = _task()
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
    r, _ = _task("pgd-at")
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
    from natbench.config import to_dict

    spec = from_dict(SuiteSpec, suite, "suite")
    r = dataclasses.replace(r, suite=spec, config={**r.config, "suite": to_dict(spec)})  # as --suite would
    runner = Runner(tmp_path, registry=REG)
    runner.run(r)
    res = runner.store.results("digits")
    acc = res[(res.metric == "accuracy") & (res.checkpoint == "best")].pivot(index="defense", columns="attack", values="value")
    assert set(acc.index) == {"vanilla", "pgd-at", "pgd-at+nat"}  # NAT's adversary and the surrogate are runs
    nat = acc.loc["pgd-at+nat"]
    assert 0 <= nat["adaptive-5"] <= nat["clean"] and 0 <= nat["transfer-5"] <= nat["clean"]
    # the transfer attack on the surrogate itself is a white-box PGD-5 on it (same model, same budget)
    assert abs(acc.loc["pgd-at", "transfer-5"] - acc.loc["pgd-at", "pgd-5"]) <= 0.03


# --------------------------------------------------------------------------- escalations
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

    r, task = _task("vanilla", profile="quick", suite="smoke")
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

    r, task = _task("pgd-at", profile="quick", sets=["training.epochs=2"], suite="smoke")
    square = from_dict(SuiteSpec, {"suite": "t", "description": "t", "attacks": [
        {"id": "pgd-5", "attack": "pgd", "params": {"steps": 5}}, {"id": "square", "attack": "square", "params": {"n_queries": 300}}]}, "s")
    r = dataclasses.replace(r, suite=square)
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


# --------------------------------------------------------------------------- evaluation plumbing
def test_out_of_memory_batches_are_split_and_results_unchanged(monkeypatch):
    from natbench.attacks.fgsm import FGSM

    _, task = _task()
    torch.manual_seed(0)
    model = task.build_model().eval()
    _, _, test = task.loaders(120, torch.Generator().manual_seed(0), 120)
    full = task.evaluate(model, test, FGSM())
    real = FGSM.__call__

    def picky(self, objective, x, **kw):
        if len(x) > 50:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, objective, x, **kw)

    monkeypatch.setattr(FGSM, "__call__", picky)
    split = task.evaluate(model, test, FGSM())
    assert torch.equal(split.correct, full.correct) and split.metrics == full.metrics
    assert task.max_eval_batch == 30  # 120 -> 60 -> 30, then kept for later batches


def test_bf16_evaluation_needs_cuda(tmp_path):
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Runner(tmp_path, registry=REG, eval_bf16=True)


@pytest.mark.gpu
def test_bf16_evaluation_is_recorded_with_every_result(tmp_path):
    r, task = _task("vanilla", profile="quick", sets=["training.epochs=1"], suite="smoke")
    runner = Runner(tmp_path, device=torch.device("cuda"), registry=REG, eval_bf16=True)
    run_id = runner.run(r)
    res = runner.store.results("digits")
    res = res[res.run_id == run_id]
    assert set(res[res.metric == "bf16_autocast"].attack) == {"clean", "fgsm", "pgd-5"}
