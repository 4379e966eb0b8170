"""AutoAttack: the parameter-free ensemble APGD-CE, APGD-T, FAB-T, Square, each on the points still robust.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (Sec. 5). Mirrors the authors' ``version='standard'`` of
``fra31/auto-attack @ a392200 : autoattack/autoattack.py`` (``set_version`` and
``run_standard_evaluation``; notes Sec. 8.1), for the norms of ``pyautoattack`` 0.2.0:

- components, in order: APGD-CE (100 iterations, 1 restart, rho 0.75), APGD-T (100 iterations,
  9 target classes, 1 restart each), FAB-T (9 targets, 100 iterations, 1 restart; alpha_max 0.1,
  eta 1.05, beta 0.9), Square (5000 queries, p_init 0.8, 1 restart, the p schedule not rescaled);
- the threat model's norm (bound by :func:`natbench.attacks._base.with_norm`) is passed to every
  component (:meth:`AutoAttack.set_norm`); a component that does not implement it is a ConfigError
  naming it. L-inf and L2 use the settings above. L1 is the original's L1 standard version: APGD-CE
  with ``use_largereps`` (each run in three stages at 3, 2, 1 x eps) and 5 restarts, APGD-T with
  ``use_largereps`` and 5 target classes (at most ``n_target_classes``), FAB-T with 9 (``n_target_classes``),
  Square (L1-APGD: Croce & Hein, "Mind the box", ICML 2021; :mod:`natbench.attacks._apgd_norms`).
  The ``rand`` version keeps its settings in every norm, as the original;
- the cascade: the clean-correct points are the robust set; each component runs only on the points
  still robust, in chunks of ``bs`` (250) of them, and any point it flips gets its adversarial example
  and leaves the set. The output is the adversarial example where some component succeeded and the
  clean input elsewhere (so the accuracy on it is the robust accuracy, and a clean-misclassified point
  is never attacked).

:class:`AutoAttackRand` is ``version='rand'``: APGD-CE then APGD-DLR, 100 iterations, 1 restart, EOT
over 20 gradient passes (for randomised defenses).

Seeds. The original sets every component's ``seed`` to the AutoAttack seed before each chunk, and each
component reseeds the global RNG with it at the start of its ``perturb``. Here each component, for
each chunk, gets a **fresh** ``torch.Generator`` (on the given generator's device) seeded with
``generator.initial_seed()``: the given generator fixes the seed and is never advanced, so every batch
of an evaluation reuses the same seed, as the original does across its chunks. ``generator=None``
takes ``torch.initial_seed()`` (the global RNG's seed; nothing is drawn from the global RNG).

Early stop (``early_stop``, default on). A point a component has fooled leaves that component's
batch at once: APGD stops computing on it at its first misclassified iterate (every variant, restart
and target), FAB-T once it has a misclassified point within eps. The per-sample robust flags are the
original's (the model is evaluated, so a row's trajectory does not depend on the other rows, and
nothing is drawn after a run's start); the returned ``x'`` of a fooled point changes: APGD's is the
*first* misclassified iterate (the original keeps the latest), FAB-T's the first misclassified
point within eps (the original keeps the closest found in all its iterations). ``early_stop=False``
returns the original's ``x'`` too. The work falls with the fooled fraction
(``benchmarks/eval_speed.py``).

One clean forward (:mod:`natbench.attacks._clean`). The clean logits are computed once and carried to
every component, and the check after a component evaluates only the rows it changed (an unchanged row
is the clean input already found correct). Both hold for a deterministic model only: the 'rand'
version (:class:`AutoAttackRand`, for randomized defenses) does neither, as the original: each
component draws its own clean logits and the check evaluates every row it attacked.

The original's diagnostic checks (randomised model, softmax output, dynamic graph, class count) only
print warnings and are not run. Its Square check is kept: when Square still fools more than 0.2 % of
the points (the original's ``check_square_sr`` threshold) after APGD/FAB, :meth:`AutoAttack.take_checks`
reports a failed check ``square_lowered_robust_accuracy`` with the count, which the runner records. The components come from :mod:`natbench.attacks.apgd`,
``natbench.attacks.fab:FABT`` and ``natbench.attacks.square:Square``, imported when an AutoAttack
that uses them is built, so this module imports without them.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from natbench.attacks._base import NORMS, LinfAttack, check_eps, with_norm
from natbench.attacks._clean import carrying, clean_logits
from natbench.attacks.apgd import logits_parts
from natbench.contracts import LogitsObjective
from natbench.errors import ConfigError, suggest

log = logging.getLogger(__name__)

#: The original's ``check_square_sr`` threshold: Square may lower the robust accuracy by at most this.
SQUARE_ALPHA = 0.002

#: Component name -> "module:Class".
COMPONENTS: dict[str, str] = {
    "apgd-ce": "natbench.attacks.apgd:APGDCE",
    "apgd-dlr": "natbench.attacks.apgd:APGDDLR",
    "apgd-t": "natbench.attacks.apgd:APGDT",
    "fab-t": "natbench.attacks.fab:FABT",
    "square": "natbench.attacks.square:Square",
}


def _load(name: str) -> type:
    module, cls = COMPONENTS[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"AutoAttack component '{name}' needs {COMPONENTS[name]}, which cannot be loaded ({e}); "
            f"run a subset, e.g. params attacks: [apgd-ce, apgd-t]"
        ) from e


def _make(name: str, **values: Any) -> Any:
    """``Cls(Cls.Params(**values))`` for component ``name``; a field the Params lack is a ConfigError."""
    cls = _load(name)
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    missing = sorted(set(values) - fields)
    if missing:
        raise ConfigError(f"AutoAttack component '{name}' ({COMPONENTS[name]}) has no parameter(s) {', '.join(missing)}")
    return cls(cls.Params(**values))


def subset_objective(objective: Any, idx: Tensor, num_classes: int) -> LogitsObjective:
    """The logits objective of rows ``idx`` of the batch: same callable, labels ``objective.y[idx]``."""
    return LogitsObjective(objective, objective.y[idx], num_classes)


class AutoAttack(LinfAttack):
    """AutoAttack, standard version (Croce & Hein, ICML 2020): APGD-CE, APGD-T, FAB-T, Square in cascade."""

    name = "autoattack"
    objective_kind = "logits"
    norms = NORMS
    #: the original's ``version`` these settings follow (L1's settings differ only for ``standard``)
    version = "standard"
    #: the shortcuts of one clean forward (carried clean logits, checking only changed rows) assume the
    #: model's logits are the same at every call; the 'rand' version is for models where they are not
    deterministic_model = True
    #: APGD-CE's restarts and APGD-T's target classes in the L1 standard version (the original's set_version)
    L1_APGD_RESTARTS, L1_APGD_T_TARGETS = 5, 5

    @dataclass(frozen=True)
    class Params:
        attacks: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")  # components, run in this order
        n_iter: int = 100  # iterations of APGD-CE/-DLR/-T and FAB-T (original: 100)
        n_target_classes: int = 9  # target classes of APGD-T and FAB-T (original: 9)
        n_queries: int = 5000  # Square's query budget (original: 5000)
        eot_iter: int = 1  # EOT gradient passes of APGD-CE/-DLR (original: 1; 'rand' version: 20)
        bs: int = 250  # still-robust points per component call (original run_standard_evaluation bs)
        early_stop: bool = True  # fooled points leave APGD's/FAB-T's batch (same flags; x': see the module doc)

    def __init__(self, params: "AutoAttack.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        unknown = [a for a in p.attacks if a not in COMPONENTS]
        if unknown:
            raise ConfigError(f"attack '{self.name}': unknown component '{unknown[0]}'.{suggest(unknown[0], COMPONENTS)} "
                              f"Available: {', '.join(COMPONENTS)}")
        if not p.attacks or p.n_iter < 1 or p.n_target_classes < 1 or p.n_queries < 1 or p.eot_iter < 1 or p.bs < 1:
            raise ConfigError(f"attack '{self.name}' needs at least one component and n_iter, n_target_classes, "
                              f"n_queries, eot_iter, bs >= 1; got {p}.")
        self.components = [(a, self._component(a)) for a in p.attacks]
        self._points, self._fooled = 0, {a: 0 for a in p.attacks}  # since the last take_checks()

    def set_norm(self, norm: str) -> None:
        """Bind ``norm`` and rebuild the components for it, each bound to it with :func:`with_norm` (a
        component without that norm is a ConfigError naming it)."""
        self.norm = norm
        self.components = [(a, with_norm(self._component(a), norm, f"attack '{self.name}', component '{a}'"))
                           for a in self.params.attacks]

    def _component(self, name: str) -> Any:
        p = self.params
        l1 = self.norm == "l1" and self.version == "standard"  # the original's L1 standard settings
        if name in ("apgd-ce", "apgd-dlr"):  # the original's self.apgd: eot_iter applies to it only
            if l1:
                return _make(name, steps=p.n_iter, restarts=self.L1_APGD_RESTARTS, rho=0.75, eot_iter=p.eot_iter,
                             early_stop=p.early_stop, use_largereps=True)
            return _make(name, steps=p.n_iter, restarts=1, rho=0.75, eot_iter=p.eot_iter, early_stop=p.early_stop)
        if name == "apgd-t":
            if l1:
                return _make(name, steps=p.n_iter, restarts=1, rho=0.75, eot_iter=1, early_stop=p.early_stop,
                             n_target_classes=min(self.L1_APGD_T_TARGETS, p.n_target_classes), use_largereps=True)
            return _make(name, steps=p.n_iter, restarts=1, rho=0.75, eot_iter=1, n_target_classes=p.n_target_classes,
                         early_stop=p.early_stop)
        if name == "fab-t":
            return _make(name, n_iter=p.n_iter, restarts=1, n_target_classes=p.n_target_classes, early_stop=p.early_stop)
        return _make(name, n_queries=p.n_queries, p_init=0.8, restarts=1, rescale_schedule=False)

    def __call__(self, objective: Any, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        forward, y, num_classes = logits_parts(objective, self.name)
        seed = generator.initial_seed() if generator is not None else torch.initial_seed()
        device = generator.device if generator is not None else torch.device("cpu")
        x = x.detach()
        y = y.to(x.device).long()
        clean = clean_logits(objective, x)  # once: every component gets them for its rows (_clean.carrying)
        robust = clean.max(1)[1] == y
        if num_classes is None:
            num_classes = int(clean.shape[1])
        x_adv = x.clone()
        self._points += len(y)
        for name, attack in self.components:
            todo = robust.nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            for idx in todo.split(self.params.bs):
                g = torch.Generator(device=device).manual_seed(seed)
                sub = subset_objective(objective, idx, num_classes)
                if self.deterministic_model:
                    sub = carrying(sub, x[idx], clean[idx])
                adv = attack(sub, x[idx], eps=eps, generator=g).detach()
                fooled = self._fooled_rows(forward, adv, x[idx], y[idx], only_changed=self.deterministic_model)
                robust[idx[fooled]] = False
                x_adv[idx[fooled]] = adv[fooled]
                self._fooled[name] += int(fooled.sum())
            log.debug("autoattack: robust after %s: %d / %d", name, int(robust.sum()), len(robust))
        return x_adv

    @staticmethod
    def _fooled_rows(forward: Any, adv: Tensor, x: Tensor, y: Tensor, *, only_changed: bool = True) -> Tensor:
        """Which rows of a component's output ``adv`` the model misclassifies (the original's check
        after each component). With ``only_changed`` only the rows that differ from the clean ``x`` are
        evaluated: the others are the clean, clean-correct inputs the component was given (a
        still-robust point of a deterministic model); without it (the 'rand' version) all rows are."""
        if not only_changed:
            with torch.no_grad():
                return forward(adv).max(1)[1] != y
        changed = (adv != x).flatten(1).any(1)
        fooled = torch.zeros_like(changed)
        if bool(changed.any()):
            with torch.no_grad():
                fooled[changed] = forward(adv[changed]).max(1)[1] != y[changed]
        return fooled

    def take_checks(self) -> list:
        """The original's Square check (``checks.check_square_sr``) over the calls since the last
        take: Square, run after APGD/FAB, should not fool more than ``SQUARE_ALPHA`` of the points; when
        it does, AutoAttack's white-box components missed points a black-box attack found (the
        original warns that the evaluation may be unreliable). Returns ``[]`` without Square or
        without calls; the counters restart."""
        from natbench.checks import Check

        n, k = self._points, self._fooled.get("square", 0)
        self._points, self._fooled = 0, dict.fromkeys(self._fooled, 0)
        earlier = [a for a in self.params.attacks if a != "square"]
        if n == 0 or "square" not in self.params.attacks or not earlier:
            return []
        passed = k <= SQUARE_ALPHA * n
        detail = (f"Square fooled {k} of {n} points ({100 * k / n:.2f}%) that {', '.join(earlier)} left robust"
                  + ("" if passed else f" (the original warns above {100 * SQUARE_ALPHA:g}%: the evaluation may be "
                                       "unreliable; try Square with more queries or an adaptive attack)"))
        return [Check("square_lowered_robust_accuracy", passed, detail)]


class AutoAttackRand(AutoAttack):
    """AutoAttack, 'rand' version (Croce & Hein, ICML 2020): APGD-CE and APGD-DLR with EOT over 20 passes."""

    name = "autoattack-rand"
    objective_kind = "logits"
    version = "rand"
    deterministic_model = False

    @dataclass(frozen=True)
    class Params(AutoAttack.Params):
        attacks: tuple[str, ...] = ("apgd-ce", "apgd-dlr")  # components, run in this order
        n_iter: int = 100  # iterations of each APGD (original: 100)
        n_target_classes: int = 9  # only used if apgd-t / fab-t are added
        n_queries: int = 5000  # only used if square is added
        eot_iter: int = 20  # EOT gradient passes of APGD-CE/-DLR (original 'rand': 20)
        bs: int = 250  # still-robust points per component call
        early_stop: bool = True  # fooled points leave APGD's batch (same flags; x' = first misclassified iterate)
