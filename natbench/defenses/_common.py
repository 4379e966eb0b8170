"""Pieces shared by base defenses.

- :func:`bn_mode`: the BatchNorm mode used while a defense generates its training-time adversarial
  examples. Each method's reference fixes it (notes/algorithms.md Sec. 13); it is an explicit
  parameter, never an accident of whatever mode the model was left in.
- :func:`attack_budget`: a defense's ``steps``/``step_size`` params, None meaning the task's
  threat-model values (an explicit 0 is kept).
- :func:`gaussian_start_ascent`: the inner maximisation of TRADES and MART (notes Sec. 2.2, 4.1).
- :func:`adaptive_ce` / :func:`kl_per_sample` / :func:`nuclear_adaptive`: per-sample training-loss
  terms at the attacked input, for the ``adaptive`` attack (``adaptive_loss`` hooks).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from torch import nn


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Run the block with ``model.train()`` (mode "train") or ``model.eval()`` ("eval"), then restore."""
    was = model.training
    model.train(mode == "train")
    try:
        yield
    finally:
        model.train(was)


def attack_budget(params, threat) -> tuple[int, float]:
    """``(steps, step_size)`` of a defense's training-time attack."""
    steps = threat.train_steps if params.steps is None else params.steps
    step_size = threat.train_step_size if params.step_size is None else params.step_size
    return steps, step_size


def gaussian_start_ascent(loss_sum: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, eps: float,
                          steps: int, step_size: float, init_std: float, generator: torch.Generator) -> torch.Tensor:
    """Start at ``x + init_std * N(0, I)`` (no clamp before the first step, as in TRADES and MART),
    then ``steps`` times ``x' <- clip_[0,1](min(max(x' + step_size * sign(grad), x - eps), x + eps))``
    ascending ``loss_sum(x')`` (a scalar). Returns a detached tensor clamped to [0, 1].
    """
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
    x_adv = (x + init_std * noise).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_sum(x_adv), x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach().clamp(0.0, 1.0)


def adaptive_ce(inp) -> torch.Tensor:
    """Per-sample ``CE(f(x'), y)`` at the attacked input: the ``adaptive_loss`` of every base whose
    training loss is a CE on one input (vanilla on x; PGD-AT, Fast-AT, Free-AT on x')."""
    return F.cross_entropy(inp.logits_adv, inp.batch.y, reduction="none")


def kl_per_sample(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(logits_p) || softmax(logits_q))`` per sample (sum over classes), shape ``(B,)``."""
    return F.kl_div(F.log_softmax(logits_q, dim=1), F.softmax(logits_p, dim=1), reduction="none").sum(dim=1)


def nuclear_adaptive(inp, lam: float) -> torch.Tensor:
    """NuAT's training loss ``CE(f(x), y) + lam * ||f(x) - f(x')||_* / B`` per sample: the nuclear norm
    of one row (a 1 x C matrix, B = 1) is that row's L2 norm (the batch norm couples samples; a
    per-sample attack objective cannot)."""
    z_clean = inp.logits_clean()
    return F.cross_entropy(z_clean, inp.batch.y, reduction="none") + lam * (z_clean - inp.logits_adv).norm(p=2, dim=1)
