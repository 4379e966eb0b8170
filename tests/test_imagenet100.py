"""ImageNet-100 in the classification task: the real readers on the CLI fixture (pinned labels, CMC/GAT
selection, strictness, errors), the lazy per-batch loader (deterministic, torchvision-exact
transforms, val carved from train) and one end-to-end quick run (slow)."""
from __future__ import annotations

import shutil
from dataclasses import asdict, field, fields, make_dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import natbench
from natbench.cli import main
from natbench.data import READERS, FileSplits
from natbench.data import imagenet100 as inet
from natbench.errors import ConfigError, DataError
from natbench.registry import get_registry, load_target
from natbench.store import Store
from natbench.tasks import classification
from natbench.tasks.classification import ClassificationTask, ImageTransform
from natbench.taskspec import DataCfg, load_task_spec

SPECS = Path(natbench.__file__).parent / "specs" / "tasks"
SPEC_PATH = SPECS / "imagenet100.yaml"
FIX = "natbench data fixture imagenet100 --out DIR"
SHARED = sorted(set(inet.CMC_WNIDS) & set(inet.GAT_WNIDS))
CMC_ONLY = sorted(set(inet.CMC_WNIDS) - set(inet.GAT_WNIDS))


def _task_arg() -> str:
    """``imagenet100`` once it is registered (registry.yaml), else the spec's path (``--task`` takes both)."""
    return "imagenet100" if get_registry().has("tasks", "imagenet100") else str(SPEC_PATH)


def _data(base: DataCfg, **kw) -> DataCfg:
    """``replace(base, **kw)``, also for the file-dataset fields DataCfg may not declare yet."""
    known = {f.name for f in fields(base)}
    extra = {k: v for k, v in kw.items() if k not in known}
    if not extra:
        return replace(base, **kw)
    cls = make_dataclass("DataCfgPlus", [(k, object, field(default=v)) for k, v in extra.items()],
                         bases=(type(base),), frozen=True)
    return cls(**{**asdict(base), **kw})


def _task(root: Path | None, spec_path: Path = SPEC_PATH, **data) -> ClassificationTask:
    spec = load_task_spec(spec_path)
    return ClassificationTask(replace(spec, data=_data(spec.data, **data)), root)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("in100") / "data"
    assert main(["data", "fixture", "imagenet100", "--out", str(out)]) == 0
    return out


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "data"))


# ----------------------------------------------------------------------------- fixture + reader
def test_cli_fixture_is_the_real_layout(root):
    both = set(inet.CMC_WNIDS) | set(inet.GAT_WNIDS)
    for split, k in (("train", 3), ("val", 1)):
        base = root / "imagenet100" / split
        assert {p.name for p in base.iterdir()} == both  # every wnid of both lists: 188 folders
        for w in (SHARED[0], CMC_ONLY[0], inet.GAT_WNIDS[0]):
            files = sorted((base / w).iterdir())
            assert len(files) == k and all(f.name.startswith(f"{w}_") and f.suffix == ".JPEG" for f in files)
            with Image.open(files[0]) as im:
                assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"


@pytest.mark.parametrize("which", ["cmc", "gat"])
def test_reader_labels_are_indices_in_the_sorted_pinned_list(root, which):
    s = load_target(READERS["imagenet100"])(root, class_list=which, test_fraction=0.5, split_seed=9)
    assert isinstance(s, FileSplits) and s.classes == sorted(inet.CLASS_LISTS[which])
    assert len(s.train_files) == 300 and len(s.test_files) == 100  # only this list's 100 wnids of the 188
    for files, y in ((s.train_files, s.train_y), (s.test_files, s.test_y)):
        assert y.dtype == torch.int64
        assert [s.classes.index(f.parent.name) for f in files] == y.tolist()
        assert {f.parent.name for f in files} == set(inet.CLASS_LISTS[which])
        assert all(f.parent.parent.name in ("train", "val") for f in files)
    assert sorted(set(s.test_y.tolist())) == list(range(100))
    assert all(f.parent.parent.name == "val" for f in s.test_files)  # official val folder = test split


