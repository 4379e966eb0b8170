"""Person re-identification (Market-1501): identity logits and an embedding, retrieval metrics, metric attacks.

Modules: :mod:`.model` (ReIDNet, backbones), :mod:`.losses` (CE, triplet, the metric objectives and their
guides), :mod:`.data` (transforms, sampler, loaders, validation carve-out), :mod:`.task` (:class:`ReIDTask`).

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

from ...analysis.reid_metrics import distance_matrix
from .data import Item, QueryGallery, ReIDLoader, ReIDTransform, carve_validation, identity_balanced_batches
from .losses import (METRIC_OBJECTIVES, GuideContext, ama_guides, ama_objective, batch_context, batch_hard_triplet,
                     fna_guides, fna_objective, sma_objective, smoothed_ce)
from .model import MODEL_PIECES, NATBENCH_ARCHS, TORCHREID_PREFIX, ReIDNet, build_backbone, torchreid_models
from .task import AUGMENTS, EVAL_OBJECTIVES, SELECTION_OBJECTIVE, SIDES, TRAIN_OBJECTIVES, ReIDTask, loader_features

__all__ = ["ReIDTask", "ReIDNet", "ReIDLoader", "ReIDTransform", "QueryGallery", "GuideContext", "Item", "METRIC_OBJECTIVES",
           "batch_context", "sma_objective", "fna_objective", "fna_guides", "ama_objective", "ama_guides", "smoothed_ce",
           "batch_hard_triplet", "carve_validation", "identity_balanced_batches", "build_backbone", "torchreid_models",
           "loader_features", "distance_matrix", "MODEL_PIECES", "NATBENCH_ARCHS", "TORCHREID_PREFIX", "AUGMENTS",
           "EVAL_OBJECTIVES", "SELECTION_OBJECTIVE", "SIDES", "TRAIN_OBJECTIVES"]
