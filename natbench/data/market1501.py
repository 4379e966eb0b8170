"""Market-1501 (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015) on disk,
read with torchreid's parsing rules, and a synthetic fixture in exactly the same layout.

Accepted layouts (``<root>`` is the data root, ``--data-root`` / ``NATBENCH_DATA``), tried in this
order; the first folder that exists and holds at least one of the three split folders is used, and
then all three must be there:

1. ``<root>/market1501/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/*.jpg``
   (torchreid's layout: ``Market1501.dataset_dir`` + the extracted official zip);
2. ``<root>/market1501/{bounding_box_train,query,bounding_box_test}/`` (torchreid's older layout,
   which it still reads with a deprecation warning);
3. ``<root>/Market-1501-v15.09.15/{...}`` (the official zip extracted right under the data root);
4. ``<root>/{...}`` (the data root is the release folder itself).

``gt_bbox/``, ``gt_query/`` and the 500k distractor set (``images/``) are not read (torchreid reads
none of them by default either).

Parsing (torchreid ``Market1501.process_dir``, notes/formats.md Sec. 3), per split folder:

- files ``*.jpg`` (lower-case extension, as torchreid's ``glob``), in sorted name order (torchreid:
  ``glob`` order, i.e. file-system order);
- ``pid, camid = re.search(r"([-\\d]+)_c(\\d)", name)``: the 4-digit person id and the camera digit.
  natbench applies the pattern to the **file name** only; torchreid applies it to the full path, so a
  parent folder such as ``run-1_c2`` would corrupt its ids (the known trap). On a path without such a
  folder the two are identical (``tests/test_reid_data.py`` checks it against torchreid itself);
- ``pid == -1`` (junk) is dropped from every split; ``0 <= pid <= 1501`` and ``1 <= camid <= 6`` are
  required (torchreid asserts; here a :class:`DataError`); camera ids become 0-based;
- ``pid == 0`` (distractors) is kept (in the official data only the gallery has it);
- training pids are relabelled ``0..N-1`` in increasing raw-pid order (torchreid enumerates a Python
  ``set`` of the pids, whose order is the increasing order for Market's pids); query and gallery keep
  the raw pid.

Missing or malformed data is one :class:`DataError` line naming the path, the expected layout and
``natbench data fixture market1501 --out DIR``.

Fixture: :func:`write_market1501_fixture` draws people whose identity is a consistent appearance
(upper-body colour and pattern, lower-body colour, hair, skin, shoes, a bag or not, build) seen by
cameras that each add their own nuisance (background, brightness, colour tint, noise level) plus a
per-image shift, scale and mirror. Train and test identities are disjoint (as in Market); the query
holds at most one image per identity and camera; the gallery holds the other images of the test
identities (same-camera and other-camera matches), ``0000`` distractors (backgrounds with blobs) and
``-1`` junk (truncated people). Deterministic from ``seed``.
"""
from __future__ import annotations

import colorsys
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

DATASET_DIR = "market1501"  # torchreid's Market1501.dataset_dir
RELEASE = "Market-1501-v15.09.15"  # the official zip's folder
TRAIN, QUERY, GALLERY = "bounding_box_train", "query", "bounding_box_test"
SPLIT_DIRS = (TRAIN, QUERY, GALLERY)
PATTERN = re.compile(r"([-\d]+)_c(\d)")  # torchreid market1501.py
MAX_PID, NUM_CAMS = 1501, 6
LAYOUT = f"<root>/{DATASET_DIR}/{RELEASE}/{{{','.join(SPLIT_DIRS)}}}/*.jpg (or <root>/{RELEASE}/...)"
HINT = (f"Expected {LAYOUT}. Fix: extract Market-1501-v15.09.15.zip there, or write a synthetic copy "
        f"with: natbench data fixture market1501 --out DIR")

Item = tuple[Path, int, int]  # (image path, pid or train label, 0-based camera id)


def _error(path, problem: str) -> DataError:
    return DataError(f"Market-1501 {path}: {problem}. {HINT}".replace("\n", " "))


