"""NAT (natbench.regularizers.nat): its adversary options (paper Tables 7, 8; Appendix I) and its cost-saving forwards.

Golden values in float64 against hand computations: the default is the loss of the previous
implementation (two adversary forwards), an ensemble is the KL against the mean of its members'
logits, the batched adversary forward equals two separate ones, the joint target forward is one
train-mode forward on cat([x, x']). Plus the dependencies built from the params, bind's checks and
parameter validation through the config layer. The NAT term, its CE completion and the scaled KL
against hand computations."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from natbench.compose import Composite
from natbench.config import from_dict
from natbench.contracts import Batch, Dependency, Regularizer, ThreatModel
from natbench.errors import CompositionError, ConfigError
from natbench.models import build as build_model
from natbench.registry import get_registry
from natbench.contracts import cached_logits
from natbench.regularizers.nat import ADVERSARY_STATES, NAT, adversary_dependencies, nasty_kl
from natbench.resolve import resolve
from natbench.taskspec import ModelCfg

from helpers import TaskSlice, bn_net, softmax


class _Task:
    """The slice of a classification task NAT uses; counts forwards per model."""

    threat = ThreatModel(eps=0.3, train_steps=3, train_step_size=0.1)

    def __init__(self):
        self.calls: list[tuple[int, int]] = []  # (id(model), rows)

    def logits(self, model, batch, x):
        self.calls.append((id(model), len(x)))
        return model(x)


def _kl_batchmean(p, q):  # KL(p || q), summed over classes, mean over rows
    return float((p * (np.log(p) - np.log(q))).sum(1).mean())


def _ce(z, y):
    return float(np.mean(-np.log(softmax(z)[np.arange(len(y)), y])))


@pytest.fixture
def x_adv(batch):
    noise = 0.1 * torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return (batch.x + noise).clamp(0, 1)


def _previous_loss(target, adversary, batch, x_adv, cache_in, omega, tau):
    """The loss exactly as NAT computed it before the adversary options (two adversary forwards)."""
    cache = dict(cache_in)
    inputs = {"clean": batch.x, "adv": x_adv}
    total = torch.zeros((), device=batch.x.device)
    parts = {}
    for which, x in inputs.items():
        z = cache.get(f"logits_{which}")
        if z is None:
            z = target(x)
        if which not in cache["ce_on"]:
            ce = F.cross_entropy(z, batch.y)
            total = total + ce
            parts[f"nat_ce_{which}"] = ce.item()
        with torch.no_grad():
            z_a = adversary(x)
        kl = nasty_kl(z, z_a, tau)
        total = total - omega * kl
        parts[f"nat_kl_{which}"] = kl.item()
    return total, parts


@pytest.mark.parametrize("base_logits", [False, True], ids=["no-cache", "pgd-at-cached-adv"])
def test_default_params_give_the_previous_loss(batch, x_adv, base_logits):
    omega, tau = 0.05, 3.0
    target, adversary = bn_net(0), bn_net(1)  # target in train mode: BN batch statistics, as in training
    target_ref, adversary_ref = copy.deepcopy(target), copy.deepcopy(adversary).eval()
    cache = {"x_adv": x_adv, "ce_on": frozenset({"adv"})}
    cache_ref = dict(cache)
    if base_logits:  # as after PGD-AT's loss: logits_adv cached from the same train-mode forward
        cache["logits_adv"] = target(x_adv)
        cache_ref["logits_adv"] = target_ref(x_adv)
    nat = NAT(NAT.Params(omega=omega, tau=tau))
    nat.bind("adversary", adversary)
    task = _Task()
    out = nat.loss(target, batch, task, cache)
    ref, ref_parts = _previous_loss(target_ref, adversary_ref, batch, x_adv, cache_ref, omega, tau)

    assert torch.allclose(out.loss, ref, rtol=1e-14, atol=0)  # bit-identical in practice
    assert out.parts == pytest.approx(ref_parts, rel=1e-14)
    assert list(out.parts) == list(ref_parts)
    # the adversary ran once, on the 12 concatenated rows
    assert [rows for mid, rows in task.calls if mid == id(adversary)] == [12]
    # gradients equal the previous implementation's, and the BN running statistics moved the same way
    out.loss.backward()
    ref.backward()
    for p, q in zip(target.parameters(), target_ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-12, atol=1e-15)
    for b, c in zip(target.buffers(), target_ref.buffers()):
        assert torch.equal(b, c)
    assert all(p.grad is None for p in adversary.parameters()) and not adversary.training


def test_default_dependency_is_a_vanilla_model_of_the_same_arch():
    nat = NAT()
    assert isinstance(nat, Regularizer)
    assert nat.dependencies == (Dependency(role="adversary", defense="vanilla", checkpoint="best", sets=()),)
    assert NAT.dependencies == nat.dependencies  # the class attribute describes the default
    assert NAT.Params().adversary == "vanilla" and NAT.Params().adversary_arch == () and not NAT.Params().joint_forward


def test_ensemble_is_the_kl_against_the_mean_of_the_members_logits(batch, x_adv):
    omega, tau = 0.2, 2.0
    target, a0, a1 = bn_net(0).eval(), bn_net(1), bn_net(2)
    nat = NAT(NAT.Params(omega=omega, tau=tau, adversary_arch=("resnet18", "densenet121")))
    nat.bind("adversary1", a1)
    with pytest.raises(RuntimeError, match="adversary0"):
        nat.loss(target, batch, _Task(), {"x_adv": x_adv, "ce_on": frozenset({"adv"})})
    nat.bind("adversary0", a0)
    out = nat.loss(target, batch, _Task(), {"x_adv": x_adv, "ce_on": frozenset({"adv"})})

    y = batch.y.numpy()
    with torch.no_grad():
        zt = {w: target(x).numpy() for w, x in (("clean", batch.x), ("adv", x_adv))}
        za = {w: (a0(x).numpy() + a1(x).numpy()) / 2 for w, x in (("clean", batch.x), ("adv", x_adv))}
        za0 = {w: a0(x).numpy() for w, x in (("clean", batch.x), ("adv", x_adv))}
    kl = {w: tau**2 * _kl_batchmean(softmax(zt[w] / tau), softmax(za[w] / tau)) for w in zt}
    expected = _ce(zt["clean"], y) - omega * (kl["clean"] + kl["adv"])
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.parts["nat_kl_clean"] == pytest.approx(kl["clean"], rel=1e-12)
    assert out.parts["nat_kl_adv"] == pytest.approx(kl["adv"], rel=1e-12)
    # a single member (or a mean of probabilities) would give another number: the test can tell
    kl0 = tau**2 * _kl_batchmean(softmax(zt["clean"] / tau), softmax(za0["clean"] / tau))
    assert abs(kl0 - kl["clean"]) / kl["clean"] > 1e-3
    p_mean = (softmax(a0(batch.x).detach().numpy() / tau) + softmax(a1(batch.x).detach().numpy() / tau)) / 2
    assert abs(tau**2 * _kl_batchmean(softmax(zt["clean"] / tau), p_mean) - kl["clean"]) / kl["clean"] > 1e-3
    assert nat.adversary is None and set(nat.adversaries) == {"adversary0", "adversary1"}
    assert not a0.training and not a1.training
    assert all(not p.requires_grad for m in (a0, a1) for p in m.parameters())


@pytest.mark.parametrize("arch,shape", [("small_cnn", (1, 8, 8)), ("resnet18", (3, 32, 32))])
def test_batched_adversary_forward_equals_two_forwards(arch, shape):
    """Eval-mode BN: the rows of cat([x, x']) are computed independently (float32, real conv nets)."""
    torch.manual_seed(0)
    model = build_model(ModelCfg(arch=arch, in_channels=shape[0], num_classes=10, mean=[0.5] * shape[0],
                                 std=[0.25] * shape[0]))
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.rand(16, *shape))
    g = torch.Generator().manual_seed(1)
    x, x_adv = torch.rand(8, *shape, generator=g), torch.rand(8, *shape, generator=g)
    nat = NAT()
    nat.bind("adversary", model)
    task = _Task()
    z_c, z_a = nat.adversary_logits(Batch(x, torch.zeros(8, dtype=torch.long)), task, (x, x_adv))
    assert task.calls == [(id(model), 16)]
    with torch.no_grad():
        ref_c, ref_a = model(x), model(x_adv)
    assert not z_c.requires_grad and z_c.grad_fn is None  # no autograd graph for the adversary
    assert (z_c - ref_c).abs().max().item() <= 1e-6 and (z_a - ref_a).abs().max().item() <= 1e-6


@pytest.mark.parametrize("adversary,defense,checkpoint", [
    ("vanilla", "vanilla", "best"), ("at", "pgd-at", "best"), ("sam", "vanilla+sam", "best"),
    ("nasty", "vanilla+nat", "best"), ("random", "vanilla", "init"), ("trades", "trades", "best"),
    ("pgd-at+awp", "pgd-at+awp", "best"),
])
def test_dependencies_follow_the_params(adversary, defense, checkpoint):
    single = NAT(NAT.Params(adversary=adversary)).dependencies
    assert single == (Dependency("adversary", defense, checkpoint, ()),)
    one_arch = NAT(NAT.Params(adversary=adversary, adversary_arch=("densenet121",))).dependencies
    assert one_arch == (Dependency("adversary", defense, checkpoint, ("model.arch=densenet121",)),)
    ens = NAT(NAT.Params(adversary=adversary, adversary_arch=("resnet18", "densenet121", "vgg11"))).dependencies
    assert ens == tuple(Dependency(f"adversary{i}", defense, checkpoint, (f"model.arch={a}",))
                        for i, a in enumerate(("resnet18", "densenet121", "vgg11")))
    assert adversary_dependencies(adversary) == single


def test_states_cover_the_papers_table_8():
    assert set(ADVERSARY_STATES) == {"random", "vanilla", "at", "sam", "nasty"}


def test_bind_checks_the_role(batch):
    nat = NAT()
    with pytest.raises(ValueError, match="'adversary0'.*binds adversary"):
        nat.bind("adversary0", bn_net(1))
    ens = NAT(NAT.Params(adversary_arch=("resnet18", "vgg11")))
    with pytest.raises(ValueError, match="'adversary'.*adversary0, adversary1"):
        ens.bind("adversary", bn_net(1))
    with pytest.raises(ValueError, match="surrogate"):
        ens.bind("surrogate", bn_net(1))
    with pytest.raises(RuntimeError, match="no adversary model bound"):
        NAT().loss(bn_net(0), batch, _Task(), {"ce_on": frozenset({"clean"})})


@pytest.mark.parametrize("data,match", [
    ({"adversary": ""}, "adversary: empty"),
    ({"adversary": "  "}, "adversary: empty"),
    ({"adversary": " at"}, "surrounding spaces"),
    ({"adversary_arch": ["resnet18", ""]}, r"adversary_arch\[1\]: empty"),
    ({"adversary_arch": ["vgg11", "vgg11"]}, "vgg11 listed twice"),
    ({"adversary_arch": "densenet121"}, "expected a list"),
    ({"tau": 0.0}, "tau: must be > 0"),
])
def test_params_validation(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(NAT.Params, data, "defense.nat")


def test_params_built_directly_are_validated_too():
    with pytest.raises(ConfigError, match="nat.adversary: empty"):
        NAT(NAT.Params(adversary=""))


def test_params_through_resolve_and_composite():
    r = resolve(get_registry(), "digits", "nat", sets=["nat.adversary=random", "nat.adversary_arch=[small_cnn, vgg11]"])
    assert r.params["nat"].adversary_arch == ("small_cnn", "vgg11")
    assert r.config["defense"]["params"]["nat"]["adversary_arch"] == ["small_cnn", "vgg11"]
    comp = Composite.build(r.plan, r.params)
    deps = [d for _, d in comp.dependencies()]
    assert deps == [Dependency("adversary0", "vanilla", "init", ("model.arch=small_cnn",)),
                    Dependency("adversary1", "vanilla", "init", ("model.arch=vgg11",))]
    # a different adversary is a different run
    assert r.config_hash != resolve(get_registry(), "digits", "nat").config_hash


def _base_loss_reusing_cache(model, batch, task, cache):
    """PGD-AT's outer loss, reading cache["logits_adv"] when present (the base change joint_forward needs)."""
    z = cached_logits(model, batch, task, cache, "adv", cache["x_adv"])
    return F.cross_entropy(z, batch.y)


def test_joint_forward_is_one_train_mode_forward_on_the_concatenation(batch, x_adv):
    omega, tau = 0.05, 3.0
    target, adversary = bn_net(0), bn_net(1)  # train mode: the joint forward's BN statistics are the mixed batch's
    target_ref = copy.deepcopy(target)
    nat = NAT(NAT.Params(omega=omega, tau=tau, joint_forward=True))
    nat.bind("adversary", adversary)
    task = _Task()
    cache = {"x_adv": x_adv, "ce_on": frozenset({"adv"})}
    nat.pre_loss(target, batch, task, cache)  # what the composite would call before the base's loss
    loss = _base_loss_reusing_cache(target, batch, task, cache) + nat.loss(target, batch, task, cache).loss
    assert [rows for mid, rows in task.calls if mid == id(target)] == [12]  # one target forward, 2B rows

    y = batch.y.numpy()
    with torch.no_grad():
        z = target_ref(torch.cat([batch.x, x_adv])).numpy()  # train mode, one forward
        za = adversary(torch.cat([batch.x, x_adv])).numpy()
        z_sep = target_ref(batch.x).numpy()
    zc, zadv = z[:6], z[6:]
    kl_c = tau**2 * _kl_batchmean(softmax(zc / tau), softmax(za[:6] / tau))
    kl_a = tau**2 * _kl_batchmean(softmax(zadv / tau), softmax(za[6:] / tau))
    expected = _ce(zadv, y) + _ce(zc, y) - omega * (kl_c + kl_a)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert np.abs(z_sep - zc).max() > 1e-6  # the separate forward's BN statistics differ: the test can tell
    loss.backward()
    assert all(p.grad is not None for p in target.parameters())


def test_joint_forward_refuses_to_run_silently_unjoined(batch, x_adv):
    nat = NAT(NAT.Params(joint_forward=True))
    nat.bind("adversary", bn_net(1))
    target, task = bn_net(0), _Task()
    with pytest.raises(CompositionError, match="did not call NAT.pre_loss"):  # composite without the hook
        nat.loss(target, batch, task, {"x_adv": x_adv, "ce_on": frozenset({"adv"})})
    cache = {"x_adv": x_adv, "ce_on": frozenset({"adv"})}
    nat.pre_loss(target, batch, task, cache)
    cache["logits_adv"] = target(x_adv)  # a base that recomputes its logits
    with pytest.raises(CompositionError, match="recomputed its logits"):
        nat.loss(target, batch, task, cache)
    # without adversarial examples (vanilla base) there is nothing to join: NAT runs as usual
    out = nat.loss(target, batch, task, {"ce_on": frozenset({"clean"})})
    assert set(out.parts) == {"nat_kl_clean"}


# ---------------------------------------------------------------------------- the NAT term by hand
def _kl_rows(p, q):  # KL(p || q) per row
    return (p * (np.log(p) - np.log(q))).sum(1)


def test_nat_term_equals_hand_formula(batch):
    target, adversary = bn_net(0), bn_net(1)
    x_adv = (batch.x + 0.1 * torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).clamp(0, 1)
    omega, tau = 0.05, 3.0
    nat = NAT(NAT.Params(omega=omega, tau=tau))
    nat.bind("adversary", adversary)
    target.eval()  # fixed BN statistics so the hand computation sees the same logits
    cache = {"x_adv": x_adv, "ce_on": frozenset({"adv"})}  # as after PGD-AT: CE on adv already counted
    out = nat.loss(target, batch, TaskSlice(eps=0.3, steps=3, step_size=0.1), cache)

    with torch.no_grad():
        zt_c, zt_a = target(batch.x).numpy(), target(x_adv).numpy()
        za_c, za_a = adversary(batch.x).numpy(), adversary(x_adv).numpy()
    y = batch.y.numpy()
    kl_c = _kl_rows(softmax(zt_c / tau), softmax(za_c / tau)).sum() / len(y)  # batchmean, KL(target || adversary)
    kl_a = _kl_rows(softmax(zt_a / tau), softmax(za_a / tau)).sum() / len(y)
    expected = _ce(zt_c, y) - omega * tau**2 * (kl_c + kl_a)  # CE only on clean: the base has CE(adv)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)

    # The reverse direction KL(adversary || target) is a different number: the test can tell.
    kl_rev = _kl_rows(softmax(za_c / tau), softmax(zt_c / tau)).sum() / len(y)
    assert abs(kl_rev - kl_c) / kl_c > 1e-3  # >> the 1e-10 tolerance of the assertion above
    assert out.parts["nat_kl_clean"] == pytest.approx(tau**2 * kl_c, rel=1e-10)

    # Gradients reach the target model only; the adversary is frozen and stays in eval mode.
    out.loss.backward()
    assert all(p.grad is not None for p in target.parameters())
    assert all(p.grad is None for p in adversary.parameters())
    assert not adversary.training


def test_nat_adds_ce_for_inputs_the_base_lacks(batch):
    target, adversary = bn_net(0), bn_net(1)
    target.eval()
    nat = NAT(NAT.Params(omega=0.0))  # omega 0: only the CE completion remains
    nat.bind("adversary", adversary)
    x_adv = batch.x.flip(0)
    with torch.no_grad():
        ce_c = F.cross_entropy(target(batch.x), batch.y).item()
        ce_a = F.cross_entropy(target(x_adv), batch.y).item()
    for ce_on, expected in [({"adv"}, ce_c), ({"clean"}, ce_a), (set(), ce_c + ce_a), ({"clean", "adv"}, 0.0)]:
        out = nat.loss(target, batch, TaskSlice(eps=0.3, steps=3, step_size=0.1), {"x_adv": x_adv, "ce_on": frozenset(ce_on)})
        assert out.loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_nasty_kl_scaling_and_reduction():
    g = torch.Generator().manual_seed(0)
    zt, za = torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(4, 7, generator=g, dtype=torch.float64)
    for tau in (1.0, 4.0, 20.0):
        hand = tau**2 * _kl_rows(softmax(zt.numpy() / tau), softmax(za.numpy() / tau)).mean()
        assert nasty_kl(zt, za, tau).item() == pytest.approx(hand, rel=1e-10)
