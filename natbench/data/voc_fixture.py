"""The synthetic PASCAL VOC fixture (``natbench data fixture voc``), in exactly the layout
:mod:`natbench.data.voc` reads.

Fixture (:func:`write_voc_fixture`): images of 112-160 x 96-128 pixels with a textured background
(smooth colour noise, stripes and blotches in muted colours) and 1-3 objects of a few VOC classes,
each class a filled shape of its own colour family (``car``: a wide red rectangle with dark wheels,
``person``: a tall green ellipse with a head, ``bird``: a blue triangle, ``dog``: a yellow-orange
diamond), jittered in size (25-60 % of the image side), aspect, colour and shade; objects may run
past the border (``truncated``). About one image in six gets an extra small, faded object marked
``difficult``. Objects overlap little (IoU < 0.2), so every annotation is unambiguous. VOC2007
``trainval`` and ``test`` (and, on request, a VOC2012 ``trainval``) with the real XML structure,
``ImageSets/Main/{train,val,trainval,test}.txt`` and the per-class ``<class>_<set>.txt`` files.
Deterministic from ``seed``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .voc import DEVKIT, VOC_CLASSES

log = logging.getLogger("natbench.data.voc")


#: class -> (shape, hue range in [0, 1)) of the fixture's objects
FIXTURE_SHAPES: dict[str, tuple[str, tuple[float, float]]] = {
    "car": ("rectangle", (-0.03, 0.03)),
    "person": ("ellipse", (0.28, 0.40)),
    "bird": ("triangle", (0.58, 0.68)),
    "dog": ("diamond", (0.10, 0.16)),
}


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour noise + stripes + blotches, muted (low saturation) so objects stand out by colour."""
    coarse = rng.uniform(0, 1, size=(4, 5, 3))
    ys, xs = np.linspace(0, 3, h), np.linspace(0, 4, w)
    y0, x0 = np.floor(ys).astype(int).clip(0, 2), np.floor(xs).astype(int).clip(0, 3)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    c = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
         + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)
    grey = c.mean(axis=2, keepdims=True)
    img = (0.75 * grey + 0.25 * c) * rng.uniform(120, 200) + rng.uniform(20, 60)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 18)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    img = img + (stripes * rng.uniform(5, 20))[..., None]
    for _ in range(int(rng.integers(2, 6))):  # muted blotches
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 20)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[mask] = img[mask] * 0.6 + _hsv(rng.uniform(), rng.uniform(0, 0.25), rng.uniform(0.3, 0.8)) * 0.4
    return img + rng.normal(0, 4.0, size=img.shape)


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    u, v = (xx + 0.5 - cx) / rx, (yy + 0.5 - cy) / ry  # pixel centres, normalised to [-1, 1] in the box
    if shape == "rectangle":
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "ellipse":
        return u * u + v * v <= 1
    if shape == "triangle":  # apex at the top centre, base at the bottom
        return (v <= 1) & (np.abs(u) <= (v + 1) / 2)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    raise ValueError(shape)


