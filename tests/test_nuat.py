"""NuAT and NuAT2 (natbench.defenses.nuat, nuat2), NuAT2-WA's attack with the EMA model, against hand
computations (float64) on seeded tiny BatchNorm models, and inside ``Composite`` on a digits-shaped model
(1x8x8, 10 classes) and on the digits task."""
from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from natbench.averagers.ema import EMA
from natbench.compose import Composite, check_params, plan
from natbench.contracts import Batch, ThreatModel
from natbench.defenses.nuat import NuAT, bernoulli_start, lam_at, nuclear
from natbench.defenses.nuat2 import NuAT2
from natbench.errors import ConfigError
from natbench.models.small_cnn import SmallCNN
from natbench.registry import get_registry

from helpers import batch8, bn_net64, ema_by_hand, registry_with, sgd_steps, snapshot, train_steps

NEW_ENTRIES = {  # what natbench/registry.yaml gets for these plugins (added here if it lacks them)
    ("defenses", "nuat"): "natbench.defenses.nuat:NuAT",
    ("defenses", "nuat2"): "natbench.defenses.nuat2:NuAT2",
    ("averagers", "ema"): "natbench.averagers.ema:EMA",
}
EPS = 0.1

pytestmark = pytest.mark.usefixtures("one_thread")


class _Task:
    threat = ThreatModel(eps=EPS, train_steps=1, train_step_size=EPS)

    def logits(self, model, batch, x):
        return model(x)


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _start(x, b, seed=7):
    u = torch.rand(x.shape, generator=_gen(seed), dtype=x.dtype)
    return (x + b * torch.sign(0.5 - u)).clamp(0, 1)


def _step(loss, x_cur, x, step=EPS, eps=EPS):
    x_cur = x_cur.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(x_cur), x_cur)
    x_new = (x_cur.detach() + step * g.sign()).clamp(0, 1)
    return (x + (x_new - x).clamp(-eps, eps)).clamp(0, 1)


def _nuc_by_hand(a: torch.Tensor, b: int) -> float:
    return float(np.linalg.svd(a.detach().numpy(), compute_uv=False).sum() / b)


def test_nuclear_term_is_the_sum_of_singular_values_over_b():
    a = torch.randn(4, 5, generator=_gen(1), dtype=torch.float64)
    hand = _nuc_by_hand(a, 4)
    assert nuclear(a, 4).item() == pytest.approx(hand, rel=1e-12)
    assert nuclear(a, 4).item() == pytest.approx(torch.linalg.svdvals(a).sum().item() / 4, rel=1e-12)
    assert nuclear(a, 4).item() == pytest.approx(torch.linalg.matrix_norm(a, ord="nuc").item() / 4, rel=1e-12)
    assert nuclear(a, 4).item() == pytest.approx(torch.norm(a, "nuc").item() / 4, rel=1e-12)  # the reference's call
    u, v = torch.tensor([1.0, 2.0, 2.0, 0.0], dtype=torch.float64), torch.tensor([3.0, 0, 4.0, 0, 0], dtype=torch.float64)
    assert nuclear(torch.outer(u, v), 4).item() == pytest.approx(3.0 * 5.0 / 4, rel=1e-12)  # rank 1: |u| |v| / B
    assert nuclear(a, 4).item() > torch.linalg.matrix_norm(a).item() / 4  # not the Frobenius norm


def test_nuclear_term_accepts_bfloat16_logits():
    """Under the runner's CUDA autocast the logits are bf16; SVD has no bf16 kernel, so it runs in float32."""
    a = torch.randn(6, 10, generator=_gen(2)).to(torch.bfloat16).requires_grad_(True)
    n = nuclear(a, 6)
    assert n.dtype == torch.float32
    assert n.item() == pytest.approx(_nuc_by_hand(a.detach().float(), 6), rel=1e-5)
    n.backward()
    assert a.grad.dtype == torch.bfloat16 and torch.isfinite(a.grad.float()).all()


