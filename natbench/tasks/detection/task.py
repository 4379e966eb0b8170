"""The detection task kind: :class:`DetectionTask` (the package docstring describes its data, losses,
objectives and evaluation)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn

from ...analysis.voc_map import MODES, image_detected, voc_map
from ...contracts import Batch, EvalOut, Objective
from ...data.voc import VOCItem, VOCSplits
from ...errors import ConfigError, suggest
from .._base import TaskBase, eval_mode
from .data import AnchorSpec, VOCLoader, carve_validation
from .losses import AnchorObjective, ground_truth, matched_logits, multibox_sums
from .model import ARCHS, NUM_CLASSES, DetectionNet, build_ssd, detection_net

log = logging.getLogger("natbench.tasks.detection")

EVAL_OBJECTIVES = ("det_cls", "det_loc", "det_total", "anchors")
TRAIN_OBJECTIVES = ("ce", *EVAL_OBJECTIVES)
SELECTION_OBJECTIVE = "det_total"  # what a classification attack (objective "ce") runs on
AUGMENTS = ("none", "flip")


class DetectionTask(TaskBase):
    """Object detection on PASCAL VOC (see the package docstring)."""

    capabilities = frozenset({"logits", "detections"})
    headline_metric = "mAP"
    METRICS = ("mAP", "mAP_area")
    LEADERBOARD_METRICS = ("mAP",)  # the NAT paper's Table 13 reports VOC07 mAP per attack
    OBJECTIVES = EVAL_OBJECTIVES  # what a suite's attacks may ask for
    TRAIN_OBJECTIVES = TRAIN_OBJECTIVES  # what training-time attacks (defenses) may ask for
    SELECTION_OBJECTIVE = SELECTION_OBJECTIVE
    TRAINING_LOSS_ON = frozenset({"clean", "adv"})  # the whole SSD loss (hard-negative CE + localisation), also on x'
    KIND = EVAL_NAME = "detection"
    matched_logits = staticmethod(matched_logits)

    @dataclass(frozen=True)
    class Params:
        correct_score: float = 0.5  # per-image flags: an object counts as found by a detection with at least this score
        ap_mode: Literal["11point", "area"] = "11point"  # the headline mAP: VOC2007 11-point (SSD, MTD, NAT) or all-point
        train_difficult: bool = False  # train on difficult objects too (ssd.pytorch/mmdet: no)
        score_thresh: float | None = None  # detector post-processing; None = the architecture's (torchvision: 0.01, SSDlite 0.001)
        nms_thresh: float | None = None  # None = the architecture's (0.45, SSDlite 0.55)
        detections_per_img: int | None = None  # None = the architecture's (200, SSDlite 300)

        def validate(self, where: str) -> None:
            if not 0 <= self.correct_score <= 1:
                raise ConfigError(f"{where}.correct_score: must be in [0, 1], got {self.correct_score}")
            if self.ap_mode not in MODES[:2]:
                raise ConfigError(f"{where}.ap_mode: one of 11point, area")
            for name in ("score_thresh", "nms_thresh"):
                v = getattr(self, name)
                if v is not None and not 0 <= v <= 1:
                    raise ConfigError(f"{where}.{name}: must be in [0, 1] or null, got {v}")
            if self.detections_per_img is not None and self.detections_per_img < 1:
                raise ConfigError(f"{where}.detections_per_img: must be >= 1 or null")

    _anchor_spec: AnchorSpec | None = None

    # ------------------------------------------------------------------ spec and data
    def _check_spec(self) -> None:
        d, m = self.spec.data, self.spec.model
        self._check_data_fields(AUGMENTS, {"resize": None, "class_list": "cmc"}, "the input size is data.image_size")
        if m.arch not in ARCHS:
            raise ConfigError(f"model.arch: unknown detector '{m.arch}'.{suggest(m.arch, ARCHS)} Available: {', '.join(ARCHS)}")
        fixed = ARCHS[m.arch]
        if fixed is not None and d.image_size != fixed:
            raise ConfigError(f"data.image_size: {m.arch} takes {fixed}x{fixed} inputs, got {d.image_size}; "
                              f"set data.image_size={fixed}")
        if fixed is None and d.image_size < 64:
            raise ConfigError(f"data.image_size: ssd_tiny needs >= 64, got {d.image_size}")
        if m.num_classes != NUM_CLASSES:
            raise ConfigError(f"model.num_classes: VOC detection has {NUM_CLASSES} classes (background + 20), got {m.num_classes}")
        self._check_rgb()

    def _data(self) -> dict[str, list[VOCItem]]:
        if self._splits is None:
            d = self.spec.data
            splits = self._read_splits(VOCSplits, "a detection dataset (the detection task reads voc)")
            train, val = carve_validation(splits.train, d.val_fraction, d.split_seed)
            self._splits = {"train": train, "val": val, "test": splits.test}
            log.info("detection %s: %d train, %d val, %d test images", self.name, len(train), len(val), len(splits.test))
        return self._splits

    def check_data(self) -> None:
        """Read the annotations and decode one image of each split, so missing data fails before training."""
        data = self._data()
        for split in ("train", "test"):
            VOCLoader(data[split][:1], 1, self.spec.data.image_size, self.anchor_spec(), split).load(0)

    def anchor_spec(self) -> AnchorSpec:
        """The default boxes of ``model.arch`` at ``data.image_size`` (from a model built once, the global
        RNG untouched) and its matcher."""
        if self._anchor_spec is None:
            with torch.random.fork_rng(devices=[]):
                model = self.build_model().eval()
            s = self.spec.data.image_size
            with torch.no_grad():
                _, _, anchors = model.head(torch.zeros(1, 3, s, s))
            self._anchor_spec = AnchorSpec(anchors.detach().cpu().clone(), model.ssd.proposal_matcher)
        return self._anchor_spec

    def loaders(self, batch_size: int, generator: torch.Generator, eval_batch_size: int = 64):
        """(train, val, test) :class:`VOCLoader`; train shuffled and augmented from ``generator``."""
        data = self._data()
        d, p = self.spec.data, self.params
        spec = self.anchor_spec()
        workers = getattr(d, "num_workers", 0)
        train = VOCLoader(data["train"], batch_size, d.image_size, spec, "train", augment=d.augment, shuffle=True,
                          generator=generator, train_difficult=p.train_difficult, num_workers=workers)
        val = VOCLoader(data["val"], eval_batch_size, d.image_size, spec, "val", num_workers=workers)
        test = VOCLoader(data["test"], eval_batch_size, d.image_size, spec, "test", num_workers=workers)
        return train, val, test

    # ------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        m, p = self.spec.model, self.params
        return DetectionNet(build_ssd(m.arch, self.spec.data.image_size, m.width, m.mean, m.std,
                                      score_thresh=p.score_thresh, nms_thresh=p.nms_thresh,
                                      detections_per_img=p.detections_per_img))

    # ------------------------------------------------------------------ losses and objectives
    def _head(self, model: nn.Module, batch: Batch, x: Tensor) -> tuple[DetectionNet, Tensor, Tensor, Tensor]:
        """``(net, cls_logits, bbox_regression, anchors)`` of inputs ``x``; the model's default boxes must be
        those the batch was matched to."""
        net = detection_net(model)
        cls_logits, bbox, anchors = net.head(x)
        a = batch.extra["matched"].shape[1]
        if anchors.shape[0] != a:
            raise ConfigError(f"the model has {anchors.shape[0]} default boxes, the batch was matched to {a} "
                              f"({self.spec.model.arch} at {self.spec.data.image_size}); detection models of one run "
                              f"(NAT's adversary included) must share the architecture and input size")
        return net, cls_logits, bbox, anchors

    def losses(self, model: nn.Module, batch: Batch, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(cls_i, loc_i, n_i, cls_logits)``: per-image SSD loss sums (see the module docstring)."""
        net, cls_logits, bbox, anchors = self._head(model, batch, x)
        boxes, labels, matched = ground_truth(batch, x, net)
        cls, loc, n = multibox_sums(cls_logits, bbox, anchors, boxes, labels, matched, net.ssd.box_coder,
                                    net.ssd.neg_to_pos_ratio)
        return cls, loc, n, cls_logits

    def logits(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor:
        """Class logits of the matched anchors, ``(rows of x, 21, K)``; see the module docstring."""
        b = len(batch)
        if x.shape[0] % b:
            raise ValueError(f"detection logits: {x.shape[0]} inputs for a batch of {b} images")
        cls_logits = self._head(model, batch, x)[1]
        return matched_logits(cls_logits, batch.extra["pos_anchor"])

    def training_loss(self, model: nn.Module, batch: Batch, x: Tensor, cache: dict | None = None,
                      which: str | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(per-image loss (B,), {"cls": ..., "loc": ...})``: the per-image values whose mean is
        torchvision's SSD loss, and its two parts; with ``cache``/``which`` the matched-anchor logits of
        the same forward are stored as ``cache["logits_<which>"]`` for composed terms (NAT)."""
        cls, loc, n, cls_logits = self.losses(model, batch, x)
        if cache is not None and which:
            cache[f"logits_{which}"] = matched_logits(cls_logits, batch.extra["pos_anchor"])
        norm = n.sum().clamp(min=1).to(cls.dtype)
        per = (cls + loc) * (len(cls) / norm)
        return per, {"cls": cls.sum().detach() / norm, "loc": loc.sum().detach() / norm}

    def objective(self, model: nn.Module, batch: Batch, kind: str) -> Objective | AnchorObjective:
        if kind == "ce":
            kind = SELECTION_OBJECTIVE
        if kind in ("det_cls", "det_loc", "det_total"):
            def objective(z: Tensor, kind=kind) -> Tensor:
                cls, loc, n, _ = self.losses(model, batch, z)
                total = {"det_cls": cls, "det_loc": loc, "det_total": cls + loc}[kind]
                return total / n.clamp(min=1).to(total.dtype)

            return objective
        if kind == "anchors":
            detection_net(model)
            matched = batch.extra["matched"]
            fg = matched >= 0
            labels = torch.where(fg, batch.extra["labels"].gather(1, matched.clamp(min=0)), torch.zeros_like(matched))

            def heads(z: Tensor) -> tuple[Tensor, Tensor]:
                return self._head(model, batch, z)[1:3]

            return AnchorObjective(heads, labels, fg, NUM_CLASSES)
        raise ConfigError(f"objective '{kind}' is not offered by task kind detection.{suggest(kind, TRAIN_OBJECTIVES)} "
                          f"Available: {', '.join(TRAIN_OBJECTIVES)}")

    # ------------------------------------------------------------------ evaluation
    def _eval_kind(self, kind: Any, named: bool) -> Any:
        """A classification attack's "ce" (PGD, the runner's validation attack) runs on ``det_total``."""
        return SELECTION_OBJECTIVE if kind == "ce" else kind

    def evaluate(self, model: nn.Module, loader: Any, attack: Any | None = None, *,
                 objective: str | Callable[[nn.Module, Batch], Any] | None = None, eps: float | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 on_batch: Callable[[], None] | None = None, with_sparsity: bool = False) -> EvalOut:
        """VOC mAP of ``loader`` (a :class:`VOCLoader`) under ``attack`` (module docstring);
        ``with_sparsity`` is accepted and ignored (output sparsity is a classification analysis)."""
        if not isinstance(loader, VOCLoader):
            raise TypeError(f"detection evaluation needs a VOCLoader (DetectionTask.loaders), got {type(loader).__name__}")
        net = detection_net(model)
        eps = self.threat.eps if eps is None else float(eps)
        build = self.attack_objective(attack, objective)
        dets, raw_dets, gts, raw_linf = [], [], [], []
        with eval_mode(model):
            for batch in loader:
                batch = batch.to(device)
                x = batch.x
                raw = None
                if attack is not None:
                    x = self.attacked(attack, build, model, batch, eps, generator)
                    raw = getattr(attack, "last_raw", None)
                sizes = [tuple(s) for s in batch.extra["orig_size"].tolist()]
                with torch.no_grad():
                    dets += [{k: v.detach().cpu() for k, v in d.items()} for d in net.detect(x.float(), sizes)]
                    if raw is not None:
                        raw_dets += [{k: v.detach().cpu() for k, v in d.items()} for d in net.detect(raw.float(), sizes)]
                        raw_linf.append((raw - batch.x).abs().flatten(1).amax(dim=1).cpu())
                gts += [{"boxes": loader.items[i].boxes, "labels": loader.items[i].labels,
                         "difficult": loader.items[i].difficult} for i in batch.index.tolist()]
                if on_batch is not None:
                    on_batch()
        return score(self.params, dets, gts, raw_dets if raw_linf else None, torch.cat(raw_linf) if raw_linf else None)


def score(params: Any, dets: list[dict], gts: list[dict], raw_dets: list[dict] | None = None,
          raw_linf: Tensor | None = None) -> EvalOut:
    """Metrics and per-image flags from detections and ground truth in original image pixels."""
    labels = list(range(1, NUM_CLASSES))
    main = voc_map(dets, gts, mode=params.ap_mode, labels=labels).map
    other = voc_map(dets, gts, mode="area" if params.ap_mode == "11point" else "11point", labels=labels).map
    metrics = {"mAP": main, ("mAP_area" if params.ap_mode == "11point" else "mAP_11point"): other}
    if raw_dets is not None:
        metrics["mAP_raw"] = voc_map(raw_dets, gts, mode=params.ap_mode, labels=labels).map
        metrics["raw_linf_mean"] = float(raw_linf.mean()) if len(raw_linf) else 0.0
        metrics["raw_linf_max"] = float(raw_linf.max()) if len(raw_linf) else 0.0
    correct = torch.tensor([image_detected(d, g, score_thresh=params.correct_score) for d, g in zip(dets, gts)],
                           dtype=torch.bool)
    return EvalOut(metrics, correct)
