"""The re-id task kind: :class:`ReIDTask` (the package docstring describes its data, losses,
objectives and evaluation)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...analysis.reid_metrics import DISTANCES, distance_matrix, market_rank
from ...contracts import Batch, EvalOut, Objective
from ...data.market1501 import ReIDSplits
from ...errors import ConfigError, suggest
from .._base import TaskBase, eval_mode
from .data import Item, QueryGallery, ReIDLoader, ReIDTransform, carve_validation
from .losses import METRIC_OBJECTIVES, GuideContext, batch_context, batch_hard_triplet, smoothed_ce
from .model import ReIDNet, _features, _logits_and_features, build_backbone

log = logging.getLogger("natbench.tasks.reid")

EVAL_OBJECTIVES = ("sma", "fna", "ama")
TRAIN_OBJECTIVES = ("ce", *EVAL_OBJECTIVES)
SELECTION_OBJECTIVE = "sma"  # what a classification attack (objective "ce") runs on in evaluation
AUGMENTS = ("none", "flip", "crop_flip")
SIDES = ("query", "gallery", "both")


class ReIDTask(TaskBase):
    """Person re-identification on Market-1501 (see the package docstring)."""

    capabilities = frozenset({"logits", "embedding"})
    headline_metric = "mAP"
    METRICS = ("mAP", "rank1", "rank5", "rank10")
    LEADERBOARD_METRICS = ("mAP", "rank1")  # what the NAT paper's Table 12 reports ("mAP/R1")
    OBJECTIVES = EVAL_OBJECTIVES  # what a suite's attacks may ask for
    TRAIN_OBJECTIVES = TRAIN_OBJECTIVES  # what training-time attacks (defenses) may ask for, on training batches
    SELECTION_OBJECTIVE = SELECTION_OBJECTIVE
    TRAINING_LOSS_ON = frozenset({"clean"})  # vanilla trains on CE + triplet; adversarial training keeps the identity CE
    KIND, EVAL_NAME = "reid", "re-id"

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

    _num_ids: int | None = None

    # ------------------------------------------------------------------ spec and data
    def _check_spec(self) -> None:
        self._check_data_fields(AUGMENTS, {"image_size": 224, "resize": None, "class_list": "cmc"},
                                "the input size is task.params.height/width")
        self._check_rgb()
        if self.spec.model.num_classes < 0:
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
            splits = self._read_splits(ReIDSplits, "a re-identification dataset (the reid task reads market1501)")
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
    def _eval_kind(self, kind: Any, named: bool) -> Any:
        """A classification attack (PGD's "ce") attacks the embedding (``sma``) unless the caller named the kind."""
        return SELECTION_OBJECTIVE if not named and kind not in EVAL_OBJECTIVES else kind

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
        build = self.attack_objective(attack, objective)
        attacked = set() if attack is None else ({"query", "gallery"} if side == "both" else {side})
        with eval_mode(model):
            loaders = {"query": loader.query, "gallery": loader.gallery}
            clean = {s: loader_features(model, loaders[s], device, None if s in attacked else on_batch) for s in loaders}
            feats = {s: clean[s][0].clone() for s in loaders}
            for s in sorted(attacked, key=("query", "gallery").index):
                o = "gallery" if s == "query" else "query"
                for batch in loaders[s]:
                    batch = batch.to(device)
                    rows = batch.index.to(device)
                    batch.extra["reid_context"] = GuideContext(clean[s][0], clean[s][1].to(device), rows,
                                                               clean[o][0], clean[o][1].to(device))
                    x = self.attacked(attack, build, model, batch, eps, generator)
                    with torch.no_grad():
                        feats[s][rows] = _features(model, x).float()
                    if on_batch is not None:
                        on_batch()
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


def loader_features(model: nn.Module, loader: ReIDLoader, device, on_batch) -> tuple[Tensor, Tensor, Tensor]:
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
