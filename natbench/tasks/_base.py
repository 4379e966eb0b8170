"""What every task kind does the same way: the spec plumbing, reading a dataset's splits, decoding
images, choosing an attack's objective in evaluation, attacking a batch (with the eps-ball check),
the model's eval mode during evaluation and the out-of-memory splitting of evaluation batches.

A task kind (``natbench.contracts.TaskKind``) subclasses :class:`TaskBase` and adds its model,
loaders, losses, objectives and metrics. What a kind *provides* to the composable methods is
declared on the class, never inferred from its name:

- ``capabilities``: what a defense or regularizer may ask of the model (``"logits"``,
  ``"embedding"``, ``"detections"``; :func:`natbench.compose.plan` checks ``requires`` against it);
- ``TRAINING_LOSS_ON``: the inputs (``"clean"``: the plain training of ``vanilla``; ``"adv"``: the
  outer loss of an adversarial training on x') on which a defense whose loss is ``CE(f(x), y)`` uses
  the kind's own ``training_loss(model, batch, x, cache=None, which=None) -> (per-sample loss (B,),
  {part: batch mean})`` instead (:func:`natbench.defenses._common.outer_loss`). Empty: the kind's
  training loss is the CE of its logits.
"""
from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import assert_in_ball
from ..config import from_dict
from ..contracts import Batch
from ..data import READERS
from ..errors import ConfigError, DataError, suggest
from ..registry import load_target
from ..taskspec import TaskSpec

log = logging.getLogger(__name__)


