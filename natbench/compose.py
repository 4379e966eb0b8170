"""Defense composition: ``spec := name ("+" name)*``.

Rules (all checked before the first training step):

- an alias expands first, and only when it is the whole spec (``nat`` -> ``pgd-at+nat``, the paper's
  recipe on its default base);
- exactly one base defense, any number of distinct regularizers, at most one weight perturbation;
- every component's ``requires`` is offered by the task, every regularizer's ``needs_cache`` is
  provided by the base defense;
- the canonical name is ``base + sorted(regularizers) + perturbation`` (``nat+amd`` -> ``amd+nat``);
  it is the leaderboard key.

Deviation from DESIGN.md: a regularizer's ``loss`` returns its whole additive term with its own
weight applied (the weight is a field of its ``Params``), because NAT's term mixes an unweighted CE
with an omega-weighted KL; a single external weight could not express it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .config import from_dict
from .contracts import Batch, LossOut
from .errors import CompositionError, suggest
from .registry import Registry

COMPONENT_KINDS = ("defenses", "regularizers", "perturbations")


@dataclass(frozen=True)
class Component:
    kind: str  # defenses | regularizers | perturbations
    name: str
    cls: type


@dataclass(frozen=True)
class Plan:
    """A checked composition, not yet instantiated."""

    spec: str  # as the user wrote it
    canonical: str
    base: Component
    regularizers: tuple[Component, ...]
    perturbation: Component | None

    @property
    def components(self) -> tuple[Component, ...]:
        return (self.base, *self.regularizers, *([self.perturbation] if self.perturbation else []))

    def default_params(self, task_defaults: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """``{component: {param: value}}`` = Params defaults overlaid with the task's defense_params."""
        from .config import to_dict

        out = {}
        for c in self.components:
            base = to_dict(c.cls.Params())
            over = (task_defaults or {}).get(c.name, {})
            out[c.name] = {**base, **over}
        return out


def _kind_of(reg: Registry, name: str) -> str:
    for kind in COMPONENT_KINDS:
        if reg.has(kind, name):
            return kind
    allnames = [n for k in COMPONENT_KINDS for n in reg.names(k)]
    raise CompositionError(
        f"Unknown defense '{name}'.{suggest(name, allnames)} Available: {', '.join(sorted(allnames))}"
    )


def plan(spec: str, reg: Registry, task_caps: frozenset[str], task_kind: str | None = None) -> Plan:
    """Parse and check ``spec`` (e.g. ``"trades+nat"``) against the registry and the task."""
    names = [n.strip() for n in spec.split("+")]
    if not spec.strip() or any(not n for n in names):
        raise CompositionError(f"--defense {spec!r}: empty component; write e.g. pgd-at+nat")
    if len(names) == 1:
        kind = _kind_of(reg, names[0])
        alias = reg.entry(kind, names[0]).alias
        if alias:
            names = [n.strip() for n in alias.split("+")]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise CompositionError(f"--defense {spec!r}: {', '.join(dup)} appears twice; list each component once")
    comps = [Component(k, n, reg.load(k, n)) for n in names for k in [_kind_of(reg, n)]]
    bases = [c for c in comps if c.kind == "defenses"]
    regs = [c for c in comps if c.kind == "regularizers"]
    perts = [c for c in comps if c.kind == "perturbations"]
    if len(bases) > 1:
        raise CompositionError(
            f"--defense {spec!r}: {' and '.join(c.name for c in bases)} are both base defenses; keep exactly one "
            f"(e.g. {bases[0].name}{''.join('+' + c.name for c in regs + perts)})"
        )
    if not bases:
        extra = regs[0] if regs else perts[0]
        kind_word = "a regularizer" if extra.kind == "regularizers" else "a weight perturbation"
        raise CompositionError(f"--defense {spec!r}: {extra.name} is {kind_word}; add a base defense, e.g. pgd-at+{'+'.join(c.name for c in regs + perts)}")
    if len(perts) > 1:
        raise CompositionError(f"--defense {spec!r}: at most one weight perturbation, got {', '.join(c.name for c in perts)}")
    base = bases[0]
    for c in comps:
        entry = reg.entry(c.kind, c.name)
        if task_kind and entry.tasks and task_kind not in entry.tasks:
            raise CompositionError(f"--defense {spec!r}: {c.name} supports task kinds {', '.join(entry.tasks)}, not {task_kind}")
        missing = set(getattr(c.cls, "requires", ())) - set(task_caps)
        if missing:
            raise CompositionError(f"--defense {spec!r}: {c.name} needs task capabilities {sorted(missing)}; this task offers {sorted(task_caps)}")
    for r in regs:
        missing = set(r.cls.needs_cache) - set(base.cls.provides)
        if missing:
            raise CompositionError(f"--defense {spec!r}: {r.name} needs {sorted(missing)} from the base defense, which {base.name} does not provide; pick a base that does, e.g. pgd-at+{r.name}")
    canonical = "+".join([base.name, *sorted(c.name for c in regs), *(c.name for c in perts)])
    return Plan(spec, canonical, base, tuple(sorted(regs, key=lambda c: c.name)), perts[0] if perts else None)


def check_params(p: Plan, params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Validate ``{component: {param: value}}`` strictly against each component's ``Params``."""
    out = {}
    for c in p.components:
        out[c.name] = from_dict(c.cls.Params, params.get(c.name, {}), f"defense.{c.name}")
    return out


@dataclass
class Composite:
    """The instantiated composition: one training loss out of a base, regularizers and a perturbation."""

    plan: Plan
    base: Any
    regularizers: list[Any] = field(default_factory=list)
    perturbation: Any | None = None
    _restore: Callable[[], None] | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(cls, p: Plan, params: dict[str, Any]) -> "Composite":
        return cls(p, p.base.cls(params[p.base.name]), [r.cls(params[r.name]) for r in p.regularizers],
                   p.perturbation.cls(params[p.perturbation.name]) if p.perturbation else None)

    @property
    def select_on(self) -> str:
        return self.base.select_on

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Tell components with schedules (AWP warmup, NuAT's lambda ramp) the 0-indexed epoch."""
        for c in (self.base, *self.regularizers, *([self.perturbation] if self.perturbation else [])):
            hook = getattr(c, "set_epoch", None)
            if callable(hook):
                hook(epoch, epochs)

    def dependencies(self) -> list[tuple[Any, Any]]:
        """``[(component, Dependency)]`` for every model a component needs bound before training."""
        comps = [self.base, *self.regularizers, *([self.perturbation] if self.perturbation else [])]
        return [(c, d) for c in comps for d in getattr(c, "dependencies", ())]

    def step_loss(self, model: torch.nn.Module, batch: Batch, task: Any, generator: torch.Generator) -> LossOut:
        """Prepare (adversarial examples) and return the composite loss; the model is left in train mode.

        With a weight perturbation, the loss is computed at the perturbed weights; the caller must
        call :meth:`restore` after ``backward`` and the optimizer step.
        """
        cache: dict[str, Any] = {"ce_on": self.base.ce_on}
        model.train()
        self.base.prepare(model, batch, task, cache, generator)
        model.train()

        def loss_fn(m: torch.nn.Module) -> LossOut:
            cache_i = {k: v for k, v in cache.items() if not k.startswith("logits_")}
            out = self.base.loss(m, batch, task, cache_i)
            for r in self.regularizers:
                out = out + r.loss(m, batch, task, cache_i)
            return out

        self._restore = None
        if self.perturbation is not None:
            self._restore = self.perturbation.apply(model, lambda m: loss_fn(m).loss)
        return loss_fn(model)

    def restore(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None
