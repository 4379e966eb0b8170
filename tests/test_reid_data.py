"""Market-1501: the synthetic fixture is in the real layout and file-name format, natbench's reader parses
it exactly as torchreid's own ``Market1501`` dataset class does (no download), and missing or malformed
data is a one-line DataError with the fixture command. No training."""
from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from natbench.analysis.reid_metrics import market_rank
from natbench.cli import main
from natbench.data import FIXTURES, READERS
from natbench.data import market1501 as m
from natbench.errors import DataError
from natbench.registry import load_target

FIX = "natbench data fixture market1501 --out DIR"
NAME = re.compile(r"^(-1|\d{4})_c[1-6]s[1-6]_\d{6}_\d{2}\.jpg$")


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    return m.write_market1501_fixture(tmp_path_factory.mktemp("market"))


def _base(root: Path) -> Path:
    return root / "market1501" / "Market-1501-v15.09.15"


def _parsed(folder: Path) -> list[tuple[int, int]]:
    return [m.parse_name(p.name) for p in sorted(folder.glob("*.jpg"))]


# ----------------------------------------------------------------------------- the fixture
def test_fixture_layout_and_names(fx):
    base = _base(fx)
    assert sorted(p.name for p in base.iterdir()) == sorted(m.SPLIT_DIRS)
    for split in m.SPLIT_DIRS:
        names = [p.name for p in (base / split).iterdir()]
        assert names and all(NAME.match(n) for n in names), split
    train, query, gallery = (_parsed(base / s) for s in m.SPLIT_DIRS)
    train_ids, query_ids, gallery_ids = ({pid for pid, _ in s} for s in (train, query, gallery))
    assert len(train_ids) == 32 and len(train) == 32 * 8
    assert query_ids <= gallery_ids and not train_ids & gallery_ids  # test identities are unseen
    assert {0, -1} <= gallery_ids and not {0, -1} & (train_ids | query_ids)  # distractors and junk: gallery only
    assert len(query) == len(set(query)), "at most one query per identity and camera"
    g = np.array(gallery)
    for pid, cam in query:
        same = g[:, 0] == pid
        assert (same & (g[:, 1] != cam)).any(), "every query has a cross-camera match"
    assert any(((g[:, 0] == pid) & (g[:, 1] == cam)).any() for pid, cam in query), "same-camera matches exist"
    assert len(g) - (g[:, 0] == -1).sum() >= 51  # torchreid's Python evaluate_rank needs > max_rank gallery items
    with Image.open(next((base / m.QUERY).iterdir())) as im:
        assert im.format == "JPEG" and im.size == (64, 128) and im.mode == "RGB"


