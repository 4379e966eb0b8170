"""Estimated attack budget per image: forward and backward passes of the evaluated model.

natbench does not count passes while attacking; this is an *estimate from the attack's parameters*
(steps x restarts x targets x EOT samples, queries for Square). It is an upper bound for the attacks
that only work on the points still robust (APGD, AutoAttack's components, FAB, Square) and exact for
PGD / FGSM / CW-inf, which attack every point for every step. Every attack also needs one final
forward pass to score its output, included here. A transfer attack's gradients are taken on its
surrogate, not on the evaluated model: they are counted separately (``surrogate_backward``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from typing import Any


@dataclass(frozen=True)
class Budget:
    forward: float
    backward: float
    surrogate_backward: float = 0.0
    note: str = ""

    def text(self) -> str:
        s = f"{self.forward:g} fwd / {self.backward:g} bwd"
        if self.surrogate_backward:
            s += f" (+{self.surrogate_backward:g} bwd on the surrogate)"
        return s


def _params(name: str, params: dict | None, registry: Any = None) -> dict:
    """The attack's Params defaults overlaid with ``params`` (plain dict); just ``params`` when the
    attack cannot be loaded."""
    merged = dict(params or {})
    try:
        from ..registry import get_registry

        cls = (registry or get_registry()).load("attacks", name)
        defaults = cls.Params()
        base = asdict(defaults) if is_dataclass(defaults) else {}
        return {**base, **merged}
    except Exception:  # noqa: BLE001 - an estimate only; unknown plugin: use what is given
        return merged


def attack_budget(name: str, params: dict | None = None, registry: Any = None) -> Budget:
    """Forward/backward passes per image of one attack of a suite (``name`` = registry name)."""
    p = _params(name, params, registry)
    restarts = int(p.get("restarts", 1) or 1)
    eot = int(p.get("eot_iter", 1) or 1)
    if name in ("clean", ""):
        return Budget(1, 0, note="one forward pass")
    if name == "fgsm":
        return Budget(2, 1, note="one gradient step")
    if name == "square":
        q = int(p.get("n_queries", 5000)) * restarts
        return Budget(q + 1, 0, note="queries (forward only), upper bound: stops on success")
    if name in ("autoattack", "autoattack-rand"):
        n_iter, targets, queries = int(p.get("n_iter", 100)), int(p.get("n_target_classes", 9)), int(p.get("n_queries", 5000))
        fwd = bwd = 0.0
        for comp in p.get("attacks", ()):
            if comp in ("apgd-ce", "apgd-dlr"):
                fwd, bwd = fwd + n_iter * eot, bwd + n_iter * eot
            elif comp in ("apgd-t", "fab-t"):
                fwd, bwd = fwd + n_iter * targets, bwd + n_iter * targets
            elif comp == "square":
                fwd += queries
        return Budget(fwd + 1, bwd, note="sum of its components, upper bound: each runs on the still-robust points")
    if name == "transfer":
        steps = int(p.get("steps", 20))
        return Budget(1, 0, surrogate_backward=steps, note="crafted on the surrogate; one forward of the target")
    steps = int(p.get("steps", p.get("n_iter", 10)) or 0)
    targets = int(p.get("n_target_classes", 1)) if name in ("apgd-t", "fab-t") else 1
    n = steps * restarts * targets * eot
    upper = name in ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "adaptive")
    return Budget(n + 1, n, note="upper bound: runs on the still-robust points" if upper else "every point, every step")


def suite_budget(attacks: list[dict], registry: Any = None) -> dict[str, Budget]:
    """``{attack id: Budget}`` for a run's ``config["suite"]["attacks"]`` entries (``id``, ``attack``,
    ``params``)."""
    return {a.get("id", a.get("attack", "?")): attack_budget(a.get("attack", ""), a.get("params") or {}, registry)
            for a in attacks}
