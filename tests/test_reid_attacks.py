"""Metric attacks (sma, fna, ifgsm) and the re-id objectives: hand-derived objective values, the attack
contract (eps-ball, [0, 1], model mode, reproducibility) for every registered re-id attack, and their
effect on a model trained on the Market-1501 fixture (each lowers mAP; 10/255 lowers it more than 8/255)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from natbench.attacks.ifgsm import IFGSM
from natbench.attacks.sma import SMA
from natbench.config import from_dict
from natbench.contracts import Batch
from natbench.data.market1501 import write_market1501_fixture
from natbench.registry import get_registry
from natbench.resolve import resolve, task_kind_cls
from natbench.runner import derive_seed, lr_at, make_optimizer, train_step
from natbench.compose import Composite
from natbench.tasks.reid import GuideContext, ama_objective, fna_objective, sma_objective

REG = get_registry()
QUICK = ["model.arch=reid_cnn", "model.width=8", "task.params.height=64", "task.params.width=32"]
REID_ATTACKS = [n for n in REG.names("attacks") if "reid" in (REG.entry("attacks", n).tasks or ())]


class Flat(torch.nn.Module):
    """A 'model' whose embedding is the flattened input: objectives can be checked by hand."""

    training = False

    def features(self, x):
        return x.flatten(1)


# ----------------------------------------------------------------------------- objectives by hand
def _ctx():
    side = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 4.0], [5.0, 5.0], [6.0, 5.0], [9.0, 9.0]])
    side_pids = torch.tensor([1, 1, 2, 3, 3, 0])
    other = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0], [7.0, 7.0]])
    other_pids = torch.tensor([1, 1, 2, 0])
    return GuideContext(side, side_pids, torch.tensor([0, 2, 5]), other, other_pids)


def test_sma_objective_by_hand():
    ctx = _ctx()
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0], [9.0, 8.0]])
    expected = torch.tensor([1 + 4, 0 + 16, 0 + 1.0])
    torch.testing.assert_close(sma_objective(Flat(), ctx)(z), expected)


def test_fna_objective_by_hand():
    """push = the same-id features of the side padded with the sample's clean feature to the largest
    id group (2); pull = the other id's prototype furthest from the clean feature; id 0 not attacked."""
    ctx = _ctx()
    z = torch.tensor([[1.0, 2.0], [1.0, 1.0], [3.0, 3.0]])
    protos = {1: torch.tensor([0.5, 0.0]), 2: torch.tensor([0.0, 4.0]), 3: torch.tensor([5.5, 5.0])}
    sq = lambda a, b: float(((a - b) ** 2).sum())  # noqa: E731
    # row 0 (id 1, clean [0, 0]): push {[0,0], [1,0]}; furthest other prototype from [0,0]: id 3 ([5.5, 5])
    r0 = sq(z[0], torch.tensor([0.0, 0.0])) + sq(z[0], torch.tensor([1.0, 0.0])) - sq(z[0], protos[3])
    # row 1 (id 2, clean [0, 4]): push {[0,4]} padded with itself; furthest: |[0,4]-[0.5,0]|^2 = 16.25 vs
    # |[0,4]-[5.5,5]|^2 = 31.25 -> id 3
    r1 = 2 * sq(z[1], torch.tensor([0.0, 4.0])) - sq(z[1], protos[3])
    torch.testing.assert_close(fna_objective(Flat(), ctx)(z), torch.tensor([r0, r1, 0.0]))


def test_ama_objective_by_hand():
    """Guides: the other side's same-id features, L2-normalised; mean over dims, sum over guides."""
    ctx = _ctx()
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 1.0]])
    n = lambda v: v / v.norm()  # noqa: E731
    mse = lambda a, b: float(((n(a) - n(b)) ** 2).mean())  # noqa: E731
    r0 = mse(z[0], torch.tensor([1.0, 1.0])) + mse(z[0], torch.tensor([2.0, 0.0]))  # id 1: two gallery images
    r1 = mse(z[1], torch.tensor([0.0, 3.0]))  # id 2: one
    torch.testing.assert_close(ama_objective(Flat(), ctx)(z), torch.tensor([r0, r1, 0.0]))  # id 0: no guides


def test_training_batch_guides_exclude_the_image_itself():
    """On a training batch (no context) AMA pushes from the *other* images of the identity in the batch."""
    from natbench.tasks.reid import batch_context

    x = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]], [[[1.0, 1.0]]]])  # (3, 1, 1, 2)
    batch = Batch(x, torch.tensor([4, 4, 5]))
    ctx = batch_context(Flat(), batch)
    obj = ama_objective(Flat(), ctx)
    val = obj(x)
    assert val[2] == 0  # alone in its identity: no guide
    expected = float(((F.normalize(x[0].flatten(), dim=0) - F.normalize(x[1].flatten(), dim=0)) ** 2).mean())
    torch.testing.assert_close(val[:2], torch.tensor([expected, expected]))