def test_bernoulli_start_is_exactly_plus_minus_b_then_clamped():
    x = batch8(lo=0.0, hi=1.0).x  # some pixels within b of 0 or 1: those clamp
    b = 4 / 255
    x0 = bernoulli_start(x, b, _gen())
    assert torch.equal(x0, _start(x, b))
    d = (x0 - x)[(x0 > 0) & (x0 < 1)]
    assert torch.allclose(d.abs(), torch.full_like(d, b), rtol=0, atol=1e-15)
    assert 0.3 < (d > 0).double().mean().item() < 0.7  # both signs, about half each
    clamped = (x0 == 0) | (x0 == 1)
    assert clamped.any() and (x0[clamped] - x[clamped]).abs().max() < b  # clamped ones moved less
    # inside prepare: step_size 0 leaves the start; the default b is eps/2
    for params, b_exp in ((NuAT.Params(step_size=0.0), EPS / 2), (NuAT.Params(step_size=0.0, init=0.03), 0.03)):
        cache = {}
        NuAT(params).prepare(bn_net64(), Batch(x, torch.tensor([0, 1, 2, 3])), _Task(), cache, _gen())
        assert torch.allclose(cache["x_adv"], _start(x, b_exp), rtol=0, atol=1e-15)


def _nuat_by_hand(model, batch, lam, alt, ref_mode="train", b=EPS / 2, seed=7):
    """The reference's step on a copy: train-mode f(x) (updating BN stats), then the eval-mode step."""
    twin = copy.deepcopy(model)
    twin.train(ref_mode == "train")
    with torch.no_grad():
        z_ref = twin(batch.x)
    twin.eval()

    def obj(xa):
        z = twin(xa)
        ce = F.cross_entropy(z, batch.y)
        return ce + lam * torch.linalg.matrix_norm(z_ref - z, ord="nuc") / len(batch.y) if alt else ce

    return _step(obj, _start(batch.x, b, seed), batch.x), twin


def test_single_step_goes_from_the_start_by_eps_to_the_ball():
    model, batch = bn_net64().train(), batch8()
    d = NuAT()
    cache = {}
    d.prepare(model, batch, _Task(), cache, _gen())  # counter 0: the CE step
    hand, twin = _nuat_by_hand(bn_net64().train(), batch, 0.0, alt=False)
    assert torch.equal(cache["x_adv"], hand)
    delta = cache["x_adv"] - batch.x
    assert delta.abs().max().item() == pytest.approx(EPS, rel=1e-12)
    mags = delta.abs().flatten()
    on_ball = (mags - EPS).abs() < 1e-12
    half = (mags - EPS / 2).abs() < 1e-12
    assert bool((on_ball | half).all())  # nothing clamps at [0, 1] for x in [0.2, 0.8]
    assert on_ball.sum() > 0 and half.sum() > 0  # start sign agrees with the gradient: eps; disagrees: eps/2
    init_sign = torch.sign(_start(batch.x, EPS / 2) - batch.x).flatten()
    assert torch.equal(on_ball, torch.sign(delta.flatten()) == init_sign)
    # the attack's own forward pass was eval mode; the one train-mode pass updated BN stats once
    assert model.training
    assert model[2].num_batches_tracked.item() == 1
    assert torch.equal(model[2].running_mean, twin[2].running_mean)
    assert all(p.grad is None for p in model.parameters())


def test_alternation_odd_steps_use_the_nuclear_term_with_train_mode_reference():
    batch = batch8()
    d = NuAT(NuAT.Params(lam_max=90.0, hold=0))
    d.set_epoch(1, 10)  # lam = 9
    assert d.lam == pytest.approx(9.0)
    out = []
    for _ in range(3):
        cache = {}
        d.prepare(bn_net64().train(), batch, _Task(), cache, _gen())  # same model state and start each time
        out.append(cache["x_adv"])
    even, _ = _nuat_by_hand(bn_net64(), batch, 9.0, alt=False)
    odd, _ = _nuat_by_hand(bn_net64(), batch, 9.0, alt=True)
    odd_eval_ref, _ = _nuat_by_hand(bn_net64(), batch, 9.0, alt=True, ref_mode="eval")
    assert torch.equal(out[0], even) and torch.equal(out[2], even)
    assert torch.equal(out[1], odd)
    assert not torch.equal(odd, even)  # the objective changed
    assert not torch.equal(odd, odd_eval_ref)  # and the reference logits are the train-mode ones
    assert d.counter == 3
    d.set_epoch(2, 10)
    assert d.counter == 0  # restarts every epoch, as the reference's counter


def test_odd_step_with_zero_lambda_is_the_ce_step():
    batch = batch8()
    d = NuAT()
    d.set_epoch(0, 100)
    assert d.lam == 0.0
    xs = []
    for _ in range(2):
        cache = {}
        d.prepare(bn_net64(), batch, _Task(), cache, _gen())
        xs.append(cache["x_adv"])
    assert torch.equal(xs[0], xs[1])


