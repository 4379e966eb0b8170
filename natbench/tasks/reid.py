"""Person re-identification (Market-1501): identity logits and an embedding, retrieval metrics, metric attacks.

Capabilities ``{"logits", "embedding"}``; headline metric ``mAP`` (also ``rank1``, ``rank5``,
``rank10``; fractions in [0, 1]).

**Model.** :class:`ReIDNet` = ``Normalize`` (inputs in [0, 1]) -> a torchreid model
(``torchreid.reid.models.build_model(name, num_classes, loss="softmax", pretrained=False)``: never a
download) or natbench's small :class:`~natbench.models.reid_cnn.ReIDCNN` (``reid_cnn``). torchreid's
models return logits in train mode and the embedding in eval mode; :class:`ReIDNet` calls their
pieces itself (``featuremaps`` -> ``global_avgpool`` -> flatten -> ``fc`` = the embedding,
``classifier`` = identity logits), so ``model(x)`` is the identity logits and ``model.features(x)``
the embedding in *both* modes. Supported: every torchreid model with those four attributes (ResNets,
ResNeXts, SE-ResNets, DenseNets, OSNets, MobileNetV2, ...; ``torchreid:<name>`` also accepted).
``model.num_classes: 0`` means the number of training identities found in the data.

**Data.** ``data.dataset: market1501`` (:mod:`natbench.data.market1501`, torchreid's parsing; the
layouts it accepts are listed there). Images are resized to ``params.height`` x ``params.width``
(PIL bilinear, as torchreid's ``Resize((h, w))``); ``data.augment``: ``none``, ``flip`` (torchreid's
``random_flip``) or ``crop_flip`` (``random_flip`` then ``random_crop`` = torchreid's
``Random2DTranslation``: with p = 0.5 resize by 1.125 and crop back at a random place). Random
choices come from pre-drawn uniforms of the epoch's generator, in the main thread.

- *train*: the training identities left after the validation carve-out, relabelled ``0..N-1`` in
  increasing raw-pid order, served by an identity-balanced sampler: torchreid's
  ``RandomIdentitySampler`` drawn from a ``torch.Generator`` (:func:`identity_balanced_batches`),
  ``P = batch_size // K`` identities x ``K = params.num_instances`` images per batch.
- *val* (checkpoint selection): ``round(data.val_fraction * #ids)`` training identities (at least 2
  when the fraction is > 0), drawn with ``data.split_seed`` among those seen by >= 2 cameras, are
  held out *entirely* (as the test identities are unseen): one image of each is a val query
  (seeded), its other images the val gallery. The validation metric is mAP on that
  query/gallery pair, which mimics the test protocol (disjoint identities).
- *test*: Market's ``query`` and ``bounding_box_test`` (gallery) with their raw pids.

``Batch.y`` is the training label (train) or the raw pid (query/gallery); ``Batch.extra["camid"]``
the 0-based camera, ``Batch.extra["split"]`` one of ``train``/``query``/``gallery``. Val and test
loaders are :class:`QueryGallery` pairs (iterating one yields the query batches, then the gallery).

**Training loss** (``task_loss``, per sample; torchreid's ``ImageTripletEngine``):
``weight_ce * CE_ls(logits, y) + weight_triplet * triplet_i`` with label smoothing ``label_smooth``
(torchreid's ``CrossEntropyLoss``, eps 0.1 by default; 0 = plain CE) and the batch-hard triplet loss
of Hermans et al. (torchreid's ``TripletLoss``, margin 0.3): ``triplet_i = max(0, d(a, p_hardest) -
d(a, n_hardest) + margin)`` on Euclidean distances of the embeddings; its batch mean is torchreid's loss.

**Objectives** (``objective(model, batch, kind)`` -> ``x' -> (B,)`` to maximise; notes/algorithms.md
Sec. 10). The guides are clean features, computed without gradient in the model's current mode; in
evaluation they come from the query/gallery sides (:class:`GuideContext` in ``batch.extra``), on a
training batch from the batch itself (its P x K structure):

- ``"sma"`` (Bouniot et al., self metric attack): ``||phi(x') - phi(x)||^2`` (raw embedding, sum).
- ``"fna"`` (Bouniot et al., furthest-negative attack, ``max_min_mse`` of CEA-LIST/adv-reid):
  ``sum_{g in push} ||phi(x') - g||^2 - ||phi(x') - g_pull||^2``; push = the clean features of the
  same identity on the attacked side (itself included), padded with its own clean feature to the
  largest identity group of that side (as the reference); g_pull = the prototype (mean clean feature)
  of the other identity of the attacked side furthest from its clean feature.
- ``"ama"`` (Bai et al., adversarial metric attack / I-FGSM): ``sum_{g in G} mean_d (n(phi(x')) -
  n(g))^2`` with ``n`` the L2 normalisation and G the same-identity features of the *other* side
  (queries attacked: that identity's gallery images; gallery attacked: its queries, as Bai et al.; a
  training batch: the other images of the identity in the batch).
- ``"ce"`` (training batches only, for ``pgd-at``/``trades``/...): per-sample identity CE. The test
  identities are not classes of the classifier, so ``"ce"`` is not an evaluation objective.

Identity ``0`` (distractors) and ``-1`` have no identity guides: ``fna``/``ama`` leave them unchanged
(objective 0); ``sma`` attacks them.

**Evaluation** (``evaluate``): query and gallery features (eval mode, fp32); the attacked side (the
attack's ``side`` param: ``query`` by default, ``gallery`` or ``both``) is replaced by the features of
its adversarial images, attacked batch by batch with guides from the *clean* features; then the
distance matrix (``params.distance``: squared Euclidean or cosine) and mAP / CMC with the Market
protocol (:mod:`natbench.analysis.reid_metrics`, equal to torchreid's ``evaluate_rank``).
``EvalOut.correct`` is one flag per query: rank-1 correct. An attack whose objective kind is a
classification one (PGD's ``"ce"``, e.g. the runner's validation attack) runs on ``"sma"`` when the
caller did not name an objective. A ``params.eps`` of the attack (the metric attacks have one)
overrides the eps passed in.
"""
from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis.reid_metrics import DISTANCES, distance_matrix, market_rank
from ..checks import assert_in_ball
from ..config import from_dict
from ..contracts import Batch, EvalOut, Objective
from ..data import READERS
from ..data.market1501 import HINT as MARKET_HINT, ReIDSplits
from ..errors import ConfigError, DataError, suggest
from ..registry import load_target
from ..taskspec import TaskSpec

