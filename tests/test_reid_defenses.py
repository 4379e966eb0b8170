"""Defenses on the re-id task: every registered defense the task's capabilities allow trains a few steps
on the Market-1501 fixture (as tests/test_every_defense.py does for classification), AMD's attack, loss
and composition with NAT, the registry entries and the reid_market spec; and (slow) adversarial metric
training raises the attacked mAP over vanilla training."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from natbench.config import from_dict
from natbench.contract_check import problems
from natbench.data.market1501 import write_market1501_fixture
from natbench.errors import CompositionError
from natbench.registry import get_registry
from natbench.resolve import load_task, resolve
from natbench.runner import derive_seed, lr_at, make_optimizer, train_step
from natbench.tasks.reid import ReIDTask

from helpers import train_steps, training_setup

REG = get_registry()
QUICK = ["model.arch=reid_cnn", "model.width=8", "task.params.height=64", "task.params.width=32"]
CAPS = ReIDTask.capabilities
COMPOSED = ["amd+nat", "pgd-at+nat", "trades+nat", "vanilla+nat", "amd+awp", "amd+ema", "amd+nat+awp"]


def _fits(kind: str, name: str) -> bool:
    e = REG.entry(kind, name)
    return set(getattr(REG.load(kind, name), "requires", ())) <= CAPS and (e.tasks is None or "reid" in e.tasks)


def _specs() -> list[str]:
    out = [n for n in REG.names("defenses") if _fits("defenses", n)]
    return sorted(set(out)) + [c for c in COMPOSED if c not in out]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_market1501_fixture(tmp_path_factory.mktemp("market"), n_train_ids=10, n_test_ids=4)


def _setup(root, defense: str, *sets: str):
    return training_setup("reid_market", defense, root, *QUICK, "threat_model.train_steps=2", *sets)


@pytest.mark.parametrize("defense", _specs())
def test_trains_a_few_steps_on_reid(root, defense):
    extra = ["free-at.m=2"] if defense.startswith("free-at") else []
    r, task, comp, model = _setup(root, defense, "training.batch_size=16", *extra)
    opt = make_optimizer(r.profile, model)
    gen = torch.Generator().manual_seed(0)
    comp.set_epoch(0, r.profile.epochs)
    train, val, _ = task.loaders(16, gen)
    before = [p.detach().clone() for p in model.parameters()]
    steps = 0
    for batch, out in train_steps(comp, model, train, task, opt, gen, n=2):
        assert math.isfinite(out.loss.item()) and out.parts, (defense, out.parts)
        assert all(math.isfinite(v) for v in out.parts.values()), (defense, out.parts)
        steps += 1
    assert steps >= 2 and model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), f"{defense}: no parameter moved"
    assert comp.epoch_end(model, task, batch, gen) is not None
    metrics = task.evaluate(comp.eval_model(model), val, None).metrics
    assert set(metrics) == set(ReIDTask.METRICS)


def test_amd_is_refused_on_classification():
    with pytest.raises(CompositionError, match="amd"):
        resolve(REG, "digits", "amd")
    with pytest.raises(CompositionError, match="amd"):
        resolve(REG, "digits", "amd+nat")


def test_amd_attack_and_loss(root):
    r, task, comp, model = _setup(root, "amd", "threat_model.train_steps=3")
    batch = next(iter(task.loaders(16, torch.Generator().manual_seed(0))[0]))
    base = comp.base
    assert base.ce_on == frozenset({"adv"}) and base.select_on == "robust"
    cache = {"ce_on": base.ce_on}
    model.train()
    ref_model = copy.deepcopy(model)
    base.prepare(model, batch, task, cache, torch.Generator().manual_seed(0))
    x_adv = cache["x_adv"]
    eps = task.threat.eps
    assert (x_adv - batch.x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - batch.x).abs().max() > eps / 2
    model.eval()
    obj = task.objective(model, batch, "ama")  # the attack pushed same-id features apart
    assert obj(x_adv).sum() > obj(batch.x).sum()
    model.train()
    out = base.loss(model, batch, task, cache)
    assert {"reid_adv", "ce_adv", "triplet_adv"} <= set(out.parts) and "logits_adv" in cache
    # the loss is the task's re-id loss on x' (the same numbers from a copy in the same BN mode)
    ref_model.load_state_dict(model.state_dict())
    ref_model.train()
    expected = task.task_loss(ref_model, batch, x_adv).mean()
    torch.testing.assert_close(out.loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)


def test_amd_bn_mode_during_the_attack(root):
    for mode, changes in (("train", True), ("eval", False)):
        _, task, comp, model = _setup(root, "amd", f"amd.attack_bn={mode}")
        batch = next(iter(task.loaders(16, torch.Generator().manual_seed(0))[0]))
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        before = bn.running_mean.clone()
        model.train()
        comp.base.prepare(model, batch, task, {}, torch.Generator().manual_seed(0))
        assert model.training
        assert (not torch.equal(before, bn.running_mean)) is changes, mode


def test_amd_clean_weight_and_nat_completion(root):
    _, task, comp, model = _setup(root, "amd", "amd.clean_weight=0.5")
    assert comp.base.ce_on == frozenset({"clean", "adv"})
    batch = next(iter(task.loaders(16, torch.Generator().manual_seed(0))[0]))
    out = comp.step_loss(model, batch, task, torch.Generator().manual_seed(0))
    assert {"reid_adv", "reid_clean", "ce_clean", "triplet_clean"} <= set(out.parts)
    # amd+nat: NAT completes the CE on the clean inputs (AMD's ce_on is {adv}) and adds the nasty KL on both
    _, task, comp, model = _setup(root, "amd+nat")
    out = comp.step_loss(model, batch, task, torch.Generator().manual_seed(0))
    assert {"reid_adv", "nat_ce_clean", "nat_kl_clean", "nat_kl_adv"} <= set(out.parts)
    assert "nat_ce_adv" not in out.parts


def test_amd_adaptive_loss_is_the_per_sample_identity_ce(root):
    from natbench.contracts import AdaptiveInput
    from natbench.errors import ConfigError
    from natbench.tasks.reid import smoothed_ce

    _, task, comp, model = _setup(root, "amd")
    model.eval()
    batch = next(iter(task.loaders(16, torch.Generator().manual_seed(0))[0]))
    x_adv = (batch.x + 0.02).clamp(0, 1)
    z = model(x_adv)
    inp = AdaptiveInput(model, task, batch, x_adv, z, lambda: model(batch.x), True, comp.base.ce_on)
    torch.testing.assert_close(comp.base.adaptive_loss(inp), smoothed_ce(z, batch.y, 0.1))
    _, _, test = task.loaders(16, torch.Generator(), eval_batch_size=16)
    q = next(iter(test.query))
    with pytest.raises(ConfigError, match="training identities"):
        comp.base.adaptive_loss(AdaptiveInput(model, task, q, q.x, model(q.x), lambda: model(q.x), True, comp.base.ce_on))


# ----------------------------------------------------------------------------- registry and spec
@pytest.mark.parametrize(("kind", "name"), [("task_kinds", "reid"), ("tasks", "reid_market"), ("defenses", "amd"),
                                            ("attacks", "sma"), ("attacks", "fna"), ("attacks", "ifgsm"),
                                            ("suites", "reid-paper"), ("suites", "reid-smoke")])
def test_registry_entries_honour_their_contracts(kind, name):
    assert problems(REG.entry(kind, name), REG) == []


def test_reid_market_spec():
    spec = load_task(REG, "reid_market")
    assert spec.kind == "reid" and spec.suite == "reid-paper" and spec.default_profile == "paper"
    assert spec.model.arch == "resnet50" and spec.model.num_classes == 0
    assert (spec.params["height"], spec.params["width"]) == (256, 128)
    paper, quick = spec.profiles["paper"], spec.profiles["quick"]
    assert (paper.optimizer, paper.lr, paper.weight_decay, paper.epochs, paper.batch_size) == ("adam", 3e-4, 5e-4, 60, 32)
    assert paper.milestones == (20, 40) and not paper.sets
    assert "model.arch=reid_cnn" in quick.sets and "task.params.height=64" in quick.sets
    r = resolve(REG, "reid_market", "amd+nat", sets=QUICK)
    assert [a.id for a in r.suite.attacks] == ["sma-8", "sma-10", "fna-8", "fna-10", "ifgsm-8", "ifgsm-10"]
    for a in r.suite.attacks:
        cls = REG.load("attacks", a.attack)
        p = from_dict(cls.Params, a.params, a.id)
        assert p.eps == (8 if a.id.endswith("-8") else 10) / 255 and p.steps == 16 and p.side == "query"
    ReIDTask(r.spec, None)  # params validate


# ----------------------------------------------------------------------------- robustness (slow)
def _train(root, defense: str, epochs: int, adversary=None) -> tuple[ReIDTask, torch.nn.Module]:
    r, task, comp, model = _setup(root, defense, f"training.epochs={epochs}", "threat_model.train_steps=5",
                                  "model.width=16")
    for component, dep in comp.dependencies():
        component.bind(dep.role, adversary)
    opt = make_optimizer(r.profile, model)
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(derive_seed(0, "epoch", epoch))
        torch.manual_seed(derive_seed(0, "global", epoch))
        train, _, _ = task.loaders(r.profile.batch_size, gen)
        for i, batch in enumerate(train):
            for g in opt.param_groups:
                g["lr"] = lr_at(r.profile, epoch + i / len(train))
            train_step(comp, model, batch, task, opt, gen)
    return task, model.eval()


@pytest.mark.slow
def test_adversarial_metric_training_raises_attacked_map(tmp_path):
    from natbench.attacks.ifgsm import IFGSM
    from natbench.attacks.sma import SMA

    root = write_market1501_fixture(tmp_path, n_train_ids=24, n_test_ids=12)
    res = {}
    for defense in ("vanilla", "amd"):
        task, model = _train(root, defense, 8)
        _, _, test = task.loaders(32, torch.Generator().manual_seed(0))
        gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        res[defense] = {"clean": task.evaluate(model, test, None).metrics["mAP"],
                        "sma": task.evaluate(model, test, SMA(SMA.Params(eps=8 / 255)), generator=gen()).metrics["mAP"],
                        "ifgsm": task.evaluate(model, test, IFGSM(IFGSM.Params(eps=8 / 255)), generator=gen()).metrics["mAP"]}
    assert res["vanilla"]["clean"] > 0.5 and res["amd"]["clean"] > 0.4, res
    assert res["amd"]["ifgsm"] > res["vanilla"]["ifgsm"] + 0.05, res
    assert res["amd"]["sma"] > res["vanilla"]["sma"], res
