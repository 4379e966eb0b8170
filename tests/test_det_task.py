"""The detection task kind against torchvision's SSD: per-image losses summing to SSD.compute_loss (train
and eval BatchNorm), the preprocessing against GeneralizedRCNNTransform, detections against the
eval-mode forward, matched-anchor logits (layout, padding, rows fixed by the ground truth), loaders
(determinism, flip, matching), spec checks, and no download ever. CPU, the VOC fixture, seconds."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from natbench.contracts import Batch
from natbench.data.voc import write_voc_fixture
from natbench.errors import ConfigError
from natbench.registry import get_registry
from natbench.resolve import resolve, task_kind_cls
from natbench.tasks.detection import NUM_CLASSES, DetectionNet, DetectionTask, build_ssd

REG = get_registry()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_voc_fixture(tmp_path_factory.mktemp("voc"), n_trainval=24, n_test=8, seed=5)


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    import torch.hub
    import torchvision.models._api as tv_api

    def refuse(*a, **k):
        raise AssertionError(f"a download was attempted: {a} {k}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse, raising=False)


def make_task(root, *sets, defense="vanilla") -> DetectionTask:
    r = resolve(REG, "voc_detection", defense, profile="quick", sets=list(sets))
    task = task_kind_cls(REG, r.spec)(r.spec, root)
    assert isinstance(task, DetectionTask)
    return task


@pytest.fixture(scope="module")
def setup(root):
    task = make_task(root)
    torch.manual_seed(0)
    model = task.build_model()
    train, _, test = task.loaders(8, torch.Generator().manual_seed(0), 8)
    return task, model, next(iter(train)), next(iter(test))


def _targets(batch: Batch) -> list[dict]:
    """torchvision's training targets: the non-difficult boxes (what the task trains on)."""
    out = []
    for i in range(len(batch)):
        n = int(batch.extra["num_objects"][i])
        keep = ~batch.extra["difficult"][i, :n]
        out.append({"boxes": batch.extra["boxes"][i, :n][keep], "labels": batch.extra["labels"][i, :n][keep]})
    return out


