"""Re-id data: torchreid's transforms, the identity-balanced sampler, the loaders and the validation carve-out
(the package docstring)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ...contracts import Batch
from ...data.market1501 import HINT as MARKET_HINT, ReIDSplits
from ...errors import ConfigError
from .._base import decoded, load_transformed

Item = tuple[Path, int, int]


@dataclass(frozen=True)
class ReIDTransform:
    """PIL image -> uint8 ``(height, width, 3)``: torchreid's ``Resize((h, w))`` (+ ``random_flip``,
    ``random_crop``), the random choices taken from pre-drawn uniforms ``u`` (4 per image)."""

    mode: str  # none | flip | crop_flip
    height: int
    width: int
    N_UNIFORMS: ClassVar[int] = 4  # flip, translate?, x, y

    @property
    def random(self) -> bool:
        return self.mode != "none"

    def draw(self, n: int, generator: torch.Generator | None) -> Tensor | None:
        return torch.rand(n, self.N_UNIFORMS, generator=generator, dtype=torch.float64) if self.random else None

    def apply(self, img, u: Sequence[float] | None = None):
        from PIL import Image

        h, w = self.height, self.width
        img = img.convert("RGB").resize((w, h), Image.BILINEAR)
        if self.random:
            if u[0] < 0.5:  # RandomHorizontalFlip(p=0.5)
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            if self.mode == "crop_flip" and not u[1] > 0.5:  # Random2DTranslation(h, w, p=0.5)
                nw, nh = int(round(w * 1.125)), int(round(h * 1.125))
                x1, y1 = int(round(u[2] * (nw - w))), int(round(u[3] * (nh - h)))
                img = img.resize((nw, nh), Image.BILINEAR).crop((x1, y1, x1 + w, y1 + h))
        return img


def identity_balanced_batches(labels: Sequence[int], batch_size: int, num_instances: int,
                              generator: torch.Generator | None) -> list[list[int]]:
    """torchreid's ``RandomIdentitySampler`` with its randomness drawn from ``generator``.

    Per identity (increasing label): its indices, sampled K times with replacement when it has fewer
    than K, shuffled, cut into chunks of K (a remainder is dropped). Then, while at least P
    identities have chunks left: P of them are drawn without replacement and one chunk of each makes
    a batch of P x K indices (P = batch_size // K).
    """
    k = num_instances
    p = batch_size // k
    by_id: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_id.setdefault(int(lab), []).append(i)
    chunks: dict[int, list[list[int]]] = {}
    for lab in sorted(by_id):
        idx = torch.tensor(by_id[lab])
        if len(idx) < k:
            idx = idx[torch.randint(len(idx), (k,), generator=generator)]
        idx = idx[torch.randperm(len(idx), generator=generator)].tolist()
        chunks[lab] = [idx[j: j + k] for j in range(0, len(idx) - k + 1, k)]
    avail = sorted(chunks)
    batches: list[list[int]] = []
    while len(avail) >= p:
        picked = [avail[j] for j in torch.randperm(len(avail), generator=generator)[:p].tolist()]
        batch: list[int] = []
        for lab in picked:
            batch += chunks[lab].pop(0)
            if not chunks[lab]:
                avail.remove(lab)
        batches.append(batch)
    return batches


class ReIDLoader:
    """Batches decoded from image files; identity-balanced (``num_instances`` = K) or sequential.

    The epoch's plan (batch order) and every image's transform uniforms are drawn from ``generator``
    in the calling thread; the plan is drawn once per iteration (``len()`` before iterating sees the
    same plan), so batches are identical for a seed whatever ``num_workers`` (decode threads) is.
    """

    def __init__(self, items: Sequence[Item], batch_size: int, transform: ReIDTransform, split: str, *,
                 num_instances: int | None = None, generator: torch.Generator | None = None,
                 num_workers: int = 0, hint: str = MARKET_HINT):
        self.items, self.batch_size, self.transform, self.split = list(items), batch_size, transform, split
        self.num_instances, self.generator, self.num_workers, self.hint = num_instances, generator, num_workers, hint
        self.pids = torch.tensor([pid for _, pid, _ in self.items], dtype=torch.int64)
        self.camids = torch.tensor([cam for _, _, cam in self.items], dtype=torch.int64)
        self._plan: list[list[int]] | None = None

    def _draw_plan(self) -> list[list[int]]:
        n, bs = len(self.items), self.batch_size
        if self.num_instances is None:
            return [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        k = self.num_instances
        if k < 1 or bs % k or bs // k < 2:
            raise ConfigError(f"training.batch_size {bs} with task.params.num_instances {k}: the batch must hold "
                              f"P >= 2 identities of K = {k} images each (batch_size a multiple of K, >= 2K)")
        n_ids = len(set(self.pids.tolist()))
        if n_ids < bs // k:
            raise ConfigError(f"training.batch_size {bs} = {bs // k} identities x {k}, but the training set has only "
                              f"{n_ids} identities; lower training.batch_size")
        return identity_balanced_batches(self.pids.tolist(), bs, k, self.generator)

    def _batches(self) -> list[list[int]]:
        if self._plan is None:
            self._plan = self._draw_plan()
        return self._plan

    def __len__(self) -> int:
        return len(self._batches())

    def load(self, i: int, u: Tensor | None = None) -> np.ndarray:
        return load_transformed(self.items[i][0], self.transform, u, self.hint)

    def __iter__(self) -> Iterator[Batch]:
        plan, self._plan = self._batches(), None
        u = self.transform.draw(sum(len(b) for b in plan), self.generator)
        args, start = [], 0
        for rows in plan:
            uu = None if u is None else u[start: start + len(rows)]
            start += len(rows)
            args.append([(j, None if uu is None else uu[k]) for k, j in enumerate(rows)])
        for rows, images in zip(plan, decoded(self.load, args, self.num_workers, "natbench-reid")):
            idx = torch.tensor(rows, dtype=torch.int64)
            x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
            yield Batch(torch.from_numpy(x).float().div_(255.0), self.pids[idx], idx,
                        {"camid": self.camids[idx], "split": self.split})


class QueryGallery:
    """A query loader and a gallery loader evaluated together; iterating yields query then gallery batches."""

    def __init__(self, query: ReIDLoader, gallery: ReIDLoader):
        self.query, self.gallery = query, gallery

    def __len__(self) -> int:
        return len(self.query) + len(self.gallery)

    def __iter__(self) -> Iterator[Batch]:
        yield from self.query
        yield from self.gallery



def carve_validation(splits: ReIDSplits, fraction: float, seed: int) -> tuple[list[Item], list[Item], list[Item]]:
    """``(train, val_query, val_gallery)``: held-out training identities (see the module docstring).

    ``round(fraction * #ids)`` identities (>= 2 when ``fraction`` > 0, at most all but two) are drawn
    with ``seed`` among those seen by two or more cameras; one image of each (drawn with the same
    generator) is its val query, the rest its val gallery; val items carry the raw pid. The other
    identities are relabelled ``0..N-1`` in increasing label (= raw pid) order.
    """
    by_id: dict[int, list[int]] = {}
    for i, (_, lab, _) in enumerate(splits.train):
        by_id.setdefault(lab, []).append(i)
    eligible = [lab for lab in sorted(by_id) if len({splits.train[i][2] for i in by_id[lab]}) >= 2]
    k = 0
    if fraction > 0:
        k = min(max(2, int(round(fraction * len(by_id)))), len(eligible), max(len(by_id) - 2, 0))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(eligible, size=k, replace=False).tolist()) if k else set()
    val_q, val_g = [], []
    for lab in sorted(held):
        idx = by_id[lab]
        qi = int(rng.integers(len(idx)))
        raw = splits.train_pids[lab] if splits.train_pids else lab
        for j, i in enumerate(idx):
            path, _, cam = splits.train[i]
            (val_q if j == qi else val_g).append((path, raw, cam))
    keep = [lab for lab in sorted(by_id) if lab not in held]
    relabel = {lab: n for n, lab in enumerate(keep)}
    train = [(p, relabel[lab], cam) for p, lab, cam in splits.train if lab in relabel]
    return train, val_q, val_g
