"""Transfer attack: adversarial examples crafted on a *surrogate* model, then applied to the target.

Papernot et al., "Practical Black-Box Attacks against Machine Learning", AsiaCCS 2017; the NAT paper's
Appendix C / Table 5 follows RSLAD (Zi et al., ICCV 2021): PGD-20 and CW-inf crafted on an
adversarially trained ResNet-50 surrogate at eps 8/255, evaluated on the target. The attack never
queries the target: it receives objective kind ``"labels"`` (:class:`natbench.contracts.Labels`, the
batch's labels only) and runs white-box PGD (CE) or CW-inf (the Carlini-Wagner margin, kappa 50, as
:mod:`natbench.attacks.cw`) on the surrogate it was bound to.

The surrogate is a model dependency (:attr:`dependencies`): by default a ``pgd-at`` run of the same
task, profile and seed with ``model.arch=resnet50`` (the paper's surrogate), trained by natbench as
an ordinary run the first time and reused by provenance hash after. ``surrogate`` names any defense
spec, ``arch`` any architecture (``""`` = the task's own), ``run`` an existing run id under the same
results root (its ``checkpoint`` is loaded; ``surrogate``/``arch`` are then ignored). The runner binds
the model in eval mode with frozen parameters (:meth:`bind`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from natbench.attacks._base import LinfAttack, check_eps, cw_margin_loss, resolve_step
from natbench.attacks.pgd import pgd_linf
from natbench.contracts import Dependency
from natbench.errors import ConfigError


class Transfer(LinfAttack):
    """PGD / CW-inf on a surrogate model, transferred to the target (black-box)."""

    name: ClassVar[str] = "transfer"
    objective_kind: ClassVar[str] = "labels"
    black_box: ClassVar[bool] = True  # uses no gradient (nor output) of the evaluated model

    @dataclass(frozen=True)
    class Params:
        method: Literal["pgd", "cw"] = "pgd"  # loss on the surrogate: CE (PGD) or the CW margin (CW-inf)
        steps: int = 20  # PGD-20 as RSLAD / NAT Table 5
        step_size: float | None = None  # None: eps/4 (2/255 at 8/255)
        random_start: bool = True  # U(-eps, eps) start
        kappa: float = 50.0  # CW margin confidence (method cw)
        surrogate: str = "pgd-at"  # defense spec of the surrogate run (NAT Table 5: adversarially trained)
        arch: str = "resnet50"  # surrogate architecture; "" = the task's own model.arch
        run: str = ""  # an existing run id to use as the surrogate instead (its `checkpoint`)
        checkpoint: str = "best"  # checkpoint of the surrogate run: best | last

    def __init__(self, params: "Transfer.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if p.method not in ("pgd", "cw"):
            raise ConfigError(f"attack '{self.name}': method must be pgd or cw, got {p.method!r}")
        if p.checkpoint not in ("best", "last"):
            raise ConfigError(f"attack '{self.name}': checkpoint must be best or last, got {p.checkpoint!r}")
        if p.steps < 0 or (p.step_size is not None and not p.step_size >= 0) or not p.surrogate.strip():
            raise ConfigError(f"attack '{self.name}' needs steps >= 0, step_size >= 0 and a surrogate defense; got {p}.")
        sets = (f"model.arch={p.arch}",) if p.arch else ()
        self.dependencies = (Dependency(role="surrogate", defense=p.surrogate, checkpoint=p.checkpoint, sets=sets,
                                        run=p.run),)
        self.surrogate: nn.Module | None = None

    def bind(self, role: str, model: nn.Module) -> None:
        """Receive the surrogate (the runner trains or loads it); it is kept in eval mode, frozen."""
        if role != "surrogate":
            raise ValueError(f"attack '{self.name}': no dependency role {role!r}; it binds 'surrogate'")
        model.eval()
        for q in model.parameters():
            q.requires_grad_(False)
        self.surrogate = model

    def __call__(self, objective, x: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        eps = check_eps(eps)
        y = getattr(objective, "y", None)
        if y is None:
            raise ConfigError(f"attack '{self.name}' needs objective kind 'labels' (the batch's labels), got "
                              f"{type(objective).__name__}; drop the suite's 'objective:' override for it")
        if self.surrogate is None:
            raise RuntimeError(f"attack '{self.name}': no surrogate model bound; the runner binds it before evaluation")
        surrogate, p = self.surrogate, self.params
        if surrogate.training:  # bind() set eval; guard against a caller that switched it back
            surrogate.eval()
        y = y.to(x.device).long()
        if p.method == "pgd":
            loss = lambda z: F.cross_entropy(surrogate(z), y, reduction="none")  # noqa: E731
        else:
            loss = lambda z: cw_margin_loss(surrogate(z), y, kappa=p.kappa)  # noqa: E731
        return pgd_linf(loss, x, eps=eps, steps=p.steps, step_size=resolve_step(p.step_size, eps),
                        random_start=p.random_start, generator=generator)
