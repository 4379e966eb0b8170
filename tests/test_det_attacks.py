"""The detection attacks (det-cls, det-loc, dag, rap): every registered one stays in the eps-ball and [0, 1],
keeps the model's mode, is reproducible under a generator and raises its own objective; DAG's steps
(gamma / ||g||_inf normalisation, active set, stopping, no projection until the end, raw vs clipped
output) on a linear toy detector where everything is known; DAG's adversarial labels; RAP's loss by hand."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from natbench.attacks.dag import DAG, wrong_labels
from natbench.attacks.rap import RAP, SHAPE_TARGET, rap_loss
from natbench.data.voc import write_voc_fixture
from natbench.registry import get_registry
from natbench.resolve import resolve, task_kind_cls
from natbench.tasks.detection import AnchorObjective

REG = get_registry()
DET_ATTACKS = [n for n in REG.names("attacks") if "detection" in (REG.entry("attacks", n).tasks or ())]
EPS = 8 / 255


def test_the_four_attacks_are_registered_for_detection_only():
    assert sorted(DET_ATTACKS) == ["dag", "det-cls", "det-loc", "rap"]
    suite = REG.entry("suites", "det-paper").spec_path().read_text()
    for name in DET_ATTACKS:
        assert f"attack: {name}" in suite


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_voc_fixture(tmp_path_factory.mktemp("voc"), n_trainval=8, n_test=6, seed=2)
    r = resolve(REG, "voc_detection", "vanilla", profile="quick")
    task = task_kind_cls(REG, r.spec)(r.spec, root)
    torch.manual_seed(0)
    model = task.build_model()
    _, _, test = task.loaders(8, torch.Generator().manual_seed(0), 6)
    return task, model, next(iter(test))


def _fast(cls):
    p = cls.Params()
    cut = {f.name: 4 for f in dataclasses.fields(p) if f.name == "steps"}
    return cls(dataclasses.replace(p, **cut))


@pytest.mark.parametrize("name", DET_ATTACKS)
@pytest.mark.parametrize("training", [False, True])
def test_every_detection_attack_stays_in_the_ball_keeps_the_mode_and_is_reproducible(setup, name, training):
    task, model, batch = setup
    model.train(training)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attack = _fast(REG.load("attacks", name))
    obj = task.objective(model, batch, attack.objective_kind)
    x1 = attack(obj, batch.x, eps=EPS, generator=torch.Generator().manual_seed(0))
    x2 = attack(obj, batch.x, eps=EPS, generator=torch.Generator().manual_seed(0))
    assert model.training == training
    assert torch.equal(x1, x2)
    assert (x1 - batch.x).abs().max() <= EPS + 1e-6 and x1.min() >= 0 and x1.max() <= 1
    assert (x1 - batch.x).abs().max() > 0
    if training:  # train-mode forwards update BatchNorm statistics; nothing else changes
        model.load_state_dict(state)
    else:
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.train()


@pytest.mark.parametrize("name, kind", [("det-cls", "det_cls"), ("det-loc", "det_loc")])
def test_task_loss_attacks_raise_their_loss(setup, name, kind):
    task, model, batch = setup
    model.eval()
    obj = task.objective(model, batch, kind)
    x_adv = REG.load("attacks", name)()(obj, batch.x, eps=EPS)
    with torch.no_grad():
        assert (obj(x_adv) > obj(batch.x)).all()
    model.train()


# ----------------------------------------------------------------------------------------- DAG
class _Linear:
    """A toy detector with A anchors whose class logits are linear in the pixels: z = W x."""

    def __init__(self, b=2, d=12, a=5, c=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(a, c, d, generator=g)
        self.calls = []

    def heads(self, x):
        self.calls.append(x.detach().clone())
        z = torch.einsum("acd,bd->bac", self.w, x.flatten(1))
        return z, torch.zeros(*z.shape[:2], 4)


def test_dag_step_normalisation_active_set_and_stopping():
    torch.manual_seed(0)
    toy = _Linear()
    x = torch.rand(2, 3, 2, 2) * 0.5 + 0.25
    with torch.no_grad():
        z0 = toy.heads(x)[0]
    true = z0.argmax(-1)  # every anchor starts correctly classified ...
    positive = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    obj = AnchorObjective(toy.heads, true, positive, 4)
    toy.calls.clear()
    gamma = 0.5 / 255
    dag = DAG(DAG.Params(steps=300, gamma=gamma))
    x_adv = dag(obj, x, eps=EPS, generator=torch.Generator().manual_seed(7))
    adv = wrong_labels(true, 4, True, torch.Generator().manual_seed(7))
    # step 1 by hand: g = d/dx sum_{active} z_adv - z_true, r_1 = gamma / ||g||_inf * g per image
    w = toy.w
    g = torch.zeros(2, 12)
    for i in range(2):
        for a in positive[i].nonzero().flatten().tolist():
            g[i] += w[a, adv[i, a]] - w[a, true[i, a]]
    r1 = gamma * g / g.abs().amax(1, keepdim=True)
    torch.testing.assert_close(toy.calls[1].flatten(1), (x.flatten(1) + r1).clamp(0, 1))
    # it stopped as soon as no positive anchor was still classified as its true label
    n = dag.last_iterations
    assert 0 < n < 300 and len(toy.calls) == n + 1
    last, penultimate = toy.calls[-1], toy.calls[-2]
    torch.testing.assert_close(last, dag.last_raw)
    with torch.no_grad():
        z = toy.heads(last)[0]
        before = toy.heads(penultimate)[0]
    assert not (positive & (z.argmax(-1) == true)).any() and (positive & (before.argmax(-1) == true)).any()
    # each step moves a pixel by at most gamma: raw L-inf <= n * gamma, the output is the raw one clipped to eps
    raw = dag.last_raw - x
    assert raw.abs().max() <= n * gamma + 1e-6
    torch.testing.assert_close(x_adv, (x + raw.clamp(-EPS, EPS)).clamp(0, 1))


def test_dag_raw_perturbation_can_leave_the_ball_but_the_output_cannot():
    toy = _Linear(seed=3)
    x = torch.full((2, 3, 2, 2), 0.5)
    with torch.no_grad():
        z0 = toy.heads(x)[0]
    # make the true labels the *least* likely class, with the adversarial label the best: DAG needs many steps
    true = z0.argmin(-1)
    obj = AnchorObjective(toy.heads, true, torch.ones_like(true, dtype=torch.bool), 4)
    dag = DAG(DAG.Params(steps=40, gamma=1 / 255))
    x_adv = dag(obj, x, eps=2 / 255)
    assert dag.last_iterations == 0  # nothing is classified as its true label: no active target, no step
    torch.testing.assert_close(x_adv, x)
    true = z0.argmax(-1)
    obj = AnchorObjective(toy.heads, true, torch.ones_like(true, dtype=torch.bool), 4)
    x_adv = dag(obj, x, eps=2 / 255, generator=torch.Generator().manual_seed(0))
    assert (dag.last_raw - x).abs().max() > 2 / 255 + 1e-4
    assert (x_adv - x).abs().max() <= 2 / 255 + 1e-7


def test_dag_adversarial_labels():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 21, (20000,), generator=g)
    adv = wrong_labels(labels, 21, True, torch.Generator().manual_seed(1))
    assert (adv != labels).all() and adv.min() == 0 and adv.max() == 20
    counts = torch.bincount(adv[labels == 5], minlength=21).float()
    assert counts[5] == 0 and counts[torch.arange(21) != 5].min() > 0.6 * counts.sum() / 20
    fg = wrong_labels(labels, 21, False, torch.Generator().manual_seed(1))
    assert (fg != labels).all() and (fg >= 1).all() and fg.max() == 20
    assert torch.equal(adv, wrong_labels(labels, 21, True, torch.Generator().manual_seed(1)))


# ----------------------------------------------------------------------------------------- RAP
def test_rap_loss_by_hand():
    # one image, three anchors, classes (background, a, b)
    z = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    reg = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, -2.0, -2.0], [1.0, 0.0, 0.0, 0.0]]])
    positive = torch.tensor([[False, True, True]])
    tau = torch.tensor(SHAPE_TARGET)
    got = rap_loss(z, reg, positive, objectness_thresh=0.1, shape_weight=2.0, shape_target=tau)
    p = torch.softmax(z[0], -1)
    high = (1 - p[:, 0]) > 0.1  # all three: fg prob 2/3, 0.0907 (below), 0.787
    assert high.tolist() == [True, False, True]
    label = (p[0, 0].log() + p[2, 0].log()) / 2

    def sl1(d):
        d = d.abs()
        return torch.where(d < 1, 0.5 * d * d, d - 0.5).sum()

    shape = -(sl1(reg[0, 1] - tau) + sl1(reg[0, 2] - tau)) / 2
    torch.testing.assert_close(got, (label + 2.0 * shape).view(1))
    assert tau.tolist() == pytest.approx([5.0, 5.0, 5 * math.log(0.5), 5 * math.log(0.5)])


def test_rap_lowers_objectness_and_moves_offsets_toward_the_target(setup):
    task, model, batch = setup
    model.eval()
    obj = task.objective(model, batch, "anchors")
    rap = RAP()
    x_adv = rap(obj, batch.x, eps=EPS)
    tau = torch.tensor(SHAPE_TARGET)
    with torch.no_grad():
        before = rap_loss(*obj(batch.x), obj.positive, objectness_thresh=0.1, shape_weight=1.0, shape_target=tau)
        after = rap_loss(*obj(x_adv), obj.positive, objectness_thresh=0.1, shape_weight=1.0, shape_target=tau)
    assert (after > before).all()
    model.train()
