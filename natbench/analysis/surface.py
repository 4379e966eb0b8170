"""The loss surface around an input (NuAT, Sriramanan et al. NeurIPS 2021, Sec. 6.3 and Fig. 1).

``loss(a, b) = CE(f(x + a g + b r), y)`` on an ``n x n`` grid of ``a, b`` in ``[-span, span]``, with
``g = sign(grad_x CE(f(x), y))`` and ``r`` a random sign direction orthogonal to ``g``. A smooth
surface that rises along ``g`` means the gradient points where the loss grows (no masking); a
convoluted surface, or one that does not rise along ``g`` while it does along ``r``, is the gradient
masking NuAT's Fig. 1(b) shows for FGSM training.

``r`` is built as a *sign* vector exactly orthogonal to ``g``: ``r_k = s_k g_k`` on the coordinates
where ``g_k != 0``, with ``s`` a random +/-1 vector with as many +1 as -1 (so ``r . g = sum s_k = 0``;
one coordinate is set to 0 when their number is odd), and a random sign where ``g_k = 0``. Both
directions then have L-inf norm 1, so ``a`` and ``b`` are in the units of eps. The input is not
clipped to [0, 1] by default (the surface of the function itself; ``clamp=True`` clips).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Surface:
    """``a`` (n,) along the gradient sign, ``b`` (n,) along the orthogonal direction, ``loss[i, j]`` at
    ``(a[i], b[j])``; ``g``, ``r`` the two directions (shape of one input); ``y`` the label."""

    a: np.ndarray
    b: np.ndarray
    loss: np.ndarray
    g: Tensor
    r: Tensor
    y: int


def orthogonal_sign(g: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A random vector with entries in {-1, 0, +1}, exactly orthogonal to the sign vector ``g``
    (entries in {-1, 0, +1}), with at most one zero where ``g != 0`` (see the module docstring)."""
    flat = g.flatten().sign()
    nz = torch.nonzero(flat, as_tuple=True)[0]
    m = int(nz.numel())
    s = torch.ones(m)
    s[: m // 2] = -1.0
    if m % 2:
        s[-1] = 0.0  # an odd count cannot balance: leave one coordinate out
    s = s[torch.randperm(m, generator=generator)]
    r = torch.empty_like(flat)
    r[nz] = s.to(flat) * flat[nz]
    zero = flat == 0
    if zero.any():
        r[zero] = (torch.randint(0, 2, (int(zero.sum()),), generator=generator) * 2 - 1).to(flat)
    return r.view_as(g)


def loss_surface(model: nn.Module, x: Tensor, y: Tensor | int, *, span: float, n: int = 21,
                 generator: torch.Generator | None = None, clamp: bool = False, chunk: int = 256) -> Surface:
    """CE of ``model`` (put in eval mode, restored after) on the grid around the single input ``x``
    (shape ``(1, ...)`` or ``(...)``) with label ``y``; see the module docstring."""
    if x.dim() >= 2 and x.shape[0] == 1:
        x = x[0]
    y_t = torch.as_tensor(y, device=x.device).long().view(1)
    was = model.training
    model.eval()
    try:
        xg = x.detach().clone()[None].requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y_t), xg)
        g = grad[0].sign()
        r = orthogonal_sign(g.cpu(), generator).to(x.device)
        a = np.linspace(-span, span, n)
        b = np.linspace(-span, span, n)
        aa, bb = np.meshgrid(a, b, indexing="ij")
        coef_a = torch.as_tensor(aa.ravel(), dtype=x.dtype, device=x.device)
        coef_b = torch.as_tensor(bb.ravel(), dtype=x.dtype, device=x.device)
        shape = (-1,) + (1,) * x.dim()
        losses = []
        with torch.no_grad():
            for i in range(0, len(coef_a), chunk):
                pts = x[None] + coef_a[i: i + chunk].view(shape) * g[None] + coef_b[i: i + chunk].view(shape) * r[None]
                if clamp:
                    pts = pts.clamp(0.0, 1.0)
                z = model(pts)
                losses.append(F.cross_entropy(z, y_t.expand(len(pts)), reduction="none").double().cpu())
    finally:
        model.train(was)
    loss = torch.cat(losses).numpy().reshape(n, n)
    return Surface(a, b, loss, g.detach().cpu(), r.detach().cpu(), int(y_t.item()))


def surface_summary(s: Surface, eps: float) -> dict[str, float]:
    """Numbers to read a surface by: the loss at ``x``; the largest loss along +g (b = 0, 0 < a <= eps)
    and along +-r (a = 0, |b| <= eps); the largest loss on the grid points inside the L-inf eps-ball,
    which in the (a, b) plane is the diamond ``|a| + |b| <= eps`` (g and r are sign vectors that
    agree on half of the coordinates and disagree on the other half); and ``rise_along_g`` = (loss at
    the grid point nearest a = eps, b = 0) - (loss at x). A masked gradient shows as ``max_along_g``
    well below ``max_in_ball``; a monotone rise along g as a positive ``rise_along_g``."""
    i0 = int(np.argmin(np.abs(s.a)))
    j0 = int(np.argmin(np.abs(s.b)))
    tol = 1e-9 * max(eps, 1.0)
    in_a = (s.a > 0) & (s.a <= eps + tol)
    in_b = np.abs(s.b) <= eps + tol
    ball = (np.abs(s.a)[:, None] + np.abs(s.b)[None, :]) <= eps + tol
    ia = int(np.argmin(np.abs(s.a - eps)))
    return {
        "loss_at_x": float(s.loss[i0, j0]),
        "max_along_g": float(s.loss[in_a, j0].max()) if in_a.any() else float("nan"),
        "max_along_r": float(s.loss[i0, in_b].max()) if in_b.any() else float("nan"),
        "max_in_ball": float(s.loss[ball].max()) if ball.any() else float("nan"),
        "rise_along_g": float(s.loss[ia, j0] - s.loss[i0, j0]),
    }