@pytest.mark.parametrize("bn", ["train", "eval"])
def test_per_image_losses_sum_to_torchvision_compute_loss(setup, bn):
    task, model, batch, _ = setup
    assert batch.extra["difficult"].any(), "the batch should hold a difficult object (left out of the targets)"
    model.train(bn == "train")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cls, loc, n, _ = task.losses(model, batch, batch.x)
    model.load_state_dict(state)  # undo the running-statistics update of a train-mode forward
    # torchvision's own loss: forward in train mode (eval BatchNorm: only the top module's flag, formats.md Sec. 5)
    model.ssd.training = True
    ref = model.ssd(list(batch.x), _targets(batch))
    model.load_state_dict(state)
    model.train(bn == "train")
    norm = max(1, int(n.sum()))
    torch.testing.assert_close(cls.sum() / norm, ref["classification"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loc.sum() / norm, ref["bbox_regression"], rtol=1e-5, atol=1e-6)
    per, parts = task.training_loss(model, batch, batch.x)
    model.load_state_dict(state)
    assert per.shape == (len(batch),)
    torch.testing.assert_close(per.mean(), ref["classification"] + ref["bbox_regression"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["cls"], ref["classification"].detach(), rtol=1e-5, atol=1e-6)
    assert (n == (batch.extra["matched"] >= 0).sum(1)).all() and (n > 0).all()
    model.train()


def test_objectives_are_per_image_and_differentiable_in_both_modes(setup):
    task, model, batch, _ = setup
    for training in (True, False):
        model.train(training)
        for kind in ("det_cls", "det_loc", "det_total", "ce"):
            obj = task.objective(model, batch, kind)
            x = batch.x.clone().requires_grad_(True)
            loss = obj(x)
            assert loss.shape == (len(batch),) and (loss > 0).all()
            (g,) = torch.autograd.grad(loss.sum(), x)
            assert (g.flatten(1).abs().amax(1) > 0).all()
            assert model.training == training
        model.eval()
        cls, loc, n, _ = task.losses(model, batch, batch.x)
        with torch.no_grad():
            total = task.objective(model, batch, "det_total")(batch.x)
            sub = Batch(batch.x[2:5], batch.y[2:5], None, {k: (v[2:5] if isinstance(v, torch.Tensor) else v)
                                                          for k, v in batch.extra.items()})
            alone = task.objective(model, sub, "det_total")(sub.x)
        torch.testing.assert_close(total, ((cls + loc) / n).detach())
        torch.testing.assert_close(alone, total[2:5])  # an image's objective does not depend on the others
    with pytest.raises(ConfigError, match="det_cls"):
        task.objective(model, batch, "logits")
    model.train()


def test_matched_anchor_logits_layout_and_rows_fixed_by_the_ground_truth(setup, root):
    task, model, batch, _ = setup
    model.eval()
    pos, y = batch.extra["pos_anchor"], batch.y
    assert pos.shape == y.shape and ((pos >= 0) == (y != -100)).all()
    with torch.no_grad():
        z = task.logits(model, batch, batch.x)
        cls_logits = model(batch.x)["cls_logits"]
        assert z.shape == (len(batch), NUM_CLASSES, pos.shape[1])
        for i in range(len(batch)):
            k = pos[i] >= 0
            torch.testing.assert_close(z[i][:, k], cls_logits[i, pos[i][k]].T)
            assert (z[i][:, ~k] == 0).all()
            m = batch.extra["matched"][i]
            assert y[i][k].tolist() == batch.extra["labels"][i, m[pos[i][k]]].tolist()
        # NAT's adversary forward on cat([x, x']): the same anchors for every copy
        x_adv = (batch.x + 0.03).clamp(0, 1)
        both = task.logits(model, batch, torch.cat([batch.x, x_adv]))
        torch.testing.assert_close(both[: len(batch)], z)
        torch.testing.assert_close(both[len(batch):], task.logits(model, batch, x_adv))
        # another model (NAT's adversary) gives rows for the same anchors: same layout and padding
        torch.manual_seed(1)
        other = task.build_model().eval()
        z2 = task.logits(other, batch, batch.x)
        assert z2.shape == z.shape and ((z2 == 0).all(1) == (z == 0).all(1)).all()
    # the KL form NAT uses: padded columns contribute exactly 0
    kl = torch.nn.functional.kl_div(torch.log_softmax(z2 / 4, 1), torch.softmax(z / 4, 1), reduction="none").sum(1)
    assert (kl[pos < 0] == 0).all() and (kl[pos >= 0] > 0).all()
    ce = torch.nn.functional.cross_entropy(z, y)  # NAT's CE completion: padding ignored
    want = torch.nn.functional.cross_entropy(z.permute(0, 2, 1)[pos >= 0], y[pos >= 0])
    torch.testing.assert_close(ce, want)
    big = make_task(root, "data.image_size=128")
    with pytest.raises(ConfigError, match="default boxes"):
        torch.manual_seed(0)
        task.logits(big.build_model(), batch, batch.x)  # other anchors: refused
    model.train()


def test_detections_equal_torchvision_eval_forward(setup):
    task, model, _, batch = setup
    model.eval()
    with torch.no_grad():
        ours = model.detect(batch.x)
        ref = model.ssd(list(batch.x))
        sizes = [tuple(s) for s in batch.extra["orig_size"].tolist()]
        scaled = model.detect(batch.x, sizes)
    for a, b, c, (h, w) in zip(ours, ref, scaled, sizes):
        assert a["boxes"].shape[0] > 0
        for k in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[k], b[k])
        s = 96.0
        torch.testing.assert_close(c["boxes"], a["boxes"] * torch.tensor([w / s, h / s, w / s, h / s]))
    model.train()


def test_preprocess_is_torchvisions_transform(setup):
    _, model, _, _ = setup
    model.eval()
    for shape in ((2, 3, 96, 96), (2, 3, 70, 110)):
        x = torch.rand(*shape)
        ref = model.ssd.transform(list(x))[0].tensors
        torch.testing.assert_close(model.preprocess(x), ref)
    model.train()


def test_loaders_are_deterministic_flip_and_match(root):
    task = make_task(root)
    spec = task.anchor_spec()
    assert spec.anchors.shape == (850, 4)

    def first(seed):
        train, _, _ = task.loaders(8, torch.Generator().manual_seed(seed), 8)
        n = len(train)  # the plan len() sees is the one the iteration uses
        batches = list(train)
        assert n == len(batches) == 3 and sum(map(len, batches)) == 19  # 24 trainval - 20 % validation
        return batches[0]

    a, b, c = first(0), first(0), first(1)
    assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index) and torch.equal(a.extra["boxes"], b.extra["boxes"])
    assert not torch.equal(a.index, c.index)
    # flips: the flipped image and boxes mirror the unflipped ones
    noaug = make_task(root, "data.augment=none")
    train, _, _ = noaug.loaders(8, torch.Generator().manual_seed(0), 8)
    plain = next(iter(train))
    assert torch.equal(plain.index, a.index)
    flipped = [i for i in range(len(a)) if not torch.equal(a.x[i], plain.x[i])]
    assert flipped and len(flipped) < len(a)
    for i in flipped:
        torch.testing.assert_close(a.x[i], plain.x[i].flip(-1))
        n = int(a.extra["num_objects"][i])
        bx, pb = a.extra["boxes"][i, :n], plain.extra["boxes"][i, :n]
        torch.testing.assert_close(bx[:, [0, 2]], 96 - pb[:, [2, 0]])
    # matching: torchvision's SSDMatcher on box_iou(non-difficult boxes, default boxes)
    from torchvision.ops import box_iou

    for i in range(len(a)):
        n = int(a.extra["num_objects"][i])
        keep = (~a.extra["difficult"][i, :n]).nonzero().flatten()
        ref = spec.matcher(box_iou(a.extra["boxes"][i, keep], spec.anchors))
        want = torch.where(ref >= 0, keep[ref.clamp(min=0)], ref.new_full(ref.shape, -1))
        assert torch.equal(a.extra["matched"][i], want)
    # validation and test loaders are sequential and unaugmented
    _, val, test = task.loaders(8, torch.Generator().manual_seed(3), 4)
    assert [b.index.tolist() for b in test] == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(val.items) == 5


