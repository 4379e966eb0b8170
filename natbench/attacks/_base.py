"""Shared pieces of the attacks: projection, random start, signed gradient, CW margin, norms.

Threat model: ``||x_adv - x||_p <= eps`` for the run's norm (``linf``, ``l2`` or ``l1``) and
``x_adv`` in [0, 1] (pixel units, see :class:`natbench.contracts.ThreatModel`).

Norms. Every attack class states the norms it supports in ``norms`` (default ``("linf",)``); the
evaluation binds the threat model's norm with :func:`with_norm` before the first call (a norm the
attack does not support is a :class:`ConfigError` at resolve time), and the attack reads
``self.norm``. An attack that composes others (AutoAttack) overrides :meth:`LinfAttack.set_norm`
to pass the norm on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from natbench.contracts import Objective
from natbench.errors import ConfigError

log = logging.getLogger(__name__)

#: The threat-model norms natbench knows, in the spelling of ``threat_model.norm``.
NORMS: tuple[str, ...] = ("linf", "l2", "l1")

#: Value written over the true-class logit before taking ``max_{j != y}`` (as in the reference code).
CW_MASK = -1e4


def lp_norms(t: Tensor, norm: str) -> Tensor:
    """Per-sample ``||t_i||_p`` (shape ``(B,)``) in ``norm`` (one of :data:`NORMS`)."""
    flat = t.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    raise ValueError(f"unknown norm {norm!r}; one of {', '.join(NORMS)}")


def with_norm(attack, norm: str, where: str):
    """Bind the threat model's ``norm`` to ``attack`` (returned); a :class:`ConfigError` naming
    ``where`` when the attack's class does not list it in ``norms``."""
    if norm not in NORMS:
        raise ConfigError(f"{where}: unknown threat-model norm '{norm}'; use one of {', '.join(NORMS)}")
    supported = tuple(getattr(attack, "norms", ("linf",)))
    name = getattr(attack, "name", type(attack).__name__)
    if norm not in supported:
        raise ConfigError(f"{where}: attack '{name}' supports the norms {', '.join(supported)}, not the threat "
                          f"model's '{norm}'; drop it from the suite or pick an attack for {norm} (natbench list attacks)")
    setter = getattr(attack, "set_norm", None)
    if callable(setter):
        setter(norm)
    elif norm != "linf":
        attack.norm = norm
    return attack


def project_linf(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Clamp ``x_adv`` to the eps-ball around ``x``, then to [0, 1] (the torchattacks.PGD order)."""
    delta = torch.clamp(x_adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=0, max=1)


def uniform_start(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """``x + U(-eps, eps)`` clamped to [0, 1] (Madry et al. 2018's random start).

    The noise is drawn with ``generator`` on the generator's own device (the global RNG of ``x``'s
    device when ``generator`` is None) and moved to ``x``'s device.
    """
    device = x.device if generator is None else generator.device
    # ``uniform_`` (not ``2 * rand - 1``) draws exactly what torchattacks.PGD draws from the same RNG state.
    noise = torch.empty(x.shape, device=device, dtype=x.dtype).uniform_(-eps, eps, generator=generator)
    return torch.clamp(x + noise.to(x.device), min=0, max=1)


def resolve_step(step_size: float | None, eps: float) -> float:
    """The step size of a PGD-type attack: ``step_size``, or ``eps / 4`` when it is None."""
    return eps / 4 if step_size is None else float(step_size)


def check_eps(eps: float) -> float:
    """Return ``eps`` as a float; raise :class:`ConfigError` unless it is a finite number >= 0."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ConfigError(f"attack eps must be a number >= 0, got {eps!r}.") from None
    if not (0 <= value < float("inf")):
        raise ConfigError(f"attack eps must be a finite number >= 0, got {eps!r}.")
    return value


def input_grad(objective: Objective, x_adv: Tensor) -> Tensor:
    """``d objective(x_adv).sum() / d x_adv``, differentiating w.r.t. the input only.

    ``torch.autograd.grad`` on the input leaves every ``.grad`` of model parameters untouched; grad
    mode is switched on locally so attacks also work inside ``torch.no_grad()`` evaluation loops.
    """
    with torch.enable_grad():
        x_adv = x_adv.detach().requires_grad_(True)
        loss = objective(x_adv)
        if loss.dim() != 1 or loss.shape[0] != x_adv.shape[0]:
            raise ValueError(f"objective must return a (B,) loss, got shape {tuple(loss.shape)}")
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return grad


def signed_grad(objective: Objective, x_adv: Tensor) -> Tensor:
    """``sign(d objective(x_adv).sum() / d x_adv)`` (:func:`input_grad`'s sign)."""
    return input_grad(objective, x_adv).sign()


def cw_margin_loss(logits: Tensor, y: Tensor, kappa: float = 50.0) -> Tensor:
    """Per-sample Carlini-Wagner margin loss to *maximise*: ``-clamp(z_y - max_{j!=y} z_j + kappa, min=0)``.

    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017, in the
    L-inf form used by adversarial-training papers (``zjfheart/Friendly-Adversarial-Training :
    attack_generator.py``, same as sunblaze-ucb/curriculum-adversarial-training-CAT): the true class
    is masked with a large negative (``CW_MASK``) before the max; ``kappa = 50`` (``confidence``).
    Returns shape ``(B,)`` (the reference sums it over the batch).
    """
    onehot = torch.nn.functional.one_hot(y.long(), logits.shape[1]).bool()
    real = logits.gather(1, y.long().view(-1, 1)).squeeze(1)
    other = logits.masked_fill(onehot, CW_MASK).max(dim=1).values
    return -torch.clamp(real - other + kappa, min=0)


class LinfAttack:
    """Base of the L-inf attacks: holds ``params`` (an instance of the subclass's frozen ``Params``)."""

    name: ClassVar[str] = "linf"
    objective_kind: ClassVar[str] = "ce"
    #: the threat-model norms this attack implements (checked by the contract tests and at resolve time)
    norms: ClassVar[tuple[str, ...]] = ("linf",)
    #: the norm bound by :func:`with_norm` (instance attribute once bound)
    norm: str = "linf"

    @dataclass(frozen=True)
    class Params:
        """No parameters."""

    def __init__(self, params: "LinfAttack.Params | None" = None) -> None:
        if params is None:
            params = self.Params()
        if not isinstance(params, self.Params):
            raise ConfigError(
                f"attack '{self.name}' expects {type(self).__name__}.Params, got {type(params).__name__}."
            )
        self.params = params

    def set_norm(self, norm: str) -> None:
        """Bind ``norm`` (already checked to be in :attr:`norms` by :func:`with_norm`)."""
        self.norm = norm

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"