@dataclass
class ReIDSplits:
    """The three Market-1501 splits as ``(path, pid, camid)`` lists (torchreid's items without dsetid)."""

    train: list[Item]  # pid relabelled 0..N-1 (label i is raw pid train_pids[i])
    query: list[Item]  # raw pid
    gallery: list[Item]  # raw pid (0 = distractor)
    train_pids: list[int] = field(default_factory=list)  # raw pid of each train label
    root: Path | None = None  # the folder holding the three split folders
    hint: str = HINT  # appended to errors about a single file

    @property
    def num_train_pids(self) -> int:
        return len(self.train_pids)


def candidate_dirs(root) -> list[Path]:
    """The folders tried, in order, for the three split folders (see the module docstring)."""
    root = Path(root).expanduser()
    return [root / DATASET_DIR / RELEASE, root / DATASET_DIR, root / RELEASE, root]


def dataset_dir(root) -> Path:
    """The folder that holds ``bounding_box_train``, ``query`` and ``bounding_box_test``."""
    if root is None:
        raise _error("data root", "none given (pass --data-root or set NATBENCH_DATA)")
    for cand in candidate_dirs(root):
        if cand.is_dir() and any((cand / s).is_dir() for s in SPLIT_DIRS):
            missing = [s for s in SPLIT_DIRS if not (cand / s).is_dir()]
            if missing:
                raise _error(cand / missing[0], "split folder not found")
            return cand
    raise _error(Path(root).expanduser() / DATASET_DIR / RELEASE, "folder not found")


def parse_name(name: str) -> tuple[int, int] | None:
    """``(pid, camera 1..6)`` of a Market-1501 file name, or None when the pattern does not match."""
    m = PATTERN.search(name)
    return None if m is None else (int(m.group(1)), int(m.group(2)))


def process_dir(folder: Path, relabel: bool = False) -> tuple[list[Item], list[int]]:
    """torchreid's ``process_dir`` on one split folder: ``(items, sorted raw pids)``.

    Junk (pid -1) is dropped, camera ids become 0-based, and with ``relabel`` the pids become their
    index in the sorted list of raw pids.
    """
    files = sorted(p for p in folder.glob("*.jpg") if p.is_file())
    raw: list[tuple[Path, int, int]] = []
    for p in files:
        parsed = parse_name(p.name)
        if parsed is None:
            raise _error(p, "file name does not match the Market-1501 pattern <pid>_c<camera>s<seq>_<frame>_<box>.jpg")
        pid, cam = parsed
        if pid == -1:
            continue  # junk images are ignored (torchreid)
        if not 0 <= pid <= MAX_PID or not 1 <= cam <= NUM_CAMS:
            raise _error(p, f"person id {pid} / camera {cam} out of range (0..{MAX_PID}, 1..{NUM_CAMS})")
        raw.append((p, pid, cam - 1))
    pids = sorted({pid for _, pid, _ in raw})
    if relabel:
        label = {pid: i for i, pid in enumerate(pids)}
        raw = [(p, label[pid], cam) for p, pid, cam in raw]
    return raw, pids


def read_market1501(root, *, test_fraction: float = 0.0, split_seed: int = 0) -> ReIDSplits:
    """Read the three splits (``test_fraction``/``split_seed`` are unused: the official split)."""
    base = dataset_dir(root)
    train, train_pids = process_dir(base / TRAIN, relabel=True)
    query, _ = process_dir(base / QUERY)
    gallery, _ = process_dir(base / GALLERY)
    for name, items in ((TRAIN, train), (QUERY, query), (GALLERY, gallery)):
        if not items:
            raise _error(base / name, "no usable *.jpg images (junk -1 images do not count)")
    log.info("Market-1501 from %s: %d train images (%d ids), %d query, %d gallery", base, len(train),
             len(train_pids), len(query), len(gallery))
    return ReIDSplits(train, query, gallery, train_pids, base)


# ----------------------------------------------------------------------------------------- fixture
@dataclass(frozen=True)
class _Person:
    upper: np.ndarray  # RGB 0..255
    upper2: np.ndarray  # pattern colour
    pattern: int  # 0 solid, 1 horizontal stripes, 2 vertical stripes, 3 checks
    lower: np.ndarray
    hair: np.ndarray
    skin: np.ndarray
    shoes: np.ndarray
    bag: np.ndarray | None  # bag colour or None
    build: float  # body half-width as a fraction of the image width


