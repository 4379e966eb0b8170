"""Defenses on the detection task: MTD's per-image (and RobustDet's per-batch) domain choice recomputed
independently, its BatchNorm handling, outer loss and composition with NAT (completion rule, adversary
rows), vanilla's total detection loss, one-domain variants and pgd-at running, and MTD refused on other
task kinds. CPU, the VOC fixture, seconds."""
from __future__ import annotations

import math

import pytest
import torch

from natbench.attacks.pgd import pgd_linf
from natbench.contracts import AdaptiveInput
from natbench.data.voc import write_voc_fixture
from natbench.errors import CompositionError, ConfigError
from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.runner import make_optimizer

from helpers import train_steps, training_setup

REG = get_registry()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_voc_fixture(tmp_path_factory.mktemp("voc"), n_trainval=12, n_test=4, seed=4)


def _setup(root, defense: str, *sets: str):
    r, task, comp, model = training_setup("voc_detection", defense, root, *sets)
    train, _, _ = task.loaders(5, torch.Generator().manual_seed(0), 4)
    return r, task, comp, model, next(iter(train))


@pytest.mark.parametrize("defense", ["vanilla", "mtd", "mtd+nat", "vanilla+nat", "pgd-at", "mtd+awp", "mtd+ema", "mtd+nat+awp"])
def test_trains_a_few_steps(root, defense):
    r, task, comp, model, batch = _setup(root, defense)
    opt = make_optimizer(r.profile, model)
    gen = torch.Generator().manual_seed(0)
    before = [p.detach().clone() for p in model.parameters()]
    for _, out in train_steps(comp, model, [batch, batch], task, opt, gen, n=2):
        assert math.isfinite(out.loss.item()) and all(math.isfinite(v) for v in out.parts.values()), out.parts
    assert model.training and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if defense.startswith("vanilla"):
        assert {"cls_clean", "loc_clean"} <= set(out.parts)  # the total detection loss, not a matched-anchor CE
    if defense.startswith("mtd"):
        assert {"det_adv", "cls_adv", "loc_adv", "det_clean", "mtd_loc_fraction"} <= set(out.parts)


def test_vanilla_loss_is_torchvisions_ssd_loss(root):
    _, task, comp, model, batch = _setup(root, "vanilla")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = comp.step_loss(model, batch, task, torch.Generator().manual_seed(0))
    model.load_state_dict(state)
    per, parts = task.training_loss(model, batch, batch.x)
    torch.testing.assert_close(out.loss, per.mean())
    assert out.parts["cls_clean"] == pytest.approx(float(parts["cls"])) and out.parts["loc_clean"] == pytest.approx(float(parts["loc"]))


@pytest.mark.parametrize("select", ["image", "batch"])
def test_mtd_picks_the_domain_with_the_larger_total_loss(root, select):
    r, task, comp, model, batch = _setup(root, "mtd", f"mtd.select={select}")
    mtd = comp.base
    cache: dict = {}
    model.train()
    mtd.prepare(model, batch, task, cache, torch.Generator().manual_seed(0))
    assert model.training
    # independently: both domains' PGD in eval mode (no random start: deterministic), then the total loss
    tm = task.threat
    model.eval()
    x_cls = pgd_linf(task.objective(model, batch, "det_cls"), batch.x, eps=tm.eps, steps=tm.train_steps,
                     step_size=tm.train_step_size, random_start=False)
    x_loc = pgd_linf(task.objective(model, batch, "det_loc"), batch.x, eps=tm.eps, steps=tm.train_steps,
                     step_size=tm.train_step_size, random_start=False)
    with torch.no_grad():
        total = task.objective(model, batch, "det_total")
        l_cls, l_loc = total(x_cls), total(x_loc)
    model.train()
    pick = (l_loc > l_cls) if select == "image" else (l_loc.sum() > l_cls.sum()).expand(len(batch))
    want = torch.where(pick.view(-1, 1, 1, 1), x_loc, x_cls)
    torch.testing.assert_close(cache["x_adv"], want)
    rows = [("loc" if torch.equal(cache["x_adv"][i], x_loc[i]) else "cls") for i in range(len(batch))]
    if select == "batch":
        assert len(set(rows)) == 1
    assert float(cache["mtd_loc_fraction"]) == pytest.approx(float(pick.float().mean()))
    assert (cache["x_adv"] - batch.x).abs().max() <= tm.eps + 1e-6


def test_mtd_inner_attack_in_eval_mode_leaves_batchnorm_statistics_alone(root):
    _, task, comp, model, batch = _setup(root, "mtd")
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    comp.base.prepare(model.train(), batch, task, {}, torch.Generator().manual_seed(0))
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    _, task, comp, model, batch = _setup(root, "mtd", "mtd.attack_bn=train")
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    comp.base.prepare(model.train(), batch, task, {}, torch.Generator().manual_seed(0))
    assert any(not torch.equal(v, buffers[k]) for k, v in model.named_buffers() if "running_mean" in k)


