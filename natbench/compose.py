"""Defense composition: ``spec := name ("+" name)*``.

Rules (all checked before the first training step):

- an alias expands first, and only when it is the whole spec (``nat`` -> ``pgd-at+nat``, the paper's
  recipe on its default base);
- exactly one base defense, any number of distinct regularizers, at most one weight perturbation
  and at most one weight averager (``ema``);
- every component's ``requires`` is offered by the task, every regularizer's ``needs_cache`` is
  provided by the base defense;
- the canonical name is ``base + sorted(regularizers) + perturbation + averager`` (``nat+amd`` -> ``amd+nat``);
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
from .contracts import AdaptiveInput, Batch, DefenseObjective, LossOut
from .errors import CompositionError, suggest
from .registry import Registry

COMPONENT_KINDS = ("defenses", "regularizers", "perturbations", "averagers")


@dataclass(frozen=True)
class Component:
    kind: str  # defenses | regularizers | perturbations | averagers
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
    averager: Component | None = None

    @property
    def components(self) -> tuple[Component, ...]:
        return (self.base, *self.regularizers, *([self.perturbation] if self.perturbation else []),
                *([self.averager] if self.averager else []))

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
    avgs = [c for c in comps if c.kind == "averagers"]
    if len(bases) > 1:
        raise CompositionError(
            f"--defense {spec!r}: {' and '.join(c.name for c in bases)} are both base defenses; keep exactly one "
            f"(e.g. {bases[0].name}{''.join('+' + c.name for c in regs + perts)})"
        )
    if not bases:
        extra = (regs + perts + avgs)[0]
        kind_word = {"regularizers": "a regularizer", "perturbations": "a weight perturbation",
                     "averagers": "a weight averager"}[extra.kind]
        raise CompositionError(f"--defense {spec!r}: {extra.name} is {kind_word}; add a base defense, e.g. pgd-at+{'+'.join(c.name for c in regs + perts + avgs)}")
    if len(perts) > 1:
        raise CompositionError(f"--defense {spec!r}: at most one weight perturbation, got {', '.join(c.name for c in perts)}")
    if len(avgs) > 1:
        raise CompositionError(f"--defense {spec!r}: at most one weight averager, got {', '.join(c.name for c in avgs)}")
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
    canonical = "+".join([base.name, *sorted(c.name for c in regs), *(c.name for c in perts), *(c.name for c in avgs)])
    return Plan(spec, canonical, base, tuple(sorted(regs, key=lambda c: c.name)), perts[0] if perts else None,
                avgs[0] if avgs else None)


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
    averager: Any | None = None
    _restore: Callable[[], None] | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(cls, p: Plan, params: dict[str, Any]) -> "Composite":
        return cls(p, p.base.cls(params[p.base.name]), [r.cls(params[r.name]) for r in p.regularizers],
                   p.perturbation.cls(params[p.perturbation.name]) if p.perturbation else None,
                   p.averager.cls(params[p.averager.name]) if p.averager else None)

    @property
    def components(self) -> list[Any]:
        return [self.base, *self.regularizers, *([self.perturbation] if self.perturbation else []),
                *([self.averager] if self.averager else [])]

    @property
    def select_on(self) -> str:
        return self.base.select_on

    @property
    def replays(self) -> int:
        """Optimizer steps per mini-batch (Free-AT's m; 1 for every other base)."""
        return int(getattr(self.base, "replays", 1))

    def _hooks(self, name: str) -> list[tuple[str, Callable]]:
        return [(c.name, getattr(c, name)) for c in self.components if callable(getattr(c, name, None))]

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Tell components with schedules (AWP warmup, NuAT's lambda ramp) the 0-indexed epoch."""
        for _, hook in self._hooks("set_epoch"):
            hook(epoch, epochs)

    def after_step(self, model: torch.nn.Module) -> None:
        """After every optimizer step (and restore): Free-AT's delta update, EMAs."""
        for _, hook in self._hooks("after_step"):
            hook(model)
        if self.averager is not None:
            self.averager.update(model)

    def eval_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model that is validated, checkpointed and evaluated (the EMA model with an averager)."""
        return self.averager.averaged(model) if self.averager is not None else model

    def epoch_end(self, model: torch.nn.Module, task: Any, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        """Merge every component's ``epoch_end`` values (a ``stop`` > 0 from any of them wins)."""
        out: dict[str, float] = {}
        stop = 0.0
        for _, hook in self._hooks("epoch_end"):
            vals = dict(hook(model, task, batch, generator) or {})
            stop = max(stop, float(vals.pop("stop", 0.0)))
            out.update(vals)
        if stop > 0:
            out["stop"] = stop
        return out

    def state_dict(self) -> dict[str, Any]:
        """Extra training state of the components (saved in ``state.pt`` for exact resumption)."""
        return {name: hook() for name, hook in self._hooks("state_dict")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, hook in self._hooks("load_state_dict"):
            if name in state:
                hook(state[name])

    def dependencies(self) -> list[tuple[Any, Any]]:
        """``[(component, Dependency)]`` for every model a component needs bound before training."""
        return [(c, d) for c in self.components for d in getattr(c, "dependencies", ())]

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
            for r in self.regularizers:  # e.g. NAT's joint_forward fills logits_clean/logits_adv in one forward
                hook = getattr(r, "pre_loss", None)
                if callable(hook):
                    hook(m, batch, task, cache_i)
            out = self.base.loss(m, batch, task, cache_i)
            for r in self.regularizers:
                out = out + r.loss(m, batch, task, cache_i)
            return out

        self._restore = None
        if self.perturbation is not None:
            self._restore = self.perturbation.apply(model, lambda m: loss_fn(m).loss)
        return loss_fn(model)

    def adaptive_objective(self, model: torch.nn.Module, batch: Batch, task: Any) -> DefenseObjective:
        """The composition's own training loss as the objective of an adaptive attack (objective kind
        ``"defense"``): per sample, the sum of each base/regularizer's ``adaptive_loss`` at the attacked
        input (e.g. ``pgd-at+nat``: ``CE(f_t(x'), y) - omega tau^2 KL(p_t(x') || p_a(x'))``, the NAT
        paper's Eq. 14). Weight perturbations and averagers add nothing (the evaluated weights are
        fixed); regularizers without ``adaptive_loss`` (LASSO: no input; mixup: couples samples) are
        left out. The model's train/eval mode is the caller's (the evaluation sets eval)."""
        terms = [c.adaptive_loss for c in (self.base, *self.regularizers) if callable(getattr(c, "adaptive_loss", None))]
        if not callable(getattr(self.base, "adaptive_loss", None)):
            raise CompositionError(f"attack 'adaptive': the base defense {self.base.name} does not define its "
                                   f"training objective (adaptive_loss); drop the adaptive attack from the suite")
        makes_adv = "x_adv" in self.base.provides
        ce_on = frozenset(self.base.ce_on)
        clean: list[torch.Tensor] = []

        def clean_logits() -> torch.Tensor:
            if not clean:
                with torch.no_grad():
                    clean.append(task.logits(model, batch, batch.x).detach())
            return clean[0]

        def loss_logits(x_adv: torch.Tensor, idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            sub = batch if idx is None else Batch(batch.x[idx], batch.y[idx], None if batch.index is None else batch.index[idx],
                                                  {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in batch.extra.items()})
            z = task.logits(model, sub, x_adv)
            inp = AdaptiveInput(model, task, sub, x_adv, z, (lambda: clean_logits() if idx is None else clean_logits()[idx]),
                                makes_adv, ce_on)
            loss = terms[0](inp)
            for term in terms[1:]:
                loss = loss + term(inp)
            return loss, z

        return DefenseObjective(loss_logits, batch.y, task.spec.model.num_classes)

    def restore(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None