@dataclass(frozen=True)
class _Camera:
    background: np.ndarray  # two RGB colours (top, bottom) of a vertical gradient
    gain: float  # brightness
    tint: np.ndarray  # per-channel gain
    noise: float  # Gaussian noise std (0..255 units)


def _colour(rng: np.random.Generator, s=(0.45, 1.0), v=(0.35, 1.0)) -> np.ndarray:
    h = rng.uniform(0, 1)
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*s), rng.uniform(*v))) * 255.0


def _person(rng: np.random.Generator) -> _Person:
    return _Person(
        upper=_colour(rng), upper2=_colour(rng), pattern=int(rng.integers(0, 4)), lower=_colour(rng, v=(0.2, 0.9)),
        hair=_colour(rng, s=(0.2, 0.8), v=(0.05, 0.6)), skin=np.array(colorsys.hsv_to_rgb(
            rng.uniform(0.03, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.45, 0.95))) * 255.0,
        shoes=_colour(rng, s=(0.0, 0.5), v=(0.05, 0.5)), bag=_colour(rng) if rng.uniform() < 0.5 else None,
        build=float(rng.uniform(0.22, 0.32)),
    )


def _camera(rng: np.random.Generator) -> _Camera:
    return _Camera(background=np.stack([_colour(rng, s=(0.0, 0.35), v=(0.3, 0.9)) for _ in range(2)]),
                   gain=float(rng.uniform(0.75, 1.25)), tint=rng.uniform(0.85, 1.15, size=3),
                   noise=float(rng.uniform(3.0, 10.0)))


