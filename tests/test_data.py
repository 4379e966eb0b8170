"""natbench/data: fixtures in the real CIFAR-10/100 and ImageNet-100 formats (notes/formats.md Sec. 1-2),
read back by natbench's readers and cross-checked against torchvision's CIFAR classes. No training."""
from __future__ import annotations

import hashlib
import pickle
import re
import shutil
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from natbench.cli import main
from natbench.data import FIXTURES, READERS
from natbench.data import cifar, imagenet100 as inet
from natbench.data.cifar import read_cifar10, read_cifar100, write_cifar10_fixture, write_cifar100_fixture
from natbench.errors import DataError, NatbenchError
from natbench.registry import load_target

C10, C100 = "cifar-10-batches-py", "cifar-100-python"
C10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture(scope="module")
def c10(tmp_path_factory) -> Path:
    return write_cifar10_fixture(tmp_path_factory.mktemp("c10"))


@pytest.fixture(scope="module")
def c100(tmp_path_factory) -> Path:
    return write_cifar100_fixture(tmp_path_factory.mktemp("c100"))


def _pickle(path: Path) -> dict:
    return pickle.loads(path.read_bytes(), encoding="latin1")


def _dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj))


# ----------------------------------------------------------------------------- CIFAR: format + round trip
def test_cifar10_fixture_is_in_the_real_format(c10):
    base = c10 / C10
    assert sorted(p.name for p in base.iterdir()) == sorted(C10_BATCHES + ["batches.meta"])
    for name in C10_BATCHES:
        d = _pickle(base / name)
        assert set(d) == {"batch_label", "labels", "data", "filenames"}
        assert d["data"].dtype == np.uint8 and d["data"].shape == (20, 3072)
        assert type(d["labels"]) is list and all(type(v) is int for v in d["labels"])
        assert len(d["filenames"]) == 20 and isinstance(d["batch_label"], str)
    meta = _pickle(base / "batches.meta")
    assert meta["label_names"] == list(cifar.CIFAR10_NAMES)


def test_cifar100_fixture_is_in_the_real_format(c100):
    base = c100 / C100
    assert sorted(p.name for p in base.iterdir()) == ["meta", "test", "train"]
    for name, n in (("train", 200), ("test", 100)):
        d = _pickle(base / name)
        assert set(d) == {"filenames", "batch_label", "fine_labels", "coarse_labels", "data"}
        assert d["data"].dtype == np.uint8 and d["data"].shape == (n, 3072)
        assert all(type(v) is int for v in d["fine_labels"] + d["coarse_labels"])
        assert sorted(set(d["fine_labels"])) == list(range(100))
        assert [cifar.CIFAR100_FINE_TO_COARSE[f] for f in d["fine_labels"]] == d["coarse_labels"]
    meta = _pickle(base / "meta")
    assert len(meta["fine_label_names"]) == 100 and len(meta["coarse_label_names"]) == 20
    assert sorted(set(cifar.CIFAR100_FINE_TO_COARSE)) == list(range(20))


@pytest.mark.parametrize("name, n_train, n_test, n_classes", [("cifar10", 100, 20, 10), ("cifar100", 200, 100, 100)])
def test_reader_round_trip(name, n_train, n_test, n_classes, c10, c100):
    root = c10 if name == "cifar10" else c100
    s = load_target(READERS[name])(root, test_fraction=0.5, split_seed=3)  # both ignored: official split
    assert s.train_x.shape == (n_train, 3, 32, 32) and s.test_x.shape == (n_test, 3, 32, 32)
    assert s.train_x.dtype == torch.uint8 and s.train_x.is_contiguous()
    assert s.train_y.dtype == torch.int64 and s.test_y.dtype == torch.int64
    assert set(s.train_y.tolist()) == set(s.test_y.tolist()) == set(range(n_classes))
    assert len(s.classes) == n_classes
    base = root / (C10 if name == "cifar10" else C100)  # the dataset folder itself is accepted as root too
    again = load_target(READERS[name])(base)
    assert torch.equal(again.test_x, s.test_x) and torch.equal(again.train_y, s.train_y)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_fixture_images_are_learnable(name, c10, c100):
    """Nearest class mean on raw pixels classifies the held-out fixture images well above chance."""
    s = (read_cifar10(c10) if name == "cifar10" else read_cifar100(c100))
    n = len(s.classes)
    x, xt = s.train_x.flatten(1).float(), s.test_x.flatten(1).float()
    means = torch.stack([x[s.train_y == c].mean(0) for c in range(n)])
    acc = (torch.cdist(xt, means).argmin(1) == s.test_y).float().mean().item()
    assert acc > 0.9, acc


