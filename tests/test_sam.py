"""SAM (natbench.perturbations.sam): the weight perturbation, its bit-exact restore and the optimizer step at
the perturbed point, against hand computations (float64)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from natbench.perturbations.sam import SAM

from helpers import bn_net, edge_batch, linear_net, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def _loss_fn(batch):
    return lambda m: F.cross_entropy(m(batch.x), batch.y)


def _grads(model, loss_fn):
    twin = copy.deepcopy(model).train()
    gs = torch.autograd.grad(loss_fn(twin), list(twin.parameters()))
    return [g.detach() for g in gs], twin


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_perturbation_by_hand(adaptive):
    model, batch = bn_net(0).train(), edge_batch(n=8)
    rho = 0.05
    sentinel = {n: torch.full_like(p, 3.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    w0 = [p.detach().clone() for p in model.parameters()]
    g, twin = _grads(model, _loss_fn(batch))
    if adaptive:
        norm = math.sqrt(sum(float(((w.abs() * gi) ** 2).sum()) for w, gi in zip(w0, g)))
        expected = [rho * w ** 2 * gi / (norm + 1e-12) for w, gi in zip(w0, g)]
    else:
        norm = math.sqrt(sum(float((gi ** 2).sum()) for gi in g))
        expected = [rho * gi / (norm + 1e-12) for gi in g]
    restore = SAM(SAM.Params(rho=rho, adaptive=adaptive)).apply(model, _loss_fn(batch))
    moved = [p.detach() - w for p, w in zip(model.parameters(), w0)]
    for m, e in zip(moved, expected):
        assert torch.allclose(m, e, rtol=1e-9, atol=1e-16)
    total = math.sqrt(sum(float((m ** 2).sum()) for m in moved))
    if adaptive:
        assert total != pytest.approx(rho, rel=1e-3)  # the adaptive e is not on the rho-sphere
        scaled = math.sqrt(sum(float(((m[w != 0] / w[w != 0].abs()) ** 2).sum()) for m, w in zip(moved, w0)))  # e = 0 where w = 0
        assert scaled == pytest.approx(rho, rel=1e-9)  # ||e / |w| || = rho
    else:
        assert total == pytest.approx(rho, rel=1e-9)  # global L2 norm of the perturbation
    for n, p in model.named_parameters():  # no .grad written
        assert torch.equal(p.grad, sentinel[n])
    # the first pass (at w) moved the BN running statistics exactly as one train-mode forward does
    assert torch.equal(model[2].running_mean, twin[2].running_mean)
    restore()


def test_sam_restore_is_bit_exact_and_bn_frozen_on_the_perturbed_pass():
    model, batch = bn_net(1).train(), edge_batch(n=8)
    w0 = [p.detach().clone() for p in model.parameters()]
    loss_fn = _loss_fn(batch)
    g_at_w, twin = _grads(model, loss_fn)
    loss_at_w = loss_fn(copy.deepcopy(model)).item()
    restore = SAM(SAM.Params(rho=0.1)).apply(model, loss_fn)
    after_first = snapshot(model)
    perturbed = loss_fn(model)  # the outer pass, at w + e (moves BN stats in train mode)
    assert perturbed.item() > loss_at_w  # ascent
    g_at_pert = torch.autograd.grad(perturbed, list(model.parameters()))
    assert max((a - b).abs().max().item() for a, b in zip(g_at_pert, g_at_w)) > 1e-4  # a different gradient
    assert not torch.equal(model[2].running_mean, after_first["2.running_mean"])
    restore()
    for p, w in zip(model.parameters(), w0):
        assert torch.equal(p.detach(), w)  # bit-exact, no optimizer step in between
    for name in ("2.running_mean", "2.running_var", "2.num_batches_tracked"):
        assert torch.equal(model.state_dict()[name], after_first[name])  # only the pass at w counted
        assert torch.equal(model.state_dict()[name], twin.state_dict()[name])
    restore()  # a second call is a no-op
    assert all(torch.equal(p.detach(), w) for p, w in zip(model.parameters(), w0))

    unfrozen = bn_net(1).train()
    r = SAM(SAM.Params(rho=0.1, freeze_bn=False)).apply(unfrozen, loss_fn)
    loss_fn(unfrozen)
    r()
    assert int(unfrozen[2].num_batches_tracked) == 2  # both passes counted (davda54's plain usage)


@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_sam_optimizer_step_uses_the_gradient_at_the_perturbed_point(wd):
    model, batch, lr, rho = linear_net(5), edge_batch(n=8), 0.1, 0.05
    loss_fn = _loss_fn(batch)
    w0 = [p.detach().clone() for p in model.parameters()]
    g, _ = _grads(model, loss_fn)
    norm = math.sqrt(sum(float((gi ** 2).sum()) for gi in g))
    e = [rho * gi / (norm + 1e-12) for gi in g]
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p, ei in zip(twin.parameters(), e):
            p.add_(ei)
    g_pert = torch.autograd.grad(loss_fn(twin), list(twin.parameters()))
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    restore = SAM(SAM.Params(rho=rho)).apply(model, loss_fn)
    opt.zero_grad()
    loss_fn(model).backward()
    opt.step()
    restore()
    for p, w, gp, ei in zip(model.parameters(), w0, g_pert, e):
        # w0 - lr * (grad L(w + e) + wd * (w + e)): the decay is applied at w + e (documented deviation)
        assert torch.allclose(p.detach(), w - lr * (gp + wd * (w + ei)), rtol=0, atol=1e-13)


def test_sam_rho_zero_is_off():
    model = linear_net(0)
    before = snapshot(model)

    def must_not_run(m):
        raise AssertionError("no gradient pass with rho = 0")

    SAM(SAM.Params(rho=0.0)).apply(model, must_not_run)()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
