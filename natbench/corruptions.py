"""Common corruptions: the 15 ImageNet-C corruptions x 5 severities, applied on the fly.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019, through the ``imagecorruptions`` package (Michaelis et al., "Benchmarking
Robustness in Object Detection", 2019: the code behind Pascal-C, COCO-C and Cityscapes-C). It is the
path for tasks without a published corrupted set (digits, re-id, detection); CIFAR-10-C and ImageNet-C
are read from disk by :mod:`natbench.data.corrupted`.

**Determinism.** The package draws from NumPy's global random state. Each image is corrupted under
``np.random.seed(derive_seed(seed, corruption, severity, index))``; the caller's global state is saved
before and restored after, so the same (image, index, seed) gives the same pixels in any order or batch.

**imagecorruptions 1.1.2 on the current stack.** Three things in the package fail with today's
libraries. natbench wraps them and edits nothing in the package; each wrapper affects that package only:

- it imports ``pkg_resources.resource_filename`` (removed from setuptools 81+): a stand-in module is in
  ``sys.modules`` only while the package is imported (the package keeps the function it imported);
- it calls ``skimage.filters.gaussian(..., multichannel=True)`` (the argument was removed in scikit-image
  0.19): the package's ``gaussian`` is replaced by one that passes ``channel_axis=-1`` instead;
- ``fog`` builds its plasma fractal with ``np.float_`` (removed in NumPy 2.0): the package's ``np`` is a
  view of NumPy in which ``float_`` is ``float64``.

With these, all 15 corruptions run at every severity (``tests/test_corruptions.py``). The package
declares ``opencv-python``; natbench depends on ``opencv-python-headless`` (the same ``cv2``). Two
distributions providing ``cv2`` must not both be installed, so ``make install`` installs the package
with ``--no-deps`` after natbench's own dependencies have provided its real ones (NumPy, SciPy, Pillow,
scikit-image and ``cv2``). ``glass_blur`` is pure Python loops and slow: ~18 s per 300x400 image
and severity on one core.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
import types
import warnings
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np

from .errors import ConfigError

#: the 15 corruptions of ImageNet-C, in the order of the paper (and of ``get_corruption_names()``)
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: the smallest height and width the package accepts
MIN_SIDE = 32
_INSTALL = "install it with: pip install --no-deps imagecorruptions==1.1.2 scikit-image (make install does)"


class _NumpyView(types.ModuleType):
    """NumPy with the alias ``float_`` that NumPy 2.0 removed (for the package's ``fog``)."""

    float_ = np.float64

    def __getattr__(self, name: str):
        return getattr(np, name)


def _gaussian(image, sigma=1, multichannel=None, **kwargs):
    """``skimage.filters.gaussian`` called the scikit-image < 0.19 way (``multichannel=True``)."""
    from skimage.filters import gaussian

    if multichannel:
        kwargs["channel_axis"] = -1
    return gaussian(image, sigma=sigma, **kwargs)


def _resource_filename(package: str, resource: str) -> str:
    return os.path.join(os.path.dirname(sys.modules[package].__file__), resource)


@contextlib.contextmanager
def _pkg_resources_stand_in() -> Iterator[None]:
    if importlib.util.find_spec("pkg_resources") is not None:
        yield
        return
    stand_in = types.ModuleType("pkg_resources")
    stand_in.resource_filename = _resource_filename
    sys.modules["pkg_resources"] = stand_in
    try:
        yield
    finally:
        sys.modules.pop("pkg_resources", None)


@lru_cache(maxsize=1)
def _package() -> types.ModuleType:
    if importlib.util.find_spec("imagecorruptions") is None:
        raise ConfigError(f"common corruptions need the imagecorruptions package, which is not installed; {_INSTALL}")
    with _pkg_resources_stand_in(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy.ndimage.interpolation (still there in SciPy 1.x)
        package = importlib.import_module("imagecorruptions")
        module = importlib.import_module("imagecorruptions.corruptions")
    module.gaussian = _gaussian
    module.np = _NumpyView("numpy")
    return package


def available() -> str | None:
    """None when corruptions can run here, else why not (one line)."""
    try:
        _package()
    except (ConfigError, ImportError) as e:
        return str(e)
    return None


def version() -> str:
    """The installed imagecorruptions version (recorded with every corruption result)."""
    from importlib.metadata import version as dist_version

    return dist_version("imagecorruptions")


def check(name: str, severity: int) -> None:
    """A one-line error for an unknown corruption or a severity outside 1..5."""
    if name not in CORRUPTIONS:
        from .errors import unknown

        raise unknown("corruption", name, CORRUPTIONS)
    if severity not in SEVERITIES:
        raise ConfigError(f"corruption {name}: severity {severity!r} is not one of 1..5; give an integer 1-5")


def _derive(seed: int, name: str, severity: int, index: int) -> int:
    """NumPy's legacy seed (32 bits) for one image: sha256 of the parts, stable across processes."""
    parts = repr(("corruption", int(seed), name, int(severity), int(index))).encode()
    return int.from_bytes(hashlib.sha256(parts).digest()[:4], "little")


def corrupt_image(image: np.ndarray, name: str, severity: int, *, seed: int, index: int = 0,
                  upscale: bool = False) -> np.ndarray:
    """``image`` (uint8, HxW or HxWxC with C in {1, 3}, both sides >= 32) corrupted by ``name`` at
    ``severity``; uint8 of the same shape. Deterministic in (image, name, severity, seed, index).

    ``upscale`` (natbench's choice for images under 32 px, e.g. the 8x8 digits; not in the package or the
    paper): the image is enlarged by the smallest integer factor k reaching 32 px (nearest neighbour),
    corrupted there, and brought back by the mean of each k x k block. The corruptions' parameters are
    set for ImageNet-sized images, so on such small images they are harsher; report them as natbench's
    digits-C, not as ImageNet-C numbers."""
    check(name, severity)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ConfigError(f"corruption {name}: expected a uint8 HxW or HxWx{{1,3}} image, got {image.dtype} "
                          f"{tuple(image.shape)}; convert with (x * 255).round().astype(np.uint8)")
    if min(image.shape[:2]) < MIN_SIDE:
        if not upscale:
            raise ConfigError(f"corruption {name}: the image is {image.shape[0]}x{image.shape[1]}, the corruptions "
                              f"need both sides >= {MIN_SIDE}; resize the images first (or pass upscale=True)")
        k = -(-MIN_SIDE // min(image.shape[:2]))  # ceil: the smallest integer factor reaching 32 px
        big = np.repeat(np.repeat(image, k, axis=0), k, axis=1)
        out = corrupt_image(big, name, severity, seed=seed, index=index).astype(np.float64)
        h, w = image.shape[:2]
        out = out.reshape(h, k, w, k, *out.shape[2:]).mean(axis=(1, 3))  # k x k area mean back to h x w
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    package = _package()
    state = np.random.get_state()
    try:
        np.random.seed(_derive(seed, name, severity, index))
        out = package.corrupt(image, severity=severity, corruption_name=name)
    finally:
        np.random.set_state(state)
    out = np.asarray(out)
    if out.ndim == 3 and image.ndim == 2:  # the package returns grey images as HxWx3 for some corruptions
        out = out[..., 0]
    elif image.ndim == 3 and image.shape[2] == 1 and out.ndim == 3 and out.shape[2] == 3:
        out = out[..., :1]
    elif image.ndim == 3 and image.shape[2] == 1 and out.ndim == 2:
        out = out[..., None]
    if out.shape[:2] != image.shape[:2]:  # frost and zoom crop from a resized image: guard the contract
        raise RuntimeError(f"imagecorruptions {name} returned shape {out.shape} for an image of shape {image.shape}")
    return np.clip(out, 0, 255).astype(np.uint8)


def corrupt_batch(x: "torch.Tensor", name: str, severity: int, *, seed: int, indices: Sequence[int],
                  upscale: bool = False) -> "torch.Tensor":
    """A float batch ``(N, C, H, W)`` in [0, 1] corrupted image by image; ``indices[i]`` identifies image
    i in its dataset (the per-image seed), so a batch's split does not change the pixels."""
    import torch  # not at import: the suite's expansion and the leaderboard read this module without torch

    if x.ndim != 4 or len(indices) != x.shape[0]:
        raise ValueError(f"corrupt_batch: expected (N, C, H, W) and N indices, got {tuple(x.shape)} and {len(indices)}")
    images = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.stack([corrupt_image(img, name, severity, seed=seed, index=int(i), upscale=upscale)
                    for img, i in zip(images, indices)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255.0


def corruption_errors(errors: dict[str, dict[int, float]], baseline: dict[str, dict[int, float]]
                      ) -> tuple[dict[str, float], float, list[str]]:
    """Hendrycks & Dietterich's CE and mCE: for corruption c, ``CE_c = sum_s E(c, s) / sum_s E_base(c, s)``
    (errors in [0, 1], summed over the severities 1-5), ``mCE`` the mean of ``CE_c`` over the corruptions;
    both as percentages (ImageNet-C normalises by AlexNet; natbench by a named baseline run).

    A corruption missing from either side, or with a severity missing, is left out of the mean and
    listed in the third value: reported as missing, never as 0. A baseline whose summed error is 0
    (nothing to normalise by) is left out the same way."""
    ce: dict[str, float] = {}
    missing: list[str] = []
    for c in CORRUPTIONS:
        mine, base = errors.get(c, {}), baseline.get(c, {})
        if any(s not in mine or s not in base for s in SEVERITIES) or sum(base[s] for s in SEVERITIES) <= 0:
            missing.append(c)
            continue
        ce[c] = 100.0 * sum(mine[s] for s in SEVERITIES) / sum(base[s] for s in SEVERITIES)
    return ce, (float(np.mean(list(ce.values()))) if ce else float("nan")), missing