def test_channel_order_pixel_exact(tmp_path):
    """A known image written as channel-major rows (R plane, G plane, B plane) reads back as NCHW."""
    root = write_cifar10_fixture(tmp_path)
    yy, xx = np.mgrid[0:32, 0:32]
    known = np.stack([yy * 8, xx * 8, 255 - (yy + xx) * 4]).astype(np.uint8)  # (3, 32, 32): R, G, B
    known[:, 3, 5] = (255, 0, 0)  # one pure red pixel at row 3, column 5
    for fname, idx in (("data_batch_1", 0), ("test_batch", 7)):
        d = _pickle(root / C10 / fname)
        d["data"][idx] = known.reshape(3072)
        _dump(root / C10 / fname, d)
    s = read_cifar10(root)
    assert torch.equal(s.train_x[0], torch.from_numpy(known))
    assert torch.equal(s.test_x[7], torch.from_numpy(known))
    assert s.test_x[7, :, 3, 5].tolist() == [255, 0, 0]
    assert s.train_x[0, 0, 31, 0].item() == 248 and s.train_x[0, 1, 0, 31].item() == 248  # R grows down, G right


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_torchvision_loads_the_fixture_identically(name, train, c10, c100):
    """torchvision's CIFAR classes (MD5 check patched out, formats.md Sec. 1) see the same pixels."""
    from torchvision import datasets

    root = c10 if name == "cifar10" else c100
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    with mock.patch("torchvision.datasets.cifar.check_integrity", return_value=True):
        ds = cls(str(root), train=train, download=False)
    s = read_cifar10(root) if name == "cifar10" else read_cifar100(root)
    x, y = (s.train_x, s.train_y) if train else (s.test_x, s.test_y)
    assert np.array_equal(ds.data, x.permute(0, 2, 3, 1).numpy())  # torchvision keeps HWC
    assert ds.targets == y.tolist()
    assert ds.classes == s.classes
    for i in (0, len(ds) - 1):
        img, target = ds[i]
        assert np.array_equal(np.asarray(img), x[i].permute(1, 2, 0).numpy()) and target == y[i].item()


# ----------------------------------------------------------------------------- CIFAR: errors
_EDITS = {  # data_batch_2 rewritten with one fault
    "float_data": lambda d: {**d, "data": d["data"].astype(np.float32)},
    "hwc_data": lambda d: {**d, "data": d["data"].reshape(-1, 32, 32, 3)},
    "truncated_labels": lambda d: {**d, "labels": d["labels"][:-1]},
    "label_out_of_range": lambda d: {**d, "labels": [10] + d["labels"][1:]},
    "bytes_keys": lambda d: {k.encode(): v for k, v in d.items()},  # as encoding="bytes" would give
}


def _break(root: Path, how: str) -> Path:
    base = root / C10
    if how == "no_folder":
        shutil.rmtree(base)
        return base
    if how in ("missing_batch", "missing_meta"):
        path = base / ("data_batch_3" if how == "missing_batch" else "batches.meta")
        path.unlink()
        return path
    if how == "corrupt_pickle":
        (base / "test_batch").write_bytes((base / "test_batch").read_bytes()[:100])
        return base / "test_batch"
    _dump(base / "data_batch_2", _EDITS[how](_pickle(base / "data_batch_2")))
    return base / "data_batch_2"


@pytest.mark.parametrize("how", ["no_folder", "missing_batch", "missing_meta", "corrupt_pickle", "float_data",
                                 "hwc_data", "truncated_labels", "label_out_of_range", "bytes_keys"])
def test_cifar10_malformed_is_a_one_line_data_error(tmp_path, c10, how):
    root = Path(shutil.copytree(c10, tmp_path / "root"))
    where = _break(root, how)
    with pytest.raises(DataError) as e:
        read_cifar10(root)
    msg = str(e.value)
    assert "\n" not in msg and str(where) in msg
    assert "natbench data fixture cifar10 --out DIR" in msg and "cifar-10-batches-py/" in msg


