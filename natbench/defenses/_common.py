"""Pieces shared by base defenses.

- :func:`bn_mode`: the BatchNorm mode used while a defense generates its training-time adversarial
  examples. Each method's reference fixes it (notes/algorithms.md Sec. 13); it is an explicit
  parameter, never an accident of whatever mode the model was left in.
- :func:`attack_budget`: a defense's ``steps``/``step_size`` params, None meaning the task's
  threat-model values (an explicit 0 is kept).
- :func:`gaussian_start_ascent`: the inner maximisation of TRADES and MART (notes Sec. 2.2, 4.1);
  :func:`trades_l2_ascent`: TRADES' L2 branch.
- :func:`adaptive_ce` / :func:`kl_per_sample` / :func:`nuclear_adaptive`: per-sample training-loss
  terms at the attacked input, for the ``adaptive`` attack (``adaptive_loss`` hooks).
- :class:`AdvCE` / :class:`CleanCEPlusAdvTerm`: the declarations (``requires``, ``provides``,
  ``ce_on``, ``select_on``) two families of bases share.
- :func:`outer_loss` / :func:`ce_loss` / :func:`own_loss` / :func:`synced`: a defense's loss on one
  input. A task kind declares on which inputs its own ``training_loss`` replaces the CE of its logits
  (``TRAINING_LOSS_ON``, :mod:`natbench.tasks._base`); defenses ask for that, never for the kind's class
  or capabilities.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..contracts import Batch, LossOut, cached_logits


class AdvCE:
    """Declarations of a base trained on ``CE(f(x'), y)`` alone (PGD-AT, Fast-AT, Free-AT), and its
    ``adaptive_loss``: that CE per sample with the attacked input as x'."""

    requires = frozenset({"logits"})
    provides = frozenset({"x_adv", "logits_adv"})
    ce_on = frozenset({"adv"})
    select_on = "robust"

    def adaptive_loss(self, inp) -> torch.Tensor:
        """Its training loss with the attacked input as x': ``CE(f(x'), y)`` per sample."""
        return adaptive_ce(inp)


class CleanCEPlusAdvTerm:
    """Declarations of a base trained on ``CE(f(x), y)`` plus a term of ``(f(x), f(x'))`` (TRADES, NuAT, NuAT2)."""

    requires = frozenset({"logits"})
    provides = frozenset({"x_adv", "logits_clean", "logits_adv"})
    ce_on = frozenset({"clean"})
    select_on = "robust"


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
                          steps: int, step_size: float, init_std: float, generator: torch.Generator,
                          norm: str = "linf") -> torch.Tensor:
    """Start at ``x + init_std * N(0, I)`` (no clamp before the first step, as in TRADES and MART),
    then ``steps`` times ``x' <- clip_[0,1](min(max(x' + step_size * sign(grad), x - eps), x + eps))``
    ascending ``loss_sum(x')`` (a scalar). Returns a detached tensor clamped to [0, 1].

    ``norm="l2"``: the same start, then PGD-L2 steps (:mod:`natbench.attacks._l2`: ``x' + step_size *
    g / (||g||_2 + 1e-10)`` per sample, scaled into the L2 ball, clamped to [0, 1]). MART's reference is
    L-inf only; this is natbench's L2 reading of its inner maximisation (a deviation, said so in mart.py).
    """
    from ..attacks._l2 import EPS_DIV, project_l2

    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
    x_adv = (x + init_std * noise).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_sum(x_adv), x_adv)
        if norm == "l2":
            g = grad.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (grad.dim() - 1)))
            x_adv = project_l2(x_adv.detach() + step_size * grad / (g + EPS_DIV), x, eps)
            continue
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach().clamp(0.0, 1.0)


