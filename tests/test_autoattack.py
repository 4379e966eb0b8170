"""AutoAttack (natbench.attacks.autoattack) against the original cascade (torchattacks' components) and the
authors' package (pyautoattack), and the invariants, reproducibility, defaults and configuration checks of
AutoAttack and its APGD components.

The cross-checks run on conftest's ``digits_at_smallcnn`` at the digits threat model eps = 0.2 on the 359
test images; at matched seeds natbench and the references run the very same random starts, so the
comparison is per sample.
"""
from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

torchattacks = pytest.importorskip("torchattacks")

from natbench.attacks.apgd import APGDCE, APGDDLR, APGDT  # noqa: E402
from natbench.attacks.autoattack import AutoAttack, AutoAttackRand  # noqa: E402
from natbench.contract_check import problems  # noqa: E402
from natbench.contracts import Attack, LogitsObjective  # noqa: E402
from natbench.errors import ConfigError  # noqa: E402
from natbench.registry import Entry, Registry, get_registry  # noqa: E402

from helpers import correct, gen, in_ball, ta_apgd, ta_apgdt

EPS = 0.2  # the digits threat model

pytestmark = pytest.mark.usefixtures("one_thread")

HAVE_FAB_SQUARE = all(importlib.util.find_spec(m) is not None for m in ("natbench.attacks.fab", "natbench.attacks.square"))
NO_FAB_SQUARE = "natbench.attacks.fab / natbench.attacks.square (FAB-T, Square) are not written yet"

NEW_ENTRIES = {  # what natbench/registry.yaml gets for these attacks (added here if it lacks them)
    "apgd-ce": "natbench.attacks.apgd:APGDCE",
    "apgd-dlr": "natbench.attacks.apgd:APGDDLR",
    "apgd-t": "natbench.attacks.apgd:APGDT",
    "autoattack": "natbench.attacks.autoattack:AutoAttack",
    "autoattack-rand": "natbench.attacks.autoattack:AutoAttackRand",
}


def reference_cascade(model, x, y, attacks, bs: int = 250):
    """The original ``run_standard_evaluation``: clean-correct points are robust; each attack runs on
    the still-robust ones in chunks of ``bs`` (each call reseeds, as torchattacks does); a flip is kept."""
    robust = correct(model, x, y)
    x_adv = x.clone()
    for atk in attacks:
        todo = robust.nonzero().squeeze(1)
        for idx in todo.split(bs):
            adv = atk(x[idx], y[idx])
            fooled = ~correct(model, adv, y[idx]) & ((adv - x[idx]).flatten(1).abs().amax(1) <= EPS + 1e-6)
            robust[idx[fooled]] = False
            x_adv[idx[fooled]] = adv[fooled]
    return robust, x_adv


def test_autoattack_apgd_components_match_the_original_cascade(digits_at_smallcnn):
    # APGD-CE then APGD-T on the points still robust (FAB-T and Square: the slow test below)
    model, x, y = digits_at_smallcnn
    x, y = x[:60], y[:60]
    aa = AutoAttack(AutoAttack.Params(attacks=("apgd-ce", "apgd-t"), bs=25))  # 2+ chunks: reseeding per chunk
    ours = aa(LogitsObjective(model, y, 10), x, eps=EPS, generator=gen(3))
    robust_ref, ref = reference_cascade(model, x, y, [ta_apgd(model, "ce", 3), ta_apgdt(model, 3)], bs=25)
    ok = correct(model, ours, y)
    in_ball(ours, x)
    assert abs(ok.float().mean().item() - robust_ref.float().mean().item()) <= 0.005
    assert torch.equal(ok, robust_ref)
    # AutoAttack returns the clean input wherever it failed
    assert torch.equal(ours[ok], x[ok])
    assert 0 < ok.sum().item() < correct(model, x, y).sum().item()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FAB_SQUARE, reason=NO_FAB_SQUARE)