def test_missing_root_is_a_data_error(tmp_path, c100):
    for read, name in ((read_cifar10, "cifar10"), (read_cifar100, "cifar100")):
        for root in (None, tmp_path / "nowhere"):
            with pytest.raises(DataError, match=f"natbench data fixture {name} --out DIR"):
                read(root)
    test = Path(shutil.copytree(c100, tmp_path / "c100")) / C100 / "test"
    _dump(test, {**_pickle(test), "data": _pickle(test)["data"][:-1]})
    with pytest.raises(DataError, match=r"100 labels for 99 images.*fixture cifar100"):
        read_cifar100(test.parent.parent)


# ----------------------------------------------------------------------------- ImageNet-100
UPSTREAM_MD5 = {"cmc": "9974508e5d4cc0098b70e8b6a0fe6067", "gat": "0dcf5fb2ea767ca49437f0518374387b"}


@pytest.mark.parametrize("which", ["cmc", "gat"])
def test_pinned_class_lists(which):
    wnids = inet.CLASS_LISTS[which]
    assert len(wnids) == len(set(wnids)) == 100 and all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    # md5 of the upstream text file (one wnid per line, trailing newline), as retrieved
    assert hashlib.md5(("\n".join(wnids) + "\n").encode()).hexdigest() == UPSTREAM_MD5[which]
    assert inet.classes(which) == tuple(sorted(wnids))
    # as described in notes/formats.md Sec. 2
    assert inet.CMC_WNIDS[:3] == ("n02869837", "n01749939", "n02488291") and inet.CMC_WNIDS[-1] == "n02090622"
    assert inet.GAT_WNIDS[:3] == ("n02190166", "n04613696", "n03891332")
    assert len(set(inet.CMC_WNIDS) & set(inet.GAT_WNIDS)) == 12
    with pytest.raises(NatbenchError, match="Did you mean: cmc"):
        inet.classes("cmcc")


@pytest.fixture(scope="module")
def inet_root(tmp_path_factory) -> Path:
    root = inet.write_imagenet100_fixture(tmp_path_factory.mktemp("in100"), n_classes=5, per_class=3, size=48)
    val, first = root / "imagenet100" / "val", inet.classes()[0]
    for folder, stem, size in (("n99999999", "n99999999_1", (40, 30)),  # not a pinned wnid: ignored
                               (inet.GAT_WNIDS[0], f"{inet.GAT_WNIDS[0]}_1", (40, 30)),  # pinned in GAT only
                               (first, f"{first}_777", (90, 30))):  # non-square image in a fixture class
        (val / folder).mkdir(exist_ok=True)
        Image.new("RGB", size, (200, 30, 30)).save(val / folder / f"{stem}.JPEG")
    (val / first / "README.txt").write_text("not an image")  # ignored: not an image extension
    return root


def test_imagenet100_fixture_layout(inet_root):
    train = inet_root / "imagenet100" / "train"
    wnids = sorted(p.name for p in train.iterdir())
    assert len(wnids) == 5 and set(wnids) < set(inet.CMC_WNIDS)
    assert wnids[0] == inet.classes("cmc")[0] and wnids[-1] == inet.classes("cmc")[-1]  # spread over the list
    for w in wnids:
        files = sorted((train / w).iterdir())
        assert len(files) == 3 and all(re.fullmatch(rf"{w}_\d+\.JPEG", f.name) for f in files)
        with Image.open(files[0]) as im:
            assert im.format == "JPEG" and im.size == (48, 48)


def test_imagenet100_labels_are_sorted_pinned_indices(inet_root):
    ds = inet.Imagenet100Folder(inet_root, "val", "cmc", image_size=32)
    sorted_cmc = inet.classes("cmc")
    assert len(ds) == 5 * 3 + 1  # the extra wide image; stray folders and README.txt ignored
    for path, y in ds.samples:
        assert path.parent.name in sorted_cmc and y == sorted_cmc.index(path.parent.name)
    assert {y for _, y in ds.samples} >= {0, 99}  # not relabelled 0..4
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and 0.0 <= x.min() and x.max() <= 1.0
        assert isinstance(y, int)


