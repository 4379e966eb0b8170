"""``autoattack-original``: the original AutoAttack package, called as is, to audit natbench's ``autoattack``.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. Runs ``pyautoattack.AutoAttack(model, norm=NORM, eps=eps,
seed=seed, version=version, device=...)`` (``NORM``: the threat model's norm in the package's spelling,
``Linf``, ``L2`` or ``L1``) and its ``run_standard_evaluation(x, y, batch_size=bs)``
(PyPI ``pyautoattack``, by the authors; ``pip install pyautoattack`` or ``natbench[test]``). Nothing of
natbench's attack code is involved: the model is the task's logits objective wrapped as a module.

``seed`` is ``generator.initial_seed()`` (as natbench's ``autoattack`` seeds its components), so given
generators with the same seed the two run the same random starts and their per-sample results can be
compared (``benchmarks/eval_speed.py``, ``benchmarks/aa_norms.py``, ``tests/test_autoattack_norms.py``).
In a suite every attack id gets its own seed (``derive_seed(run seed, "eval", id)``) unless the entry
says ``seed_as: ID``; the ``aa-audit`` suite gives ``aa-original`` the seed of ``aa``, so the two columns
run the same random starts and differ only where the implementations do (before, they ran different
starts: on a digits quick pgd-at run at L1 eps 2, 78 and 79 of 359 robust, 3 flags differing from the
seeds alone; at one seed the two agree on all 359: ``benchmarks/aa_norms.py --seed``). The original reseeds the
global RNG; natbench's global RNG state is restored afterwards (``torch.random.fork_rng``).

The original's warnings (randomised or dynamic model, Square lowering the robust accuracy after
APGD/FAB, ...) are collected, not printed: :meth:`take_checks` returns them as failed checks, which
the runner records with the run (:func:`natbench.checks.attack_checks`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from natbench.attacks._base import NORMS, LinfAttack, check_eps
from natbench.attacks.apgd import logits_parts
from natbench.errors import ConfigError

LOGGER = "auto-attack"  # the logger name pyautoattack writes its messages to

#: natbench's norm spelling -> the package's
PACKAGE_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}


class _Module(nn.Module):
    """The logits objective as the ``nn.Module`` the original expects (no parameters of its own)."""

    def __init__(self, forward) -> None:
        super().__init__()
        self.fn = forward

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class AutoAttackOriginal(LinfAttack):
    """The authors' AutoAttack (``pyautoattack``), version ``standard`` (or ``rand``/``plus``), run as is."""

    name = "autoattack-original"
    objective_kind = "logits"
    norms = NORMS

    @dataclass(frozen=True)
    class Params:
        version: str = "standard"  # the original's version: standard, plus or rand
        bs: int = 250  # the original's run_standard_evaluation batch_size

    def __init__(self, params: "AutoAttackOriginal.Params | None" = None) -> None:
        super().__init__(params)
        if self.params.version not in ("standard", "plus", "rand") or self.params.bs < 1:
            raise ConfigError(f"attack '{self.name}' needs version standard, plus or rand and bs >= 1; got {self.params}.")
        self.warnings: list[str] = []

    def __call__(self, objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        try:
            from pyautoattack import AutoAttack
        except ImportError as e:
            raise ConfigError(f"attack '{self.name}' needs the original AutoAttack package ({e}); "
                              f"pip install pyautoattack (or natbench[test])") from e
        forward, y, _ = logits_parts(objective, self.name)
        seed = generator.initial_seed() if generator is not None else torch.initial_seed()
        x = x.detach()
        devices = [x.device] if x.device.type == "cuda" else []
        log = logging.getLogger(LOGGER)
        handler, propagate = _Collect(), log.propagate
        log.addHandler(handler)
        log.propagate = False
        try:
            with torch.random.fork_rng(devices=devices):
                aa = AutoAttack(_Module(forward), norm=PACKAGE_NORM[self.norm], eps=eps, seed=seed, version=self.params.version,
                                device=x.device)
                x_adv, _ = aa.run_standard_evaluation(x, y.to(x.device).long(), batch_size=self.params.bs)
        finally:
            log.removeHandler(handler)
            log.propagate = propagate
        self.warnings += handler.messages
        return x_adv.detach()

    def take_checks(self) -> list:
        """The original's warnings since the last call, as failed checks (one per distinct message)."""
        from natbench.checks import Check

        out = [Check("autoattack_original_warning", False, m) for m in dict.fromkeys(self.warnings)]
        self.warnings = []
        return out