def test_spec_checks(root):
    with pytest.raises(ConfigError, match="300x300"):
        make_task(root, "model.arch=ssd300_vgg16", "data.image_size=96")
    with pytest.raises(ConfigError, match="unknown detector"):
        make_task(root, "model.arch=yolo")
    with pytest.raises(ConfigError, match="21 classes"):
        make_task(root, "model.num_classes=20")
    with pytest.raises(ConfigError, match="augment"):
        make_task(root, "data.augment=crop_flip")
    with pytest.raises(ConfigError, match="correct_score"):
        make_task(root, "task.params.correct_score=2")


def test_ssdlite_builds_without_download_and_has_3234_default_boxes():
    torch.manual_seed(0)
    model = DetectionNet(build_ssd("ssdlite320_mobilenet_v3_large", 320, 16, [0.5] * 3, [0.5] * 3)).eval()
    with torch.no_grad():
        cls_logits, bbox, anchors = model.head(torch.rand(1, 3, 320, 320))
    assert anchors.shape == (3234, 4) and cls_logits.shape == (1, 3234, NUM_CLASSES) and bbox.shape == (1, 3234, 4)


@pytest.mark.slow
def test_ssd300_vgg16_builds_without_download_and_has_8732_default_boxes(root):
    task = make_task(root, "model.arch=ssd300_vgg16", "data.image_size=300")
    model = task.build_model()
    assert isinstance(model, DetectionNet) and model.size == (300, 300)
    assert task.anchor_spec().anchors.shape == (8732, 4)
    t = model.ssd.transform
    assert t.image_mean == pytest.approx([0.48235, 0.45882, 0.40784]) and t.image_std == pytest.approx([1 / 255] * 3)


def test_evaluate_returns_map_and_per_image_flags(setup, root):
    task, model, _, _ = setup
    _, _, test = task.loaders(8, torch.Generator().manual_seed(0), 4)
    model.train()
    out = task.evaluate(model, test, None)
    assert model.training and set(out.metrics) == {"mAP", "mAP_area"} and out.correct.shape == (8,)
    assert 0 <= out.metrics["mAP"] <= 1


def test_losses_under_bf16_autocast(setup):
    """Training on CUDA runs under bf16 autocast (profile amp); the loss pieces must mix dtypes correctly
    (checked with CPU autocast)."""
    task, model, batch, _ = setup
    model.eval()
    with torch.no_grad():
        ref, _ = task.training_loss(model, batch, batch.x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            per, parts = task.training_loss(model, batch, batch.x)
            z = task.logits(model, batch, batch.x)
    assert per.dtype == torch.float32 and z.dtype == torch.bfloat16
    torch.testing.assert_close(per, ref, rtol=0.05, atol=0.05)
    model.train()