def _render(person: _Person | None, cam: _Camera, rng: np.random.Generator, h: int, w: int,
            truncate: bool = False) -> np.ndarray:
    """One uint8 HWC image: the camera's background, the person (if any), the camera's nuisance."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (yy / max(h - 1, 1))[..., None]
    img = cam.background[0] * (1 - t) + cam.background[1] * t
    img = img + rng.normal(0, 6.0, size=(1, w, 3)) * 0.5  # faint vertical structure of the scene
    if person is None:  # a distractor: a few blobs, no person
        for _ in range(int(rng.integers(2, 5))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.05, 0.25) * h, rng.uniform(0.1, 0.4) * w
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            img[mask] = _colour(rng)
    else:
        s = rng.uniform(0.92, 1.05)  # scale and position jitter of the detection box
        cx = w / 2 + rng.uniform(-0.07, 0.07) * w
        top = h * (0.04 + rng.uniform(-0.02, 0.03))
        u = lambda f: top + f * h * 0.92 * s  # noqa: E731 - vertical body coordinate
        half = person.build * w * s
        head = ((yy - u(0.08)) / (0.065 * h * s)) ** 2 + ((xx - cx) / (0.5 * half)) ** 2 < 1
        hair = head & (yy < u(0.06))
        torso = (yy >= u(0.15)) & (yy < u(0.52)) & (np.abs(xx - cx) < half)
        arms = (yy >= u(0.16)) & (yy < u(0.5)) & (np.abs(xx - cx) >= half) & (np.abs(xx - cx) < half * 1.3)
        legs = (yy >= u(0.52)) & (yy < u(0.93)) & (np.abs(xx - cx) < half * 0.85) & (np.abs(xx - cx) > half * 0.08)
        shoes = (yy >= u(0.93)) & (yy < u(0.99)) & (np.abs(xx - cx) < half * 0.9) & (np.abs(xx - cx) > half * 0.05)
        img[head] = person.skin
        img[hair] = person.hair
        upper = np.broadcast_to(person.upper, img.shape).copy()
        period = max(2.0, 0.06 * h)
        stripes = {1: (yy // period) % 2 == 0, 2: (xx // (period * 0.6)) % 2 == 0,
                   3: ((yy // period) + (xx // (period * 0.6))) % 2 == 0}.get(person.pattern)
        if stripes is not None:
            upper[stripes] = person.upper2
        img[torso | arms] = upper[torso | arms]
        img[legs] = person.lower
        img[shoes] = person.shoes
        if person.bag is not None:
            side = 1 if rng.uniform() < 0.5 else -1  # the side the bag is seen on depends on the view
            bag = (yy >= u(0.35)) & (yy < u(0.55)) & (np.abs(xx - (cx + side * half * 1.25)) < half * 0.35)
            img[bag] = person.bag
        if truncate:  # junk: a badly placed box, only part of a person
            cut = int(rng.uniform(0.3, 0.6) * h)
            img = np.concatenate([img[cut:], np.repeat(img[-1:], cut, axis=0)], axis=0)
    img = img * cam.gain * cam.tint + rng.normal(0, cam.noise, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_market1501_fixture(out_dir, *, n_train_ids: int = 32, n_test_ids: int = 16, train_images: int = 8,
                             n_distractors: int = 8, n_junk: int = 4, height: int = 128, width: int = 64,
                             seed: int = 0, layout: str = "torchreid") -> Path:
    """Write a small synthetic Market-1501 and return ``out_dir``.

    ``layout``: ``"torchreid"`` (``out_dir/market1501/Market-1501-v15.09.15/...``, what torchreid's
    ``Market1501(root=out_dir)`` reads without trying a download) or ``"release"``
    (``out_dir/Market-1501-v15.09.15/...``). Train and test identities are disjoint random 4-digit
    pids in 1..1501. Each train identity has ``train_images`` images over 2-4 cameras; each test
    identity is seen by 2-4 cameras, with one query image for each of its first two cameras and 1-2
    gallery images per camera (so the gallery has same-camera and cross-camera matches). The gallery
    also holds ``n_distractors`` ``0000`` images and ``n_junk`` ``-1`` images. Images are
    ``height`` x ``width`` JPEGs (Market's boxes are 128 x 64).
    """
    from PIL import Image

    if layout not in ("torchreid", "release"):
        raise ValueError(f"layout must be 'torchreid' or 'release', got {layout!r}")
    if n_train_ids < 2 or n_test_ids < 2 or train_images < 2:
        raise ValueError("need at least 2 train ids, 2 test ids and 2 images per train id")
    rng = np.random.default_rng(seed)
    pids = rng.choice(np.arange(1, MAX_PID + 1), size=n_train_ids + n_test_ids, replace=False)
    train_pids, test_pids = sorted(pids[:n_train_ids].tolist()), sorted(pids[n_train_ids:].tolist())
    cams = {c: _camera(rng) for c in range(1, NUM_CAMS + 1)}
    people = {pid: _person(rng) for pid in train_pids + test_pids}
    base = Path(out_dir) / (DATASET_DIR if layout == "torchreid" else "") / RELEASE
    folders = {s: base / s for s in SPLIT_DIRS}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()

    def save(split: str, pid: int, cam: int, person: _Person | None, truncate: bool = False) -> None:
        while True:
            name = (f"{pid:04d}" if pid >= 0 else str(pid)) + \
                   f"_c{cam}s{int(rng.integers(1, 7))}_{int(rng.integers(1, 300_000)):06d}_{int(rng.integers(1, 9)):02d}.jpg"
            if name not in used:
                break
        used.add(name)
        img = _render(person, cams[cam], rng, height, width, truncate)
        if rng.uniform() < 0.5:  # seen from the other side
            img = img[:, ::-1]
        Image.fromarray(np.ascontiguousarray(img)).save(folders[split] / name, format="JPEG", quality=90)

    for pid in train_pids:
        seen = rng.choice(np.arange(1, NUM_CAMS + 1), size=int(rng.integers(2, 5)), replace=False)
        for k in range(train_images):
            save(TRAIN, pid, int(seen[k % len(seen)]), people[pid])
    for pid in test_pids:
        seen = rng.choice(np.arange(1, NUM_CAMS + 1), size=int(rng.integers(2, 5)), replace=False)
        for c in seen[:2]:
            save(QUERY, pid, int(c), people[pid])
        for c in seen:
            for _ in range(int(rng.integers(1, 3))):
                save(GALLERY, pid, int(c), people[pid])
    for _ in range(n_distractors):
        save(GALLERY, 0, int(rng.integers(1, NUM_CAMS + 1)), None)
    for _ in range(n_junk):
        save(GALLERY, -1, int(rng.integers(1, NUM_CAMS + 1)), people[int(rng.choice(test_pids))], truncate=True)
    log.info("wrote a synthetic Market-1501 (%d train ids, %d test ids) to %s", n_train_ids, n_test_ids, base)
    return Path(out_dir)
