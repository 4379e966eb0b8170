"""PASCAL VOC on disk: the reader against torchvision's VOCDetection on the fixture, 07+12, the one-line
errors for missing or malformed data, and the fixture itself (layout, determinism, difficult/truncated
objects, the CLI command)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from natbench.data import FIXTURES, READERS
from natbench.data import voc
from natbench.data.voc import VOC_CLASSES, parse_annotation, read_voc, write_voc_fixture
from natbench.errors import DataError
from natbench.registry import load_target


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_voc_fixture(tmp_path_factory.mktemp("voc"), n_trainval=16, n_test=8, n_trainval_2012=4, seed=3)


def test_registered_as_voc():
    assert load_target(READERS["voc"]) is read_voc and load_target(FIXTURES["voc"]) is write_voc_fixture


def test_reader_agrees_with_torchvision_voc_detection(root):
    from torchvision.datasets import VOCDetection

    s = read_voc(root)
    for year, image_set, items in (("2007", "trainval", [i for i in s.train if i.year == "2007"]),
                                   ("2007", "test", s.test),
                                   ("2012", "trainval", [i for i in s.train if i.year == "2012"])):
        ref = VOCDetection(str(root), year=year, image_set=image_set, download=False)
        assert len(ref) == len(items) > 0
        assert [Path(p).stem for p in ref.images] == [i.image_id for i in items]
        for k, item in enumerate(items):
            img, target = ref[k]
            ann = target["annotation"]
            assert img.size == (item.width, item.height) == (int(ann["size"]["width"]), int(ann["size"]["height"]))
            objs = ann["object"]
            assert [VOC_CLASSES.index(o["name"]) + 1 for o in objs] == item.labels.tolist()
            assert [o["difficult"] == "1" for o in objs] == item.difficult.tolist()
            # VOC's 1-based inclusive pixel boxes -> natbench's continuous (xmin - 1, ymin - 1, xmax, ymax)
            want = [[int(o["bndbox"]["xmin"]) - 1, int(o["bndbox"]["ymin"]) - 1, int(o["bndbox"]["xmax"]),
                     int(o["bndbox"]["ymax"])] for o in objs]
            np.testing.assert_array_equal(item.boxes, np.asarray(want, dtype=np.float32))


def test_trainval_07_plus_12_train_and_07_test(root):
    s = read_voc(root)
    assert s.years == ("2007", "2012")
    assert [i.year for i in s.train] == ["2007"] * 16 + ["2012"] * 4 and len(s.test) == 8
    assert not {i.image_id for i in s.train} & {i.image_id for i in s.test}
    # the devkit folder itself is accepted as the root too
    again = read_voc(root / "VOCdevkit")
    assert [i.path for i in again.test] == [i.path for i in s.test]


def test_fixture_layout_objects_and_determinism(tmp_path):
    a = write_voc_fixture(tmp_path / "a", n_trainval=12, n_test=6, seed=1)
    b = write_voc_fixture(tmp_path / "b", n_trainval=12, n_test=6, seed=1)
    base = a / "VOCdevkit" / "VOC2007"
    main = base / "ImageSets" / "Main"
    trainval = main.joinpath("trainval.txt").read_text().split()
    assert sorted(main.joinpath("train.txt").read_text().split() + main.joinpath("val.txt").read_text().split()) == trainval
    assert len(trainval) == 12 and len(main.joinpath("test.txt").read_text().split()) == 6
    assert all(len(i) == 6 and i.isdigit() for i in trainval)
    assert main.joinpath("car_trainval.txt").is_file()  # per-class lists as the real devkit (torchvision ignores them)
    for rel in sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    s = read_voc(a)
    for item in s.train + s.test:
        assert len(item.labels) >= 1 and set(item.labels.tolist()) <= {VOC_CLASSES.index(c) + 1 for c in voc.FIXTURE_SHAPES}
        assert (item.boxes[:, 2] > item.boxes[:, 0]).all() and (item.boxes[:, 3] > item.boxes[:, 1]).all()
        assert (item.boxes >= 0).all() and (item.boxes[:, 2] <= item.width).all() and (item.boxes[:, 3] <= item.height).all()
        with Image.open(item.path) as im:
            assert im.format == "JPEG" and im.size == (item.width, item.height)


def test_fixture_has_difficult_and_truncated_objects_and_differs_by_seed(tmp_path):
    root = write_voc_fixture(tmp_path / "a", n_trainval=40, n_test=4, seed=0)
    s = read_voc(root)
    assert sum(int(i.difficult.sum()) for i in s.train) >= 2
    xml = "".join(p.read_text() for p in (root / "VOCdevkit/VOC2007/Annotations").glob("*.xml"))
    assert "<truncated>1</truncated>" in xml and "<difficult>1</difficult>" in xml
    other = write_voc_fixture(tmp_path / "b", n_trainval=4, n_test=4, seed=1)
    first = sorted((root / "VOCdevkit/VOC2007/Annotations").glob("*.xml"))[0].name
    assert (root / "VOCdevkit/VOC2007/Annotations" / first).read_text() != \
        (other / "VOCdevkit/VOC2007/Annotations" / first).read_text()


def _one_line(e: DataError) -> str:
    msg = str(e)
    assert "\n" not in msg
    return msg


def test_missing_voc_is_one_line_with_layout_and_fixture_command(tmp_path):
    for root in (tmp_path, None):
        with pytest.raises(DataError) as e:
            read_voc(root)
        msg = _one_line(e.value)
        assert "VOCdevkit/VOC2007" in msg and "natbench data fixture voc --out DIR" in msg and "Annotations" in msg


@pytest.mark.parametrize("damage, expect", [
    ("imageset", "trainval.txt"),
    ("xml", "malformed XML"),
    ("class", "unknown class 'unicorn'"),
    ("jpeg", "image not found"),
    ("box", "degenerate box"),
])
def test_malformed_voc_names_the_file(tmp_path, damage, expect):
    root = write_voc_fixture(tmp_path, n_trainval=4, n_test=2, seed=0)
    base = root / "VOCdevkit" / "VOC2007"
    first = base.joinpath("ImageSets/Main/trainval.txt").read_text().split()[0]
    xml = base / "Annotations" / f"{first}.xml"
    if damage == "imageset":
        (base / "ImageSets/Main/trainval.txt").unlink()
    elif damage == "xml":
        xml.write_text(xml.read_text()[:-30])
    elif damage == "class":
        xml.write_text(re.sub(r"<object>(\s*)<name>\w+</name>", r"<object>\1<name>unicorn</name>", xml.read_text(), count=1))
    elif damage == "jpeg":
        (base / "JPEGImages" / f"{first}.jpg").unlink()
    elif damage == "box":
        t = xml.read_text()
        xmax = t.split("<xmax>")[1].split("<")[0]
        xml.write_text(t.replace(f"<xmin>{t.split('<xmin>')[1].split('<')[0]}</xmin>", f"<xmin>{int(xmax) + 5}</xmin>", 1))
    with pytest.raises(DataError) as e:
        read_voc(root)
    msg = _one_line(e.value)
    assert expect in msg and "natbench data fixture voc --out DIR" in msg


def test_parse_annotation_rules(tmp_path):
    """int(float(text)) coordinates, missing <difficult> = 0, size from the JPEG when the XML lacks it."""
    img = tmp_path / "a.jpg"
    Image.new("RGB", (50, 40)).save(img)
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><object><name>dog</name><bndbox><xmin>3.0</xmin><ymin>4</ymin><xmax>20</xmax>"
                   "<ymax>30</ymax></bndbox></object><object><name>cat</name><difficult>1</difficult><bndbox>"
                   "<xmin>1</xmin><ymin>1</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object></annotation>")
    w, h, boxes, labels, diff = parse_annotation(xml, img)
    assert (w, h) == (50, 40)
    np.testing.assert_array_equal(boxes, [[2, 3, 20, 30], [0, 0, 50, 40]])
    assert labels.tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]
    assert diff.tolist() == [False, True]


def test_cli_writes_the_fixture(tmp_path):
    from natbench.cli import main

    assert main(["data", "fixture", "voc", "--out", str(tmp_path / "fx")]) == 0
    s = read_voc(tmp_path / "fx")
    assert len(s.train) == 120 and len(s.test) == 40