def trades_l2_ascent(kl_sum: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, eps: float, steps: int,
                     step_size: float, init_std: float, generator: torch.Generator) -> torch.Tensor:
    """The L2 inner maximisation of TRADES, as yaodongyu/TRADES ``trades.py`` (``distance='l_2'``)::

        delta = init_std * N(0, I)
        K times:  g = d KL_sum(p(x) || p(x + delta)) / d delta
                  g = g / ||g||_2 per sample; a row with ||g||_2 = 0 gets N(0, I) instead
                  delta = delta + step_size * g        # SGD (lr = step_size, no momentum) on -KL
                  (the reference normalises the gradient of -KL and subtracts; the random rows are subtracted)
                  delta = clamp(x + delta, 0, 1) - x;  delta = renorm(delta, p=2, dim=0, maxnorm=eps)
        x' = clamp(x + delta, 0, 1)

    The reference's step is ``lr = 2 * eps / K`` (the caller's default). It descends ``-KL`` with
    ``loss.backward()``; here only ``d/d delta`` is taken (the model's ``.grad`` stay untouched). Its
    L2 branch draws the Gaussian start once more after the unused L-inf one; natbench draws it once.
    """
    view = (-1, *([1] * (x.dim() - 1)))
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(device=x.device, dtype=x.dtype)
    delta = (init_std * noise).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(kl_sum(x + delta), delta)
        grad = -grad  # the reference's gradient of its loss, -KL
        norms = grad.flatten(1).norm(p=2, dim=1)
        grad = grad / norms.view(view)
        zero = norms == 0
        if zero.any():  # "avoid nan or inf if gradient is 0": a random direction (not normalised, as the reference)
            grad[zero] = torch.randn(grad[zero].shape, generator=generator, device=generator.device).to(x.device, x.dtype)
        delta = delta.detach() - step_size * grad  # optimizer_delta.step(): SGD, no momentum
        delta = (x + delta).clamp(0, 1) - x
        delta = delta.renorm(p=2, dim=0, maxnorm=eps)
    return (x + delta).detach().clamp(0.0, 1.0)


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


def ce_loss(model, batch: Batch, task, cache: dict, which: str, x: torch.Tensor) -> LossOut:
    """Mean ``CE(task.logits(x), y)``, the logits cached as ``cache["logits_<which>"]``; part ``ce_<which>``."""
    z = cached_logits(model, batch, task, cache, which, x)
    ce = F.cross_entropy(z, batch.y)
    return LossOut(ce, {f"ce_{which}": ce.item()})


def own_loss(model, batch: Batch, task, cache: dict, which: str, x: torch.Tensor,
             label: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(batch mean, parts)`` of the task kind's own ``training_loss`` at ``x`` (``which``: clean | adv, the
    name its cached logits get); the parts are the kind's, suffixed ``_<which>``, after ``<label>_<which>``:
    the mean itself, when ``label`` is given (all detached tensors: :func:`synced` reads them at once)."""
    per, parts = task.training_loss(model, batch, x, cache, which)
    mean = per.mean()
    named = {f"{label}_{which}": mean.detach()} if label else {}
    return mean, {**named, **{f"{k}_{which}": v for k, v in parts.items()}}


def uses_own_loss(task, which: str) -> bool:
    """Whether the task kind declares its own training loss for input ``which`` (``TRAINING_LOSS_ON``).
    A kind written without the declaration (not built on :class:`natbench.tasks._base.TaskBase`) keeps the
    earlier rule: a ``training_loss`` method, if it has one, counts for clean inputs."""
    declared = getattr(task, "TRAINING_LOSS_ON", None)
    if declared is None:
        return which == "clean" and callable(getattr(task, "training_loss", None))
    return which in declared


def outer_loss(model, batch: Batch, task, cache: dict, which: str, x: torch.Tensor) -> LossOut:
    """A CE defense's loss at ``x``: the task kind's own training loss where it declares one for ``which``
    (and no composed term has cached the logits of that input yet), else :func:`ce_loss`."""
    if uses_own_loss(task, which) and f"logits_{which}" not in cache:
        mean, parts = own_loss(model, batch, task, cache, which, x)
        return LossOut(mean, synced(parts))
    return ce_loss(model, batch, task, cache, which, x)


def synced(named: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """``{name: float}`` of scalar tensors, read with one device synchronisation."""
    if not named:
        return {}
    return dict(zip(named, torch.stack([torch.as_tensor(v).float() for v in named.values()]).tolist()))