class TaskBase:
    """The shared part of a task kind; subclasses set the class attributes below."""

    KIND: ClassVar[str] = ""  # the kind's name in messages ("the reid task")
    EVAL_NAME: ClassVar[str] = ""  # its name in evaluation messages ("re-id evaluation")
    Params: ClassVar[type | None] = None  # the kind's ``task.params`` dataclass (None: it has none)
    TRAINING_LOSS_ON: ClassVar[frozenset[str]] = frozenset()  # see the module docstring
    OBJECTIVES: ClassVar[tuple[str, ...]] = ()  # what a suite's attacks may ask for
    SELECTION_OBJECTIVE: ClassVar[str] = "ce"  # what an attack whose kind the task does not evaluate runs on

    def __init__(self, spec: TaskSpec, data_root: Path | None = None):
        self.spec = spec
        self.name = spec.task
        self.threat = spec.threat_model
        self.data_root = data_root
        if self.Params is not None:
            self.params = from_dict(self.Params, dict(spec.params), "task.params")
        self._check_spec()
        self._splits: Any = None

    def _check_spec(self) -> None:
        """Refuse spec settings the kind cannot honour (nothing by default)."""

    def _check_data_fields(self, augments: Sequence[str], unused: dict[str, Any], instead: str) -> None:
        """``data.augment`` one of ``augments``; the DataCfg fields ``unused`` (name -> default) left at their
        defaults (``instead``: what the kind uses in their place)."""
        d = self.spec.data
        if d.augment not in augments:
            raise ConfigError(f"data.augment: '{d.augment}' is not offered by the {self.KIND} task.{suggest(d.augment, augments)} "
                              f"Available: {', '.join(augments)}")
        for name, default in unused.items():
            if getattr(d, name, default) != default:
                raise ConfigError(f"data.{name}: not used by the {self.KIND} task; {instead}")

    def _check_rgb(self) -> None:
        m = self.spec.model
        if m.in_channels != 3 or len(m.mean) != 3 or len(m.std) != 3:
            raise ConfigError(f"model: the {self.KIND} task takes RGB images: in_channels 3 and three mean/std values")

    def _read_splits(self, expect: type | None = None, what: str = "", **options: Any) -> Any:
        """The splits ``data.dataset``'s reader returns (``options``: extra keyword arguments for it), which
        must be an ``expect`` instance (else: "data.dataset: <name> is not <what>")."""
        d = self.spec.data
        if d.dataset not in READERS:
            raise ConfigError(f"data.dataset: unknown dataset '{d.dataset}'.{suggest(d.dataset, READERS)} Available: {', '.join(READERS)}")
        splits = load_target(READERS[d.dataset])(self.data_root, test_fraction=d.test_fraction, split_seed=d.split_seed,
                                                 **options)
        if expect is not None and not isinstance(splits, expect):
            raise ConfigError(f"data.dataset: {d.dataset} is not {what}")
        return splits

    # ------------------------------------------------------------------ losses
    def logits(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor:
        return model(x)

    def task_loss(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor:
        """Per-sample training loss ``(B,)``: the first element of the kind's ``training_loss``."""
        return self.training_loss(model, batch, x)[0]

    # ------------------------------------------------------------------ evaluation
    def _eval_kind(self, kind: Any, named: bool) -> Any:
        """The objective kind evaluation runs for ``kind`` (``named``: the caller chose it, not the attack)."""
        return kind

    def attack_objective(self, attack: Any | None, objective: str | Callable | None) -> Callable | None:
        """The builder ``(model, batch) -> objective`` for ``attack`` in evaluation (None without an attack):
        ``objective`` (a kind or a builder) when given, else the attack's ``objective_kind``, both mapped by
        :meth:`_eval_kind`; a kind outside :attr:`OBJECTIVES` is a :class:`ConfigError`."""
        if attack is None or getattr(attack, "threat", None) == "corruption":  # a corruption builds no objective
            return None
        named = objective is not None
        kind = self._eval_kind(objective if named else getattr(attack, "objective_kind", self.SELECTION_OBJECTIVE), named)
        if callable(kind):
            return kind
        if kind in self.OBJECTIVES:
            return lambda m, b, k=kind: self.objective(m, b, k)
        raise ConfigError(f"objective '{kind}' cannot be used in {self.EVAL_NAME} evaluation.{suggest(str(kind), self.OBJECTIVES)} "
                          f"Available: {', '.join(self.OBJECTIVES)}")

    def attacked(self, attack: Any, build: Callable, model: nn.Module, batch: Batch, eps: float,
                 generator: torch.Generator | None) -> Tensor:
        """``attack``'s adversarial images of ``batch``, checked to lie in the eps-ball of the attack's bound
        norm (``attack.norm``, :func:`natbench.attacks._base.with_norm`; L-inf when unbound) and [0, 1]; a
        corruption (``threat = "corruption"``, not in an eps-ball) gives its corrupted images instead."""
        if getattr(attack, "threat", None) == "corruption":  # natbench.attacks.corruption
            return attack.corrupt(batch, self)
        x = attack(build(model, batch), batch.x, eps=eps, generator=generator)
        assert_in_ball(batch.x, x, eps, f"attack {getattr(attack, 'name', attack)}", norm=getattr(attack, "norm", "linf"))
        return x

    #: largest evaluation chunk that fitted in memory after an out-of-memory split (None: no split yet)
    max_eval_batch: int | None = None

    def _fitting(self, run: Callable[[Batch], Tensor], batch: Batch) -> list[tuple[Tensor, Batch]]:
        """``[(run(part), part)]`` over chunks of ``batch`` no larger than :attr:`max_eval_batch`;
        a chunk that raises ``torch.OutOfMemoryError`` is split in two and retried (down to one sample)."""
        size = len(batch) if self.max_eval_batch is None else min(len(batch), self.max_eval_batch)
        out, start = [], 0
        while start < len(batch):
            part = batch.rows(start, start + size)
            try:
                out.append((run(part), part))
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                size = max(1, size // 2)
                self.max_eval_batch = size
                log.warning("evaluation ran out of memory; continuing with batches of %d", size)
                continue
            start += size
        return out


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with ``model.eval()``, then restore the model's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def decode_image(path: Path, apply: Callable[[Any], Any], hint: str, what: str = "") -> Any:
    """``apply(PIL image of path)``; an unreadable file (missing, not an image, truncated, a
    decompression bomb) is a one-line :class:`DataError` naming ``what`` + ``path`` and the ``hint``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return apply(im)
    except (OSError, Image.DecompressionBombError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"{what}{path}: not a readable image ({e}). {hint}".replace("\n", " ").strip()) from e


def load_transformed(path: Path, transform: Any, u: Tensor | None, hint: str) -> np.ndarray:
    """uint8 HWC image of ``path`` through ``transform.apply(image, uniforms)`` (``u``: its pre-drawn uniforms)."""
    return decode_image(path, lambda im: np.asarray(transform.apply(im, None if u is None else u.tolist()), dtype=np.uint8), hint)


def decoded(load: Callable[..., Any], batches: Iterable[list[tuple]], num_workers: int, name: str) -> Iterator[list]:
    """``[load(*args) for args in batch]`` for each batch of argument tuples, decoded in ``num_workers``
    threads (named ``name``) when > 0 (PIL releases the GIL; the order of the results is kept)."""
    pool = ThreadPoolExecutor(num_workers, thread_name_prefix=name) if num_workers > 0 else None
    try:
        for args in batches:
            yield list(pool.map(lambda a: load(*a), args)) if pool else [load(*a) for a in args]
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