def _reference_ramp(lam_max, epochs, hold):
    """val-iisc/NuAT: Nuc_reg = 0; after each epoch e: if e < epochs - hold: Nuc_reg += Nuc_max/(epochs - hold)."""
    lam, used = 0.0, []
    for e in range(epochs):
        used.append(lam)
        if e < epochs - hold:
            lam += lam_max / (epochs - hold)
    return used


def test_lambda_ramp_values():
    d = NuAT()  # lam_max 4.5, hold 10
    expected = {0: 0.0, 1: 0.05, 2: 0.1, 45: 2.25, 89: 4.45, 90: 4.5, 91: 4.5, 99: 4.5}
    for e, v in expected.items():
        d.set_epoch(e, 100)
        assert d.lam == pytest.approx(v, rel=1e-12, abs=1e-15), e
    assert [lam_at(e, 100, 4.5, 10) for e in range(100)] == _reference_ramp(4.5, 100, 10)  # bit-identical
    w = NuAT2()  # WA / NuAT2: lam_max 4, hold 0
    for e, v in {0: 0.0, 1: 0.05, 40: 2.0, 79: 3.95}.items():
        w.set_epoch(e, 80)
        assert w.lam == pytest.approx(v, rel=1e-12, abs=1e-15), e
    assert [lam_at(e, 80, 4.0, 0) for e in range(80)] == _reference_ramp(4.0, 80, 0)
    assert [lam_at(e, 55, 4.0, 0) for e in range(55)] == _reference_ramp(4.0, 55, 0)  # NuAT2 (55 epochs)
    assert all(lam_at(e, 8, 4.5, 10) == 0.0 for e in range(8))  # E <= hold: the reference never ramps


def test_state_dict_round_trip_continues_the_counter():
    batch = batch8()
    a = NuAT(NuAT.Params(lam_max=90.0, hold=0))
    a.set_epoch(3, 20)
    a.prepare(bn_net64(), batch, _Task(), {}, _gen(1))  # counter 0 -> 1
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = NuAT(NuAT.Params(lam_max=90.0, hold=0))
    b.load_state_dict(torch.load(buf, weights_only=True))
    b.set_epoch(3, 20)  # the epoch it was counting: the counter stays
    assert b.counter == 1 and b.lam == a.lam
    ca, cb = {}, {}
    a.prepare(bn_net64(), batch, _Task(), ca, _gen())
    b.prepare(bn_net64(), batch, _Task(), cb, _gen())
    assert torch.equal(ca["x_adv"], cb["x_adv"])
    odd, _ = _nuat_by_hand(bn_net64(), batch, a.lam, alt=True)
    assert torch.equal(cb["x_adv"], odd)  # the resumed one continued with the odd (nuclear) step
    fresh = NuAT(NuAT.Params(lam_max=90.0, hold=0))
    fresh.set_epoch(3, 20)
    cf = {}
    fresh.prepare(bn_net64(), batch, _Task(), cf, _gen())
    assert not torch.equal(cf["x_adv"], cb["x_adv"])  # without the state it would take the even step


@pytest.mark.parametrize("cls", [NuAT, NuAT2])
def test_training_loss_by_hand_adv_pass_first(cls):
    batch, task = batch8(), _Task()
    d = cls(cls.Params(lam_max=4.5, hold=0))
    d.set_epoch(3, 10)
    lam = d.lam
    assert lam == pytest.approx(1.35)
    model = bn_net64().train()
    cache = {}
    d.prepare(model, batch, task, cache, _gen())
    twin, other = copy.deepcopy(model), copy.deepcopy(model)
    out = d.loss(model, batch, task, cache)
    z_adv = twin(cache["x_adv"])
    z = twin(batch.x)
    ce = F.cross_entropy(z, batch.y).item()
    nuc = _nuc_by_hand(z - z_adv, 4)
    assert out.loss.item() == pytest.approx(ce + lam * nuc, rel=1e-12)
    assert out.parts["ce_clean"] == pytest.approx(ce, rel=1e-12)
    assert out.parts["nuc"] == pytest.approx(nuc, rel=1e-12)
    assert out.parts["lam"] == lam and all(math.isfinite(v) for v in out.parts.values())
    assert nuc > 0
    # BatchNorm statistics: the adversarial pass, then the clean one (the opposite order differs)
    assert torch.allclose(model[2].running_mean, twin[2].running_mean, rtol=0, atol=1e-15)
    other(batch.x)
    other(cache["x_adv"])
    assert not torch.allclose(model[2].running_mean, other[2].running_mean, rtol=0, atol=1e-12)
    out.loss.backward()  # both branches carry gradient, nothing detached
    assert cache["logits_clean"].requires_grad and cache["logits_adv"].requires_grad
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    d.set_epoch(0, 10)
    out0 = d.loss(bn_net64().train(), batch, task, dict(cache))
    assert out0.loss.item() == pytest.approx(out0.parts["ce_clean"], rel=1e-12)  # lam 0: clean CE only
    assert out0.parts["nuc"] > 0
    nb = cls(cls.Params(nuc_batch=64))
    nb.set_epoch(3, 10)
    out64 = nb.loss(bn_net64().train(), batch, task, dict(cache))
    assert out64.parts["nuc"] == pytest.approx(out0.parts["nuc"] * 4 / 64, rel=1e-12)  # the reference's constant


