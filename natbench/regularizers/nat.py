"""The nasty term of NAT: "Nasty Adversarial Training: A Probability Sparsity Perspective for
Robustness Enhancement" (ICLR 2026), Eq. 5, with the KL of Nasty Teacher (Ma et al., ICLR 2021).

Eq. 5 trains the target ``f_t`` on ``X u X'`` (clean and PGD examples)::

    min  sum_{x in X u X'}  CE(f_t(x), y)  -  omega * tau^2 * KL( p_t^tau(x) || p_a^tau(x) )

with ``p^tau = softmax(z / tau)`` and ``f_a`` a fixed adversary model (by default a vanilla-trained
model of the same architecture, in eval mode, no gradients). As in NT's code (notes Sec. 1.1) the
KL is ``KLDivLoss(log_softmax(z_a/tau), softmax(z_t/tau), reduction="batchmean")``: the target
model is the KL's *first* argument and its gradient flows through it; the term is scaled by tau^2.

How this regularizer completes a base defense into Eq. 5:

- **CE over X u X'.** It adds ``CE(f_t(x), y)`` (batch mean) for each input set in {clean, adv}
  on which the base defense has *no* CE term yet (the base's ``ce_on``). So ``pgd-at+nat`` =
  CE(x') [PGD-AT] + CE(x) [here] - nasty terms: exactly Eq. 5. ``trades+nat`` adds CE(x'), etc.
- **Nasty KL on X and on X'**: one batchmean KL on the clean batch and one on the adversarial batch
  (when the base provides ``x_adv``; with ``vanilla`` as the base this is Nasty Teacher itself).
  By default clean and adversarial batches go through the *target* in two separate train-mode
  forward passes (the paper does not say whether they are concatenated for BatchNorm); see
  ``joint_forward`` below.

**omega.** The paper's training details say omega = 0.006; its ablation (Fig. 2) sweeps
lambda in 0..0.12 with the peak at 0.06 and says NT used 0.08. The two disagree by 10x. natbench
defaults to the stated 0.006 and exposes ``omega`` (``--set nat.omega=0.06``) so a sweep can settle
it. **tau** is not given by the paper; the default 4 is NT's CIFAR-10 value (NT used 20 for
CIFAR-100).

**The adversary model** (the paper's ablations, Tables 7 and 8, Appendices G and I):

- ``adversary`` is its training state: ``vanilla`` (default: the best checkpoint of a ``vanilla``
  run; the paper's setting), ``at`` (a ``pgd-at`` run), ``sam`` (``vanilla+sam``: vanilla training
  with the SAM weight perturbation), ``nasty`` (``vanilla+nat``: a Nasty Teacher, itself trained
  against a vanilla adversary), ``random`` (the run's seeded initialisation, nothing trained:
  checkpoint ``init``). Any other string is used verbatim as the defense spec of the adversary run
  (e.g. ``trades``, ``pgd-at+awp``; best checkpoint).
- ``adversary_arch``: ``[]`` = the target's architecture (default); one name = an adversary of that
  architecture (``--set "nat.adversary_arch=[densenet121]"``); several names = an ensemble whose
  logits are averaged (Appendix I: "the mean of the logits" of ResNet-18, DenseNet-121 and VGG-11).
  Every member has the same training state.
- Each member is a dependency run of the same task, profile and seed (``dependencies``, built per
  instance from the params), with ``--set model.arch=<name>`` when a name is given. The runner
  binds it under role ``adversary`` (one model) or ``adversary0``, ``adversary1``, ... (ensemble).

**Cost** (the paper's Table 9: 1.195x PGD-AT for ResNet-18). NAT adds one clean forward/backward
of the target and the adversary's forwards on X and X'. The adversary runs **once** per step, on
``cat([x, x'])``, in eval mode under ``torch.no_grad()``: eval-mode BatchNorm uses running
statistics, so every row is computed independently and the numbers are those of two separate
forwards (up to floating-point reassociation inside batched kernels), with no autograd graph kept.

**joint_forward** (default false): the target's clean and adversarial logits come from ONE
train-mode forward on ``cat([x, x'])`` instead of two. This changes the training, not just its
speed: BatchNorm normalises each half with statistics of the mixed 2B batch (instead of each
batch's own), and the running statistics take one momentum update with the mixed statistics per
step instead of one per batch. It needs the composite to call :meth:`NAT.pre_loss` inside the
loss closure before the base defense's ``loss`` and the base to reuse ``cache["logits_clean"]`` /
``cache["logits_adv"]`` when present (``cached_logits``); otherwise :meth:`loss` raises.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..contracts import Batch, Dependency, LossOut, cached_logits
from ..errors import CompositionError, ConfigError

#: ``adversary`` keyword -> (defense spec of the adversary run, checkpoint bound)
ADVERSARY_STATES: dict[str, tuple[str, str]] = {
    "vanilla": ("vanilla", "best"),
    "at": ("pgd-at", "best"),
    "sam": ("vanilla+sam", "best"),
    "nasty": ("vanilla+nat", "best"),
    "random": ("vanilla", "init"),
}
_JOINT = "_nat_joint_logits"  # cache key: the (clean, adv) logits of NAT's joint forward


def nasty_kl(z_target: torch.Tensor, z_adversary: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * KL_batchmean( softmax(z_t/tau) || softmax(z_a/tau) )``, gradient into ``z_target``."""
    return tau * tau * F.kl_div(F.log_softmax(z_adversary / tau, dim=1), F.softmax(z_target / tau, dim=1),
                                reduction="batchmean")


