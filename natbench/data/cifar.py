"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009), read from the extracted "python version" pickles.

On-disk format (notes/formats.md Sec. 1; ``torchvision/datasets/cifar.py``; the CIFAR page):

- ``<root>/cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
  ``batches.meta``; ``<root>/cifar-100-python/``: ``train``, ``test``, ``meta``.
- every file is one pickled ``dict`` (Python-2 cPickles in the real archive, hence
  ``pickle.load(f, encoding="latin1")``, which also turns their byte-string keys into ``str``); natbench
  unpickles them with :class:`natbench.safety.RestrictedUnpickler`, which resolves only numpy's array
  reconstruction globals, so a crafted file cannot run code;
- ``data``: ``numpy.uint8`` array ``(N, 3072)``, each row channel-major: 1024 R, 1024 G, 1024 B,
  each a 32x32 image in row-major order, so ``reshape(N, 3, 32, 32)`` is already NCHW;
- labels: ``labels`` (CIFAR-10, 0..9) or ``fine_labels`` (CIFAR-100, 0..99), lists of N ints;
- meta: ``label_names`` (10) or ``fine_label_names`` (100) + ``coarse_label_names`` (20).

natbench reads the pickles itself (no torchvision dataset class, no MD5 check) and validates them
strictly: anything malformed is a :class:`~natbench.errors.DataError` (exit code 2) naming the
file, the expected layout and the fix. The official test split is the test set, so
``test_fraction`` and ``split_seed`` are accepted for the reader interface and ignored.

The fixture writers produce a small synthetic copy in exactly the real format (all keys of the real
files, python-int label lists, uint8 data) that torchvision's ``CIFAR10``/``CIFAR100`` also load
once their MD5 check is patched out. Images are class-dependent (a per-class colour and stripe
pattern plus noise) so a model can learn them; every class is present in every split.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..safety import restricted_load
from . import TensorSplits

log = logging.getLogger(__name__)

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
    "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard",
    "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum",
    "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper",
    "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf",
    "woman", "worm",
)
CIFAR100_COARSE_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)
#: fine label -> coarse label of the real CIFAR-100 (used only to fill the fixtures' coarse_labels).
CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


@dataclass(frozen=True)
class _Spec:
    name: str  # registry / fixture name
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    n_classes: int

    def layout(self) -> str:
        files = ",".join((*self.train_files, *self.test_files, self.meta_file))
        return (f"<root>/{self.folder}/{{{files}}} (python pickles: 'data' uint8 (N, 3072), "
                f"'{self.label_key}' N ints in 0..{self.n_classes - 1}; meta '{self.names_key}')")

    def error(self, path, problem: str) -> DataError:
        """The one-line user error: what, where, expected layout, one fix."""
        return DataError(f"{self.title} {path}: {problem}. Expected {self.layout()}. Fix: extract the official "
                         f"python-version archive into the data root, or write a synthetic copy with: "
                         f"natbench data fixture {self.name} --out DIR")


CIFAR10 = _Spec("cifar10", "CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                ("test_batch",), "batches.meta", "labels", "label_names", 10)
CIFAR100 = _Spec("cifar100", "CIFAR-100", "cifar-100-python", ("train",), ("test",), "meta",
                 "fine_labels", "fine_label_names", 100)


# ---------------------------------------------------------------------------------------- reading
def _base(root, spec: _Spec) -> Path:
    if root is None:
        raise spec.error("data root", "none given (pass --data-root or set NATBENCH_DATA)")
    root = Path(root).expanduser()
    base = root if root.name == spec.folder else root / spec.folder  # accept the folder itself too
    if not base.is_dir():
        raise spec.error(base, "folder not found")
    return base


def _load(path: Path, spec: _Spec) -> dict:
    if not path.is_file():
        raise spec.error(path, "file not found")
    try:
        with open(path, "rb") as f:
            obj = restricted_load(f, encoding="latin1")  # plain data and numpy arrays only: no code runs
    except Exception as e:  # truncated / not a pickle / unknown classes: all a malformed file
        raise spec.error(path, f"not a readable pickle ({type(e).__name__}: {e})".replace("\n", " ")) from e
    if not isinstance(obj, dict):
        raise spec.error(path, f"holds a {type(obj).__name__}, not a dict")
    return obj


def _batch(path: Path, spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    d = _load(path, spec)
    data = d.get("data")
    if not isinstance(data, np.ndarray):
        raise spec.error(path, f"key 'data' missing or not a numpy array (got {type(data).__name__})")
    if data.dtype != np.uint8:
        raise spec.error(path, f"'data' has dtype {data.dtype}, not uint8")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise spec.error(path, f"'data' has shape {tuple(data.shape)}, not (N, 3072)")
    if spec.label_key not in d:
        raise spec.error(path, f"key '{spec.label_key}' missing")
    try:
        labels = np.asarray(d[spec.label_key])
    except Exception as e:  # ragged nested lists etc.
        raise spec.error(path, f"'{spec.label_key}' is not a list of ints ({e})".replace("\n", " ")) from e
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise spec.error(path, f"'{spec.label_key}' is not a flat list of ints (dtype {labels.dtype}, shape {labels.shape})")
    if len(labels) != len(data):
        raise spec.error(path, f"{len(labels)} labels for {len(data)} images")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.n_classes):
        raise spec.error(path, f"labels span {labels.min()}..{labels.max()}, outside 0..{spec.n_classes - 1}")
    return data, labels.astype(np.int64)


def _split(base: Path, files: tuple[str, ...], spec: _Spec) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_batch(base / f, spec) for f in files]
    data = np.concatenate([p[0] for p in parts])
    x = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))  # rows are R|G|B planes: NCHW
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return x, y