def test_cmc_and_gat_label_the_shared_wnids_differently(root):
    cmc, gat = (inet.read_imagenet100_files(root, class_list=w) for w in ("cmc", "gat"))
    label = {w: {f.parent.name: int(y) for f, y in zip(s.test_files, s.test_y)} for w, s in (("cmc", cmc), ("gat", gat))}
    assert len(SHARED) == 12
    assert [label["cmc"][w] for w in SHARED] == [inet.classes("cmc").index(w) for w in SHARED]
    assert [label["gat"][w] for w in SHARED] == [inet.classes("gat").index(w) for w in SHARED]
    assert any(label["cmc"][w] != label["gat"][w] for w in SHARED)


def test_the_spec_field_chooses_the_class_list(root):
    for which in ("cmc", "gat"):
        _, _, test = _task(root, class_list=which).loaders(8, torch.Generator().manual_seed(0))
        assert {f.parent.name for f in test.files} == set(inet.CLASS_LISTS[which])
        assert [inet.classes(which).index(f.parent.name) for f in test.files] == test.y.tolist()
    with pytest.raises(ConfigError, match=r"data\.class_list.*Did you mean: cmc"):
        _task(root, class_list="cmcc").check_data()


def test_a_missing_class_folder_shifts_no_label_and_the_task_refuses_it(root, tmp_path):
    data = _copy(root, tmp_path)
    gone = CMC_ONLY[len(CMC_ONLY) // 2]
    full = {p.name: y for p, y in inet.Imagenet100Folder(data, "train", "cmc", image_size=8).samples}
    shutil.rmtree(data / "imagenet100" / "train" / gone)
    partial = {p.name: y for p, y in inet.Imagenet100Folder(data, "train", "cmc", image_size=8).samples}
    assert len(partial) == len(full) - 3 and all(full[name] == y for name, y in partial.items())
    assert max(partial.values()) == 99 and inet.classes("cmc").index(gone) not in partial.values()
    with pytest.raises(DataError) as e:
        inet.read_imagenet100_files(data, class_list="cmc")
    msg = str(e.value)
    assert gone in msg and str(data / "imagenet100" / "train") in msg and FIX in msg and "\n" not in msg
    assert len(inet.read_imagenet100_files(data, class_list="gat").train_files) == 300  # not a GAT wnid


def test_flat_val_folder_gets_the_sorting_hint(root, tmp_path):
    data = _copy(root, tmp_path)
    val = data / "imagenet100" / "val"
    for i, folder in enumerate(sorted(val.iterdir())):
        for f in folder.iterdir():
            f.rename(val / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
        folder.rmdir()
    with pytest.raises(DataError, match=r"188 images lie directly in it: sort the raw ILSVRC val.*" + FIX):
        inet.read_imagenet100_files(data)


# ----------------------------------------------------------------------------- missing data: exit 2
def test_missing_root_or_train_folder_is_a_data_error(tmp_path):
    nowhere = tmp_path / "nowhere"
    for where in (None, nowhere):
        with pytest.raises(DataError) as e:
            _task(where).check_data()
        assert FIX in str(e.value) and "imagenet100/{train,val}/<wnid>/*.JPEG" in str(e.value)
    assert str(nowhere / "imagenet100") in str(e.value)
    (tmp_path / "imagenet100" / "val" / inet.CMC_WNIDS[0]).mkdir(parents=True)
    with pytest.raises(DataError, match=rf"{tmp_path / 'imagenet100' / 'train'}: split folder not found.*{FIX}"):
        _task(tmp_path).check_data()


@pytest.mark.parametrize("layout", ["empty", "val_only"])
def test_cli_run_without_data_exits_2(tmp_path, capsys, monkeypatch, layout):
    monkeypatch.delenv("NATBENCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    if layout == "val_only":
        (data / "imagenet100" / "val" / inet.CMC_WNIDS[0]).mkdir(parents=True)
    rc = main(["run", "--task", _task_arg(), "--defense", "vanilla", "--data-root", str(data),
               "--root", str(tmp_path / "runs"), "--device", "cpu", "--no-leaderboard"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "natbench data fixture imagenet100" in err[0] and str(data / "imagenet100") in err[0]
    assert not (tmp_path / "runs" / "natbench.sqlite").exists()


def test_unreadable_image_is_a_data_error(root, tmp_path):
    data = _copy(root, tmp_path)
    task = _task(data, image_size=16)
    train, _, test = task.loaders(50, torch.Generator().manual_seed(0))
    bad = train.files[7]
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated JPEG
    with pytest.raises(DataError) as e:
        list(train)
    assert str(bad) in str(e.value) and FIX in str(e.value)
    test.files[0].write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=str(test.files[0])):
        task.check_data()  # decodes one file per split before any training


# ----------------------------------------------------------------------------- the lazy loader
def _epoch(loader):
    return [(b.x.clone(), b.y.clone(), b.index.clone()) for b in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(p, q) for u, v in zip(a, b) for p, q in zip(u, v))


def test_train_loader_is_deterministic_and_honours_the_batch_contract(root):
    task = _task(root, image_size=16)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731

    torch.manual_seed(1)
    gen_a = g(5)
    a = _epoch(task.loaders(32, gen_a)[0])
    torch.manual_seed(2)  # the global RNG plays no part
    gen_b = g(5)
    b = _epoch(task.loaders(32, gen_b)[0])
    assert _same(a, b) and torch.equal(gen_a.get_state(), gen_b.get_state())
    threaded = _task(root, image_size=16, num_workers=3)
    assert _same(a, _epoch(threaded.loaders(32, g(5))[0]))  # decode threads change nothing

    other = _epoch(task.loaders(32, g(6))[0])
    assert not _same(a, other)
    x, y, idx = a[0]
    assert len(a) == 7 and x.shape == (32, 3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.int64 and idx.dtype == torch.int64
    order = torch.cat([i for _, _, i in a])
    assert sorted(order.tolist()) == list(range(200))  # every training image once per epoch
    train = task.loaders(32, g(5))[0]
    assert torch.cat([yy for _, yy, _ in a]).tolist() == train.y[order].tolist()
    # augmentation varies with the generator: the same image, two epochs, two different crops
    first = {int(i): xx[k] for xx, _, ii in a for k, i in enumerate(ii)}
    second = {int(i): xx[k] for xx, _, ii in other for k, i in enumerate(ii)}
    assert sum(not torch.equal(first[i], second[i]) for i in range(200)) > 150


def test_eval_loaders_are_deterministic_and_match_torchvision(root):
    from torchvision import transforms as T

    task = _task(root, image_size=24)
    _, val, test = task.loaders(32, torch.Generator().manual_seed(0), eval_batch_size=40)
    for loader in (val, test):
        assert _same(_epoch(loader), _epoch(loader))
        assert torch.cat([b.index for b in loader]).tolist() == list(range(len(loader.y)))  # no shuffling
    ref = T.Compose([T.Resize(27), T.CenterCrop(24), T.ToTensor()])  # resize = round(24 * 256 / 224)
    b = next(iter(test))
    for k in (0, 17, 39):
        with Image.open(test.files[k]) as im:
            assert torch.equal(b.x[k], ref(im.convert("RGB")))


def test_train_crops_match_torchvision_given_the_same_parameters():
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 90, 3), dtype=np.uint8))  # wide: 90 x 30
    rrc = ImageTransform("resized_crop_flip", 16, 18)
    for seed in range(5):
        u = torch.rand(ImageTransform.N_UNIFORMS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()
        top, left, h, w = rrc.resized_crop_params(90, 30, u)
        expect = TF.pil_to_tensor(TF.resized_crop(img, top, left, h, w, [16, 16]))
        assert torch.equal(rrc(img, u), expect.flip(-1) if u[-1] < 0.5 else expect)
    assert rrc.resized_crop_params(90, 30, [1 - 1e-9] * 41) == (0, 25, 30, 40)  # every try too big: central 4:3
    crop = ImageTransform("crop_flip", 16, 18)
    u = [0.0] * 40 + [0.9]  # top-left crop of the 54 x 18 resize, no flip
    expect = TF.pil_to_tensor(TF.crop(TF.resize(img, 18), 0, 0, 16, 16))
    assert torch.equal(crop(img, u), expect)


def test_val_is_carved_from_train_stratified_and_fixed_by_split_seed(root):
    def split(seed):
        train, val, test = _task(root, image_size=8, split_seed=seed).loaders(8, torch.Generator())
        return train, val, test

    train, val, test = split(0)
    assert len(train.files) == 200 and len(val.files) == 100 and len(test.files) == 100
    assert sorted(val.y.tolist()) == list(range(100))  # one of the 3 images of every class
    assert set(train.files).isdisjoint(val.files) and set(train.files) | set(val.files) == set(
        inet.read_imagenet100_files(root).train_files)
    assert all(f.parent.parent.name == "val" for f in test.files)
    assert split(0)[1].files == val.files and split(1)[1].files != val.files


def test_option_errors_are_config_errors(root):
    for kw, pattern in (({"augment": "crop_flop"}, r"data\.augment.*Did you mean: crop_flip"),
                        ({"image_size": 32, "resize": 16}, r"data\.resize: must be >= data\.image_size"),
                        ({"num_workers": -1}, r"data\.num_workers")):
        with pytest.raises(ConfigError, match=pattern):
            _task(root, **kw).check_data()
    with pytest.raises(ConfigError, match=r"data\.image_size: only file datasets"):  # digits has no files to resize
        _task(None, SPECS / "digits.yaml", image_size=64).check_data()
    with pytest.raises(ConfigError, match=r"data\.augment.*resized_crop_flip.*Available: none, crop_flip"):
        _task(None, SPECS / "digits.yaml", augment="resized_crop_flip").check_data()


# ----------------------------------------------------------------------------- the spec
def test_spec_is_the_paper_recipe():
    spec = load_task_spec(SPEC_PATH)
    assert spec.task == "imagenet100" and spec.data.dataset == "imagenet100" and spec.suite == "paper-whitebox"
    assert spec.threat_model.eps == pytest.approx(0.03) and spec.threat_model.train_step_size == pytest.approx(0.03 / 4)
    assert spec.selection.step_size is None  # eps/4
    p = spec.profiles["paper"]
    assert (p.epochs, p.batch_size, p.optimizer, p.lr, p.momentum, p.weight_decay, p.milestones, p.gamma) == (
        300, 128, "sgd", 0.1, 0.9, 5e-4, (160, 240), 0.1)
    assert spec.default_profile == "paper" and "quick" in spec.profiles
    m = spec.model
    assert (m.arch, m.num_classes, m.in_channels) == ("vit_small_patch16_224", 100, 3)
    assert classification.data_option(spec.data, "image_size") == 224 and classification.data_option(spec.data, "class_list") == "cmc"
    if get_registry().has("tasks", "imagenet100"):
        entry = get_registry().entry("tasks", "imagenet100")
        assert entry.spec_path() == SPEC_PATH and entry.task_kind == "classification"


def test_vit_small_builds_untrained_for_100_classes():
    torch.manual_seed(0)
    model = ClassificationTask(load_task_spec(SPEC_PATH)).build_model().eval()
    assert 21e6 < sum(p.numel() for p in model.parameters()) < 23e6  # ViT-S/16: 22M
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 100)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_imagenet100_task_runs_end_to_end_on_the_fixture(root, tmp_path, monkeypatch):
    sets = ["model.arch=small_cnn", "model.width=8", "training.epochs=1", "training.batch_size=50",
            "threat_model.train_steps=3"]
    if "image_size" in {f.name for f in fields(DataCfg)}:
        sets.append("data.image_size=32")
    else:  # until DataCfg declares the field, the task's default stands in for --set data.image_size=32
        monkeypatch.setitem(classification.FILE_DATA_DEFAULTS, "image_size", 32)
    args = ["run", "--task", _task_arg(), "--defense", "pgd-at", "--profile", "quick", "--suite", "smoke",
            *(a for s in sets for a in ("--set", s)), "--data-root", str(root),
            "--root", str(tmp_path / "runs"), "--device", "cpu", "--no-leaderboard"]
    assert main(args) == 0
    store = Store(tmp_path / "runs" / "natbench.sqlite")
    runs = store.runs()
    assert list(runs.task) == ["imagenet100"] and list(runs.defense) == ["pgd-at"]
    res = store.results()
    assert {(r.checkpoint, r.attack) for r in res[res.metric == "accuracy"].itertuples()} == {
        (c, a) for c in ("best", "last") for a in ("clean", "fgsm", "pgd-5")}
    assert all(len(v) == 100 for v in store.flags(runs.run_id[0], "best").values())  # the 100 val (test) images