log = logging.getLogger(__name__)

EVAL_OBJECTIVES = ("sma", "fna", "ama")
TRAIN_OBJECTIVES = ("ce", *EVAL_OBJECTIVES)
SELECTION_OBJECTIVE = "sma"  # what a classification attack (objective "ce") runs on in evaluation
AUGMENTS = ("none", "flip", "crop_flip")
SIDES = ("query", "gallery", "both")
NATBENCH_ARCHS = {"reid_cnn": "natbench.models.reid_cnn:ReIDCNN"}
TORCHREID_PREFIX = "torchreid:"
MODEL_PIECES = ("featuremaps", "global_avgpool", "fc", "classifier")
Item = tuple[Path, int, int]


# ------------------------------------------------------------------------------------------ model
class ReIDNet(nn.Module):
    """``Normalize -> backbone``: ``forward(x)`` = identity logits, ``features(x)`` = the embedding,
    whatever ``self.training`` is (the backbone's own mode-dependent ``forward`` is never called)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        from ..models import Normalize

        missing = [a for a in MODEL_PIECES if not hasattr(net, a)]
        if missing:
            raise ConfigError(f"model.arch: {type(net).__name__} lacks {', '.join(missing)}; the reid task needs "
                              f"torchreid's featuremaps/global_avgpool/fc/classifier structure (e.g. resnet50, osnet_x1_0)")
        self.normalize = Normalize(mean, std)
        self.net = net

    def features(self, x: Tensor) -> Tensor:
        net = self.net
        v = net.global_avgpool(net.featuremaps(self.normalize(x)))
        v = v.view(v.size(0), -1)
        return v if net.fc is None else net.fc(v)

    def logits_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        v = self.features(x)
        return self.net.classifier(v), v

    def forward(self, x: Tensor) -> Tensor:
        return self.net.classifier(self.features(x))


def torchreid_models() -> dict[str, Callable]:
    """torchreid's model factory (imports torchreid: a few seconds, warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid import models
    return dict(models.__dict__["__model_factory"])


