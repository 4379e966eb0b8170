"""Image classification: digits (embedded), CIFAR-10/100 (in memory) and ImageNet-100 (JPEG files).

Modules: :mod:`.data` (loaders and transforms), :mod:`.task` (:class:`ClassificationTask`); the model is
:func:`natbench.models.build`'s.

Capabilities ``{"logits"}``; headline metric ``accuracy``. Objectives an attack can ask for:

- ``"ce"``: per-sample cross-entropy ``CE(f(x'), y)``;
- ``"logits"``: a :class:`~natbench.contracts.LogitsObjective` (``x' -> logits`` with ``.y``), for
  attacks that need the class scores (APGD-DLR/-T, FAB, Square, AutoAttack);
- ``"cw"``: the Carlini-Wagner margin ``-clamp(z_y - max_{j!=y} z_j + kappa, min=0)``, kappa = 50
  (as CW-inf in the FAT / CAT evaluations, notes Sec. 9.1);
- ``"labels"``: a :class:`~natbench.contracts.Labels` (the labels only, nothing of the model), for
  transfer attacks that never query the target.

``evaluate`` also takes an objective *builder* ``(model, batch) -> objective`` in place of a kind:
the runner passes one for the adaptive attack's ``"defense"`` objective (the composition's own
training loss). Evaluation batches that run out of CUDA memory are split in halves (recursively) and
later batches use the size that fitted (:meth:`ClassificationTask.evaluate`, :mod:`natbench.tasks._base`).

Data. A reader (``natbench.data.READERS``) returns either tensors (:class:`TensorSplits`, served by
:class:`TensorLoader`; ``data.augment`` ``none`` | ``crop_flip`` = RandomCrop(32, padding=4) + flip)
or image files (:class:`FileSplits`, too large for memory, served by :class:`ImageFileLoader`, which
decodes each batch with PIL and the deterministic :class:`ImageTransform`). File datasets use the
DataCfg fields ``image_size`` (square side fed to the model, default 224), ``resize`` (shorter side
before a centre/random crop; default ``round(image_size * 256 / 224)``, i.e. 256 at 224),
``class_list`` (the reader's pinned class list, ImageNet-100: ``cmc`` | ``gat``) and ``num_workers``
(decode threads; results do not depend on it), read with ``getattr`` and the defaults of
:data:`FILE_DATA_DEFAULTS` so specs without them keep working. ``data.augment`` for files: ``none``
(the eval transform), ``crop_flip`` (Resize(resize) + RandomCrop(image_size) + flip) or
``resized_crop_flip`` (RandomResizedCrop(image_size), scale (0.08, 1), ratio (3/4, 4/3), + flip, as
GAT-ImageNet100.py); val and test: Resize(resize) + CenterCrop(image_size). No Normalize: inputs
are in [0, 1] (the model normalises).

Determinism: every random choice of an epoch (the order and each image's crop/flip uniforms) is
drawn from the epoch's generator in the main process when iteration starts, so batches are identical
for the same seed whatever ``num_workers``; nothing uses the global RNG.
"""
from __future__ import annotations

from .data import (FILE_AUGMENTS, FILE_DATA_DEFAULTS, READER_OPTIONS, TENSOR_AUGMENTS, ImageFileLoader, ImageTransform,
                   TensorLoader, crop_flip, data_option)
from .task import ClassificationTask

__all__ = ["ClassificationTask", "TensorLoader", "ImageFileLoader", "ImageTransform", "crop_flip", "data_option",
           "FILE_DATA_DEFAULTS", "FILE_AUGMENTS", "TENSOR_AUGMENTS", "READER_OPTIONS"]
