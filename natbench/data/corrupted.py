"""The published common-corruption test sets, in their real layouts (Hendrycks & Dietterich, ICLR 2019).

- **CIFAR-10-C / CIFAR-100-C** (zenodo 2535967 / 3555552): ``<root>/CIFAR-10-C/<corruption>.npy``, uint8
  ``(50000, 32, 32, 3)``: the 10000 test images at severity 1, then at 2, ... 5, stacked; ``labels.npy``
  ``(50000,)`` (the test labels repeated five times; CIFAR-100-C holds the fine labels). The archive also has
  four extra corruptions (``speckle_noise``, ``gaussian_blur``, ``spatter``, ``saturate``), read by name too.
- **ImageNet-C**: ``<root>/ImageNet-C/<corruption>/<severity 1-5>/<wnid>/*.JPEG`` (224 x 224 centre crops
  of the validation images), read for the classes of an ImageNet-100 class list (label ``i`` is
  ``imagenet100.classes(class_list)[i]``, as for the clean set).

Each reader returns one (corruption, severity) slice; ``natbench data fixture cifar10-c`` (``cifar100-c``,
``imagenet-c``) writes a small synthetic copy in exactly these layouts.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

log = logging.getLogger(__name__)

#: the four extra corruptions of the CIFAR-C archives (not in the 15 of the benchmark's mean)
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
_CIFAR = {"cifar10-c": ("CIFAR-10-C", 10), "cifar100-c": ("CIFAR-100-C", 100)}
IMAGENET_C = "ImageNet-C"


def _names() -> tuple[str, ...]:
    from ..corruptions import CORRUPTIONS

    return CORRUPTIONS


def _fix(dataset: str) -> str:
    return (f"Fix: download and extract the official archive into the data root, or write a synthetic copy "
            f"with: natbench data fixture {dataset} --out DIR")


def _check_slice(dataset: str, corruption: str, severity: int) -> None:
    known = (*_names(), *(EXTRA if dataset != "imagenet-c" else ()))  # the extras are in the CIFAR-C archives only
    if corruption not in known:
        from ..errors import unknown

        raise unknown(f"{dataset} corruption", corruption, known)
    if severity not in (1, 2, 3, 4, 5):
        raise DataError(f"{dataset}: severity {severity!r} is not one of 1..5; give an integer 1-5")


def _folder(root, sub: str, dataset: str) -> Path:
    if root is None:
        raise DataError(f"{dataset}: no data root given (pass --data-root or set NATBENCH_DATA). {_fix(dataset)}")
    root = Path(root).expanduser()
    base = root if root.name == sub else root / sub
    if not base.is_dir():
        raise DataError(f"{dataset} {base}: folder not found. {_fix(dataset)}")
    return base


def _npy(path: Path, dataset: str, n: int | None, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{dataset} {path}: file not found. {_fix(dataset)}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)  # plain arrays only: no code runs
    except Exception as e:  # truncated / not a .npy
        raise DataError(f"{dataset} {path}: not a readable .npy ({type(e).__name__}: {e}). {_fix(dataset)}") from e
    if arr.dtype != np.uint8 or arr.shape[1:] != shape or (n is not None and arr.shape[0] != n) or arr.shape[0] % 5:
        want = f"uint8 ({n if n is not None else '5 x N'}, {', '.join(map(str, shape))})".replace(", )", ")")
        raise DataError(f"{dataset} {path}: holds {arr.dtype} {tuple(arr.shape)}, expected {want} "
                        f"(five severities stacked). {_fix(dataset)}")
    return arr


def read_cifar_c(root, dataset: str, corruption: str, severity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of ``dataset`` (``cifar10-c`` or ``cifar100-c``) at one (corruption, severity): x uint8
    ``(N, 3, 32, 32)``, y int64 ``(N,)``, N the rows of one severity (10000 in the real archive)."""
    if dataset not in _CIFAR:
        from ..errors import unknown

        raise unknown("CIFAR-C dataset", dataset, _CIFAR)
    _check_slice(dataset, corruption, severity)
    sub, n_classes = _CIFAR[dataset]
    base = _folder(root, sub, dataset)
    labels = _npy(base / "labels.npy", dataset, None, ())
    images = _npy(base / f"{corruption}.npy", dataset, labels.shape[0], (32, 32, 3))
    n = labels.shape[0] // 5
    rows = slice((severity - 1) * n, severity * n)
    y = np.asarray(labels[rows]).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"{dataset} {base / 'labels.npy'}: labels outside 0..{n_classes - 1}. {_fix(dataset)}")
    x = torch.from_numpy(np.array(images[rows])).permute(0, 3, 1, 2).contiguous()  # a copy out of the mmap
    return x, torch.from_numpy(y)


def read_imagenet_c_files(root, corruption: str, severity: int, *,
                          class_list: str = "cmc") -> tuple[list[Path], torch.Tensor]:
    """The JPEG paths of ImageNet-C at one (corruption, severity) for the ImageNet-100 classes of
    ``class_list`` (sorted by wnid, then file name) and their int64 labels."""
    from .imagenet100 import classes

    _check_slice("imagenet-c", corruption, severity)
    folder = _folder(root, IMAGENET_C, "imagenet-c") / corruption / str(severity)
    if not folder.is_dir():
        raise DataError(f"imagenet-c {folder}: folder not found. {_fix('imagenet-c')}")
    files, labels = [], []
    for label, wnid in enumerate(classes(class_list)):
        d = folder / wnid
        if not d.is_dir():
            raise DataError(f"imagenet-c {d}: class folder not found (the {class_list} list's class {label}). "
                            f"{_fix('imagenet-c')}")
        found = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        files += found
        labels += [label] * len(found)
    return files, torch.tensor(labels, dtype=torch.int64)