def _names(base: Path, spec: _Spec) -> list[str]:
    path = base / spec.meta_file
    names = _load(path, spec).get(spec.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != spec.n_classes or not all(isinstance(n, str) for n in names):
        raise spec.error(path, f"'{spec.names_key}' is not a list of {spec.n_classes} strings")
    return list(names)


def _read(spec: _Spec, root, test_fraction: float, split_seed: int) -> TensorSplits:
    base = _base(root, spec)
    classes = _names(base, spec)
    train_x, train_y = _split(base, spec.train_files, spec)
    test_x, test_y = _split(base, spec.test_files, spec)
    log.info("%s from %s: %d train, %d test images (official test split; test_fraction=%s, split_seed=%s unused)",
             spec.title, base, len(train_y), len(test_y), test_fraction, split_seed)
    return TensorSplits(train_x, train_y, test_x, test_y, classes)


def read_cifar10(root, *, test_fraction: float = 0.2, split_seed: int = 0) -> TensorSplits:
    """CIFAR-10 as uint8 NCHW ``(N, 3, 32, 32)`` tensors and int64 labels (50000 train, 10000 test)."""
    return _read(CIFAR10, root, test_fraction, split_seed)


def read_cifar100(root, *, test_fraction: float = 0.2, split_seed: int = 0) -> TensorSplits:
    """CIFAR-100 with its 100 fine labels, as uint8 NCHW tensors (50000 train, 10000 test)."""
    return _read(CIFAR100, root, test_fraction, split_seed)


# ---------------------------------------------------------------------------------------- fixtures
def synthetic_images(labels, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """uint8 HWC images ``(N, size, size, 3)``: per-class colour + per-class stripes + noise.

    The class look (colour, stripe orientation and period) is fixed by the class index alone, so it
    is the same in every split and for every seed; only the noise depends on ``rng``.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * (32.0 / size)
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        c = int(c)
        colour = np.random.default_rng(10_007 + c).uniform(50, 205, size=3).astype(np.float32)
        period = 3 + (c // 4) % 7
        coord = (xx, yy, xx + yy, xx - yy + 32)[c % 4]
        stripes = np.where((coord // period) % 2 == 0, 40.0, -40.0).astype(np.float32)[..., None]
        out[i] = np.clip(colour + stripes + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
    return out


def _balanced_labels(n: int, n_classes: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if n < n_classes:
        raise ValueError(f"{what}={n} is too small to hold every one of the {n_classes} classes")
    return rng.permutation(np.arange(n) % n_classes)


def _rows(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images in the CIFAR row format: uint8 (N, 3072), channel-major R|G|B planes."""
    return synthetic_images(labels, rng).transpose(0, 3, 1, 2).reshape(len(labels), 3072)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # readable by Python 2 and 3, as the real files are


def write_cifar10_fixture(out_dir, n_train_per_batch: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """Write ``<out_dir>/cifar-10-batches-py/`` (5 train batches, test batch, ``batches.meta``).

    Returns ``out_dir``, the data root that :func:`read_cifar10` (and torchvision) take.
    """
    out_dir = Path(out_dir)
    base = out_dir / CIFAR10.folder
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train = _balanced_labels(5 * n_train_per_batch, 10, rng, "5 * n_train_per_batch")
    chunks = [(f"data_batch_{i + 1}", f"training batch {i + 1} of 5",
               train[i * n_train_per_batch:(i + 1) * n_train_per_batch]) for i in range(5)]
    chunks.append(("test_batch", "testing batch 1 of 1", _balanced_labels(n_test, 10, rng, "n_test")))
    for fname, batch_label, labels in chunks:
        _dump(base / fname, {
            "batch_label": batch_label,
            "labels": [int(v) for v in labels],
            "data": _rows(labels, rng),
            "filenames": [f"{CIFAR10_NAMES[v]}_s_{rng.integers(1, 10**6):06d}.png" for v in labels],
        })
    _dump(base / CIFAR10.meta_file, {"num_cases_per_batch": n_train_per_batch, "label_names": list(CIFAR10_NAMES),
                                     "num_vis": 3072})
    log.info("wrote a synthetic CIFAR-10 fixture to %s", base)
    return out_dir


def write_cifar100_fixture(out_dir, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Write ``<out_dir>/cifar-100-python/`` (``train``, ``test``, ``meta``); returns ``out_dir``."""
    out_dir = Path(out_dir)
    base = out_dir / CIFAR100.folder
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for fname, batch_label, n in (("train", "training batch 1 of 1", n_train), ("test", "testing batch 1 of 1", n_test)):
        labels = _balanced_labels(n, 100, rng, f"n_{fname}")
        _dump(base / fname, {
            "filenames": [f"{CIFAR100_NAMES[v]}_s_{rng.integers(1, 10**6):06d}.png" for v in labels],
            "batch_label": batch_label,
            "fine_labels": [int(v) for v in labels],
            "coarse_labels": [CIFAR100_FINE_TO_COARSE[v] for v in labels],
            "data": _rows(labels, rng),
        })
    _dump(base / CIFAR100.meta_file, {"fine_label_names": list(CIFAR100_NAMES),
                                      "coarse_label_names": list(CIFAR100_COARSE_NAMES)})
    log.info("wrote a synthetic CIFAR-100 fixture to %s", base)
    return out_dir