def _nuat2_by_hand(model, batch, lam, step0_model=None, seed=7):
    """Eval mode: step 0 on step0_model (CE + lam * nuc with its detached clean logits), step 1 on model (CE)."""
    m = copy.deepcopy(model).eval()
    g = m if step0_model is None else step0_model.eval()
    with torch.no_grad():
        z_ref = g(batch.x)

    def obj0(xa):
        z = g(xa)
        return F.cross_entropy(z, batch.y) + lam * torch.linalg.matrix_norm(z_ref - z, ord="nuc") / len(batch.y)

    x1 = _step(obj0, _start(batch.x, EPS / 2, seed), batch.x)
    return _step(lambda xa: F.cross_entropy(m(xa), batch.y), x1, batch.x), x1


def test_nuat2_two_steps_by_hand_in_eval_mode():
    batch = batch8()
    d = NuAT2(NuAT2.Params(lam_max=90.0))
    d.set_epoch(1, 10)  # lam 9
    model = bn_net64().train()
    before = snapshot(model)
    cache = {}
    d.prepare(model, batch, _Task(), cache, _gen())
    hand, x1 = _nuat2_by_hand(bn_net64(), batch, 9.0)
    assert torch.equal(cache["x_adv"], hand)
    ce_only, _ = _nuat2_by_hand(bn_net64(), batch, 0.0)
    assert not torch.equal(hand, ce_only)  # step 0 has the nuclear term
    assert not torch.equal(hand, x1)  # step 1 moved it
    delta = (cache["x_adv"] - batch.x).abs()
    assert delta.max().item() == pytest.approx(EPS, rel=1e-12) and delta.max() <= EPS + 1e-15
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # eval: no BN update
    assert all(p.grad is None for p in model.parameters())


def test_nuat2_wa_attacks_with_the_ema_model_after_epoch_0():
    batch = batch8()
    wa = NuAT2(NuAT2.Params(lam_max=90.0, attack_ema=0.99))
    plain = NuAT2(NuAT2.Params(lam_max=90.0))
    model = bn_net64().train()
    states = sgd_steps(model, 3, after=[wa.after_step])
    for d in (wa, plain):
        d.set_epoch(0, 10)
    c_wa, c_plain = {}, {}
    wa.prepare(model, batch, _Task(), c_wa, _gen())
    plain.prepare(model, batch, _Task(), c_plain, _gen())
    assert torch.equal(c_wa["x_adv"], c_plain["x_adv"])  # epoch 0: the current model plays both roles
    for d in (wa, plain):
        d.set_epoch(1, 10)
    c_wa, c_plain = {}, {}
    wa.prepare(model, batch, _Task(), c_wa, _gen())
    plain.prepare(model, batch, _Task(), c_plain, _gen())
    ema = ema_by_hand(states, 0.99)
    g = copy.deepcopy(model)
    with torch.no_grad():
        for k, t in g.state_dict().items():
            t.copy_(ema[k])
    hand, _ = _nuat2_by_hand(model, batch, wa.lam, step0_model=g)
    assert torch.equal(c_wa["x_adv"], hand)
    assert not torch.equal(c_wa["x_adv"], c_plain["x_adv"])
    for k, v in wa.state_dict()["ema"].items():  # the EMA is the state dict's, buffers included
        assert torch.allclose(v.double(), ema[k].double(), rtol=1e-12, atol=1e-12), k
    # resumed from state_dict: the same attack
    buf = io.BytesIO()
    torch.save(wa.state_dict(), buf)
    buf.seek(0)
    back = NuAT2(NuAT2.Params(lam_max=90.0, attack_ema=0.99))
    back.load_state_dict(torch.load(buf, weights_only=True))
    c_back = {}
    back.prepare(model, batch, _Task(), c_back, _gen())
    assert torch.equal(c_back["x_adv"], c_wa["x_adv"])
    assert model.training