def build_backbone(arch: str, num_classes: int, width: int = 16) -> nn.Module:
    """A torchreid model (``pretrained=False``) or natbench's ``reid_cnn``."""
    if arch in NATBENCH_ARCHS:
        return load_target(NATBENCH_ARCHS[arch])(num_classes, width=width)
    name = arch.removeprefix(TORCHREID_PREFIX)
    try:
        factory = torchreid_models()
    except ImportError as e:  # torchreid (PyPI 0.2.5) also needs tensorboard and gdown at import
        raise ConfigError(f"model.arch '{arch}': torchreid cannot be imported ({e}); pip install torchreid "
                          f"opencv-python-headless gdown tensorboard, or use model.arch=reid_cnn") from None
    if name not in factory:
        raise ConfigError(f"model.arch: unknown re-id architecture '{arch}'.{suggest(name, [*NATBENCH_ARCHS, *factory])} "
                          f"Available: {', '.join([*NATBENCH_ARCHS, *factory])}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory[name](num_classes=num_classes, loss="softmax", pretrained=False, use_gpu=False)


def _logits_and_features(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    both = getattr(model, "logits_and_features", None)
    if both is None:
        raise TypeError(f"{type(model).__name__} is not a re-id model (no logits_and_features); build it with ReIDTask.build_model")
    return both(x)


def _features(model: nn.Module, x: Tensor) -> Tensor:
    return model.features(x)


# ------------------------------------------------------------------------------------------ losses
def smoothed_ce(logits: Tensor, y: Tensor, eps: float) -> Tensor:
    """Per-sample CE against ``(1 - eps) * onehot + eps / K`` (torchreid ``CrossEntropyLoss``, label_smooth)."""
    return F.cross_entropy(logits, y, reduction="none", label_smoothing=float(eps))


def batch_hard_triplet(features: Tensor, y: Tensor, margin: float = 0.3) -> Tensor:
    """Per-anchor batch-hard triplet loss ``max(0, d_ap - d_an + margin)`` (Hermans et al. 2017).

    As torchreid's ``TripletLoss``: Euclidean distances ``sqrt(clamp(|a|^2 + |b|^2 - 2ab, 1e-12))``,
    the hardest positive among the anchor's identity *including itself*, the hardest negative among
    the others; the batch mean is torchreid's value. An anchor without negatives gives 0.
    """
    n = features.size(0)
    sq = features.pow(2).sum(dim=1, keepdim=True).expand(n, n)
    dist = (sq + sq.t()).addmm(features, features.t(), beta=1, alpha=-2).clamp(min=1e-12).sqrt()
    same = y.view(-1, 1).eq(y.view(1, -1))
    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(d_ap - d_an + margin)


# ------------------------------------------------------------------------------------------ guides
@dataclass
class GuideContext:
    """The clean features an objective's guides come from, for the rows of one batch.

    ``side_*``: every item of the attacked side (the batch's rows are ``rows`` among them);
    ``other_*``: the other side (the same tensors, and ``other_rows = rows``, for a training batch,
    where an image must not be its own guide).
    """

    side_feats: Tensor  # (N, D)
    side_pids: Tensor  # (N,)
    rows: Tensor  # (B,) positions of the batch's rows in the side
    other_feats: Tensor  # (M, D)
    other_pids: Tensor  # (M,)
    other_rows: Tensor | None = None  # (B,) positions of the batch's rows in the other side (to exclude self)

    @property
    def clean(self) -> Tensor:
        return self.side_feats[self.rows]

    @property
    def pids(self) -> Tensor:
        return self.side_pids[self.rows]


def batch_context(model: nn.Module, batch: Batch) -> GuideContext:
    """Guides from the batch itself (a training batch): clean features in the model's current mode."""
    with torch.no_grad():
        f = _features(model, batch.x).detach()
    rows = torch.arange(len(batch), device=f.device)
    return GuideContext(f, batch.y, rows, f, batch.y, rows)


def sma_objective(model: nn.Module, ctx: GuideContext) -> Objective:
    f0 = ctx.clean

    def objective(z: Tensor) -> Tensor:
        return (_features(model, z) - f0).pow(2).sum(dim=1)

    return objective


def fna_guides(ctx: GuideContext) -> tuple[Tensor, Tensor, Tensor]:
    """``(push (B, M, D), pull (B, D), active (B,))`` of CEA-LIST/adv-reid ``perturb_queries_hardest_multi``."""
    feats, pids = ctx.side_feats, ctx.side_pids
    ids = torch.unique(pids[pids > 0])
    b, d = len(ctx.rows), feats.shape[1]
    push = ctx.clean.unsqueeze(1).repeat(1, 1, 1)
    pull = torch.zeros(b, d, dtype=feats.dtype, device=feats.device)
    active = torch.zeros(b, dtype=torch.bool, device=feats.device)
    if len(ids) < 2:
        return push, pull, active
    groups = [feats[pids == i] for i in ids]
    m = max(len(g) for g in groups)
    protos = torch.stack([g.mean(dim=0) for g in groups])  # (I, D)
    push = ctx.clean.unsqueeze(1).repeat(1, m, 1)  # padded with the sample's own clean feature
    dist = torch.cdist(ctx.clean, protos)  # (B, I)
    for r, pid in enumerate(ctx.pids.tolist()):
        if pid <= 0:
            continue
        k = int((ids == pid).nonzero()[0, 0])
        push[r, : len(groups[k])] = groups[k]
        dist[r, k] = float("-inf")
        pull[r] = protos[int(dist[r].argmax())]
        active[r] = True
    return push, pull, active


def fna_objective(model: nn.Module, ctx: GuideContext) -> Objective:
    push, pull, active = fna_guides(ctx)
    w = active.to(push.dtype)

    def objective(z: Tensor) -> Tensor:
        f = _features(model, z)
        loss = (f.unsqueeze(1) - push).pow(2).sum(dim=(1, 2)) - (f - pull).pow(2).sum(dim=1)
        return loss * w

    return objective


def ama_guides(ctx: GuideContext) -> tuple[Tensor, Tensor]:
    """``(guides (B, G, D) L2-normalised, mask (B, G))``: same-identity features of the other side."""
    other = F.normalize(ctx.other_feats, p=2, dim=1)
    same = ctx.pids.view(-1, 1).eq(ctx.other_pids.view(1, -1)) & (ctx.pids.view(-1, 1) > 0)  # (B, M)
    if ctx.other_rows is not None:  # an image is not its own guide
        same[torch.arange(len(ctx.rows), device=same.device), ctx.other_rows] = False
    g = int(same.sum(dim=1).max()) if same.numel() else 0
    guides = torch.zeros(len(ctx.rows), max(g, 1), other.shape[1], dtype=other.dtype, device=other.device)
    mask = torch.zeros(len(ctx.rows), max(g, 1), dtype=other.dtype, device=other.device)
    for r in range(len(ctx.rows)):
        idx = same[r].nonzero().flatten()
        guides[r, : len(idx)] = other[idx]
        mask[r, : len(idx)] = 1
    return guides, mask


def ama_objective(model: nn.Module, ctx: GuideContext) -> Objective:
    guides, mask = ama_guides(ctx)

    def objective(z: Tensor) -> Tensor:
        f = F.normalize(_features(model, z), p=2, dim=1)
        return ((f.unsqueeze(1) - guides).pow(2).mean(dim=2) * mask).sum(dim=1)

    return objective


METRIC_OBJECTIVES: dict[str, Callable[[nn.Module, GuideContext], Objective]] = {
    "sma": sma_objective, "fna": fna_objective, "ama": ama_objective}


# ------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class ReIDTransform:
    """PIL image -> uint8 ``(height, width, 3)``: torchreid's ``Resize((h, w))`` (+ ``random_flip``,
    ``random_crop``), the random choices taken from pre-drawn uniforms ``u`` (4 per image)."""

    mode: str  # none | flip | crop_flip
    height: int
    width: int
    N_UNIFORMS: ClassVar[int] = 4  # flip, translate?, x, y

    @property
    def random(self) -> bool:
        return self.mode != "none"

    def draw(self, n: int, generator: torch.Generator | None) -> Tensor | None:
        return torch.rand(n, self.N_UNIFORMS, generator=generator, dtype=torch.float64) if self.random else None

    def apply(self, img, u: Sequence[float] | None = None):
        from PIL import Image

        h, w = self.height, self.width
        img = img.convert("RGB").resize((w, h), Image.BILINEAR)
        if self.random:
            if u[0] < 0.5:  # RandomHorizontalFlip(p=0.5)
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            if self.mode == "crop_flip" and not u[1] > 0.5:  # Random2DTranslation(h, w, p=0.5)
                nw, nh = int(round(w * 1.125)), int(round(h * 1.125))
                x1, y1 = int(round(u[2] * (nw - w))), int(round(u[3] * (nh - h)))
                img = img.resize((nw, nh), Image.BILINEAR).crop((x1, y1, x1 + w, y1 + h))
        return img


def identity_balanced_batches(labels: Sequence[int], batch_size: int, num_instances: int,
                              generator: torch.Generator | None) -> list[list[int]]:
    """torchreid's ``RandomIdentitySampler`` with its randomness drawn from ``generator``.

    Per identity (increasing label): its indices, sampled K times with replacement when it has fewer
    than K, shuffled, cut into chunks of K (a remainder is dropped). Then, while at least P
    identities have chunks left: P of them are drawn without replacement and one chunk of each makes
    a batch of P x K indices (P = batch_size // K).
    """
    k = num_instances
    p = batch_size // k
    by_id: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_id.setdefault(int(lab), []).append(i)
    chunks: dict[int, list[list[int]]] = {}
    for lab in sorted(by_id):
        idx = torch.tensor(by_id[lab])
        if len(idx) < k:
            idx = idx[torch.randint(len(idx), (k,), generator=generator)]
        idx = idx[torch.randperm(len(idx), generator=generator)].tolist()
        chunks[lab] = [idx[j: j + k] for j in range(0, len(idx) - k + 1, k)]
    avail = sorted(chunks)
    batches: list[list[int]] = []
    while len(avail) >= p:
        picked = [avail[j] for j in torch.randperm(len(avail), generator=generator)[:p].tolist()]
        batch: list[int] = []
        for lab in picked:
            batch += chunks[lab].pop(0)
            if not chunks[lab]:
                avail.remove(lab)
        batches.append(batch)
    return batches


class ReIDLoader:
    """Batches decoded from image files; identity-balanced (``num_instances`` = K) or sequential.

    The epoch's plan (batch order) and every image's transform uniforms are drawn from ``generator``
    in the calling thread; the plan is drawn once per iteration (``len()`` before iterating sees the
    same plan), so batches are identical for a seed whatever ``num_workers`` (decode threads) is.
    """

    def __init__(self, items: Sequence[Item], batch_size: int, transform: ReIDTransform, split: str, *,
                 num_instances: int | None = None, generator: torch.Generator | None = None,
                 num_workers: int = 0, hint: str = MARKET_HINT):
        self.items, self.batch_size, self.transform, self.split = list(items), batch_size, transform, split
        self.num_instances, self.generator, self.num_workers, self.hint = num_instances, generator, num_workers, hint
        self.pids = torch.tensor([pid for _, pid, _ in self.items], dtype=torch.int64)
        self.camids = torch.tensor([cam for _, _, cam in self.items], dtype=torch.int64)
        self._plan: list[list[int]] | None = None

    def _draw_plan(self) -> list[list[int]]:
        n, bs = len(self.items), self.batch_size
        if self.num_instances is None:
            return [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        k = self.num_instances
        if k < 1 or bs % k or bs // k < 2:
            raise ConfigError(f"training.batch_size {bs} with task.params.num_instances {k}: the batch must hold "
                              f"P >= 2 identities of K = {k} images each (batch_size a multiple of K, >= 2K)")
        n_ids = len(set(self.pids.tolist()))
        if n_ids < bs // k:
            raise ConfigError(f"training.batch_size {bs} = {bs // k} identities x {k}, but the training set has only "
                              f"{n_ids} identities; lower training.batch_size")
        return identity_balanced_batches(self.pids.tolist(), bs, k, self.generator)

    def _batches(self) -> list[list[int]]:
        if self._plan is None:
            self._plan = self._draw_plan()
        return self._plan

    def __len__(self) -> int:
        return len(self._batches())

    def load(self, i: int, u: Tensor | None = None) -> np.ndarray:
        from PIL import Image

        path = self.items[i][0]
        try:
            with Image.open(path) as im:
                return np.asarray(self.transform.apply(im, None if u is None else u.tolist()), dtype=np.uint8)
        except (OSError, Image.DecompressionBombError) as e:  # also a decompression bomb
            raise DataError(f"{path}: not a readable image ({e}). {self.hint}".replace("\n", " ").strip()) from e

    def __iter__(self) -> Iterator[Batch]:
        plan, self._plan = self._batches(), None
        u = self.transform.draw(sum(len(b) for b in plan), self.generator)
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="natbench-reid") if self.num_workers > 0 else None
        try:
            start = 0
            for rows in plan:
                uu = None if u is None else u[start: start + len(rows)]
                start += len(rows)
                args = [(j, None if uu is None else uu[k]) for k, j in enumerate(rows)]
                images = list(pool.map(lambda a: self.load(*a), args)) if pool else [self.load(*a) for a in args]
                idx = torch.tensor(rows, dtype=torch.int64)
                x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
                yield Batch(torch.from_numpy(x).float().div_(255.0), self.pids[idx], idx,
                            {"camid": self.camids[idx], "split": self.split})
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


class QueryGallery:
    """A query loader and a gallery loader evaluated together; iterating yields query then gallery batches."""

    def __init__(self, query: ReIDLoader, gallery: ReIDLoader):
        self.query, self.gallery = query, gallery

    def __len__(self) -> int:
        return len(self.query) + len(self.gallery)

    def __iter__(self) -> Iterator[Batch]:
        yield from self.query
        yield from self.gallery


# ------------------------------------------------------------------------------------------ task
class ReIDTask:
    """Person re-identification on Market-1501 (see the module docstring)."""

    capabilities = frozenset({"logits", "embedding"})
    headline_metric = "mAP"
    METRICS = ("mAP", "rank1", "rank5", "rank10")
    LEADERBOARD_METRICS = ("mAP", "rank1")  # what the NAT paper's Table 12 reports ("mAP/R1")
    OBJECTIVES = EVAL_OBJECTIVES  # what a suite's attacks may ask for
    TRAIN_OBJECTIVES = TRAIN_OBJECTIVES  # what training-time attacks (defenses) may ask for, on training batches

    @dataclass(frozen=True)
    class Params:
        height: int = 256  # input height (torchreid's default 256)
        width: int = 128  # input width (torchreid's default 128)
        num_instances: int = 4  # K images per identity in a training batch; P = batch_size // K (RandomIdentitySampler)
        label_smooth: float = 0.1  # label smoothing eps of the identity CE (torchreid's CrossEntropyLoss default); 0 = plain CE
        triplet_margin: float = 0.3  # margin of the batch-hard triplet loss (torchreid's TripletLoss)
        weight_ce: float = 1.0  # weight of the identity CE (torchreid ImageTripletEngine weight_x)
        weight_triplet: float = 1.0  # weight of the triplet loss (weight_t); 0 = torchreid's softmax-only recipe
        distance: Literal["euclidean", "cosine"] = "euclidean"  # retrieval distance (euclidean: squared, as torchreid)
        max_rank: int = 50  # CMC length (rank-1/5/10 are reported)

        def validate(self, where: str) -> None:
            if self.height < 8 or self.width < 8 or self.num_instances < 1 or self.max_rank < 10:
                raise ConfigError(f"{where}: need height, width >= 8, num_instances >= 1 and max_rank >= 10")
            if not 0 <= self.label_smooth < 1 or self.triplet_margin < 0 or self.weight_ce < 0 or self.weight_triplet < 0:
                raise ConfigError(f"{where}: need 0 <= label_smooth < 1 and non-negative margin and weights")
            if self.weight_ce == 0 and self.weight_triplet == 0:
                raise ConfigError(f"{where}: weight_ce and weight_triplet are both 0: nothing to train")
            if self.distance not in DISTANCES:
                raise ConfigError(f"{where}.distance: one of {', '.join(DISTANCES)}")

    def __init__(self, spec: TaskSpec, data_root: Path | None = None):
        self.spec = spec
        self.name = spec.task
        self.threat = spec.threat_model
        self.data_root = data_root
        self.params = from_dict(self.Params, dict(spec.params), "task.params")
        self._check_spec()
        self._splits: dict[str, list[Item]] | None = None
        self._num_ids: int | None = None

    # ------------------------------------------------------------------ spec and data
    def _check_spec(self) -> None:
        d, m = self.spec.data, self.spec.model
        if d.augment not in AUGMENTS:
            raise ConfigError(f"data.augment: '{d.augment}' is not offered by the reid task.{suggest(d.augment, AUGMENTS)} "
                              f"Available: {', '.join(AUGMENTS)}")
        for name, default in (("image_size", 224), ("resize", None), ("class_list", "cmc")):
            if getattr(d, name, default) != default:
                raise ConfigError(f"data.{name}: not used by the reid task; the input size is task.params.height/width")
        if m.in_channels != 3 or len(m.mean) != 3 or len(m.std) != 3:
            raise ConfigError("model: the reid task takes RGB images: in_channels 3 and three mean/std values")
        if m.num_classes < 0:
            raise ConfigError("model.num_classes: the number of training identities, or 0 for 'as many as the data has'")

    def check_data(self) -> None:
        """Read the file lists and decode one image of each split, so missing data fails before training."""
        data = self._data()
        tf = self._transforms()[1]
        for split in ("train", "query", "gallery"):
            ReIDLoader(data[split][:1], 1, tf, split).load(0)

    def _data(self) -> dict[str, list[Item]]:
        if self._splits is None:
            d = self.spec.data
            if d.dataset not in READERS:
                raise ConfigError(f"data.dataset: unknown dataset '{d.dataset}'.{suggest(d.dataset, READERS)} Available: {', '.join(READERS)}")
            splits = load_target(READERS[d.dataset])(self.data_root, test_fraction=d.test_fraction, split_seed=d.split_seed)
            if not isinstance(splits, ReIDSplits):
                raise ConfigError(f"data.dataset: {d.dataset} is not a re-identification dataset (the reid task reads market1501)")
            train, val_q, val_g = carve_validation(splits, d.val_fraction, d.split_seed)
            self._num_ids = len({pid for _, pid, _ in train})
            self._splits = {"train": train, "val_query": val_q, "val_gallery": val_g,
                            "query": splits.query, "gallery": splits.gallery}
            log.info("reid %s: %d train images of %d ids; val %d queries / %d gallery; test %d queries / %d gallery",
                     self.name, len(train), self._num_ids, len(val_q), len(val_g), len(splits.query), len(splits.gallery))
        return self._splits

    def num_classes(self) -> int:
        """Identity classes of the classifier: ``model.num_classes``, or the training identities when 0."""
        self._data()
        n, want = int(self._num_ids or 0), self.spec.model.num_classes
        if want == 0:
            return n
        if want < n:
            raise ConfigError(f"model.num_classes {want} < {n} training identities in the data; set it to 0 (= from the data) or >= {n}")
        return want

    def _transforms(self) -> tuple[ReIDTransform, ReIDTransform]:
        p = self.params
        return ReIDTransform(self.spec.data.augment, p.height, p.width), ReIDTransform("none", p.height, p.width)

    def loaders(self, batch_size: int, generator: torch.Generator, eval_batch_size: int = 256):
        """(train, val, test): an identity-balanced train loader and two :class:`QueryGallery` pairs."""
        data = self._data()
        train_tf, eval_tf = self._transforms()
        workers = getattr(self.spec.data, "num_workers", 0)

        def seq(items, split):
            return ReIDLoader(items, eval_batch_size, eval_tf, split, num_workers=workers)

        train = ReIDLoader(data["train"], batch_size, train_tf, "train", num_instances=self.params.num_instances,
                           generator=generator, num_workers=workers)
        val = QueryGallery(seq(data["val_query"], "query"), seq(data["val_gallery"], "gallery"))
        test = QueryGallery(seq(data["query"], "query"), seq(data["gallery"], "gallery"))
        return train, val, test

    # ------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        m = self.spec.model
        return ReIDNet(build_backbone(m.arch, self.num_classes(), m.width), m.mean, m.std)

    # ------------------------------------------------------------------ losses and objectives
    def logits(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor:
        return model(x)

    def features(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor:
        """The embedding (capability ``"embedding"``)."""
        return _features(model, x)

    def training_loss(self, model: nn.Module, batch: Batch, x: Tensor, cache: dict | None = None,
                      which: str | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(per-sample re-id loss (B,), {"ce": mean, "triplet": mean})`` from one forward; with ``cache``
        and ``which`` the logits and embedding are stored as ``cache["logits_<which>"]`` /
        ``cache["features_<which>"]`` for the composed terms (NAT) to reuse."""
        self._check_labels(batch, "the training loss")
        logits, feats = _logits_and_features(model, x)
        if cache is not None and which:
            cache[f"logits_{which}"], cache[f"features_{which}"] = logits, feats
        p = self.params
        ce = smoothed_ce(logits, batch.y, p.label_smooth)
        tri = batch_hard_triplet(feats, batch.y, p.triplet_margin)
        return p.weight_ce * ce + p.weight_triplet * tri, {"ce": ce.mean().detach(), "triplet": tri.mean().detach()}

    def task_loss(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor:
        return self.training_loss(model, batch, x)[0]

    def _check_labels(self, batch: Batch, what: str) -> None:
        split = batch.extra.get("split", "train")
        if split != "train":
            raise ConfigError(f"{what} needs training identities (labels of the classifier); this is a {split} batch "
                              f"(raw person ids). Evaluation objectives: {', '.join(EVAL_OBJECTIVES)}")

    def objective(self, model: nn.Module, batch: Batch, kind: str) -> Objective:
        if kind == "ce":
            self._check_labels(batch, "objective 'ce'")
            y = batch.y
            return lambda z: F.cross_entropy(model(z), y, reduction="none")
        if kind in METRIC_OBJECTIVES:
            ctx = batch.extra.get("reid_context")
            return METRIC_OBJECTIVES[kind](model, ctx if ctx is not None else batch_context(model, batch))
        raise ConfigError(f"objective '{kind}' is not offered by task kind reid.{suggest(kind, TRAIN_OBJECTIVES)} "
                          f"Available: {', '.join(TRAIN_OBJECTIVES)} ('ce' on training batches only)")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: nn.Module, loader: Any, attack: Any | None = None, *,
                 objective: str | Callable[[nn.Module, Batch], Any] | None = None, eps: float | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 on_batch: Callable[[], None] | None = None, with_sparsity: bool = False,
                 side: str | None = None) -> EvalOut:
        """mAP and CMC rank-1/5/10 of ``loader`` (a :class:`QueryGallery`), the ``side`` under ``attack``.

        ``with_sparsity`` is accepted and ignored (output sparsity is a classification analysis).
        """
        if not isinstance(loader, QueryGallery):
            raise TypeError(f"reid evaluation needs a QueryGallery (val or test of ReIDTask.loaders), got {type(loader).__name__}")
        params = getattr(attack, "params", None)
        eps = getattr(params, "eps", None) if getattr(params, "eps", None) is not None else (
            self.threat.eps if eps is None else eps)
        side = side or getattr(params, "side", None) or "query"
        if side not in SIDES:
            raise ConfigError(f"attack side '{side}': one of {', '.join(SIDES)}")
        build = None
        if attack is not None:
            kind = objective if objective is not None else getattr(attack, "objective_kind", SELECTION_OBJECTIVE)
            if objective is None and kind not in EVAL_OBJECTIVES:
                kind = SELECTION_OBJECTIVE  # a classification attack (PGD's "ce"): attack the embedding instead
            if callable(kind):
                build = kind
            elif kind in EVAL_OBJECTIVES:
                build = lambda m, b, k=kind: self.objective(m, b, k)  # noqa: E731
            else:
                raise ConfigError(f"objective '{kind}' cannot be used in re-id evaluation.{suggest(str(kind), EVAL_OBJECTIVES)} "
                                  f"Available: {', '.join(EVAL_OBJECTIVES)}")
        attacked = set() if attack is None else ({"query", "gallery"} if side == "both" else {side})
        was_training = model.training
        model.eval()
        try:
            loaders = {"query": loader.query, "gallery": loader.gallery}
            clean = {s: self._features(model, loaders[s], device, None if s in attacked else on_batch) for s in loaders}
            feats = {s: clean[s][0].clone() for s in loaders}
            for s in sorted(attacked, key=("query", "gallery").index):
                o = "gallery" if s == "query" else "query"
                for batch in loaders[s]:
                    batch = batch.to(device)
                    rows = batch.index.to(device)
                    batch.extra["reid_context"] = GuideContext(clean[s][0], clean[s][1].to(device), rows,
                                                               clean[o][0], clean[o][1].to(device))
                    x = attack(build(model, batch), batch.x, eps=eps, generator=generator)
                    assert_in_ball(batch.x, x, eps, f"attack {getattr(attack, 'name', attack)}")
                    with torch.no_grad():
                        feats[s][rows] = _features(model, x).float()
                    if on_batch is not None:
                        on_batch()
        finally:
            model.train(was_training)
        return self.rank(feats["query"], clean["query"][1], clean["query"][2],
                         feats["gallery"], clean["gallery"][1], clean["gallery"][2])

    def rank(self, qf: Tensor, q_pids: Tensor, q_cams: Tensor, gf: Tensor, g_pids: Tensor, g_cams: Tensor) -> EvalOut:
        """Metrics and per-query rank-1 flags from features (Market protocol, ``params.distance``)."""
        if len(qf) == 0 or len(gf) == 0:
            return EvalOut({k: float("nan") for k in self.METRICS}, torch.zeros(len(qf), dtype=torch.bool))
        dist = distance_matrix(qf.cpu().double(), gf.cpu().double(), self.params.distance)
        r = market_rank(dist.numpy(), q_pids.numpy(), g_pids.numpy(), q_cams.numpy(), g_cams.numpy(),
                        max_rank=self.params.max_rank, drop_junk=True)
        metrics = {"mAP": r.mAP, "rank1": r.rank(1), "rank5": r.rank(5), "rank10": r.rank(10)}
        return EvalOut(metrics, torch.from_numpy(r.rank1.copy()))

    @staticmethod
    def _features(model: nn.Module, loader: ReIDLoader, device, on_batch) -> tuple[Tensor, Tensor, Tensor]:
        """``(features (N, D) on device, pids (N,), camids (N,))`` of a loader, in its order."""
        fs, pids, cams = [], [], []
        with torch.no_grad():
            for batch in loader:
                fs.append(_features(model, batch.x.to(device)).float())
                pids.append(batch.y)
                cams.append(batch.extra["camid"])
                if on_batch is not None:
                    on_batch()
        if not fs:
            return torch.zeros(0, 0, device=device), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        return torch.cat(fs), torch.cat(pids), torch.cat(cams)


def carve_validation(splits: ReIDSplits, fraction: float, seed: int) -> tuple[list[Item], list[Item], list[Item]]:
    """``(train, val_query, val_gallery)``: held-out training identities (see the module docstring).

    ``round(fraction * #ids)`` identities (>= 2 when ``fraction`` > 0, at most all but two) are drawn
    with ``seed`` among those seen by two or more cameras; one image of each (drawn with the same
    generator) is its val query, the rest its val gallery; val items carry the raw pid. The other
    identities are relabelled ``0..N-1`` in increasing label (= raw pid) order.
    """
    by_id: dict[int, list[int]] = {}
    for i, (_, lab, _) in enumerate(splits.train):
        by_id.setdefault(lab, []).append(i)
    eligible = [lab for lab in sorted(by_id) if len({splits.train[i][2] for i in by_id[lab]}) >= 2]
    k = 0
    if fraction > 0:
        k = min(max(2, int(round(fraction * len(by_id)))), len(eligible), max(len(by_id) - 2, 0))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(eligible, size=k, replace=False).tolist()) if k else set()
    val_q, val_g = [], []
    for lab in sorted(held):
        idx = by_id[lab]
        qi = int(rng.integers(len(idx)))
        raw = splits.train_pids[lab] if splits.train_pids else lab
        for j, i in enumerate(idx):
            path, _, cam = splits.train[i]
            (val_q if j == qi else val_g).append((path, raw, cam))
    keep = [lab for lab in sorted(by_id) if lab not in held]
    relabel = {lab: n for n, lab in enumerate(keep)}
    train = [(p, relabel[lab], cam) for p, lab, cam in splits.train if lab in relabel]
    return train, val_q, val_g