def test_autoattack_standard_matches_the_original_cascade(digits_at_smallcnn):
    model, x, y = digits_at_smallcnn
    seed = 0
    ours = AutoAttack()(LogitsObjective(model, y, 10), x, eps=EPS, generator=gen(seed))
    ref_attacks = [
        ta_apgd(model, "ce", seed),
        ta_apgdt(model, seed),
        torchattacks.FAB(model, norm="Linf", eps=EPS, steps=100, n_restarts=1, alpha_max=0.1, eta=1.05, beta=0.9,
                         seed=seed, multi_targeted=True, n_classes=10),
        torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=5000, n_restarts=1, p_init=0.8, loss="margin",
                            resc_schedule=False, seed=seed),
    ]
    robust_ref, _ = reference_cascade(model, x, y, ref_attacks)
    in_ball(ours, x)
    ok = correct(model, ours, y)
    assert abs(ok.float().mean().item() - robust_ref.float().mean().item()) <= 0.005


def test_autoattack_rand_matches_the_original_rand_cascade(digits_at_smallcnn):
    # version 'rand': APGD-CE then APGD-DLR with EOT; few steps and points to stay cheap (EOT 20 = 20x)
    model, x, y = digits_at_smallcnn
    x, y = x[:24], y[:24]
    aa = AutoAttackRand(AutoAttackRand.Params(n_iter=10, early_stop=False))  # x' too: the latest misclassified iterate
    assert aa.params.eot_iter == 20 and aa.params.attacks == ("apgd-ce", "apgd-dlr")
    ours = aa(LogitsObjective(model, y, 10), x, eps=EPS, generator=gen(5))
    robust_ref, ref = reference_cascade(
        model, x, y, [ta_apgd(model, "ce", 5, steps=10, eot_iter=20), ta_apgd(model, "dlr", 5, steps=10, eot_iter=20)]
    )
    assert torch.equal(correct(model, ours, y), robust_ref)
    assert (ours - ref).abs().max().item() < 1e-6


def original_flags(model, x, y, seed, attacks=None):
    pyaa = pytest.importorskip("pyautoattack")
    import logging

    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    kw = {"version": "standard"} if attacks is None else {"version": "custom", "attacks": list(attacks)}
    aa = pyaa.AutoAttack(model, norm="Linf", eps=EPS, seed=seed, device="cpu", **kw)
    aa.apgd.n_restarts = 1  # what version standard sets (custom keeps the constructor's 5)
    with torch.random.fork_rng():
        adv, _ = aa.run_standard_evaluation(x, y, batch_size=250)
    return correct(model, adv, y)


@pytest.mark.slow  # the authors' package (pyautoattack) as the oracle: 18 s under load
def test_autoattack_apgd_components_equal_the_original_package_per_sample(digits_at_smallcnn):
    # the authors' pyautoattack, version custom [apgd-ce, apgd-t] (the cheap half of standard)
    model, x, y = digits_at_smallcnn
    x, y = x[:50], y[:50]
    ours = AutoAttack(AutoAttack.Params(attacks=("apgd-ce", "apgd-t")))(LogitsObjective(model, y, 10), x, eps=EPS,
                                                                         generator=gen(0))
    ok = correct(model, ours, y)
    assert torch.equal(ok, original_flags(model, x, y, 0, ["apgd-ce", "apgd-t"]))
    assert 0 < ok.sum().item() < correct(model, x, y).sum().item()


@pytest.mark.slow
@pytest.mark.parametrize("early_stop", [True, False])
def test_autoattack_standard_equals_the_original_package_per_sample(digits_at_smallcnn, early_stop):
    # the oracle: natbench's autoattack and AutoAttack(version="standard", seed=0) on all 359
    # test images (measured: 110 robust in both, 0 flags differ; about 35 s each on one core)
    model, x, y = digits_at_smallcnn
    aa = AutoAttack(AutoAttack.Params(early_stop=early_stop))
    ok = correct(model, aa(LogitsObjective(model, y, 10), x, eps=EPS, generator=gen(0)), y)
    assert torch.equal(ok, original_flags(model, x, y, 0))


