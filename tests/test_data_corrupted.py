"""natbench.data.corrupted: CIFAR-10-C / CIFAR-100-C / ImageNet-C readers on fixtures in the real layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from natbench.data import FIXTURES
from natbench.data import corrupted as D
from natbench.data.imagenet100 import classes
from natbench.errors import DataError, UnknownNameError


@pytest.fixture(scope="module")
def cifar10c(tmp_path_factory):
    return D.write_cifar10_c_fixture(tmp_path_factory.mktemp("c10c"), n_per_severity=20)


def test_cifar10_c_fixture_has_the_archive_layout(cifar10c):
    base = cifar10c / "CIFAR-10-C"
    names = sorted(p.stem for p in base.glob("*.npy"))
    assert len(names) == 15 + 4 + 1 and "labels" in names and "glass_blur" in names and "saturate" in names
    fog = np.load(base / "fog.npy")
    labels = np.load(base / "labels.npy")
    assert fog.dtype == np.uint8 and fog.shape == (100, 32, 32, 3) and labels.shape == (100,)
    assert np.array_equal(labels[:20], labels[20:40])  # the test labels repeated per severity


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_cifar_c_reads_one_severity_slice(cifar10c, severity):
    x, y = D.read_cifar_c(cifar10c, "cifar10-c", "fog", severity)
    raw = np.load(cifar10c / "CIFAR-10-C" / "fog.npy")[(severity - 1) * 20:severity * 20]
    assert x.dtype == torch.uint8 and x.shape == (20, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(raw).permute(0, 3, 1, 2))
    assert torch.equal(y, torch.from_numpy(np.load(cifar10c / "CIFAR-10-C" / "labels.npy")[:20].astype(np.int64)))
    x2, _ = D.read_cifar_c(cifar10c / "CIFAR-10-C", "cifar10-c", "fog", severity)  # the folder itself works too
    assert torch.equal(x, x2)


def test_cifar100_c_labels_span_100_classes(tmp_path):
    root = D.write_cifar100_c_fixture(tmp_path, n_per_severity=100)
    x, y = D.read_cifar_c(root, "cifar100-c", "saturate", 2)
    assert x.shape == (100, 3, 32, 32) and sorted(y.tolist()) == list(range(100))


def test_cifar_c_bad_input_is_a_one_line_error(cifar10c, tmp_path):
    with pytest.raises(UnknownNameError, match="Unknown cifar10-c corruption 'fogg'"):
        D.read_cifar_c(cifar10c, "cifar10-c", "fogg", 1)
    with pytest.raises(DataError, match="severity 0 is not one of 1..5"):
        D.read_cifar_c(cifar10c, "cifar10-c", "fog", 0)
    with pytest.raises(DataError, match=r"CIFAR-100-C: folder not found.*natbench data fixture cifar100-c"):
        D.read_cifar_c(cifar10c, "cifar100-c", "fog", 1)
    bad = tmp_path / "CIFAR-10-C"
    bad.mkdir()
    np.save(bad / "labels.npy", np.zeros(10, np.uint8))
    np.save(bad / "fog.npy", np.zeros((10, 32, 32, 3), np.float32))
    with pytest.raises(DataError, match=r"fog.npy: holds float32 \(10, 32, 32, 3\), expected uint8 \(10, 32, 32, 3\)"):
        D.read_cifar_c(tmp_path, "cifar10-c", "fog", 1)
    (bad / "fog.npy").write_bytes(b"not a npy")
    with pytest.raises(DataError, match="not a readable .npy"):
        D.read_cifar_c(tmp_path, "cifar10-c", "fog", 1)


def test_imagenet_c_reads_the_class_list_in_label_order(tmp_path):
    root = D.write_imagenet_c_fixture(tmp_path, corruptions=("fog",))
    files, y = D.read_imagenet_c_files(root, "fog", 4, class_list="cmc")
    wnids = classes("cmc")
    assert len(files) == 100 and y.tolist() == list(range(100))
    assert all(f.parent.name == wnids[int(label)] and f.parent.parent.name == "4" for f, label in zip(files, y))
    with pytest.raises(DataError, match=r"ImageNet-C/snow/4: folder not found"):
        D.read_imagenet_c_files(root, "snow", 4)
    with pytest.raises(DataError, match="class folder not found"):
        D.read_imagenet_c_files(root, "fog", 4, class_list="gat")
    with pytest.raises(UnknownNameError):
        D.read_imagenet_c_files(root, "saturate", 4)  # an extra of the CIFAR-C archives only


def test_the_fixtures_are_registered_for_the_cli():
    assert {"cifar10-c", "cifar100-c", "imagenet-c"} <= set(FIXTURES)