# ----------------------------------------------------------------------------- a trained model on the fixture
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = write_market1501_fixture(tmp_path_factory.mktemp("market"))
    r = resolve(REG, "reid_market", "vanilla", profile="quick", sets=[*QUICK, "training.epochs=6"], suite="reid-paper")
    task = task_kind_cls(REG, r.spec)(r.spec, root)
    comp = Composite.build(r.plan, r.params)
    torch.manual_seed(0)
    model = task.build_model()
    opt = make_optimizer(r.profile, model)
    for epoch in range(r.profile.epochs):
        gen = torch.Generator().manual_seed(derive_seed(0, "epoch", epoch))
        train, _, _ = task.loaders(32, gen)
        for i, batch in enumerate(train):
            for g in opt.param_groups:
                g["lr"] = lr_at(r.profile, epoch + i / len(train))
            assert math.isfinite(train_step(comp, model, batch, task, opt, gen).loss.item())
    model.eval().zero_grad(set_to_none=True)
    _, _, test = task.loaders(32, torch.Generator().manual_seed(0), eval_batch_size=64)
    return task, model, test, r


@pytest.mark.parametrize("name", REID_ATTACKS)
@pytest.mark.parametrize("training", [False, True])
def test_every_reid_attack_keeps_the_contract(trained, name, training):
    task, model, test, _ = trained
    cls = REG.load("attacks", name)
    atk = cls(cls.Params(steps=4))
    batch = next(iter(test.query))
    eps = 8 / 255
    model.train(training)
    try:
        outs = []
        for _ in range(2):
            obj = task.objective(model, batch, atk.objective_kind)
            start = obj(batch.x).detach()
            out = atk(obj, batch.x, eps=eps, generator=torch.Generator().manual_seed(5))
            assert model.training is training, f"{name} changed the model's train/eval mode"
            assert out.shape == batch.x.shape and not out.requires_grad
            assert (out - batch.x).abs().max() <= eps + 1e-6 and out.min() >= 0 and out.max() <= 1
            assert all(p.grad is None for p in model.parameters())
            if not training:
                assert obj(out).sum() > start.sum(), f"{name} did not increase its objective"
            outs.append(out)
        if not training:
            assert torch.equal(outs[0], outs[1]), f"{name} is not reproducible under a fixed generator"
    finally:
        model.eval()


def test_eps_param_overrides_the_given_eps(trained):
    task, model, test, _ = trained
    batch = next(iter(test.query))
    obj = task.objective(model, batch, "sma")
    out = SMA(SMA.Params(steps=16, eps=10 / 255))(obj, batch.x, eps=8 / 255, generator=torch.Generator().manual_seed(0))
    assert 8 / 255 + 1e-6 < (out - batch.x).abs().max() <= 10 / 255 + 1e-6


def test_attacks_lower_map_and_stronger_eps_lowers_it_more(trained):
    task, model, test, r = trained
    clean = task.evaluate(model, test, None).metrics
    assert clean["mAP"] > 0.5, clean  # the fixture's identities are learnt
    got = {}
    for entry in r.suite.attacks:  # reid-paper: sma, fna, ifgsm at 8/255 and 10/255
        cls = REG.load("attacks", entry.attack)
        atk = cls(from_dict(cls.Params, entry.params, entry.id))
        out = task.evaluate(model, test, atk, generator=torch.Generator().manual_seed(derive_seed(0, "eval", entry.id)))
        assert len(out.correct) == len(test.query.items)
        got[entry.id] = out.metrics["mAP"]
    for name in ("sma", "fna", "ifgsm"):
        assert got[f"{name}-8"] < clean["mAP"] - 0.1, (name, clean, got)
        assert got[f"{name}-10"] < got[f"{name}-8"], (name, got)


def test_attacked_side_is_a_parameter(trained):
    task, model, test, _ = trained
    clean = task.evaluate(model, test, None).metrics["mAP"]
    res = {}
    for side in ("query", "gallery", "both"):
        atk = IFGSM(IFGSM.Params(steps=8, side=side))
        res[side] = task.evaluate(model, test, atk).metrics["mAP"]
    assert all(v < clean for v in res.values()) and len(set(res.values())) == 3
    # both sides, each attacked against the other's *clean* features, beat at least the weaker side
    # (not necessarily both: the two perturbations are not optimised jointly)
    assert res["both"] < max(res["query"], res["gallery"])
    # the evaluate keyword wins over the attack's param
    assert task.evaluate(model, test, IFGSM(IFGSM.Params(steps=8)), side="gallery").metrics["mAP"] == res["gallery"]


def test_classification_attack_runs_on_the_sma_objective(trained):
    """The runner's validation attack is PGD (objective "ce"); on re-id it attacks the embedding (SMA)."""
    from natbench.attacks.pgd import PGD

    task, model, test, _ = trained
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    pgd = task.evaluate(model, test, PGD(PGD.Params(steps=5)), generator=gen()).metrics
    sma = task.evaluate(model, test, PGD(PGD.Params(steps=5)), objective="sma", generator=gen()).metrics
    assert pgd == sma and pgd["mAP"] < task.evaluate(model, test, None).metrics["mAP"]


def test_metric_attack_params_are_checked():
    from natbench.errors import ConfigError

    for cls in (SMA, IFGSM):
        with pytest.raises(ConfigError):
            cls(cls.Params(side="probe"))
        with pytest.raises(ConfigError):
            cls(cls.Params(steps=-1))
        fields = {f.name for f in dataclasses.fields(cls.Params)}
        assert {"steps", "step_size", "random_start", "eps", "side"} == fields
