"""ImageNet-100: two pinned 100-class subsets of ILSVRC-2012, read ImageFolder-style from JPEG files.

The two lists (notes/formats.md Sec. 2) share only 12 wnids, so a run must name which one it uses:

- ``"cmc"``: Tian, Krishnan & Isola, *Contrastive Multiview Coding* (the usual "ImageNet-100" of SSL
  and robustness papers), file ``HobbitLong/CMC:imagenet100.txt`` (100 lines, unsorted);
- ``"gat"``: Sriramanan et al., GAMA / GAT (NeurIPS 2020), file
  ``val-iisc/GAMA-GAT:ImageNet -100/ImageNet100_classes.txt`` (note the space in the folder name).

Both tuples below are copied verbatim, in file order, from those files.

On-disk layout (natbench's decision; the CMC and GAT scripts use ``<data_folder>/{train,val}/<wnid>/``):
``<root>/imagenet100/train/<wnid>/*.JPEG`` and ``<root>/imagenet100/val/<wnid>/*.JPEG``, where
``<root>`` is the data root (``--data-root`` / ``NATBENCH_DATA``); a root that itself holds
``train/`` and ``val/``, or is the ``imagenet100`` folder, is accepted too. Train files are named
like ``n01440764_10026.JPEG``; the raw ILSVRC val folder is flat and must first be sorted into wnid
subfolders (any image name is accepted). ``val`` is the test split, as in both papers.

Labels: torchvision's ``ImageFolder`` labels classes by the ``sorted()`` names of the folders that
exist, so a partial copy gets a different mapping. Here the label of a wnid is its index in the
SORTED pinned list, whatever folders exist; folders that are not pinned wnids are ignored.
:class:`Imagenet100Folder` allows missing classes (labels unchanged); the task's reader refuses them.

ImageNet does not fit in memory as tensors. The task reads it through :func:`read_imagenet100_files`
(``READERS["imagenet100"]``), which returns :class:`~natbench.data.FileSplits` (paths + labels) that
the classification task decodes per batch with its own deterministic transforms (train
``RandomResizedCrop(image_size)`` + horizontal flip as GAT-ImageNet100.py, or Resize + RandomCrop +
flip; val/test ``Resize(resize)`` + ``CenterCrop(image_size)``, no Normalize: inputs in [0, 1]; see
``natbench.tasks.classification``). That reader is strict: every one of the 100 pinned wnids must
have images in both ``train`` and ``val``, otherwise a :class:`DataError` names the missing ones (a
partial copy would silently train and test on fewer classes than the leaderboard says).

:class:`Imagenet100Folder` is the permissive ``torch.utils.data.Dataset`` view of one split (missing
classes allowed, labels unchanged; torchvision transforms drawn from the global RNG), for use with a
plain DataLoader outside the benchmark. :func:`read_imagenet100` returns a pair of them.

Fixtures: :func:`write_imagenet100_fixture` writes a few classes of one list (or of several);
:func:`write_imagenet100_full_fixture` (``natbench data fixture imagenet100 --out DIR``) writes every
wnid of both lists, 3 train + 1 val JPEGs each, so the task runs on it with either class list.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from . import FileSplits

log = logging.getLogger(__name__)

#: HobbitLong/CMC:imagenet100.txt (commit bc687a26de7ae350d98f671d25d164b65336b8c2), in file order.
CMC_WNIDS = (
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406", "n02091831", "n04517823", "n04589890",
    "n03062245", "n01773797", "n01735189", "n07831146", "n07753275", "n03085013", "n04485082", "n02105505",
    "n01983481", "n02788148", "n03530642", "n04435653", "n02086910", "n02859443", "n13040303", "n03594734",
    "n02085620", "n02099849", "n01558993", "n04493381", "n02109047", "n04111531", "n02877765", "n04429376",
    "n02009229", "n01978455", "n02106550", "n01820546", "n01692333", "n07714571", "n02974003", "n02114855",
    "n03785016", "n03764736", "n03775546", "n02087046", "n07836838", "n04099969", "n04592741", "n03891251",
    "n02701002", "n03379051", "n02259212", "n07715103", "n03947888", "n04026417", "n02326432", "n03637318",
    "n01980166", "n02113799", "n02086240", "n03903868", "n02483362", "n04127249", "n02089973", "n03017168",
    "n02093428", "n02804414", "n02396427", "n04418357", "n02172182", "n01729322", "n02113978", "n03787032",
    "n02089867", "n02119022", "n03777754", "n04238763", "n02231487", "n03032252", "n02138441", "n02104029",
    "n03837869", "n03494278", "n04136333", "n03794056", "n03492542", "n02018207", "n04067472", "n03930630",
    "n03584829", "n02123045", "n04229816", "n02100583", "n03642806", "n04336792", "n03259280", "n02116738",
    "n02108089", "n03424325", "n01855672", "n02090622",
)
#: val-iisc/GAMA-GAT:"ImageNet -100/ImageNet100_classes.txt" (commit ea559447e95ae24260c6bd4d743a895205aeba5b).
GAT_WNIDS = (
    "n02190166", "n04613696", "n03891332", "n04118538", "n07716358", "n02277742", "n02099429", "n03530642",
    "n01843065", "n04560804", "n01532829", "n01981276", "n04133789", "n10565667", "n01693334", "n03047690",
    "n01592084", "n02092002", "n02834397", "n04209239", "n09399592", "n02100735", "n02109047", "n02930766",
    "n03720891", "n13052670", "n03590841", "n03208938", "n03888257", "n02749479", "n04482393", "n04596742",
    "n04317175", "n03447447", "n03937543", "n02690373", "n03775546", "n02093428", "n03218198", "n04350905",
    "n02111129", "n02085620", "n02777292", "n02018207", "n03871628", "n12768682", "n02099849", "n04476259",
    "n02096585", "n02085782", "n03776460", "n03763968", "n01978287", "n01751748", "n02256656", "n01784675",
    "n03028079", "n03325584", "n02814860", "n07753592", "n12985857", "n03344393", "n04259630", "n03877845",
    "n01770393", "n01855032", "n03837869", "n03272010", "n04380533", "n01484850", "n04033901", "n02009229",
    "n03188531", "n01824575", "n04392985", "n03598930", "n02236044", "n04069434", "n04367480", "n03417042",
    "n02396427", "n01985128", "n01749939", "n02443484", "n01797886", "n02002556", "n01518878", "n02128925",
    "n02097474", "n02107142", "n03180011", "n03393912", "n04266014", "n02825657", "n01514668", "n02108000",
    "n02837789", "n04192698", "n02783161", "n11939491",
)
CLASS_LISTS: dict[str, tuple[str, ...]] = {"cmc": CMC_WNIDS, "gat": GAT_WNIDS}
SUBFOLDER = "imagenet100"
SPLITS = ("train", "val")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # as ImageFolder
_LAYOUT = f"<root>/{SUBFOLDER}/{{train,val}}/<wnid>/*.JPEG"
_FIX = "Fix: sort ImageNet into that layout, or write a synthetic copy with: natbench data fixture imagenet100 --out DIR"


HINT = f"Expected {_LAYOUT}. {_FIX}"


def _error(path, problem: str) -> DataError:
    return DataError(f"ImageNet-100 {path}: {problem}. {HINT}")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _loose_images(folder: Path) -> str:
    """A hint when ``folder`` holds images directly (the raw, flat ILSVRC val folder)."""
    n = sum(1 for e in os.scandir(folder) if e.is_file() and _is_image(e.name))
    return (f" ({n} images lie directly in it: sort the raw ILSVRC val images into <wnid> subfolders first)"
            if n else "")


def classes(class_list: str = "cmc") -> tuple[str, ...]:
    """The pinned wnids of ``class_list``, sorted: label ``i`` is ``classes(class_list)[i]``."""
    if class_list not in CLASS_LISTS:
        from ..errors import unknown

        raise unknown("ImageNet-100 class list", class_list, CLASS_LISTS)
    return tuple(sorted(CLASS_LISTS[class_list]))


def default_transform(split: str, image_size: int = 224) -> Callable:
    """GAT's transforms scaled to ``image_size``; PIL image -> float tensor (3, S, S) in [0, 1]."""
    from torchvision import transforms as T

    if split == "train":
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor()])
    return T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor()])


