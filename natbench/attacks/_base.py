"""Shared pieces of the L-infinity attacks: projection, random start, signed gradient, CW margin.

Threat model: ``||x_adv - x||_inf <= eps`` and ``x_adv`` in [0, 1] (pixel units, see
:class:`natbench.contracts.ThreatModel`).
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

#: Value written over the true-class logit before taking ``max_{j != y}`` (as in the reference code).
CW_MASK = -1e4


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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"
