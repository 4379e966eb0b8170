"""The contracts that let tasks, defenses, regularizers, weight perturbations and attacks meet.

Every plugin is a class with a ``name``, a frozen ``Params`` dataclass whose every field has a default
(and a short comment), and a docstring that cites its paper and the equation it implements. Plugins
are built as ``Cls(params)`` where ``params`` is a ``Cls.Params`` instance (or ``None`` for defaults).

Data flows one way: attacks never import defenses, tasks never import the CLI, the store never
imports the runner.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

#: ``x' -> per-sample loss`` (shape ``(B,)``) that an attack *maximises*. Built by the task
#: (``Task.objective``) so an attack never needs to know what the model outputs.
Objective = Callable[[Tensor], Tensor]


class LogitsObjective:
    """Objective kind ``"logits"``: ``x' -> logits (B, C)``, differentiable in ``x'``, for attacks that
    need the class scores themselves (APGD-DLR/-T, FAB, Square, AutoAttack). ``y`` are the labels
    of the batch and ``num_classes`` the number of classes. Built by the task; the attack never sees
    the model (so it cannot change its train/eval mode). Attacks call it on *subsets* of the rows
    (the points still robust, paired with ``y[idx]``), so each row's logits must not depend on the
    other rows (true for a model in eval mode)."""

    def __init__(self, fn: Callable[[Tensor], Tensor], y: Tensor, num_classes: int):
        self.fn, self.y, self.num_classes = fn, y, int(num_classes)

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


class Labels:
    """Objective kind ``"labels"``: only the labels ``y`` (and ``num_classes``) of the batch, nothing of
    the evaluated model. For attacks that must not query the target at all (a transfer attack
    crafts its examples on its own surrogate model)."""

    def __init__(self, y: Tensor, num_classes: int):
        self.y, self.num_classes = y, int(num_classes)


class DefenseObjective:
    """Objective kind ``"defense"``: the composed defense's own training loss as a function of the
    input the attacker controls (built by :meth:`natbench.compose.Composite.adaptive_objective`), for
    adaptive attacks (e.g. NAT's Eq. 14: ``CE(f_t(x'), y) - omega * KL(f_t(x') || f_a(x'))``).

    ``loss_logits(x', idx)`` returns ``(per-sample loss (n,), target logits (n, C))`` for the rows
    ``idx`` of the batch (all rows when ``idx`` is None), in one forward of each model involved;
    calling the objective gives the loss of all rows (so any loss-maximising attack, PGD, can use
    it). ``y``/``num_classes`` are the batch's labels and the class count.
    """

    def __init__(self, loss_logits: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]], y: Tensor,
                 num_classes: int):
        self.loss_logits, self.y, self.num_classes = loss_logits, y, int(num_classes)

    def __call__(self, x: Tensor) -> Tensor:
        return self.loss_logits(x, None)[0]


class AdaptiveInput:
    """What a component's optional ``adaptive_loss(inp) -> (n,)`` sees when an adaptive attack
    evaluates the composition's training loss at the attacked input ``x_adv``.

    ``batch`` holds the clean inputs and labels of the attacked rows; ``logits_adv`` are the target's
    logits at ``x_adv`` (differentiable in ``x_adv``); :meth:`logits_clean` the target's logits at the
    clean inputs (constant: no gradient). ``base_makes_adv`` says whether the base defense trains on
    adversarial examples: then the attacked input plays the role of ``x'`` in the training loss,
    otherwise (``vanilla``) that of the clean ``x``. ``base_ce_on`` is the base's ``ce_on``.
    """

    def __init__(self, model: nn.Module, task: Any, batch: "Batch", x_adv: Tensor, logits_adv: Tensor,
                 clean: Callable[[], Tensor], base_makes_adv: bool, base_ce_on: frozenset[str]):
        self.model, self.task, self.batch, self.x_adv, self.logits_adv = model, task, batch, x_adv, logits_adv
        self._clean, self.base_makes_adv, self.base_ce_on = clean, base_makes_adv, base_ce_on

    def logits_clean(self) -> Tensor:
        return self._clean()


@dataclass
class Batch:
    """One mini-batch. ``x`` are images in [0, 1]; ``y`` the labels; ``index`` the dataset indices."""

    x: Tensor
    y: Tensor
    index: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.x.to(device),
            self.y.to(device),
            None if self.index is None else self.index.to(device),
            {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.extra.items()},
        )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def rows(self, start: int, stop: int) -> "Batch":
        """Rows ``start:stop`` (the batch itself when that is all of it); per-sample tensors of
        ``extra`` (first dimension = batch size) are sliced too, anything else is kept as is."""
        n = len(self)
        if start == 0 and stop >= n:
            return self
        return Batch(self.x[start:stop], self.y[start:stop], None if self.index is None else self.index[start:stop],
                     {k: (v[start:stop] if isinstance(v, Tensor) and v.dim() and v.shape[0] == n else v)
                      for k, v in self.extra.items()})


@dataclass
class LossOut:
    """A scalar training loss plus named, detached parts for logging."""

    loss: Tensor
    parts: dict[str, float] = field(default_factory=dict)

    def __add__(self, other: "LossOut") -> "LossOut":
        return LossOut(self.loss + other.loss, {**self.parts, **other.parts})


@dataclass(frozen=True)
class ThreatModel:
    """The perturbation set: ``norm`` ball of radius ``eps`` around inputs in [0, 1].

    ``norm``: ``linf`` (``max_i |delta_i| <= eps``), ``l2`` (``||delta||_2 <= eps``) or ``l1``
    (``sum_i |delta_i| <= eps``), over all pixels and channels of one input, in [0, 1] pixel units
    (RobustBench: CIFAR-10 L-inf 8/255, L2 0.5). L-inf eps lies in [0, 1]; L2/L1 radii grow with the
    input dimension. Every attack states the norms it implements (``norms``); the evaluation binds this
    one (:func:`natbench.attacks._base.with_norm`), and a defense's training attack runs in it.
    """

    norm: str = "linf"  # "linf" | "l2" | "l1" (natbench.attacks._base.NORMS)
    eps: float = 8 / 255  # radius in `norm`, in [0,1] pixel units
    train_steps: int = 10  # steps of the training-time attack (defenses use it unless overridden)
    train_step_size: float = 2 / 255  # step of the training-time attack


@dataclass(frozen=True)
class Dependency:
    """A model a component needs before training starts (NAT's adversary, a transfer surrogate).

    The runner trains (or finds, by provenance hash) a run of ``defense`` on the same task, profile
    and seed, and binds its ``checkpoint`` model to the component under ``role``.
    """

    role: str  # the name the component will see, e.g. "adversary"
    defense: str = "vanilla"  # defense spec used to train it
    checkpoint: str = "best"  # "best", "last", or "init" (the untrained, seeded initialisation; nothing is trained)
    sets: tuple[str, ...] = ()  # --set overrides of the dependency run, e.g. ("model.arch=densenet121",)
    run: str = ""  # an existing run id under the results root: its checkpoint is used (defense/sets ignored)


@runtime_checkable
class Task(Protocol):
    """A task kind (classification, reid, detection) bound to one task spec.

    The task hides every "output depends on model.training" quirk of the libraries it wraps.
    """

    name: str
    capabilities: ClassVar[frozenset[str]]  # e.g. {"logits"}, {"logits", "embedding"}
    headline_metric: ClassVar[str]  # e.g. "accuracy"
    # the inputs ("clean", "adv") on which a CE defense's loss is the kind's own
    # ``training_loss(model, batch, x, cache, which) -> (per-sample (B,), parts)`` (re-id: clean; detection:
    # both; classification: none); defenses ask for this, never for the kind's class (defenses/_common.py)
    TRAINING_LOSS_ON: ClassVar[frozenset[str]]
    threat: ThreatModel

    def build_model(self) -> nn.Module: ...  # inputs in [0,1]; normalisation inside the model

    def loaders(self, batch_size: int, generator: torch.Generator) -> tuple[Any, Any, Any]: ...

    def task_loss(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor: ...  # (B,)

    def logits(self, model: nn.Module, batch: Batch, x: Tensor) -> Tensor: ...  # (B, C)

    def objective(self, model: nn.Module, batch: Batch, kind: str) -> Objective: ...

    def evaluate(self, model: nn.Module, loader: Any, attack: Any | None, **kw: Any) -> "EvalOut": ...


@dataclass
class EvalOut:
    """Metrics of one (checkpoint, attack) evaluation plus per-sample correctness flags."""

    metrics: dict[str, float]
    correct: Tensor  # bool, one per test sample, in loader order


@runtime_checkable
class Attack(Protocol):
    """``attack(objective, x, eps=..., generator=...) -> x_adv`` inside the eps-ball and [0, 1].

    An attack never changes the model's train/eval mode: the caller sets it. ``objective_kind``
    names the objective the task should build for it ("ce", "cw", ...).
    """

    name: ClassVar[str]
    objective_kind: ClassVar[str]
    # optional: ``needs_objective -> (kind, why) | None``, an objective the attack's params require
    # (pgd's early_stop: "logits"); checked when the run is resolved (resolve.check_suite)

    def __call__(
        self, objective: Objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None
    ) -> Tensor: ...


@runtime_checkable
class Defense(Protocol):
    """The base training method (exactly one per run).

    ``prepare`` builds what the loss needs (adversarial examples, ...) into ``cache`` without
    touching parameter gradients; ``loss`` computes the outer training loss from ``cache``. Keeping
    them apart lets a weight perturbation (AWP) recompute the loss at perturbed weights on the same
    adversarial examples.

    ``provides`` lists cache keys ``prepare``/``loss`` fill (e.g. ``x_adv``, ``logits_clean``,
    ``logits_adv``); ``ce_on`` says on which inputs ("clean", "adv") its loss already has a CE term.
    ``select_on`` is the validation metric used to pick the ``best`` checkpoint ("robust"/"clean").
    Any component may define ``set_epoch(epoch, epochs)``; the runner calls it before each epoch
    (0-indexed) so schedules (AWP warmup, NuAT's lambda ramp) need no access to the trainer.
    """

    name: ClassVar[str]
    requires: ClassVar[frozenset[str]]
    provides: ClassVar[frozenset[str]]
    ce_on: ClassVar[frozenset[str]]
    select_on: ClassVar[str]

    def prepare(self, model: nn.Module, batch: Batch, task: Task, cache: dict, generator: torch.Generator) -> None: ...

    def loss(self, model: nn.Module, batch: Batch, task: Task, cache: dict) -> LossOut: ...


@runtime_checkable
class Regularizer(Protocol):
    """An additive term on top of the base defense's loss (zero or more per run).

    ``loss`` returns the *whole* additive term, its weight included (the weight is a field of the
    regularizer's own ``Params``; see DESIGN deviation note in ``compose.py``). ``needs_cache`` are
    cache keys a base defense must provide; ``dependencies`` are models the runner must bind first
    (a class or an instance attribute: NAT builds its own from its params).
    """

    name: ClassVar[str]
    requires: ClassVar[frozenset[str]]
    needs_cache: ClassVar[frozenset[str]]
    dependencies: ClassVar[tuple[Dependency, ...]]

    def loss(self, model: nn.Module, batch: Batch, task: Task, cache: dict) -> LossOut: ...


@runtime_checkable
class WeightPerturbation(Protocol):
    """Wraps a composite loss closure: ``restore = pert.apply(model, loss_fn)`` (zero or one per run)."""

    name: ClassVar[str]

    def apply(self, model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> Callable[[], None]: ...


@runtime_checkable
class WeightAverager(Protocol):
    """Weight averaging (EMA, zero or one per run): ``update(model)`` after every optimizer step;
    ``averaged(model)`` is the model that is validated, checkpointed and evaluated."""

    name: ClassVar[str]

    def update(self, model: nn.Module) -> None: ...

    def averaged(self, model: nn.Module) -> nn.Module: ...


def cached_logits(model: nn.Module, batch: Batch, task: Any, cache: dict, which: str, x: Tensor) -> Tensor:
    """``cache["logits_<which>"]`` when a component already computed it in this loss evaluation
    (e.g. NAT's joint clean+adv forward); otherwise ``task.logits(model, batch, x)``, stored so the
    composed terms share one forward pass."""
    z = cache.get(f"logits_{which}")
    if z is None:
        z = task.logits(model, batch, x)
        cache[f"logits_{which}"] = z
    return z


HOOKS_DOC = """Optional hooks any component (base, regularizer, perturbation, averager) may define.

The runner calls them; a component without them is unaffected.

- ``set_epoch(epoch, epochs)``: before each epoch (0-indexed): schedules (AWP warmup, NuAT's lambda ramp).
- ``after_step(model)``: after every optimizer step (and after a weight perturbation's restore), once
  per replay: Free-AT's delta update (it reads ``delta.grad`` left by the backward), NuAT2-WA's attack EMA.
- ``state_dict() -> dict`` / ``load_state_dict(d)``: extra training state (tensors, numbers, nested
  dicts) saved in ``state.pt`` after every epoch, so a resumed run continues exactly (Free-AT's delta,
  an EMA, an iteration counter).
- ``replays: int`` (base defense attribute): the runner takes this many optimizer steps on each
  mini-batch (Free-AT's m); the learning rate is scheduled per replay.
- ``pre_loss(model, batch, task, cache)`` (regularizers): inside the loss closure, before the base's
  ``loss``; may fill ``cache["logits_*"]``, which the base and later terms reuse via
  :func:`cached_logits` (NAT's ``joint_forward``: clean and adversarial logits in one forward).
- ``adaptive_loss(inp: AdaptiveInput) -> Tensor (n,)`` (base defenses and regularizers): the
  component's per-sample training loss term as a function of the attacked input (with its weight
  applied), for the ``adaptive`` attack; terms that do not depend on the input (LASSO) or that
  couple samples (mixup) have none. Every base defense must define it for ``adaptive`` to run.
- ``epoch_end(model, task, batch, generator) -> dict[str, float]``: after an epoch's training,
  before validation, with the epoch's first training batch. The values go into the history; a
  ``"stop"`` value > 0 ends training *without* this epoch: ``last`` stays the previous epoch's
  weights (Fast-AT's guard against catastrophic overfitting).
"""


from .registry import KINDS  # noqa: E402,F401 - the registry sections, defined there (torch-free)