def test_autoattack_original_plugin_runs_the_package_and_restores_the_global_rng():
    pytest.importorskip("pyautoattack")
    cls = get_registry().load("attacks", "autoattack-original")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.rand(12, 1, 4, 4, generator=gen(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    state = torch.get_rng_state()
    adv = cls()(LogitsObjective(model, y, 10), x, eps=0.3, generator=gen(0))
    assert torch.equal(torch.get_rng_state(), state)
    in_ball(adv, x, 0.3)
    ours = AutoAttack()(LogitsObjective(model, y, 10), x, eps=0.3, generator=gen(0))
    assert torch.equal(correct(model, adv, y), correct(model, ours, y))
    with pytest.raises(ConfigError, match="version"):
        cls(cls.Params(version="fast"))


def test_square_check_counts_the_points_square_still_fools():
    # a fake cascade: "apgd-ce" fools nothing, "square" fools the first k points (logits = the input)
    y = torch.arange(10) % 4
    x = torch.nn.functional.one_hot(y, 4).float() * 0.6 + 0.2

    def flips(k):
        def attack(objective, xs, *, eps, generator=None):
            out = xs.clone()
            out[:k] = out[:k].flip(1)  # another class wins
            return out
        return attack

    for k, passed in ((0, True), (1, False), (3, False)):
        aa = AutoAttack(AutoAttack.Params(attacks=("apgd-ce", "square")))
        aa.components = [("apgd-ce", flips(0)), ("square", flips(k))]
        aa(LogitsObjective(lambda z: z, y, 4), x, eps=0.5)
        (check,) = aa.take_checks()
        assert check.name == "square_lowered_robust_accuracy" and check.passed is passed
        assert f"Square fooled {k} of 10 points" in check.detail
        assert aa.take_checks() == []  # the counters restart
    aa = AutoAttack(AutoAttack.Params(attacks=("apgd-ce", "apgd-t")))
    assert aa.take_checks() == []


def bn_dropout_net() -> nn.Module:
    torch.manual_seed(0)
    # BatchNorm2d: attacks evaluate subsets of rows, down to a single image (fine for BN over pixels)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
                         nn.Flatten(), nn.Linear(256, 10))


class ModeSpy(nn.Module):
    """Records the train flag of every module at every forward."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.seen = net, set()

    def forward(self, x):
        self.seen.add(tuple(m.training for m in self.net.modules()))
        return self.net(x)


SMALL = [
    APGDCE(APGDCE.Params(steps=5)),
    APGDCE(APGDCE.Params(steps=4, restarts=2, eot_iter=2)),
    APGDDLR(APGDDLR.Params(steps=5)),
    APGDT(APGDT.Params(steps=3, n_target_classes=3)),
    AutoAttack(AutoAttack.Params(attacks=("apgd-ce", "apgd-t"), n_iter=3, n_target_classes=2, bs=5)),
    AutoAttackRand(AutoAttackRand.Params(n_iter=3, eot_iter=2)),
]


@pytest.mark.parametrize("atk", SMALL, ids=lambda a: f"{a.name}-{a.params}")
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_invariants(atk, training, eps):
    assert isinstance(atk, Attack) and atk.objective_kind == "logits"
    net = bn_dropout_net().train(training)
    model = ModeSpy(net)
    g = gen(1)
    x = torch.rand(16, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = net.eval()(x).argmax(1)  # mostly correct, so the attack runs
    net.train(training)
    y[:2] = (y[:2] + 1) % 10
    x_in = x.clone().requires_grad_(True)
    with torch.no_grad():  # evaluation loops call attacks under no_grad
        out = atk(LogitsObjective(model, y, 10), x_in, eps=eps, generator=gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    in_ball(out, x, eps)
    assert model.seen == {tuple([training] * len(list(net.modules())))}
    assert all(m.training == training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    assert x_in.grad is None


@pytest.mark.parametrize("atk", SMALL, ids=lambda a: a.name)
def test_reproducible_and_global_rng_untouched(digits_at_smallcnn, atk):
    model, x, y = digits_at_smallcnn
    x, y = x[:30], y[:30]
    obj = LogitsObjective(model, y, 10)
    state = torch.get_rng_state()
    a = atk(obj, x, eps=EPS, generator=gen(7))
    b = atk(obj, x, eps=EPS, generator=gen(7))
    c = atk(obj, x, eps=EPS, generator=gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_autoattack_reseeds_every_component_from_the_generator_seed(digits_at_smallcnn):
    model, x, y = digits_at_smallcnn
    x, y = x[:30], y[:30]
    obj = LogitsObjective(model, y, 10)
    aa = AutoAttack(AutoAttack.Params(attacks=("apgd-ce", "apgd-t"), n_iter=10, n_target_classes=3))
    g = gen(11)
    torch.rand(5, generator=g)  # an advanced generator: only its seed counts, as the original's self.seed
    out = aa(obj, x, eps=EPS, generator=g)
    assert torch.equal(out, aa(obj, x, eps=EPS, generator=gen(11)))
    # by hand: each component with a fresh generator seeded 11, on the points still robust
    step1 = APGDCE(APGDCE.Params(steps=10))(obj, x, eps=EPS, generator=gen(11))
    robust = correct(model, step1, y) & correct(model, x, y)
    idx = robust.nonzero().squeeze(1)
    step2 = APGDT(APGDT.Params(steps=10, n_target_classes=3))(
        LogitsObjective(model, y[idx], 10), x[idx], eps=EPS, generator=gen(11))
    expected = torch.where(correct(model, step1, y).view(-1, 1, 1, 1), x, step1)
    expected[idx] = torch.where(correct(model, step2, y[idx]).view(-1, 1, 1, 1), x[idx], step2)
    assert torch.equal(out, expected)
    # generator=None: the global RNG's seed, nothing drawn from it
    state = torch.get_rng_state()
    torch.manual_seed(11)
    assert torch.equal(aa(obj, x, eps=EPS), out)
    torch.set_rng_state(state)


def test_defaults_are_the_originals():
    assert APGDCE().params == APGDCE.Params(steps=100, restarts=1, rho=0.75, eot_iter=1)
    assert APGDT().params.n_target_classes == 9 and APGDT().params.steps == 100
    p = AutoAttack.Params()
    assert p.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert (p.n_iter, p.n_target_classes, p.n_queries, p.eot_iter, p.bs) == (100, 9, 5000, 1, 250)
    r = AutoAttackRand.Params()
    assert r.attacks == ("apgd-ce", "apgd-dlr") and r.eot_iter == 20 and r.n_iter == 100
    names = {c.name for c in (APGDCE, APGDDLR, APGDT, AutoAttack, AutoAttackRand)}
    assert names == {"apgd-ce", "apgd-dlr", "apgd-t", "autoattack", "autoattack-rand"}


def test_bad_configuration_raises_config_error():
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ConfigError, match="logits"):  # a plain loss objective: no labels, no logits
        APGDCE()(lambda z: F.cross_entropy(net(z), y, reduction="none"), x, eps=0.1)
    with pytest.raises(ConfigError):
        APGDT()(LogitsObjective(nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), y, 5), x, eps=0.1)  # 9 targets, 5 classes
    with pytest.raises(ConfigError):
        APGDCE()(LogitsObjective(net, y, 10), x, eps=-1.0)
    for bad in (APGDCE.Params(steps=0), APGDCE.Params(restarts=0), APGDCE.Params(rho=0.0), APGDCE.Params(eot_iter=0)):
        with pytest.raises(ConfigError):
            APGDCE(bad)
    with pytest.raises(ConfigError):
        APGDT(APGDT.Params(n_target_classes=0))
    with pytest.raises(ConfigError, match="Did you mean"):
        AutoAttack(AutoAttack.Params(attacks=("apgd-cee",)))
    with pytest.raises(ConfigError):
        AutoAttack(AutoAttack.Params(attacks=()))


def test_contract_check():
    base = get_registry()
    entries = {k: {n: base.entry(k, n) for n in base.names(k)} for k in base.kinds()}
    for name, target in NEW_ENTRIES.items():
        entries["attacks"].setdefault(name, Entry(kind="attacks", name=name, cite="test", target=target))
    reg = Registry(entries)
    for name in NEW_ENTRIES:
        if name == "autoattack" and not HAVE_FAB_SQUARE:
            continue
        assert problems(reg.entry("attacks", name), reg) == [], name
    assert dataclasses.is_dataclass(AutoAttack.Params)


def test_runs_through_the_classification_task(digits_at_smallcnn):
    from natbench.resolve import resolve, task_kind_cls

    reg = get_registry()
    r = resolve(reg, "digits", "vanilla")
    task = task_kind_cls(reg, r.spec)(r.spec, None)
    model = digits_at_smallcnn[0]
    _, _, test = task.loaders(64, gen(0), 90)
    test.x, test.y = test.x[:90], test.y[:90]
    aa = AutoAttack(AutoAttack.Params(attacks=("apgd-ce", "apgd-t"), n_iter=10, n_target_classes=3))
    out = task.evaluate(model, test, aa, objective=aa.objective_kind, eps=EPS, generator=gen(0))
    clean = task.evaluate(model, test, None)
    assert len(out.correct) == 90 and not (out.correct & ~clean.correct).any()
    assert out.metrics["accuracy"] < clean.metrics["accuracy"]
    assert not model.training