def test_bad_params_are_rejected():
    for bad in (dict(lam_max=-1.0), dict(hold=-1), dict(init=-0.1), dict(step_size=-0.1), dict(nuc_batch=0)):
        with pytest.raises(ConfigError):
            NuAT(NuAT.Params(**bad))
    with pytest.raises(ConfigError):
        NuAT2(NuAT2.Params(attack_ema=1.0))
    with pytest.raises(ConfigError):
        EMA(EMA.Params(decay=1.5))


def _composite(spec: str, params: dict | None = None) -> Composite:
    p = plan(spec, registry_with(NEW_ENTRIES), frozenset({"logits"}))
    return Composite.build(p, check_params(p, params or {}))


class _DigitsTask(_Task):
    threat = ThreatModel(eps=0.2, train_steps=1, train_step_size=0.2)


@pytest.mark.parametrize("spec,params", [
    ("nuat", {"nuat": {"hold": 0}}),
    ("nuat+ema", {"nuat": {"lam_max": 4.0, "hold": 0}}),
    ("nuat2", {}),
    ("nuat2+ema", {"nuat2": {"attack_ema": 0.99}}),
])
def test_a_few_steps_on_a_digits_shaped_model(spec, params):
    comp = _composite(spec, params)
    assert comp.plan.canonical == spec
    torch.manual_seed(0)
    model = SmallCNN(1, 10, width=4).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    task = _DigitsTask()
    gen = torch.Generator().manual_seed(0)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(16, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    before = snapshot(model)
    losses = []
    for epoch in range(3):
        comp.set_epoch(epoch, 3)
        for _ in range(2):  # the runner's step: loss, backward, step, restore, after_step
            out = comp.step_loss(model, Batch(x, y), task, gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            comp.restore()
            comp.after_step(model)
            assert math.isfinite(out.loss.item())
            assert {"ce_clean", "nuc", "lam"} <= set(out.parts) and all(math.isfinite(v) for v in out.parts.values())
            losses.append(out.parts["ce_clean"])
    assert out.parts["lam"] == pytest.approx(2 * 4.0 / 3 if "nuat2" in spec or "ema" in spec else 2 * 4.5 / 3)
    assert model.training
    assert not torch.equal(model.state_dict()["fc.weight"], before["fc.weight"])
    assert all(torch.isfinite(v.double()).all() for v in model.state_dict().values())
    ev = comp.eval_model(model)
    if "ema" in spec:
        assert ev is not model and comp.averager.updates == 6
        assert any(not torch.equal(ev.state_dict()[k], v) for k, v in model.state_dict().items())
    else:
        assert ev is model
    state = comp.state_dict()
    assert set(state) >= {spec.split("+")[0]} | ({"ema"} if "ema" in spec else set())


@pytest.mark.parametrize("spec", ["nuat", "nuat+ema", "nuat2+ema"])
def test_two_steps_on_the_real_digits_task(spec):
    from natbench.resolve import resolve
    from natbench.runner import make_optimizer
    from natbench.tasks.classification import ClassificationTask

    r = resolve(get_registry(), "digits", "pgd-at", seed=0)
    task = ClassificationTask(r.spec)
    torch.manual_seed(0)
    model = task.build_model()
    comp = _composite(spec, {"nuat2": {"attack_ema": 0.99}} if "nuat2" in spec else None)
    comp.set_epoch(1, r.profile.epochs)
    opt = make_optimizer(r.profile, model)
    gen = torch.Generator().manual_seed(0)
    train, _, _ = task.loaders(r.profile.batch_size, gen)
    before = snapshot(model)
    for _, out in train_steps(comp, model, train, task, opt, gen, n=2):  # runs the after_step hooks (EMA updates)
        assert math.isfinite(out.loss.item())
        assert {"ce_clean", "nuc", "lam"} <= set(out.parts) and all(math.isfinite(v) for v in out.parts.values())
        assert out.parts["lam"] > 0 and out.parts["nuc"] > 0
    assert model.training
    assert not torch.equal(model.state_dict()["1.fc.weight"], before["1.fc.weight"])
    if "ema" in spec:
        assert comp.averager.updates == 2
        ev = comp.eval_model(model)
        assert ev is not model and not torch.equal(ev.state_dict()["1.fc.weight"], model.state_dict()["1.fc.weight"])
    if "nuat2" in spec:
        assert comp.base.state_dict()["ema"]  # the attack EMA was updated after each step
