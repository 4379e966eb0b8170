"""natbench.attacks against torchattacks (PGD, FGSM) and hand computations (CW-inf), and the invariants every
attack keeps (FGSM, PGD, CW-inf; Square, FAB-T, GAMA-PGD)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

torchattacks = pytest.importorskip("torchattacks")

from natbench.attacks._base import cw_margin_loss, project_linf, uniform_start  # noqa: E402
from natbench.attacks.cw import CWInf  # noqa: E402
from natbench.attacks.fab import FABT  # noqa: E402
from natbench.attacks.fgsm import FGSM  # noqa: E402
from natbench.attacks.gama import GAMAPGD  # noqa: E402
from natbench.attacks.pgd import PGD  # noqa: E402
from natbench.attacks.square import Square  # noqa: E402
from natbench.contracts import Attack  # noqa: E402
from natbench.errors import ConfigError  # noqa: E402

from helpers import Logits, check_ball, digits_like, fooled, spy  # noqa: E402


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    ).eval()


def data(n: int, seed: int = 1, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1]; labels = the model's own predictions (clean accuracy 100%) or random."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    if model is None:
        return x, torch.randint(0, 10, (n,), generator=g)
    with torch.no_grad():
        return x, model(x).argmax(1)


def ce(model: nn.Module, y: torch.Tensor):
    return lambda z: F.cross_entropy(model(z), y, reduction="none")


# --------------------------------------------------------------------------- PGD vs torchattacks


@pytest.mark.parametrize("make_model", [mlp, convnet])
@pytest.mark.parametrize("eps,steps", [(8 / 255, 10), (0.1, 7)])
def test_pgd_no_random_start_matches_torchattacks(make_model, eps, steps):
    model = make_model()
    x, y = data(64)
    alpha = eps / 4
    ours = PGD(PGD.Params(steps=steps, step_size=alpha, random_start=False))(ce(model, y), x, eps=eps)
    ref = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    assert (ours - ref).abs().max().item() < 1e-6


def test_pgd_random_start_same_global_seed_matches_torchattacks():
    # generator=None draws from the global RNG exactly as torchattacks does (uniform_(-eps, eps)).
    model, eps = mlp(), 8 / 255
    x, y = data(64)
    torch.manual_seed(123)
    ours = PGD(PGD.Params(steps=5))(ce(model, y), x, eps=eps)
    torch.manual_seed(123)
    ref = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=5, random_start=True)(x, y)
    assert (ours - ref).abs().max().item() < 1e-6


def test_pgd_random_start_success_agrees_with_torchattacks():
    model, eps, steps = mlp(), 0.02, 20
    x, y = data(500, model=model)
    ours = PGD(PGD.Params(steps=steps))(ce(model, y), x, eps=eps, generator=torch.Generator().manual_seed(100))
    torch.manual_seed(200)  # different noise from ours
    ref = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)(x, y)
    f_ours, f_ref = fooled(model, ours, y), fooled(model, ref, y)
    assert 0.1 < f_ours.float().mean().item() < 0.9  # the attack matters, but not everywhere
    assert (f_ours != f_ref).float().mean().item() <= 1 / 100


def test_generator_reproducible_and_global_rng_untouched():
    model, eps = mlp(), 8 / 255
    x, y = data(32)
    atk = PGD(PGD.Params(steps=3))
    state = torch.get_rng_state()
    a = atk(ce(model, y), x, eps=eps, generator=torch.Generator().manual_seed(7))
    b = atk(ce(model, y), x, eps=eps, generator=torch.Generator().manual_seed(7))
    c = atk(ce(model, y), x, eps=eps, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)
    ta = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=3, random_start=True)
    torch.manual_seed(7)
    r1 = ta(x, y)
    torch.manual_seed(7)
    assert torch.equal(r1, ta(x, y))


def test_restarts_keep_highest_final_loss_per_sample():
    model, eps = mlp(), 0.05
    x, y = data(64)
    obj = ce(model, y)
    best = PGD(PGD.Params(steps=4, restarts=3))(obj, x, eps=eps, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same noise, one restart at a time
    runs = torch.stack([PGD(PGD.Params(steps=4))(obj, x, eps=eps, generator=g) for _ in range(3)])
    with torch.no_grad():
        losses = torch.stack([obj(r) for r in runs])
    pick = losses.argmax(0)  # first maximum on ties, as the attack keeps the earlier restart
    assert torch.equal(best, runs[pick, torch.arange(len(x))])
    with torch.no_grad():
        assert (obj(best) >= losses.max(0).values - 1e-6).all()


# --------------------------------------------------------------------------- FGSM


@pytest.mark.parametrize("eps", [8 / 255, 0.1])
def test_fgsm_matches_torchattacks(eps):
    model = convnet()
    x, y = data(64)
    ours = FGSM()(ce(model, y), x, eps=eps)
    ref = torchattacks.FGSM(model, eps=eps)(x, y)
    assert torch.equal(ours, ref)


# --------------------------------------------------------------------------- CW-inf


def test_cw_margin_loss_hand_values():
    logits = torch.tensor([[1.0, 2.0, 3.0], [5.0, 1.0, 0.0]])
    y = torch.tensor([2, 1])
    # row 0: z_y = 3, max other = 2 -> margin 1; row 1: z_y = 1, max other = 5 -> margin -4
    torch.testing.assert_close(cw_margin_loss(logits, y), torch.tensor([-51.0, -46.0]))
    torch.testing.assert_close(cw_margin_loss(logits, y, kappa=0.0), torch.tensor([-1.0, 0.0]))  # clamp
    torch.testing.assert_close(cw_margin_loss(logits, y, kappa=2.0), torch.tensor([-3.0, 0.0]))
    torch.testing.assert_close(cw_margin_loss(logits, y, kappa=5.0), torch.tensor([-6.0, -1.0]))
    # the true class never counts as "other", even when it is the only large logit
    assert cw_margin_loss(torch.tensor([[9.0, -1.0, -2.0]]), torch.tensor([0]), kappa=0.0).item() == -10.0


def test_cw_inf_one_step_is_hand_computed_signed_step():
    torch.manual_seed(0)
    lin = nn.Linear(64, 10)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x, y = data(32)
    eps = 0.05
    alpha = eps / 4  # default step
    w = lin.weight.detach()
    with torch.no_grad():
        z = model(x)
    other = z.clone()
    other[torch.arange(len(y)), y] = float("-inf")
    j = other.argmax(1)
    # kappa = 50 keeps the hinge active: d margin / dx = -(w_y - w_j)
    expected = torch.clamp(x + alpha * torch.sign(w[j] - w[y]).view_as(x), 0, 1)
    atk = CWInf(CWInf.Params(steps=1, random_start=False))
    out = atk(lambda t: cw_margin_loss(model(t), y), x, eps=eps)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # kappa = 0: a sample already misclassified sits on the flat part of the hinge and does not move
    out0 = atk(lambda t: cw_margin_loss(model(t), y, kappa=0.0), x, eps=eps)
    flat = z.gather(1, y.view(-1, 1)).squeeze(1) < other.max(1).values
    assert flat.any() and (~flat).any()
    assert torch.equal(out0[flat], x[flat])
    torch.testing.assert_close(out0[~flat], expected[~flat], atol=1e-6, rtol=0)


def test_cw_inf_defaults():
    p = CWInf().params
    assert (p.steps, p.step_size, p.random_start, p.restarts) == (30, None, True, 1)
    assert CWInf.name == "cw-inf" and CWInf.objective_kind == "cw"
    assert PGD().params.steps == 10 and PGD.objective_kind == "ce" and FGSM().params.random_start is False


# --------------------------------------------------------------------------- invariants


def bn_dropout_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10)
    )


ATTACKS = [
    FGSM(),
    FGSM(FGSM.Params(random_start=True)),
    PGD(PGD.Params(steps=3)),
    PGD(PGD.Params(steps=2, restarts=2)),
    PGD(PGD.Params(steps=2, step_size=0.5, random_start=False)),  # step > eps: projection matters
    CWInf(CWInf.Params(steps=3)),
]


@pytest.mark.parametrize("atk", ATTACKS, ids=lambda a: f"{a.name}-{a.params}")
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("eps", [0.0, 8 / 255, 0.3])
def test_invariants(atk, training, eps):
    assert isinstance(atk, Attack)
    model = bn_dropout_net().train(training)
    x, y = data(16)
    if atk.objective_kind == "cw":
        obj = lambda z: cw_margin_loss(model(z), y)  # noqa: E731
    else:
        obj = ce(model, y)
    x_in = x.clone().requires_grad_(True)  # an input that is part of a graph must not leak into x_adv
    with torch.no_grad():  # evaluation loops call attacks under no_grad
        out = atk(obj, x_in, eps=eps, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert (out - x).abs().max().item() <= eps + 1e-6
    assert out.min().item() >= 0 and out.max().item() <= 1
    assert all(m.training == training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert x_in.grad is None


@pytest.mark.parametrize("cls", [FGSM, PGD, CWInf])
@pytest.mark.parametrize("eps", [-1e-3, float("nan")])
def test_bad_eps_raises_config_error(cls, eps):
    x, y = data(4)
    with pytest.raises(ConfigError):
        cls()(ce(mlp(), y), x, eps=eps)


def test_bad_params_raise_config_error():
    with pytest.raises(ConfigError):
        PGD(PGD.Params(restarts=0))
    with pytest.raises(ConfigError):
        PGD(PGD.Params(steps=-1))
    with pytest.raises(ConfigError):
        FGSM(PGD.Params())  # wrong Params class


def test_helpers():
    x = torch.tensor([0.0, 0.5, 1.0])
    projected = project_linf(torch.tensor([-1.0, 0.9, 0.95]), x, 0.1)
    torch.testing.assert_close(projected, torch.tensor([0.0, 0.6, 0.95]))
    start = uniform_start(x.expand(1000, 3), 0.1, torch.Generator().manual_seed(0))
    assert ((start - x).abs() <= 0.1 + 1e-7).all() and start.min() >= 0 and start.max() <= 1


def test_logits_objective_exposes_labels_and_class_count():
    from natbench.contracts import Batch, LogitsObjective
    from natbench.registry import get_registry
    from natbench.resolve import resolve, task_kind_cls

    reg = get_registry()
    r = resolve(reg, "digits", "vanilla")
    task = task_kind_cls(reg, r.spec)(r.spec, None)
    model = task.build_model().eval()
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    obj = task.objective(model, Batch(x, y), "logits")
    assert isinstance(obj, LogitsObjective) and obj.num_classes == 10 and torch.equal(obj.y, y)
    z = obj(x)
    assert z.shape == (4, 10) and torch.allclose(z, model(x))
    (g,) = torch.autograd.grad(z.sum(), x)
    assert g.abs().sum() > 0


# --------------------------------------------------------------------------- every registered attack
def _registered_attacks():
    from natbench.registry import get_registry

    reg = get_registry()  # re-id metric attacks have the same invariants tested in test_reid_attacks.py
    return [(n, reg.load("attacks", n)) for n in reg.names("attacks")
            if (not reg.entry("attacks", n).tasks or "classification" in reg.entry("attacks", n).tasks)
            and getattr(reg.load("attacks", n), "threat", None) != "corruption"]  # not in an eps-ball: test_corruption_suite.py


def _fast(cls):
    """Default Params with the iteration budgets cut (the invariants do not depend on them)."""
    import dataclasses

    cuts = {"steps": 5, "n_iter": 5, "n_queries": 40, "eot_iter": 2}
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    return cls(cls.Params(**{k: v for k, v in cuts.items() if k in fields
                             and not (k == "eot_iter" and getattr(cls.Params(), k) == 1)}))


SLOW_ATTACKS = {"autoattack-original"}  # the authors' package at its own budget: a minute or more on CPU


@pytest.mark.parametrize("name,cls", [pytest.param(n, c, id=n, marks=[pytest.mark.slow] if n in SLOW_ATTACKS else [])
                                      for n, c in _registered_attacks()])
@pytest.mark.parametrize("training", [False, True])
def test_every_attack_stays_in_the_ball_keeps_the_mode_and_is_reproducible(name, cls, training):
    from natbench.contracts import Batch
    from natbench.registry import get_registry
    from natbench.resolve import resolve, task_kind_cls

    reg = get_registry()
    r = resolve(reg, "digits", "vanilla")
    task = task_kind_cls(reg, r.spec)(r.spec, None)
    torch.manual_seed(0)
    model = task.build_model().train(training)
    x, y = data(12)
    eps = 0.1
    atk = _fast(cls)
    for dep in getattr(atk, "dependencies", ()):  # a transfer surrogate: another model of the task
        torch.manual_seed(1)
        atk.bind(dep.role, task.build_model())
    composite = None
    if atk.objective_kind == "defense":  # the adaptive attack: pgd-at+nat's objective, adversary bound
        from natbench.compose import Composite

        rn = resolve(reg, "digits", "nat")
        composite = Composite.build(rn.plan, rn.params)
        torch.manual_seed(2)
        composite.regularizers[0].bind("adversary", task.build_model())
    outs = []
    for _ in range(2):
        if composite is not None:
            obj = composite.adaptive_objective(model, Batch(x, y), task)
        else:
            obj = task.objective(model, Batch(x, y), atk.objective_kind)
        out = atk(obj, x, eps=eps, generator=torch.Generator().manual_seed(5))
        assert model.training is training, f"{name} changed the model's train/eval mode"
        assert out.shape == x.shape and not out.requires_grad
        assert (out - x).abs().max() <= eps + 1e-6, f"{name} left the eps-ball"
        assert out.min() >= 0 and out.max() <= 1, f"{name} left [0, 1]"
        outs.append(out)
    if not training:  # in train mode BatchNorm batch statistics depend on the rows an attack queries
        assert torch.equal(outs[0], outs[1]), f"{name} is not reproducible under a fixed generator"
    # norms (issue 16): a non-empty subset of NORMS; bound to each one it lists, the attack keeps that ball
    from natbench.attacks._base import NORMS, lp_norms, with_norm

    assert cls.norms and set(cls.norms) <= set(NORMS), f"{name}.norms {cls.norms!r} is not a non-empty subset of {NORMS}"
    for norm, eps_n in (("l2", 0.5), ("l1", 2.0)):
        if norm not in cls.norms or training:
            continue
        atk_n = with_norm(_fast(cls), norm, name)
        for dep in getattr(atk_n, "dependencies", ()):
            torch.manual_seed(1)
            atk_n.bind(dep.role, task.build_model())
        obj = composite.adaptive_objective(model, Batch(x, y), task) if composite is not None \
            else task.objective(model, Batch(x, y), atk_n.objective_kind)
        out = atk_n(obj, x, eps=eps_n, generator=torch.Generator().manual_seed(5))
        assert lp_norms((out - x).double(), norm).max() <= eps_n * (1 + 1e-5), f"{name} left the {norm} ball"
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1, f"{name} in {norm} left [0, 1]"


# --------------------------------------------------------------------------- Square, FAB-T, GAMA-PGD
SQUARE_FAB_GAMA = [
    Square(Square.Params(n_queries=40)),
    Square(Square.Params(n_queries=15, restarts=2)),
    FABT(FABT.Params(n_iter=5, n_target_classes=3)),
    FABT(FABT.Params(n_iter=4, n_target_classes=2, restarts=2)),
    GAMAPGD(GAMAPGD.Params(steps=6, milestones=(3, 5), lambda_steps=2)),
    GAMAPGD(GAMAPGD.Params(steps=3, guide="start", restarts=2)),
]

SQUARE_FAB_GAMA_RANDOM = [a for a in SQUARE_FAB_GAMA if not isinstance(a, FABT)]  # FAB-T's random restarts: see below


class TestSquareFabGama:
    """Square, FAB-T and GAMA-PGD keep the invariants of every attack, are reproducible under a generator,
    default to AutoAttack's standard settings and refuse bad input."""

    @pytest.mark.parametrize("atk", SQUARE_FAB_GAMA, ids=lambda a: f"{a.name}-{a.params}")
    @pytest.mark.parametrize("training", [True, False])
    @pytest.mark.parametrize("eps", [0.0, 8 / 255, 0.3])
    def test_invariants(self, atk, training, eps):
        assert isinstance(atk, Attack) and atk.objective_kind == "logits"
        model = spy(training)
        x, y = digits_like(spy(False))
        x_in = x.clone().requires_grad_(True)
        with torch.no_grad():  # evaluation loops call attacks under no_grad
            out = atk(Logits(model, y), x_in, eps=eps, generator=torch.Generator().manual_seed(0))
        check_ball(out, x, eps)
        assert model.calls == [] and all(m.training == training for m in model.modules())
        assert all(p.grad is None for p in model.parameters()) and x_in.grad is None

    @pytest.mark.parametrize("atk", SQUARE_FAB_GAMA, ids=lambda a: f"{a.name}-{a.params}")
    def test_reproducible_under_a_generator_and_global_rng_untouched(self, atk):
        model = spy(False)
        x, y = digits_like(model)
        obj = Logits(model, y)
        eps = 0.1  # FAB-T leaves images robust after its first restart: the second one draws its start
        with torch.no_grad():
            a0 = atk(obj, x, eps=eps, generator=torch.Generator().manual_seed(7))
        state = torch.get_rng_state()
        a = atk(obj, x, eps=eps, generator=torch.Generator().manual_seed(7))
        assert torch.equal(a, a0) and torch.equal(torch.get_rng_state(), state)
        assert not torch.equal(a, x)  # it did something
        if atk in SQUARE_FAB_GAMA_RANDOM:
            c = atk(obj, x, eps=eps, generator=torch.Generator().manual_seed(8))
            assert not torch.equal(a, c)

    def test_defaults_are_autoattack_standard(self):
        assert (Square.name, FABT.name, GAMAPGD.name) == ("square", "fab-t", "gama-pgd")
        assert Square().params == Square.Params(n_queries=5000, p_init=0.8, restarts=1, rescale_schedule=False)
        assert FABT().params == FABT.Params(n_target_classes=9, n_iter=100, restarts=1, alpha_max=0.1, eta=1.05,
                                            beta=0.9)
        assert GAMAPGD().params.guide == "start" and GAMAPGD().params.restarts == 1

    @pytest.mark.parametrize("cls", [Square, FABT, GAMAPGD])
    @pytest.mark.parametrize("eps", [-1e-3, float("nan")])
    def test_bad_eps_raises_config_error(self, cls, eps):
        x, y = digits_like(spy(False), 4)
        with pytest.raises(ConfigError):
            cls()(Logits(spy(False), y), x, eps=eps)

    def test_bad_params_raise_config_error(self):
        for bad in (Square.Params(restarts=0), Square.Params(p_init=0.0), Square.Params(n_queries=-1)):
            with pytest.raises(ConfigError):
                Square(bad)
        for bad in (FABT.Params(n_target_classes=0), FABT.Params(restarts=0), FABT.Params(n_iter=-1)):
            with pytest.raises(ConfigError):
                FABT(bad)
        for bad in (GAMAPGD.Params(guide="adv"), GAMAPGD.Params(restarts=0), GAMAPGD.Params(drop=0.0)):
            with pytest.raises(ConfigError):
                GAMAPGD(bad)
        with pytest.raises(ConfigError):
            Square(FABT.Params())