def _draw(img: np.ndarray, rng: np.random.Generator, cls: str, box: tuple[float, float, float, float],
          faded: bool = False) -> None:
    """Paint one object whose full extent (accessories included) is ``box``."""
    shape, (h0, h1) = FIXTURE_SHAPES[cls]
    H, W = img.shape[:2]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    body = box
    if cls == "car":  # the body above two wheels that reach the bottom of the box
        r = min(0.13 * bw, 0.2 * bh)
        body = (x0, y0, x1, y1 - r)
    elif cls == "person":  # a head on top of the body
        r = min(0.3 * bw, 0.15 * bh)
        body = (x0, y0 + 1.6 * r, x1, y1)
    mask = _shape_mask(shape, yy, xx, *body)
    colour = _hsv(rng.uniform(h0, h1), rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))
    shade = 1.0 - 0.35 * ((yy - body[1]) / max(body[3] - body[1], 1.0)).clip(0, 1)[..., None]  # top-lit
    paint = colour * shade
    alpha = 0.45 if faded else 1.0
    img[mask] = img[mask] * (1 - alpha) + paint[mask] * alpha
    if cls == "car":
        for wx in (x0 + 0.25 * bw, x0 + 0.75 * bw):
            wheel = (xx + 0.5 - wx) ** 2 + (yy + 0.5 - (y1 - r)) ** 2 <= r * r
            img[wheel] = img[wheel] * (1 - alpha) + np.array([25.0, 25.0, 30.0]) * alpha
    elif cls == "person":
        head = (xx + 0.5 - (x0 + x1) / 2) ** 2 + (yy + 0.5 - (y0 + r)) ** 2 <= r * r
        img[head] = img[head] * (1 - alpha) + _hsv(0.07, 0.45, 0.9) * alpha


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _render_image(rng: np.random.Generator, classes: tuple[str, ...], difficult_rate: float):
    """One uint8 image and its objects ``[(class, (xmin, ymin, xmax, ymax) 1-based ints, truncated, difficult)]``."""
    W, H = int(rng.integers(112, 161)), int(rng.integers(96, 129))
    img = _background(rng, H, W)
    placed: list[tuple[float, float, float, float]] = []
    objects = []
    n = int(rng.integers(1, 4))
    specs = [(str(rng.choice(classes)), False) for _ in range(n)]
    if rng.uniform() < difficult_rate:
        specs.append((str(rng.choice(classes)), True))
    for cls, difficult in specs:
        shape = FIXTURE_SHAPES[cls][0]
        for _ in range(50):
            side = rng.uniform(0.1, 0.16) if difficult else rng.uniform(0.25, 0.6)
            aspect = {"rectangle": rng.uniform(1.4, 2.0), "ellipse": rng.uniform(0.45, 0.7)}.get(shape, rng.uniform(0.8, 1.25))
            bw = side * np.sqrt(aspect) * min(W, H)
            bh = side / np.sqrt(aspect) * min(W, H)
            x0 = rng.uniform(-0.15 * bw, W - 0.85 * bw)  # may run past the border (truncated)
            y0 = rng.uniform(-0.15 * bh, H - 0.85 * bh)
            box = (x0, y0, x0 + bw, y0 + bh)
            if all(_iou(box, p) < 0.2 for p in placed):
                break
        else:
            continue
        placed.append(box)
        _draw(img, rng, cls, box, faded=difficult)
        # the annotated box: the visible part, in 1-based inclusive pixel indices (VOC's convention)
        xmin, ymin = max(1, int(np.floor(box[0])) + 1), max(1, int(np.floor(box[1])) + 1)
        xmax, ymax = min(W, int(np.ceil(box[2]))), min(H, int(np.ceil(box[3])))
        truncated = box[0] < 0 or box[1] < 0 or box[2] > W or box[3] > H
        objects.append((cls, (xmin, ymin, xmax, ymax), truncated, difficult))
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _xml(image_id: str, year: str, w: int, h: int, objects) -> str:
    objs = "".join(
        f"\t<object>\n\t\t<name>{cls}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>{int(tr)}</truncated>\n"
        f"\t\t<difficult>{int(diff)}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{b[0]}</xmin>\n\t\t\t<ymin>{b[1]}</ymin>\n"
        f"\t\t\t<xmax>{b[2]}</xmax>\n\t\t\t<ymax>{b[3]}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for cls, b, tr, diff in objects)
    return (f"<annotation>\n\t<folder>VOC{year}</folder>\n\t<filename>{image_id}.jpg</filename>\n"
            f"\t<source>\n\t\t<database>The VOC{year} Database</database>\n\t\t<annotation>PASCAL VOC{year}</annotation>\n"
            f"\t\t<image>natbench synthetic</image>\n\t\t<flickrid>0</flickrid>\n\t</source>\n"
            f"\t<owner>\n\t\t<flickrid>natbench</flickrid>\n\t\t<name>natbench</name>\n\t</owner>\n"
            f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
            f"\t<segmented>0</segmented>\n{objs}</annotation>\n")


def _write_year(base: Path, year: str, sets: dict[str, list[str]], annotations: dict[str, list], images: dict) -> None:
    from PIL import Image

    year_dir = base / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year_dir / sub).mkdir(parents=True, exist_ok=True)
    for image_id, img in images.items():
        Image.fromarray(img).save(year_dir / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=92)
        h, w = img.shape[:2]
        (year_dir / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, year, w, h, annotations[image_id]))
    main = year_dir / "ImageSets" / "Main"
    for name, ids in sets.items():
        (main / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        for cls in VOC_CLASSES:  # per-class files: 1 present, 0 only difficult, -1 absent (torchvision ignores them)
            lines = []
            for i in ids:
                objs = [o for o in annotations[i] if o[0] == cls]
                flag = -1 if not objs else (1 if any(not o[3] for o in objs) else 0)
                lines.append(f"{i} {flag:2d}\n")
            (main / f"{cls}_{name}.txt").write_text("".join(lines))


def write_voc_fixture(out_dir, *, n_trainval: int = 120, n_test: int = 40, n_trainval_2012: int = 0,
                      classes: tuple[str, ...] = tuple(FIXTURE_SHAPES), difficult_rate: float = 0.17,
                      seed: int = 0) -> Path:
    """Write a small synthetic VOCdevkit under ``out_dir`` and return ``out_dir``.

    VOC2007 with ``n_trainval`` trainval (split in half into train/val) and ``n_test`` test images;
    with ``n_trainval_2012`` > 0 also a VOC2012 trainval (ids ``2012_000001``, ...). ``classes`` are
    VOC class names with a fixture shape (:data:`FIXTURE_SHAPES`). See the module docstring.
    """
    unknown = [c for c in classes if c not in FIXTURE_SHAPES]
    if unknown or not classes:
        raise ValueError(f"fixture classes must be among {', '.join(FIXTURE_SHAPES)}, got {classes}")
    if n_trainval < 2 or n_test < 1 or n_trainval_2012 < 0:
        raise ValueError("need n_trainval >= 2, n_test >= 1 and n_trainval_2012 >= 0")
    rng = np.random.default_rng(seed)
    base = Path(out_dir) / DEVKIT
    # VOC2007 ids are 6 digits, shared by trainval and test (disjoint); interleave them as the real set
    ids = [f"{i:06d}" for i in range(1, n_trainval + n_test + 1)]
    order = rng.permutation(len(ids))
    trainval = sorted(ids[k] for k in order[:n_trainval])
    test = sorted(ids[k] for k in order[n_trainval:])
    annotations, images = {}, {}
    for image_id in ids:
        images[image_id], annotations[image_id] = _render_image(rng, tuple(classes), difficult_rate)
    train = trainval[0::2]
    val = trainval[1::2]
    _write_year(base, "2007", {"train": train, "val": val, "trainval": trainval, "test": test}, annotations, images)
    if n_trainval_2012:
        ids12 = [f"2012_{i:06d}" for i in range(1, n_trainval_2012 + 1)]
        ann12, img12 = {}, {}
        for image_id in ids12:
            img12[image_id], ann12[image_id] = _render_image(rng, tuple(classes), difficult_rate)
        _write_year(base, "2012", {"train": ids12[0::2], "val": ids12[1::2], "trainval": ids12}, ann12, img12)
    log.info("wrote a synthetic VOCdevkit (VOC2007: %d trainval, %d test%s) to %s", n_trainval, n_test,
             f"; VOC2012: {n_trainval_2012} trainval" if n_trainval_2012 else "", base)
    return Path(out_dir)


__all__ = ["write_voc_fixture", "FIXTURE_SHAPES"]