def _dataset_dir(root) -> Path:
    if root is None:
        raise _error("data root", "none given (pass --data-root or set NATBENCH_DATA)")
    root = Path(root).expanduser()
    for cand in (root / SUBFOLDER, root):
        if any((cand / s).is_dir() for s in SPLITS):
            return cand
    raise _error(root / SUBFOLDER, "folder not found")


class Imagenet100Folder(Dataset):
    """One split (``"train"`` or ``"val"``) of ImageNet-100 as ``(float tensor in [0, 1], int label)``.

    Only the 100 wnids of ``class_list`` are read; the label is the wnid's index in the sorted
    pinned list. ``transform`` (PIL image -> tensor) defaults to :func:`default_transform`.
    """

    def __init__(self, root, split: str = "train", class_list: str = "cmc", transform: Callable | None = None,
                 *, image_size: int = 224):
        if split not in SPLITS:
            raise DataError(f"ImageNet-100 split '{split}' is not one of {', '.join(SPLITS)}")
        self.classes = classes(class_list)
        self.class_to_idx = {w: i for i, w in enumerate(self.classes)}
        self.class_list, self.split = class_list, split
        self.transform = transform if transform is not None else default_transform(split, image_size)
        self.dir = _dataset_dir(root) / split
        if not self.dir.is_dir():
            raise _error(self.dir, "split folder not found")
        self.samples: list[tuple[Path, int]] = []
        for wnid in self.classes:  # sorted, so samples are in ImageFolder order
            folder = self.dir / wnid
            if folder.is_dir():  # scandir: no stat() per file (126k train images)
                files = sorted(e.name for e in os.scandir(folder) if e.is_file() and _is_image(e.name))
                self.samples += [(folder / f, self.class_to_idx[wnid]) for f in files]
        ignored = sorted(p.name for p in self.dir.iterdir() if p.is_dir() and p.name not in self.class_to_idx)
        if ignored:
            log.info("ImageNet-100 %s: ignoring %d folder(s) not in the '%s' list: %s", self.dir, len(ignored),
                        class_list, ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else ""))
        if not self.samples:
            raise _error(self.dir, f"no images of any of the 100 '{class_list}' wnids{_loose_images(self.dir)}")
        present = len({y for _, y in self.samples})
        if present < len(self.classes):
            log.info("ImageNet-100 %s: %d of %d '%s' classes present", self.dir, present, len(self.classes), class_list)
        self.targets = [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, y = self.samples[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, Image.DecompressionBombError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise _error(path, f"not a readable image ({e})".replace("\n", " ")) from e
        return self.transform(img), y


class Imagenet100Splits(NamedTuple):
    train: Imagenet100Folder
    test: Imagenet100Folder  # the official ILSVRC val images of the pinned classes
    classes: tuple[str, ...]


def read_imagenet100(root, *, class_list: str = "cmc", image_size: int = 224, test_fraction: float = 0.2,
                     split_seed: int = 0) -> Imagenet100Splits:
    """Train and val (= test) datasets; ``test_fraction``/``split_seed`` are unused (official split)."""
    train = Imagenet100Folder(root, "train", class_list, image_size=image_size)
    test = Imagenet100Folder(root, "val", class_list, image_size=image_size)
    log.info("ImageNet-100 (%s) from %s: %d train, %d val images", class_list, train.dir.parent, len(train), len(test))
    return Imagenet100Splits(train, test, train.classes)


def read_imagenet100_files(root, *, class_list: str = "cmc", test_fraction: float = 0.2,
                           split_seed: int = 0) -> FileSplits:
    """The task's reader: train and val (= test) file lists with labels = index in the sorted pinned list.

    Strict: every pinned wnid must have at least one image in ``train`` and in ``val``; folders of
    other wnids are ignored. ``test_fraction``/``split_seed`` are unused (official split).
    """
    parts = {}
    for split in SPLITS:
        ds = Imagenet100Folder(root, split, class_list, transform=_no_transform)
        present = set(ds.targets)
        missing = [w for i, w in enumerate(ds.classes) if i not in present]
        if missing:
            raise _error(ds.dir, f"{len(missing)} of the 100 '{class_list}' wnids have no images here "
                                 f"(e.g. {', '.join(missing[:3])}){_loose_images(ds.dir)}; natbench refuses a "
                                 f"partial copy (check data.class_list: cmc or gat)")
        parts[split] = ds
    train, test = parts["train"], parts["val"]
    log.info("ImageNet-100 (%s) from %s: %d train, %d val (test) images", class_list, train.dir.parent,
             len(train), len(test))
    return FileSplits([p for p, _ in train.samples], torch.tensor(train.targets, dtype=torch.int64),
                      [p for p, _ in test.samples], torch.tensor(test.targets, dtype=torch.int64),
                      list(train.classes), hint=HINT)


def _no_transform(img):
    return img


def write_imagenet100_fixture(out_dir, class_list: str | tuple[str, ...] = "cmc", n_classes: int = 5,
                              per_class: int = 3, size: int = 64, seed: int = 0,
                              val_per_class: int | None = None) -> Path:
    """Write ``<out_dir>/imagenet100/{train,val}/<wnid>/<wnid>_<n>.JPEG`` for ``n_classes`` pinned wnids.

    ``class_list`` is one list name or several (``("cmc", "gat")``: ``n_classes`` of each, the union
    written once). The wnids are spread over each sorted list (first, last and evenly in between) so
    their labels are not simply 0..n-1. ``per_class`` images per wnid in ``train`` and
    ``val_per_class`` (default: ``per_class``) in ``val``. Images are ``size`` x ``size`` and depend
    on the wnid only (colour + stripes + noise), whichever list labels them. Returns ``out_dir``.
    """
    from PIL import Image

    from .cifar import synthetic_images

    lists = (class_list,) if isinstance(class_list, str) else tuple(class_list)
    looks = sorted(set().union(*(classes(name) for name in lists)))  # a wnid's look: its index in the union
    wnids: set[str] = set()
    for name in lists:
        pinned = classes(name)
        if not 1 <= n_classes <= len(pinned):
            raise ValueError(f"n_classes must be in 1..{len(pinned)}, got {n_classes}")
        wnids.update(pinned[int(i)] for i in np.linspace(0, len(pinned) - 1, n_classes).round())
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    for split in SPLITS:
        k = per_class if split == "train" or val_per_class is None else val_per_class
        for wnid in sorted(wnids):
            folder = out_dir / SUBFOLDER / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            numbers = rng.choice(np.arange(1, 20_000), size=k, replace=False)
            for number, img in zip(numbers, synthetic_images([looks.index(wnid)] * k, rng, size)):
                Image.fromarray(img).save(folder / f"{wnid}_{number}.JPEG", format="JPEG", quality=90)
    log.info("wrote a synthetic ImageNet-100 (%s) fixture with %d classes to %s", "+".join(lists), len(wnids),
             out_dir / SUBFOLDER)
    return out_dir


def write_imagenet100_full_fixture(out_dir) -> Path:
    """``natbench data fixture imagenet100``: all wnids of both lists (188), 3 train + 1 val JPEGs each, 64 px.

    A task run on it works with ``data.class_list`` cmc or gat (100 classes either way).
    """
    return write_imagenet100_fixture(out_dir, class_list=tuple(CLASS_LISTS), n_classes=100, per_class=3,
                                     val_per_class=1, size=64)