# ---------------------------------------------------------------------------------------- fixtures
def _write_cifar_c(out_dir, dataset: str, n_per_severity: int, seed: int) -> Path:
    from .cifar import synthetic_images

    sub, n_classes = _CIFAR[dataset]
    base = Path(out_dir) / sub
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    test = _clean_test_set(out_dir, dataset)
    if test is not None:  # as the real archive: the clean test set's images, in order, with its labels
        clean, labels = test
        log.info("%s fixture: from the clean test set in %s (%d images)", sub, out_dir, len(labels))
    else:
        labels = rng.permutation(np.arange(n_per_severity) % n_classes)
        clean = synthetic_images(labels, rng).astype(np.float32)
    np.save(base / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    for corruption in (*_names(), *EXTRA):  # severity s: the clean images with noise of std 8 s
        sev = [np.clip(clean + rng.normal(0, 8.0 * s, clean.shape), 0, 255).astype(np.uint8) for s in range(1, 6)]
        np.save(base / f"{corruption}.npy", np.concatenate(sev))
    log.info("wrote a synthetic %s fixture to %s", sub, base)
    return Path(out_dir)


def _clean_test_set(out_dir, dataset: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(float32 (N, 32, 32, 3) images, labels)`` of the clean CIFAR test set in ``out_dir``, if one is there."""
    from . import cifar

    reader = cifar.read_cifar10 if dataset == "cifar10-c" else cifar.read_cifar100
    sub = cifar.CIFAR10.folder if dataset == "cifar10-c" else cifar.CIFAR100.folder
    if not (Path(out_dir) / sub).is_dir():
        return None
    splits = reader(out_dir)
    x = splits.test_x
    x = (x * 255).round().to(torch.uint8) if x.is_floating_point() else x
    return x.permute(0, 2, 3, 1).numpy().astype(np.float32), splits.test_y.numpy()


def write_cifar10_c_fixture(out_dir, n_per_severity: int = 20, seed: int = 0) -> Path:
    """``<out_dir>/CIFAR-10-C/{<19 corruptions>,labels}.npy``, ``n_per_severity`` images per severity;
    when ``out_dir`` holds a CIFAR-10 (fixture), its test set in order, as the real archive is made
    (then ``n_per_severity`` is its size)."""
    return _write_cifar_c(out_dir, "cifar10-c", n_per_severity, seed)


def write_cifar100_c_fixture(out_dir, n_per_severity: int = 100, seed: int = 0) -> Path:
    """``<out_dir>/CIFAR-100-C/...`` as :func:`write_cifar10_c_fixture`, labels 0..99."""
    return _write_cifar_c(out_dir, "cifar100-c", n_per_severity, seed)


def write_imagenet_c_fixture(out_dir, class_list: str = "cmc", per_class: int = 1, size: int = 32,
                             seed: int = 0, corruptions: tuple[str, ...] | None = None) -> Path:
    """``<out_dir>/ImageNet-C/<15 corruptions>/<1-5>/<wnid>/<name>.JPEG`` for the 100 wnids of ``class_list``,
    ``per_class`` images each (``size`` px, not the real 224: 7500 small files); ``corruptions``: a subset
    (default all 15). When ``out_dir`` holds an ImageNet-100 (fixture), one copy of each of its val images
    instead (its Resize + CenterCrop at ``size``, noisier per severity, same wnid folder and file name)."""
    from PIL import Image

    from .cifar import synthetic_images
    from .imagenet100 import classes

    rng = np.random.default_rng(seed)
    val = Path(out_dir) / "imagenet100" / "val"
    if val.is_dir():  # as the real set: a copy of each clean val image (its eval crop at ``size``), same names
        _imagenet_c_from_val(out_dir, val, size, rng, corruptions or _names())
        return Path(out_dir)
    wnids = list(classes(class_list))
    clean = synthetic_images(np.repeat(np.arange(len(wnids)), per_class), rng, size).astype(np.float32)
    for corruption in corruptions or _names():
        for s in range(1, 6):
            noisy = np.clip(clean + rng.normal(0, 8.0 * s, clean.shape), 0, 255).astype(np.uint8)
            for i, wnid in enumerate(wnids):
                d = Path(out_dir) / IMAGENET_C / corruption / str(s) / wnid
                d.mkdir(parents=True, exist_ok=True)
                for k in range(per_class):
                    Image.fromarray(noisy[i * per_class + k]).save(d / f"ILSVRC2012_val_{i * per_class + k + 1:08d}.JPEG",
                                                                   format="JPEG", quality=90)
    log.info("wrote a synthetic ImageNet-C fixture (%d classes) to %s", len(wnids), Path(out_dir) / IMAGENET_C)
    return Path(out_dir)


def _imagenet_c_from_val(out_dir, val: Path, size: int, rng: np.random.Generator, corruptions) -> None:
    from PIL import Image

    from ..tasks.classification.data import ImageTransform

    crop = ImageTransform("eval", size, round(size * 256 / 224))
    files = sorted(p for p in val.glob("*/*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    clean = []
    for f in files:
        with Image.open(f) as im:
            clean.append(np.asarray(crop.apply(im), dtype=np.float32))
    for corruption in corruptions:
        for s in range(1, 6):
            for f, img in zip(files, clean):
                d = Path(out_dir) / IMAGENET_C / corruption / str(s) / f.parent.name
                d.mkdir(parents=True, exist_ok=True)
                noisy = np.clip(img + rng.normal(0, 8.0 * s, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(d / f.name, format="JPEG", quality=90)
    log.info("wrote a synthetic ImageNet-C fixture from %d val images of %s", len(files), val)
