"""PASCAL VOC 2007/2012 detection (Everingham et al., IJCV 2010) on disk, read as torchvision's
``VOCDetection`` reads it, and a synthetic fixture in exactly that layout.

Layout under the data root (``--data-root`` / ``NATBENCH_DATA``; notes/formats.md Sec. 4)::

    <root>/VOCdevkit/VOC2007/{Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/{trainval,test}.txt}
    <root>/VOCdevkit/VOC2012/{Annotations, JPEGImages, ImageSets/Main/trainval.txt}     (optional)

``<root>`` may also be the ``VOCdevkit`` folder itself. The VOC2007 trainval and test tars both
extract into ``VOCdevkit/VOC2007``. Splits: **train** = VOC2007 trainval (+ VOC2012 trainval when
``VOC2012`` exists: the usual "07+12"), **test** = VOC2007 test (``test_fraction``/``split_seed`` are
unused: the official split).

Parsing (per ``Annotations/<id>.xml``; torchvision's ``parse_voc_xml`` gives the same strings, checked
in ``tests/test_det_data.py``): every ``<object>`` with ``name`` (one of the 20 classes, label = index
in :data:`VOC_CLASSES` + 1, so 1..20 with 0 = background as torchvision's detection models expect),
``difficult`` (missing = 0, as mmdet) and ``bndbox/{xmin,ymin,xmax,ymax}`` read as ``int(float(text))``
(mmdet's rule; VOC's values are integers). VOC coordinates are 1-based inclusive pixel indices; natbench
keeps boxes in *continuous* pixel coordinates ``(xmin - 1, ymin - 1, xmax, ymax)``: a box covering
pixels 1..W has width W, which is what the VOC devkit's "+1" IoU computes on the integer boxes (so
plain IoU on natbench's boxes equals the devkit's legacy IoU; :mod:`natbench.analysis.voc_map`).
``size/{width,height}`` comes from the XML (from the JPEG header when missing). ``difficult`` objects
are kept (the evaluation ignores them; training leaves them out by default, as ssd.pytorch's
``keep_difficult=False``).

Missing or malformed data is one :class:`DataError` line naming the path, the expected layout and
``natbench data fixture voc --out DIR``.

Fixture: :func:`write_voc_fixture` (:mod:`natbench.data.voc_fixture`, importable from here too).
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

#: the 20 VOC classes in the canonical order (label i + 1; 0 is the background)
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
DEVKIT = "VOCdevkit"
LAYOUT = (f"<root>/{DEVKIT}/VOC2007/{{Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/{{trainval,test}}.txt}} "
          f"(+ optional VOC2012 with trainval)")
HINT = (f"Expected {LAYOUT}. Fix: extract VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar there, "
        f"or write a synthetic copy with: natbench data fixture voc --out DIR")


def _error(path, problem: str) -> DataError:
    return DataError(f"PASCAL VOC {path}: {problem}. {HINT}".replace("\n", " "))


@dataclass(frozen=True, eq=False)
class VOCItem:
    """One annotated image. ``boxes``: float32 ``(N, 4)`` continuous ``x1, y1, x2, y2`` pixels of the
    original image (``xmin - 1, ymin - 1, xmax, ymax``); ``labels``: int64 1..20; ``difficult``: bool."""

    path: Path
    image_id: str
    year: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


@dataclass
class VOCSplits:
    """VOC train (trainval 07 [+ 12]) and test (VOC2007 test) items."""

    train: list[VOCItem]
    test: list[VOCItem]
    classes: tuple[str, ...] = VOC_CLASSES
    years: tuple[str, ...] = ("2007",)
    root: Path | None = None  # the VOCdevkit folder
    hint: str = HINT  # appended to errors about a single file


def devkit_dir(root) -> Path:
    """The ``VOCdevkit`` folder: ``<root>/VOCdevkit`` or ``<root>`` itself when it holds ``VOC2007``."""
    if root is None:
        raise _error("data root", "none given (pass --data-root or set NATBENCH_DATA)")
    root = Path(root).expanduser()
    for cand in (root / DEVKIT, root):
        if (cand / "VOC2007").is_dir():
            return cand
    raise _error(root / DEVKIT / "VOC2007", "folder not found")


def _text(node: ET.Element, tag: str, path: Path, default: str | None = None) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise _error(path, f"malformed annotation: <{tag}> missing in <{node.tag}>")
    return child.text.strip()


def _parse_xml_tree(path: Path) -> ET.Element:
    """The root element, parsed without entity expansion (:func:`natbench.safety.parse_xml` refuses a
    DOCTYPE/ENTITY declaration; real VOC annotations have none)."""
    from ..safety import UnsafeXML, parse_xml

    try:
        return parse_xml(Path(path).read_bytes())
    except FileNotFoundError:
        raise _error(path, "annotation file not found") from None
    except OSError as e:
        raise _error(path, f"cannot read it ({e.strerror})") from None
    except UnsafeXML as e:
        raise _error(path, f"unsafe XML: {e}") from None
    except ET.ParseError as e:
        raise _error(path, f"malformed XML ({e})") from None


def parse_annotation(path: Path, image: Path | None = None) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """``(width, height, boxes, labels, difficult)`` of one VOC XML file (see the module docstring)."""
    root = _parse_xml_tree(path)
    if root.tag != "annotation":
        raise _error(path, f"malformed annotation: root element <{root.tag}>, expected <annotation>")
    size = root.find("size")
    w = h = 0
    if size is not None:
        try:
            w, h = int(float(_text(size, "width", path, "0"))), int(float(_text(size, "height", path, "0")))
        except ValueError:
            raise _error(path, "malformed annotation: non-numeric <size>") from None
    if (w <= 0 or h <= 0) and image is not None:
        from PIL import Image

        try:
            with Image.open(image) as im:
                w, h = im.size
        except (OSError, Image.DecompressionBombError) as e:  # also a decompression bomb
            raise _error(image, f"not a readable image ({e})") from None
    boxes, labels, difficult = [], [], []
    for obj in root.findall("object"):
        name = _text(obj, "name", path)
        if name not in VOC_CLASSES:
            raise _error(path, f"unknown class '{name}' (the 20 VOC classes: {', '.join(VOC_CLASSES)})")
        bb = obj.find("bndbox")
        if bb is None:
            raise _error(path, f"malformed annotation: object '{name}' has no <bndbox>")
        try:
            x1, y1, x2, y2 = (int(float(_text(bb, t, path))) for t in ("xmin", "ymin", "xmax", "ymax"))
            diff = int(float(_text(obj, "difficult", path, "0")))
        except ValueError:
            raise _error(path, f"malformed annotation: non-numeric bndbox/difficult of object '{name}'") from None
        if x2 < x1 or y2 < y1:
            raise _error(path, f"degenerate box of object '{name}': xmin {x1} > xmax {x2} or ymin {y1} > ymax {y2}")
        boxes.append((x1 - 1.0, y1 - 1.0, float(x2), float(y2)))
        labels.append(VOC_CLASSES.index(name) + 1)
        difficult.append(bool(diff))
    return (w, h, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
            np.asarray(difficult, dtype=bool))


def read_image_set(year_dir: Path, image_set: str) -> list[str]:
    """Image ids of ``ImageSets/Main/<image_set>.txt`` (first token of each non-empty line)."""
    path = year_dir / "ImageSets" / "Main" / f"{image_set}.txt"
    if not path.is_file():
        raise _error(path, "image-set file not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise _error(path, "empty image set")
    return ids


def read_year(year_dir: Path, image_set: str) -> list[VOCItem]:
    """Items of one year's image set (annotations parsed, images only checked for existence)."""
    for sub in ("Annotations", "JPEGImages"):
        if not (year_dir / sub).is_dir():
            raise _error(year_dir / sub, "folder not found")
    year = year_dir.name.removeprefix("VOC")
    out = []
    for image_id in read_image_set(year_dir, image_set):
        img = year_dir / "JPEGImages" / f"{image_id}.jpg"  # torchvision hard-codes .jpg
        if not img.is_file():
            raise _error(img, "image not found")
        w, h, boxes, labels, diff = parse_annotation(year_dir / "Annotations" / f"{image_id}.xml", img)
        out.append(VOCItem(img, image_id, year, w, h, boxes, labels, diff))
    return out


def read_voc(root, *, test_fraction: float = 0.0, split_seed: int = 0) -> VOCSplits:
    """VOC07(+12) trainval for training and VOC07 test for evaluation (see the module docstring)."""
    base = devkit_dir(root)
    train = read_year(base / "VOC2007", "trainval")
    years = ["2007"]
    if (base / "VOC2012").is_dir():
        train += read_year(base / "VOC2012", "trainval")
        years.append("2012")
    test = read_year(base / "VOC2007", "test")
    n_obj = sum(len(i.labels) for i in train)
    log.info("PASCAL VOC %s from %s: %d trainval images (%d objects), %d VOC2007 test images", "+".join(years),
             base, len(train), n_obj, len(test))
    return VOCSplits(train, test, VOC_CLASSES, tuple(years), base)


def __getattr__(name: str):
    """The fixture's names live in :mod:`natbench.data.voc_fixture` (which imports this module)."""
    if name in ("write_voc_fixture", "FIXTURE_SHAPES"):
        from . import voc_fixture

        return getattr(voc_fixture, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["VOC_CLASSES", "VOCItem", "VOCSplits", "read_voc", "write_voc_fixture", "parse_annotation", "devkit_dir"]