def test_imagenet100_train_split_and_reader(inet_root):
    torch.manual_seed(0)
    s = inet.read_imagenet100(inet_root, class_list="cmc", image_size=24)
    assert len(s.train) == len(s.test) - 1 == 15 and s.classes == inet.classes("cmc")
    x, y = s.train[4]
    assert x.shape == (3, 24, 24) and 0.0 <= x.min() and x.max() <= 1.0
    xb, yb = next(iter(torch.utils.data.DataLoader(s.test, batch_size=8)))
    assert xb.shape == (8, 3, 24, 24) and yb.dtype == torch.int64
    gat = inet.Imagenet100Folder(inet_root, "val", "gat", image_size=16)  # only its one pinned folder
    assert [y for _, y in gat.samples] == [inet.classes("gat").index(inet.GAT_WNIDS[0])]


def test_imagenet100_errors(tmp_path):
    for root in (None, tmp_path / "nowhere"):
        with pytest.raises(DataError, match="natbench data fixture imagenet100 --out DIR"):
            inet.Imagenet100Folder(root, "val")
    (tmp_path / "imagenet100" / "val" / "n99999999").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        inet.Imagenet100Folder(tmp_path, "val")
    with pytest.raises(DataError, match="split folder not found"):
        inet.Imagenet100Folder(tmp_path, "train")


# ----------------------------------------------------------------------------- registry, CLI, task
def test_registered_targets_import():
    assert all(callable(load_target(t)) for t in list(READERS.values()) + list(FIXTURES.values()))
    assert {"cifar10", "cifar100"} <= set(READERS) and {"cifar10", "cifar100", "imagenet100"} <= set(FIXTURES)


@pytest.mark.parametrize("name, marker", [("cifar10", f"{C10}/test_batch"), ("cifar100", f"{C100}/meta"),
                                          ("imagenet100", "imagenet100/val")])
def test_cli_data_fixture(tmp_path, name, marker):
    out = tmp_path / "data"
    assert main(["data", "fixture", name, "--out", str(out)]) == 0
    assert (out / marker).exists()
    if name != "imagenet100":
        assert len(load_target(READERS[name])(out).classes) == (10 if name == "cifar10" else 100)


def test_cli_unknown_fixture_is_exit_2(tmp_path, capsys):
    assert main(["data", "fixture", "cifar11", "--out", str(tmp_path)]) == 2
    assert "cifar10" in capsys.readouterr().err  # the did-you-mean


def test_classification_task_reads_cifar10_fixture(c10):
    import natbench
    from natbench.taskspec import load_task_spec
    from natbench.tasks.classification import ClassificationTask

    spec = load_task_spec(Path(natbench.__file__).parent / "specs" / "tasks" / "digits.yaml")
    spec = replace(spec, data=replace(spec.data, dataset="cifar10", augment="crop_flip"))
    train, val, test = ClassificationTask(spec, c10).loaders(16, torch.Generator().manual_seed(0))
    b = next(iter(train))
    assert b.x.shape == (16, 3, 32, 32) and b.x.dtype == torch.float32 and 0 <= b.x.min() and b.x.max() <= 1
    assert sum(len(t.y) for t in (train, val, test)) == 120  # 90 train + 10 val carved from 100, 20 test


def test_batched_crop_flip_is_the_per_image_crop_and_flip():
    """The gathered crop_flip (the GPU fast path's augmentation) equals, pixel for pixel, the
    per-image RandomCrop(padding=4) + flip with the same draws from the generator."""
    import torch.nn.functional as F

    from natbench.tasks.classification import crop_flip

    x = torch.rand(17, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = crop_flip(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    dx, dy = torch.randint(0, 9, (17,), generator=g), torch.randint(0, 9, (17,), generator=g)
    flip = torch.rand(17, generator=g) < 0.5
    padded = F.pad(x, (4, 4, 4, 4))
    ref = torch.stack([padded[i, :, dy[i]: dy[i] + 32, dx[i]: dx[i] + 32] for i in range(17)])
    ref[flip] = ref[flip].flip(-1)
    assert torch.equal(got, ref) and 0 < int(flip.sum()) < 17