def test_fixture_is_deterministic(tmp_path, fx):
    again = m.write_market1501_fixture(tmp_path / "a")
    files = sorted(p.relative_to(fx) for p in fx.rglob("*.jpg"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.jpg"))
    assert all((fx / f).read_bytes() == (again / f).read_bytes() for f in files[::17])
    other = m.write_market1501_fixture(tmp_path / "b", seed=1)
    assert sorted(p.name for p in other.rglob("*.jpg")) != sorted(f.name for f in files)


def _downsampled(items) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    feats = np.stack([np.asarray(Image.open(p).convert("RGB").resize((8, 16), Image.BILINEAR), dtype=np.float64).ravel()
                      for p, _, _ in items])
    return feats, np.array([pid for _, pid, _ in items]), np.array([c for _, _, c in items])


def test_fixture_identities_are_learnable_but_cameras_differ(fx):
    s = m.read_market1501(fx)
    qf, qp, qc = _downsampled(s.query)
    gf, gp, gc = _downsampled(s.gallery)
    dist = ((qf[:, None] - gf[None]) ** 2).sum(-1)
    out = market_rank(dist, qp, gp, qc, gc)
    chance = market_rank(np.random.default_rng(0).uniform(size=dist.shape), qp, gp, qc, gc)
    # raw pixels already retrieve the same person far above chance (a CNN is needed to do it well)
    assert out.mAP > 3 * chance.mAP and out.rank(1) > 3 * chance.rank(1) and out.rank(1) > 0.3, (out.mAP, chance.mAP)
    # ... but images of one person differ across cameras (background, brightness, tint, noise, shift)
    same = (qp[:, None] == gp[None]) & (qc[:, None] != gc[None])
    assert dist[same].min() > 0.05 * dist.mean()


# ----------------------------------------------------------------------------- reader vs torchreid
def _torchreid_market(root: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pytest.importorskip("torchreid.reid.data.datasets.image.market1501")
        dataset = pytest.importorskip("torchreid.reid.data.datasets.dataset")

    def no_download(*a, **k):
        raise AssertionError("torchreid tried to download")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataset, "download_url", no_download)
        return ds.Market1501(root=str(root), verbose=False)


def test_reader_equals_torchreid_market1501(fx):
    ref = _torchreid_market(fx)
    ours = m.read_market1501(fx)
    for split in ("query", "gallery"):
        theirs = sorted((Path(p), pid, cam) for p, pid, cam, _ in getattr(ref, split))
        assert sorted(getattr(ours, split)) == theirs, split
    assert not any(pid == -1 for _, pid, _ in ours.gallery) and any(pid == 0 for _, pid, _ in ours.gallery)
    # train: the same images, cameras and partition into identities; torchreid numbers the identities
    # in the iteration order of a Python set, natbench in increasing raw pid
    theirs = {Path(p): (pid, cam) for p, pid, cam, _ in ref.train}
    assert set(theirs) == {p for p, _, _ in ours.train}
    mapping = {}
    for p, label, cam in ours.train:
        assert theirs[p][1] == cam
        assert mapping.setdefault(label, theirs[p][0]) == theirs[p][0]
    assert sorted(mapping) == sorted(mapping.values()) == list(range(ours.num_train_pids)) == list(range(ref.num_train_pids))
    raw = [m.parse_name(p.name)[0] for p, _, _ in sorted(ours.train, key=lambda t: t[1])]
    assert raw == sorted(raw) and ours.train_pids == sorted(set(raw))


@pytest.mark.parametrize("layout", ["release", "deprecated", "root"])
def test_other_accepted_layouts(tmp_path, fx, layout):
    dest = {"release": tmp_path / m.RELEASE, "deprecated": tmp_path / m.DATASET_DIR, "root": tmp_path}[layout]
    shutil.copytree(_base(fx), dest, dirs_exist_ok=True)
    got = m.read_market1501(tmp_path)
    ref = m.read_market1501(fx)
    rel = lambda items, base: sorted((p.relative_to(base), pid, c) for p, pid, c in items)  # noqa: E731
    assert got.root == dest
    for split in ("train", "query", "gallery"):
        assert rel(getattr(got, split), dest) == rel(getattr(ref, split), _base(fx))


def test_release_layout_written_by_the_fixture(tmp_path):
    out = m.write_market1501_fixture(tmp_path, n_train_ids=3, n_test_ids=2, train_images=2, layout="release")
    assert (out / m.RELEASE / m.QUERY).is_dir() and m.read_market1501(out).num_train_pids == 3


def test_parent_path_with_the_pattern_is_harmless(tmp_path, fx):
    """torchreid applies its regex to the whole path (a folder ``run-1_c2`` breaks its ids); natbench to the name."""
    root = tmp_path / "run-1_c2"
    shutil.copytree(fx, root)
    assert sorted(p.name for p, *_ in m.read_market1501(root).query) == sorted(p.name for p, *_ in m.read_market1501(fx).query)
    assert {pid for _, pid, _ in m.read_market1501(root).query} == {pid for _, pid, _ in m.read_market1501(fx).query}


# ----------------------------------------------------------------------------- errors
def _one_line(e: pytest.ExceptionInfo, where) -> str:
    msg = str(e.value)
    assert "\n" not in msg and str(where) in msg and FIX in msg and "bounding_box_train" in msg
    return msg


def test_missing_data_is_a_one_line_data_error(tmp_path):
    with pytest.raises(DataError) as e:
        m.read_market1501(None)
    assert FIX in str(e.value)
    with pytest.raises(DataError) as e:
        m.read_market1501(tmp_path / "nowhere")
    _one_line(e, tmp_path / "nowhere" / "market1501" / m.RELEASE)


@pytest.mark.parametrize("how", ["no_query", "bad_name", "bad_camera", "only_junk_in_query"])
def test_malformed_data_is_a_one_line_data_error(tmp_path, fx, how):
    root = Path(shutil.copytree(fx, tmp_path / "root"))
    base = _base(root)
    query = base / m.QUERY
    if how == "no_query":
        shutil.rmtree(query)
        where = query
    elif how == "bad_name":
        where = query / "person_one.jpg"
        shutil.copy(next(query.iterdir()), where)
    elif how == "bad_camera":
        where = query / "0001_c7s1_000001_01.jpg"
        shutil.copy(next(query.iterdir()), where)
    else:
        junk = next((base / m.GALLERY).glob("-1_*.jpg"))
        for p in query.iterdir():
            p.unlink()
        shutil.copy(junk, query / junk.name)
        where = query
    with pytest.raises(DataError) as e:
        m.read_market1501(root)
    _one_line(e, where)


# ----------------------------------------------------------------------------- registry and CLI
def test_registered_reader_and_fixture():
    assert load_target(READERS["market1501"]) is m.read_market1501
    assert load_target(FIXTURES["market1501"]) is m.write_market1501_fixture


def test_cli_data_fixture_market1501(tmp_path):
    out = tmp_path / "data"
    assert main(["data", "fixture", "market1501", "--out", str(out)]) == 0
    assert (_base(out) / "bounding_box_test").is_dir()
    assert m.read_market1501(out).num_train_pids == 32