def test_mtd_outer_loss_mixes_clean_and_adversarial_losses(root):
    _, task, comp, model, batch = _setup(root, "mtd", "mtd.clean_weight=0.3")
    model.eval()  # fixed BatchNorm: the three forwards below see the same statistics
    cache = {"x_adv": (batch.x + 4 / 255).clamp(0, 1)}
    out = comp.base.loss(model, batch, task, cache)
    want = 0.3 * task.training_loss(model, batch, batch.x)[0].mean() + 0.7 * task.training_loss(model, batch, cache["x_adv"])[0].mean()
    torch.testing.assert_close(out.loss, want)
    assert comp.base.ce_on == {"clean", "adv"} and set(cache) >= {"logits_clean", "logits_adv"}
    # adaptive_loss: its per-image training loss with the attacked input as x'; the mean is the training loss
    inp = AdaptiveInput(model, task, batch, cache["x_adv"], None, lambda: None, True, comp.base.ce_on)
    torch.testing.assert_close(comp.base.adaptive_loss(inp).mean(), want)
    _, _, comp0, _, _ = _setup(root, "mtd", "mtd.clean_weight=0")
    assert comp0.base.ce_on == {"adv"}
    with pytest.raises(ConfigError, match="clean_weight"):
        resolve(REG, "voc_detection", "mtd", profile="quick", sets=["mtd.clean_weight=1"])


@pytest.mark.parametrize("weight, nat_ce", [(0.5, set()), (0.0, {"nat_ce_clean"})])
def test_nat_completion_rule_with_mtd(root, weight, nat_ce):
    """MTD's loss has the classification loss on x and x' (clean_weight > 0): NAT adds only its KL terms;
    adversarial-only MTD: NAT adds a CE on the clean matched anchors (its completion of Eq. 5)."""
    _, task, comp, model, batch = _setup(root, "mtd+nat", f"mtd.clean_weight={weight}")
    out = comp.step_loss(model, batch, task, torch.Generator().manual_seed(0))
    keys = {k for k in out.parts if k.startswith("nat_")}
    assert keys == {"nat_kl_clean", "nat_kl_adv"} | nat_ce


def test_nat_adversary_rows_line_up_with_the_target(root):
    """NAT's adversary forward (one eval-mode pass on cat([x, x'])) returns, per input, the adversary's
    logits of the same matched anchors as the target's."""
    _, task, comp, model, batch = _setup(root, "mtd+nat")
    nat = comp.regularizers[0]
    x_adv = (batch.x - 3 / 255).clamp(0, 1)
    za_clean, za_adv = nat.adversary_logits(batch, task, (batch.x, x_adv))
    with torch.no_grad():
        torch.testing.assert_close(za_clean, task.logits(nat.adversary, batch, batch.x))
        torch.testing.assert_close(za_adv, task.logits(nat.adversary, batch, x_adv))
        zt = task.logits(model.eval(), batch, batch.x)
    assert za_clean.shape == zt.shape and ((za_clean == 0).all(1) == (zt == 0).all(1)).all()


@pytest.mark.parametrize("domain", ["cls", "loc", "total"])
def test_one_domain_variants(root, domain):
    _, task, comp, model, batch = _setup(root, "mtd", f"mtd.domains={domain}")
    cache: dict = {}
    comp.base.prepare(model, batch, task, cache, torch.Generator().manual_seed(0))
    model.eval()
    want = pgd_linf(task.objective(model, batch, f"det_{domain}"), batch.x, eps=task.threat.eps,
                    steps=task.threat.train_steps, step_size=task.threat.train_step_size, random_start=False)
    torch.testing.assert_close(cache["x_adv"], want)
    assert "mtd_loc_fraction" not in cache


@pytest.mark.parametrize("task_name, defense", [("digits", "mtd"), ("digits", "mtd+nat"), ("reid_market", "mtd")])
def test_mtd_is_refused_on_other_task_kinds(task_name, defense):
    with pytest.raises(CompositionError, match="mtd supports task kinds detection"):
        resolve(REG, task_name, defense)


def test_amd_is_refused_on_detection():
    with pytest.raises(CompositionError, match="amd"):
        resolve(REG, "voc_detection", "amd", profile="quick")


def test_mtd_choice_is_per_image_not_per_batch():
    """A stub task whose cls-domain attack raises and loc-domain attack lowers every pixel, and whose
    total loss prefers the cls example for images 0 and 1 and the loc example for 2 and 3 (with a
    batch sum that prefers loc): per image 0, 1 -> cls, 2, 3 -> loc; per batch all loc."""
    from types import SimpleNamespace

    from natbench.contracts import Batch
    from natbench.defenses.mtd import MTD

    x = torch.full((4, 1, 2, 2), 0.5)
    sign = torch.tensor([1.0, 1.0, -3.0, -1.0])

    def objective(model, batch, kind):
        return {"det_cls": lambda z: z.flatten(1).sum(1), "det_loc": lambda z: -z.flatten(1).sum(1),
                "det_total": lambda z: (z - x).flatten(1).sum(1) * sign}[kind]

    task = SimpleNamespace(threat=SimpleNamespace(eps=0.1, train_steps=2, train_step_size=0.05), objective=objective)
    model = torch.nn.Identity()
    for select, want in (("image", ["cls", "cls", "loc", "loc"]), ("batch", ["loc"] * 4)):
        cache: dict = {}
        MTD(MTD.Params(select=select)).prepare(model, Batch(x, torch.zeros(4)), task, cache, torch.Generator())
        got = ["cls" if torch.allclose(cache["x_adv"][i], x[i] + 0.1) else "loc" for i in range(4)]
        assert got == want, select
        assert all(torch.allclose(cache["x_adv"][i], x[i] + (0.1 if g == "cls" else -0.1)) for i, g in enumerate(got))