def adversary_dependencies(adversary: str, adversary_arch: tuple[str, ...] = ()) -> tuple[Dependency, ...]:
    """The dependency runs behind ``nat.adversary`` / ``nat.adversary_arch`` (one per ensemble member)."""
    defense, checkpoint = ADVERSARY_STATES.get(adversary, (adversary, "best"))
    archs: tuple[str | None, ...] = tuple(adversary_arch) or (None,)
    roles = ["adversary"] if len(archs) == 1 else [f"adversary{i}" for i in range(len(archs))]
    return tuple(Dependency(role=role, defense=defense, checkpoint=checkpoint,
                            sets=(f"model.arch={arch}",) if arch else ())
                 for role, arch in zip(roles, archs))


def _floats(named: dict[str, torch.Tensor]) -> dict[str, float]:
    """Detached scalars -> floats with one device synchronisation (not one ``.item()`` each)."""
    if not named:
        return {}
    ts = [t.detach() for t in named.values()]
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in ts))
    return dict(zip(named, torch.stack([t.to(dtype) for t in ts]).tolist()))


class NAT:
    name = "nat"
    requires = frozenset({"logits"})
    needs_cache: frozenset[str] = frozenset()  # uses x_adv when the base provides it
    #: the default (``adversary="vanilla"``, same architecture); each instance sets its own from its params
    dependencies: tuple[Dependency, ...] = adversary_dependencies("vanilla")

    @dataclass(frozen=True)
    class Params:
        omega: float = 0.006  # weight of the nasty KL (paper text: 0.006; its Fig. 2 ablation peaks at 0.06)
        tau: float = 4.0  # softmax temperature of the nasty KL (not given by the paper; NT's CIFAR-10 value)
        adversary: str = "vanilla"  # adversary state: vanilla | at | sam | nasty | random, or any defense spec (Table 8)
        adversary_arch: tuple[str, ...] = ()  # [] = the target's arch; [name] = that arch; [a, b, ...] = logit-mean ensemble (Table 7)
        joint_forward: bool = False  # target clean+adv logits in one train-mode forward (changes BatchNorm statistics)

        def validate(self, where: str) -> None:
            if not self.adversary.strip():
                raise ConfigError(f"{where}.adversary: empty; use one of {', '.join(ADVERSARY_STATES)} "
                                  f"or a defense spec such as pgd-at")
            if self.adversary != self.adversary.strip():
                raise ConfigError(f"{where}.adversary: {self.adversary!r} has surrounding spaces; write {self.adversary.strip()!r}")
            for i, arch in enumerate(self.adversary_arch):
                if not arch.strip():
                    raise ConfigError(f"{where}.adversary_arch[{i}]: empty architecture name; e.g. --set \"nat.adversary_arch=[densenet121]\"")
            dup = sorted({a for a in self.adversary_arch if self.adversary_arch.count(a) > 1})
            if dup:
                raise ConfigError(f"{where}.adversary_arch: {', '.join(dup)} listed twice; an ensemble member of the same "
                                  f"architecture, state and seed is the same model")
            if not self.tau > 0:
                raise ConfigError(f"{where}.tau: must be > 0, got {self.tau}")

    def __init__(self, params: "NAT.Params | None" = None):
        self.params = params or self.Params()
        self.params.validate("nat")
        self.dependencies = adversary_dependencies(self.params.adversary, self.params.adversary_arch)
        self.adversaries: dict[str, nn.Module] = {}
        self.adversary: nn.Module | None = None  # the bound model when there is a single one

    def bind(self, role: str, model: nn.Module) -> None:
        """Receive an adversary model (the runner loads it; it stays in eval mode, frozen)."""
        roles = [d.role for d in self.dependencies]
        if role not in roles:
            raise ValueError(f"NAT: no dependency role {role!r}; this NAT (adversary={self.params.adversary!r}, "
                             f"adversary_arch={list(self.params.adversary_arch)}) binds {', '.join(roles)}")
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.adversaries[role] = model
        if len(roles) == 1:
            self.adversary = model

    def _members(self) -> list[nn.Module]:
        roles = [d.role for d in self.dependencies]
        missing = [r for r in roles if r not in self.adversaries]
        if missing:
            raise RuntimeError(f"NAT has no adversary model bound for {', '.join(missing)}; the runner binds it before training")
        return [self.adversaries[r] for r in roles]

    def adversary_logits(self, batch: Batch, task, xs: tuple[torch.Tensor, ...], grad: bool = False
                         ) -> tuple[torch.Tensor, ...]:
        """The adversary's logits on each of ``xs``: one eval-mode, no-grad forward on their
        concatenation (per member); an ensemble's logits are the mean of its members' logits.
        ``grad=True`` keeps the graph to the *inputs* (an adaptive attack differentiates through
        the adversary; its parameters never require gradients)."""
        sizes = [len(x) for x in xs]
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        with torch.enable_grad() if grad else torch.no_grad():
            zs = []
            for m in self._members():
                if m.training:  # bind() set eval; guard against a caller that switched it back
                    m.eval()
                zs.append(task.logits(m, batch, x))
            if len(zs) == 1:
                z = zs[0]
            else:
                low = zs[0].dtype in (torch.float16, torch.bfloat16)
                z = torch.stack([v.float() if low else v for v in zs]).mean(0)
        if z.shape[0] != sum(sizes):
            raise RuntimeError(f"NAT: the task's logits for {sum(sizes)} concatenated inputs have {z.shape[0]} rows; "
                               f"the adversary forward needs per-sample logits")
        return tuple(z.split(sizes))

    def pre_loss(self, model, batch: Batch, task, cache: dict) -> None:
        """With ``joint_forward``: the target's clean and adversarial logits from one train-mode
        forward on ``cat([x, x'])``, stored as ``cache["logits_clean"]``/``["logits_adv"]`` for the
        base defense and NAT. Called by the composite inside its loss closure before the base's loss."""
        x_adv = cache.get("x_adv")
        if not self.params.joint_forward or x_adv is None or "logits_clean" in cache or "logits_adv" in cache:
            return
        z = task.logits(model, batch, torch.cat([batch.x, x_adv]))
        zc, za = z.split([len(batch.x), len(x_adv)])
        cache["logits_clean"], cache["logits_adv"] = zc, za
        cache[_JOINT] = (zc, za)

    def _check_joint(self, cache: dict) -> None:
        joint = cache.get(_JOINT)
        if joint is None:
            raise CompositionError("nat.joint_forward=true: the composite did not call NAT.pre_loss before the base "
                                   "defense's loss (or logits were already computed); set nat.joint_forward=false")
        if cache.get("logits_clean") is not joint[0] or cache.get("logits_adv") is not joint[1]:
            raise CompositionError("nat.joint_forward=true: the base defense recomputed its logits instead of reusing "
                                   "cache['logits_clean'/'logits_adv']; set nat.joint_forward=false for this base")

    def adaptive_loss(self, inp) -> torch.Tensor:
        """NAT's terms per sample at the attacked input x' (the paper's Eq. 14 with the base's CE):
        ``- omega * tau^2 * KL(p_t^tau(x') || p_a^tau(x'))``, plus ``CE(f_t(x'), y)`` when the base trains
        on adversarial examples without a CE on them (NAT's completion of Eq. 5; with a ``vanilla``
        base the attacked input plays the clean x, whose CE the base already has). The gradient flows
        through the adversary's logits too (``f_a(x')`` depends on x'); its weights stay frozen."""
        z_a = self.adversary_logits(inp.batch, inp.task, (inp.x_adv,), grad=True)[0]
        p = self.params
        kl = p.tau * p.tau * F.kl_div(F.log_softmax(z_a / p.tau, dim=1), F.softmax(inp.logits_adv / p.tau, dim=1),
                                      reduction="none").sum(dim=1)
        out = -p.omega * kl
        if inp.base_makes_adv and "adv" not in inp.base_ce_on:
            out = out + F.cross_entropy(inp.logits_adv, inp.batch.y, reduction="none")
        return out

    def loss(self, model, batch: Batch, task, cache: dict) -> LossOut:
        inputs = {"clean": batch.x}
        if "x_adv" in cache:
            inputs["adv"] = cache["x_adv"]
            if self.params.joint_forward:
                self._check_joint(cache)
        z_target = {which: cached_logits(model, batch, task, cache, which, x) for which, x in inputs.items()}
        z_adversary = self.adversary_logits(batch, task, tuple(inputs.values()))
        total = torch.zeros((), device=batch.x.device)
        named: dict[str, torch.Tensor] = {}
        base_ce = cache.get("ce_on", frozenset())
        for (which, z), z_a in zip(z_target.items(), z_adversary):
            if which not in base_ce:
                ce = F.cross_entropy(z, batch.y)
                total = total + ce
                named[f"nat_ce_{which}"] = ce
            kl = nasty_kl(z, z_a, self.params.tau)
            total = total - self.params.omega * kl
            named[f"nat_kl_{which}"] = kl
        return LossOut(total, _floats(named))
