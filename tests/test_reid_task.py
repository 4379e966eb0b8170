"""The reid task kind: the model wrapper against torchreid's models, the losses against torchreid's losses,
the identity-balanced sampler, loaders and transforms (against torchreid/torchvision transforms), the
validation carve-out, and evaluation against torchreid's evaluate_rank on independently extracted
features. CPU, the Market-1501 fixture, a few seconds."""
from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from natbench.contracts import Batch
from natbench.data.market1501 import read_market1501, write_market1501_fixture
from natbench.errors import ConfigError
from natbench.registry import get_registry
from natbench.resolve import resolve, task_kind_cls
from natbench.tasks import reid
from natbench.tasks.reid import (QueryGallery, ReIDNet, ReIDTask, ReIDTransform, batch_hard_triplet, carve_validation,
                                 identity_balanced_batches, smoothed_ce)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tr_losses = pytest.importorskip("torchreid.reid.losses")
    tr_models = pytest.importorskip("torchreid.reid.models")
    tr_rank = pytest.importorskip("torchreid.reid.metrics.rank")
    tr_transforms = pytest.importorskip("torchreid.reid.data.transforms")
    tr_sampler = pytest.importorskip("torchreid.reid.data.sampler")

REG = get_registry()
QUICK = ["model.arch=reid_cnn", "model.width=8", "task.params.height=64", "task.params.width=32"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_market1501_fixture(tmp_path_factory.mktemp("market"))


def make_task(root, *sets, defense="vanilla", suite=None) -> ReIDTask:
    r = resolve(REG, "reid_market", defense, profile="quick", sets=[*QUICK, *sets], suite=suite)
    task = task_kind_cls(REG, r.spec)(r.spec, root)
    assert isinstance(task, ReIDTask)
    return task


# ----------------------------------------------------------------------------- model wrapper
@pytest.mark.parametrize("arch", ["osnet_x0_25", "resnet18"])
def test_wrapper_exposes_logits_and_embedding_in_both_modes(arch):
    torch.manual_seed(0)
    net = tr_models.build_model(arch, 7, loss="softmax", pretrained=False, use_gpu=False)
    model = ReIDNet(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = torch.rand(4, 3, 64, 32)
    xn = model.normalize(x)
    model.eval()
    with torch.no_grad():
        emb_ref = net(xn)  # torchreid: the embedding in eval mode
        assert torch.equal(model.features(x), emb_ref)
        logits_eval = model(x)
    assert logits_eval.shape == (4, 7) and torch.allclose(logits_eval, net.classifier(emb_ref))
    model.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        logits_ref = net(xn)  # torchreid: the logits in train mode (BN batch statistics)
    net.load_state_dict(state)  # undo the running-statistics update of that forward
    with torch.no_grad():
        z, f = model.logits_and_features(x)
    assert torch.allclose(z, logits_ref, atol=1e-6) and torch.allclose(model(x), logits_ref, atol=1e-6)
    assert f.shape == emb_ref.shape and model.training


def test_build_model_never_downloads_and_sizes_the_classifier(root, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a download was attempted")

    import torch.hub

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.utils.model_zoo, "load_url", refuse, raising=False)
    task = make_task(root, "model.arch=osnet_x0_25")
    model = task.build_model()
    assert isinstance(model, ReIDNet) and model.net.classifier.out_features == task.num_classes() == 24  # 32 - 8 val ids (quick: val_fraction 0.25)
    assert make_task(root, "model.num_classes=40").build_model().net.classifier.out_features == 40
    with pytest.raises(ConfigError, match="num_classes 5 < 24"):
        make_task(root, "model.num_classes=5").build_model()
    with pytest.raises(ConfigError, match="Did you mean: osnet_x0_25"):
        make_task(root, "model.arch=osnet_x0_2").build_model()


def test_task_params_are_strict(root):
    with pytest.raises(ConfigError, match="task.params: unknown key 'heigth'"):
        make_task(root, "task.params.heigth=64")
    with pytest.raises(ConfigError, match="data.augment"):
        make_task(root, "data.augment=resized_crop_flip")
    with pytest.raises(ConfigError, match="image_size"):
        make_task(root, "data.image_size=64")


# ----------------------------------------------------------------------------- losses
def test_losses_equal_torchreid():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 9, generator=g)
    y = torch.arange(12) % 9 // 3 * 3  # 3 ids x 4 (and 9 classes)
    for eps in (0.1, 0.0):
        ref = tr_losses.CrossEntropyLoss(9, eps=0.1, use_gpu=False, label_smooth=eps > 0)(logits, y)
        torch.testing.assert_close(smoothed_ce(logits, y, eps).mean(), ref, rtol=0, atol=1e-6)
    f1 = torch.randn(12, 16, generator=g, requires_grad=True)
    f2 = f1.detach().clone().requires_grad_(True)
    ours = batch_hard_triplet(f1, y, 0.3)
    ref = tr_losses.TripletLoss(margin=0.3)(f2, y)
    assert ours.shape == (12,)
    torch.testing.assert_close(ours.mean(), ref, rtol=0, atol=1e-6)
    ours.mean().backward()
    ref.backward()
    torch.testing.assert_close(f1.grad, f2.grad, rtol=0, atol=1e-6)
    # hand-derived, 1-d features 0, 1, 3 with ids 0, 0, 1 and margin 2.5 (d = |a - b|, d(a, a) = sqrt(1e-12)):
    # anchor 0: d_ap 1, d_an 3 -> 0.5; anchor 1: d_ap 1, d_an 2 -> 1.5; anchor 2: d_ap = d(2, 2) ~ 0, d_an 2 -> 0.5
    f = torch.tensor([[0.0], [1.0], [3.0]])
    torch.testing.assert_close(batch_hard_triplet(f, torch.tensor([0, 0, 1]), 2.5),
                               torch.tensor([0.5, 1.5, 0.5]), atol=1e-5, rtol=0)
    assert batch_hard_triplet(f, torch.tensor([0, 0, 0]), 0.3).eq(0).all()  # no negatives


def test_task_loss_is_the_torchreid_engine_loss(root):
    task = make_task(root)
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(iter(task.loaders(16, torch.Generator().manual_seed(0))[0]))
    per = task.task_loss(model, batch, batch.x)
    with torch.no_grad():
        model.train()
        z, f = model.logits_and_features(batch.x)
    ref = (tr_losses.CrossEntropyLoss(task.num_classes(), use_gpu=False)(z, batch.y)
           + tr_losses.TripletLoss(0.3)(f, batch.y))
    assert per.shape == (16,)
    torch.testing.assert_close(per.mean().detach(), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- sampler and loaders
def _check_pk(indices: list[int], labels: list[int], p: int, k: int) -> None:
    assert len(indices) % (p * k) == 0
    for b in range(0, len(indices), p * k):
        chunk_ids = [labels[i] for i in indices[b: b + p * k]]
        groups = [chunk_ids[j: j + k] for j in range(0, p * k, k)]
        assert all(len(set(gr)) == 1 for gr in groups), "each K-chunk is one identity"
        assert len({gr[0] for gr in groups}) == p, "P distinct identities per batch"


def test_identity_balanced_sampler_has_torchreids_structure():
    labels = [i // 6 for i in range(6 * 10)] + [10, 10, 11]  # ten ids of 6 images, two ids with fewer than K
    batches = identity_balanced_batches(labels, 8, 4, torch.Generator().manual_seed(0))
    flat = [i for b in batches for i in b]
    _check_pk(flat, labels, 2, 4)
    assert all(len(b) == 8 for b in batches)
    assert [i for i in flat if labels[i] == 11] and len({i for i in flat if labels[i] == 11}) == 1  # 1 image x K, with replacement
    same = identity_balanced_batches(labels, 8, 4, torch.Generator().manual_seed(0))
    assert same == batches and identity_balanced_batches(labels, 8, 4, torch.Generator().manual_seed(1)) != batches
    # torchreid's RandomIdentitySampler (python/numpy RNG): the same structure, and the same algorithm: over
    # many epochs the number of batches per epoch (which depends on the random pairing) has the same mean
    labels = [lab for lab, n in enumerate([8, 8, 4, 12, 5, 9, 3]) for _ in range(n)]
    data = [(f"{i}.jpg", lab, 0, 0) for i, lab in enumerate(labels)]
    theirs_n, ours_n = [], []
    for seed in range(300):
        random.seed(seed)
        np.random.seed(seed)
        theirs = list(tr_sampler.RandomIdentitySampler(data, 12, 4))
        ours = [i for b in identity_balanced_batches(labels, 12, 4, torch.Generator().manual_seed(seed)) for i in b]
        if seed < 20:
            _check_pk(theirs, labels, 3, 4)
            _check_pk(ours, labels, 3, 4)
        theirs_n.append(len(theirs) // 12)
        ours_n.append(len(ours) // 12)
    assert len(set(ours_n)) > 1 and abs(np.mean(theirs_n) - np.mean(ours_n)) < 0.15, (np.mean(theirs_n), np.mean(ours_n))


def test_loaders_shapes_determinism_and_splits(root):
    task = make_task(root, "data.augment=crop_flip")
    splits = read_market1501(root)
    train, val, test = task.loaders(32, torch.Generator().manual_seed(3), eval_batch_size=20)
    n = len(train)
    batches = list(train)
    assert len(batches) == n > 0
    b = batches[0]
    assert b.x.shape == (32, 3, 64, 32) and b.x.dtype == torch.float32 and 0 <= b.x.min() and b.x.max() <= 1
    assert b.extra["split"] == "train" and b.extra["camid"].shape == (32,) and b.y.max() < task.num_classes()
    again = list(task.loaders(32, torch.Generator().manual_seed(3), eval_batch_size=20)[0])
    assert all(torch.equal(a.x, c.x) and torch.equal(a.y, c.y) for a, c in zip(batches, again))
    other = next(iter(task.loaders(32, torch.Generator().manual_seed(4))[0]))
    assert not torch.equal(other.x, b.x)
    assert isinstance(val, QueryGallery) and isinstance(test, QueryGallery)
    assert len(test.query.items) == len(splits.query) and len(test.gallery.items) == len(splits.gallery)
    assert len(test) == 2 + 5 and [bb.extra["split"] for bb in test].count("query") == 2  # 32 queries, 83 gallery, by 20
    # val: held-out training identities (raw pids), disjoint from the train labels' identities
    val_pids = {pid for _, pid, _ in val.query.items}
    assert len(val_pids) == 8 and val_pids == {pid for _, pid, _ in val.gallery.items}  # 0.25 of 32 ids
    train_paths = {p for p, _, _ in task._data()["train"]}
    assert not train_paths & {p for p, _, _ in val.query.items + val.gallery.items}
    assert len(train_paths) + len(val.query.items) + len(val.gallery.items) == len(splits.train)
    with pytest.raises(ConfigError, match="multiple of K"):
        len(task.loaders(30, torch.Generator())[0])


def test_carve_validation_is_seeded_and_valid(root):
    splits = read_market1501(root)
    t1, q1, g1 = carve_validation(splits, 0.1, 0)
    t2, q2, g2 = carve_validation(splits, 0.1, 0)
    assert (t1, q1, g1) == (t2, q2, g2) and carve_validation(splits, 0.1, 1)[1] != q1
    assert sorted({lab for _, lab, _ in t1}) == list(range(29))
    for path, pid, cam in q1:  # every val query has a gallery match from another camera
        assert any(p2 == pid and c2 != cam for _, p2, c2 in g1)
    assert carve_validation(splits, 0.0, 0)[1:] == ([], [])


def test_transforms_equal_torchvision_and_torchreid(root, monkeypatch):
    from torchvision import transforms as T

    path = next(p for p, _, _ in read_market1501(root).train)
    with Image.open(path) as im:
        img = im.convert("RGB")
    ours = np.asarray(ReIDTransform("none", 64, 32).apply(img))
    ref = (T.Compose([T.Resize((64, 32)), T.ToTensor()])(img) * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(ours, ref)
    u = [0.3, 0.2, 0.61, 0.27]  # flip; translate (0.2 <= p); crop position
    draws = iter([0.2, u[2] * 4, u[3] * 8])  # Random2DTranslation: uniform(0,1), uniform(0, 4), uniform(0, 8)
    monkeypatch.setattr(tr_transforms.random, "uniform", lambda a, b: next(draws))
    resized = T.Resize((64, 32))(img)
    ref = tr_transforms.Random2DTranslation(64, 32)(T.functional.hflip(resized))
    assert np.array_equal(np.asarray(ReIDTransform("crop_flip", 64, 32).apply(img, u)), np.asarray(ref))
    assert np.array_equal(np.asarray(ReIDTransform("flip", 64, 32).apply(img, [0.7, 0, 0, 0])), np.asarray(resized))


# ----------------------------------------------------------------------------- evaluation
def test_clean_evaluation_equals_torchreid_on_the_same_features(root):
    task = make_task(root)
    torch.manual_seed(0)
    model = task.build_model().train()
    _, _, test = task.loaders(32, torch.Generator().manual_seed(0), eval_batch_size=25)
    out = task.evaluate(model, test, None)
    assert model.training, "evaluate restores the model's mode"
    assert set(out.metrics) == {"mAP", "rank1", "rank5", "rank10"} and out.correct.dtype == torch.bool
    assert len(out.correct) == len(test.query.items)
    model.eval()
    feats = {}
    for side in ("query", "gallery"):
        items = getattr(test, side).items
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((32, 64), Image.BILINEAR),
                                                     dtype=np.float32) / 255).permute(2, 0, 1) for p, _, _ in items])
        with torch.no_grad():
            feats[side] = (model.features(x), np.array([pid for _, pid, _ in items]), np.array([c for _, _, c in items]))
    dist = reid.distance_matrix(feats["query"][0].double(), feats["gallery"][0].double()).numpy()  # as evaluate
    cmc, mAP = tr_rank.evaluate_rank(dist, feats["query"][1], feats["gallery"][1], feats["query"][2], feats["gallery"][2],
                                     max_rank=50, use_metric_cuhk03=False, use_cython=False)
    assert abs(out.metrics["mAP"] - mAP) < 1e-5 and abs(out.metrics["rank1"] - cmc[0]) < 1e-6
    assert abs(out.metrics["rank5"] - cmc[4]) < 1e-6 and abs(out.metrics["rank10"] - cmc[9]) < 1e-6
    assert abs(out.correct.float().mean().item() - cmc[0]) < 1e-6  # every fixture query is valid
    cos = make_task(root, "task.params.distance=cosine").evaluate(model, test, None)
    assert cos.metrics["mAP"] != out.metrics["mAP"]


def test_objective_errors(root):
    task = make_task(root)
    model = task.build_model().eval()
    _, _, test = task.loaders(32, torch.Generator(), eval_batch_size=16)
    q = next(iter(test.query))
    with pytest.raises(ConfigError, match="training identities"):
        task.objective(model, q, "ce")
    with pytest.raises(ConfigError, match="Did you mean: sma"):
        task.objective(model, q, "smaa")
    with pytest.raises(TypeError, match="QueryGallery"):
        task.evaluate(model, test.query, None)
    from natbench.attacks.sma import SMA

    with pytest.raises(ConfigError, match="cannot be used in re-id evaluation"):
        task.evaluate(model, test, SMA(SMA.Params(steps=1)), objective="ce")
    train_batch = next(iter(task.loaders(32, torch.Generator())[0]))
    assert task.objective(model, train_batch, "ce")(train_batch.x).shape == (32,)
