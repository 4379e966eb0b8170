"""natbench.corruptions: the 15 ImageNet-C corruptions through imagecorruptions 1.1.2, wrapped for today's stack."""
from __future__ import annotations

import importlib.metadata as md

import numpy as np
import pytest
import torch

from natbench import corruptions as C
from natbench.errors import ConfigError, UnknownNameError

needs_package = pytest.mark.skipif(C.available() is not None, reason=f"imagecorruptions: {C.available()}")


def _image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def test_only_one_distribution_provides_cv2():
    """imagecorruptions declares opencv-python, natbench uses opencv-python-headless: never both."""
    installed = {d.metadata["Name"].lower() for d in md.distributions()}
    providers = installed & {"opencv-python", "opencv-python-headless", "opencv-contrib-python",
                             "opencv-contrib-python-headless"}
    assert len(providers) <= 1, providers


def test_the_15_corruptions_are_the_packages_common_set():
    pytest.importorskip("imagecorruptions")
    if C.available() is not None:
        pytest.skip(C.available())
    assert C.CORRUPTIONS == tuple(C._package().get_corruption_names("common"))


@pytest.fixture(scope="module")
def voc_image(tmp_path_factory):
    """The first JPEG of natbench's VOC fixture (the real VOCdevkit layout), as uint8 HxWx3."""
    from PIL import Image

    from natbench.data.voc import write_voc_fixture

    root = write_voc_fixture(tmp_path_factory.mktemp("voc"))
    path = sorted(root.rglob("JPEGImages/*.jpg"))[0]
    return np.asarray(Image.open(path).convert("RGB"))


@needs_package
@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_every_corruption_runs_on_a_grey_and_a_colour_image(name, voc_image):
    """All 15 run on the current numpy / scipy / scikit-image / setuptools (grey at 32 px, colour,
    a VOC fixture image); shape and dtype are kept."""
    for img in (_image((32, 32)), _image((32, 32, 1)), _image((60, 80, 3)), voc_image):
        shape = img.shape
        for severity in (1, 5):
            out = C.corrupt_image(img, name, severity, seed=0)
            assert out.dtype == np.uint8 and out.shape == img.shape, (name, shape, severity, out.shape)
    assert not np.array_equal(C.corrupt_image(_image((60, 80, 3)), name, 5, seed=0), _image((60, 80, 3)))


@needs_package
def test_contrast_equals_the_hand_formula():
    """ImageNet-C contrast, severity 1 (c = 0.4): clip((x - mean) * c + mean, 0, 1) * 255, then uint8."""
    img = _image((40, 40, 3))
    x = img / 255.0
    mean = x.mean(axis=(0, 1), keepdims=True)
    expected = np.uint8(np.clip((x - mean) * 0.4 + mean, 0, 1) * 255)
    np.testing.assert_array_equal(C.corrupt_image(img, "contrast", 1, seed=3), expected)


@needs_package
def test_gaussian_noise_uses_the_per_image_seed_and_restores_the_global_state():
    """Gaussian noise, severity 1 (sigma 0.08): clip(x + N(0, 0.08), 0, 1) * 255 with NumPy seeded by the
    image's derived seed; the caller's global NumPy state is left as it was."""
    img = _image((32, 32, 3))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    out = C.corrupt_image(img, "gaussian_noise", 1, seed=7, index=11)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    rs = np.random.RandomState(C._derive(7, "gaussian_noise", 1, 11))
    expected = np.uint8(np.clip(img / 255.0 + rs.normal(size=img.shape, scale=0.08), 0, 1) * 255)
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, C.corrupt_image(img, "gaussian_noise", 1, seed=8, index=11))
    assert not np.array_equal(out, C.corrupt_image(img, "gaussian_noise", 1, seed=7, index=12))


@needs_package
def test_a_batch_is_corrupted_image_by_image_whatever_its_split():
    x = torch.rand(4, 3, 32, 32)
    whole = C.corrupt_batch(x, "shot_noise", 2, seed=0, indices=[10, 11, 12, 13])
    halves = torch.cat([C.corrupt_batch(x[:2], "shot_noise", 2, seed=0, indices=[10, 11]),
                        C.corrupt_batch(x[2:], "shot_noise", 2, seed=0, indices=[12, 13])])
    assert torch.equal(whole, halves) and whole.shape == x.shape and whole.dtype == x.dtype
    assert 0 <= float(whole.min()) and float(whole.max()) <= 1


def test_bad_input_is_a_one_line_error():
    with pytest.raises(UnknownNameError, match="Unknown corruption 'gausian_noise'.*gaussian_noise"):
        C.check("gausian_noise", 1)
    with pytest.raises(ConfigError, match="severity 6 is not one of 1..5"):
        C.check("fog", 6)
    if C.available() is None:
        with pytest.raises(ConfigError, match="8x8.*>= 32.*upscale=True"):
            C.corrupt_image(_image((8, 8)), "fog", 1, seed=0)
        with pytest.raises(ConfigError, match="uint8"):
            C.corrupt_image(np.zeros((32, 32, 3), np.float32), "fog", 1, seed=0)


def test_mce_is_the_mean_of_error_ratios_summed_over_severities():
    """Hand-derived: model errors 0.1..0.5 vs baseline 0.2..1.0 over severities 1-5 give CE = 50 % for every
    corruption; one corruption twice the baseline's error and one missing severity change it as written."""
    base = {c: {s: 0.2 * s for s in C.SEVERITIES} for c in C.CORRUPTIONS}
    mine = {c: {s: 0.1 * s for s in C.SEVERITIES} for c in C.CORRUPTIONS}
    ce, mce, missing = C.corruption_errors(mine, base)
    assert missing == [] and mce == pytest.approx(50.0) and ce["fog"] == pytest.approx(50.0)
    mine["fog"] = {s: 0.4 * s for s in C.SEVERITIES}      # CE_fog = 200
    del mine["snow"][3]                                     # snow is missing, not 0
    ce, mce, missing = C.corruption_errors(mine, base)
    assert missing == ["snow"] and "snow" not in ce and ce["fog"] == pytest.approx(200.0)
    assert mce == pytest.approx((13 * 50.0 + 200.0) / 14)  # 14 corruptions present
    assert np.isnan(C.corruption_errors({}, base)[1])


@needs_package
@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_a_digits_image_is_corrupted_at_32_px_and_brought_back(name):
    """A real 8x8 digits image (scikit-learn's, scaled to 0..255): upscale=True corrupts it at 32 px (k = 4)
    and returns 8x8 uint8; contrast (severity 3, c = 0.2) is checked by hand against that recipe."""
    from sklearn.datasets import load_digits

    img = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)
    out = C.corrupt_image(img, name, 3, seed=0, upscale=True)
    assert out.shape == (8, 8) and out.dtype == np.uint8
    if name == "contrast":  # contrast is per image linear: the block mean of the 32 px result, by hand
        big = np.repeat(np.repeat(img, 4, 0), 4, 1) / 255.0
        m = big.mean()
        hand = np.uint8(np.clip((big - m) * 0.2 + m, 0, 1) * 255).astype(float).reshape(8, 4, 8, 4).mean((1, 3))
        np.testing.assert_array_equal(out, np.clip(np.round(hand), 0, 255).astype(np.uint8))
