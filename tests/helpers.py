"""Helpers shared by several test modules (plain functions; the fixtures are in conftest.py).

Import them as ``from helpers import bn_net`` (pytest puts ``tests/`` on ``sys.path``: the test files are
not a package). Tiny float64 models for hand computations, a model's state, a numpy softmax and a
registry with extra entries."""
from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from natbench.contracts import Batch, ThreatModel
from natbench.registry import Entry, Registry, get_registry
from natbench.resolve import resolve, task_kind_cls
from natbench.store import ResultRow, RunRecord, Store


def bn_net(seed: int = 0, n_in: int = 16) -> nn.Module:
    """Flatten -> Linear(n_in, 12) -> BatchNorm1d -> ReLU -> Linear(12, 5), float64, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 5)).double()


def linear_net(seed: int, scale: float = 1.0) -> nn.Module:
    """Flatten -> Linear(16, 5), float64, initialised from ``seed``, the weight multiplied by ``scale``."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).double()
    with torch.no_grad():
        m[1].weight.mul_(scale)
    return m


def edge_batch(seed: int = 3, n: int = 6) -> Batch:
    """n float64 4x4 one-channel images (uniform from ``seed``) with pixels on and near the image boundary
    (0, 1, 0.05, 0.97) in the first two rows, labels ``arange(n) % 5``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64)
    x[:, :, 0, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # pixels on the image boundary
    x[:, :, 1, :2] = torch.tensor([0.05, 0.97], dtype=torch.float64)  # pixels near it
    y = torch.arange(n) % 5
    return Batch(x, y)


class TaskSlice:
    """The slice of a classification task the components use: a threat model (``train_steps`` 3 of
    ``eps / 4`` unless given), logits and the per-sample CE objective."""

    def __init__(self, eps: float = 0.3, steps: int = 3, step_size: float | None = None):
        step = eps / 4 if step_size is None else step_size
        self.threat = ThreatModel(eps=eps, train_steps=steps, train_step_size=step)

    def logits(self, model, batch, x):
        return model(x)

    def objective(self, model, batch, kind):
        assert kind == "ce"
        return lambda z: F.cross_entropy(model(z), batch.y, reduction="none")


def softmax(z):
    """Row-wise softmax of a numpy array (the hand computations' reference)."""
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def registry_with(new_entries: dict[tuple[str, str], str]) -> Registry:
    """natbench's registry plus ``{(kind, name): "module:Class"}`` entries it lacks (a plugin's tests can run
    before its registry.yaml line exists)."""
    base = get_registry()
    entries = {k: {n: base.entry(k, n) for n in base.names(k)} for k in base.kinds()}
    for (kind, name), target in new_entries.items():
        entries.setdefault(kind, {}).setdefault(name, Entry(kind=kind, name=name, cite="test", target=target))
    return Registry(entries)


def linear_ce_grad(model, x, y):
    """Gradient of the batch-mean CE of a Flatten->Linear model w.r.t. its input, by hand (numpy)."""
    W, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    xf = x.reshape(len(x), -1)
    p = softmax(xf @ W.T + b)
    p[np.arange(len(y)), y] -= 1.0
    return (p @ W / len(y)).reshape(x.shape)


def bn_net64(seed: int = 0) -> nn.Module:
    """``bn_net`` on 8x8 inputs (64 features)."""
    return bn_net(seed, n_in=64)


def batch8(seed: int = 3, lo: float = 0.2, hi: float = 0.8) -> Batch:
    """Four float64 8x8 one-channel images, uniform in [lo, hi] from ``seed``, labels 0, 1, 2, 3."""
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64)
    return Batch(x, torch.tensor([0, 1, 2, 3]))


def sgd_steps(model: nn.Module, n: int, seed: int = 11, after=()) -> list[dict[str, torch.Tensor]]:
    """n plain SGD steps (lr 0.5, CE on ``batch8(seed + i)``), calling each ``after`` hook with the model after
    every step; the model's state after each step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    states = []
    for i in range(n):
        b = batch8(seed + i)
        opt.zero_grad()
        F.cross_entropy(model(b.x), b.y).backward()
        opt.step()
        for f in after:
            f(model)
        states.append(snapshot(model))
    return states


def ema_by_hand(states, decay):
    """The exponential moving average of a list of states, started (as the reference does) from the first."""
    ema = {k: v.clone() for k, v in states[0].items()}  # the reference's aliased start: the post-step weights
    for s in states:
        ema = {k: (1 - decay) * v + decay * ema[k] for k, v in s.items()}
    return ema


def digits_task(defense: str = "vanilla", **kw):
    """``(resolution, task)`` of the digits task with ``defense`` (keywords go to ``resolve``), no data root."""
    r = resolve(get_registry(), "digits", defense, **kw)
    return r, task_kind_cls(get_registry(), r.spec)(r.spec, None)


# ------------------------------------------------------------------------- a few training steps
def training_setup(task_name: str, defense: str, root=None, *sets: str, profile: str = "quick"):
    """``(resolution, task, composite, model)`` as the runner builds them for seed 0: each dependency (NAT's
    adversary) bound to an untrained model of the task's architecture (seed 1), the model initialised from
    ``derive_seed(0, "init")``; ``root`` is the task's data root (None: the task's default)."""
    from natbench.compose import Composite
    from natbench.runner import derive_seed

    reg = get_registry()
    r = resolve(reg, task_name, defense, profile=profile, sets=list(sets))
    task = task_kind_cls(reg, r.spec)(r.spec, root)
    comp = Composite.build(r.plan, r.params)
    for component, dep in comp.dependencies():
        torch.manual_seed(1)
        component.bind(dep.role, task.build_model())
    torch.manual_seed(derive_seed(0, "init"))
    return r, task, comp, task.build_model()


def train_steps(comp, model: nn.Module, batches, task, opt, gen: torch.Generator, n: int = 2):
    """The runner's inner loop for a test: ``train_step`` on each batch, ``comp.replays`` times (Free-AT), until
    the batch in which the n-th step was taken is done. Yields ``(batch, step output)`` after every step, so
    the test asserts on each."""
    from natbench.runner import train_step

    steps = 0
    for batch in batches:
        for _ in range(comp.replays):
            yield batch, train_step(comp, model, batch, task, opt, gen)
            steps += 1
        if steps >= n:
            return


# ---------------------------------------------------------------------------- runs and stores
SMALL = ["threat_model.train_steps=2", "training.epochs=2", "training.batch_size=128"]


def run_digits(root: Path, defense: str, *sets: str, suite: str = "smoke"):
    """Train and evaluate a small digits run (quick profile, ``SMALL`` and ``sets``) with natbench's runner;
    ``(resolution, run directory)``."""
    from natbench.runner import Runner

    r = resolve(get_registry(), "digits", defense, profile="quick", sets=[*SMALL, *sets], suite=suite)
    Runner(root, registry=get_registry()).run(r)
    return r, root / r.run_id


def same_state(a: dict, b: dict) -> bool:
    """Two state dicts hold the same keys and bit-identical tensors."""
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def make_run(root: Path) -> str:
    """A complete digits/vanilla run in ``root`` without training: checkpoints of the seeded initial
    model, ``config.yaml``, one store row with one result."""
    reg = get_registry()
    r = resolve(reg, "digits", "vanilla", profile="quick")
    run_dir = root / r.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(r.config, sort_keys=False))
    torch.manual_seed(0)
    model = task_kind_cls(reg, r.spec)(r.spec, None).build_model()
    for ckpt in ("best", "last"):
        torch.save(model.state_dict(), run_dir / f"{ckpt}.pt")
    rec = RunRecord(run_id=r.run_id, task=r.task, defense=r.defense, profile=r.profile_name, seed=0,
                    config_hash=r.config_hash, git_rev="test", versions={}, device="cpu", started="2026-01-01T00:00:00",
                    finished="2026-01-01T00:00:01", wall_train_s=1.0, wall_eval_s=1.0, config=r.config,
                    suite=["clean"], variant="")
    with Store(root / "natbench.sqlite") as s:
        s.record_run(rec, [ResultRow("best", "clean", "accuracy", 0.5), ResultRow("last", "clean", "accuracy", 0.5)], [], [])
    return r.run_id


def _store_dump(path: Path) -> list[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    except sqlite3.DatabaseError:
        return [hashlib.sha256(path.read_bytes()).hexdigest()]
    finally:
        con.close()


def tree_snapshot(top: Path) -> dict[str, str]:
    """Every file under ``top`` (but SQLite's transient -wal/-shm) -> content hash; a store by its rows."""
    out = {}
    for p in sorted(top.rglob("*")):
        if p.is_dir() or p.name.endswith(("-wal", "-shm", "-journal")):
            out[str(p)] = "dir" if p.is_dir() else out.get(str(p), "")
            continue
        if p.name == "natbench.sqlite":
            out[str(p)] = hashlib.sha256("\n".join(_store_dump(p)).encode()).hexdigest()
        else:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if os.access(p, os.R_OK) else "unreadable"
    return {k: v for k, v in out.items() if not k.endswith(("-wal", "-shm", "-journal"))}


# ------------------------------------------------------------------------------------ attacks
class Quantised(nn.Module):
    """``inner`` behind the input quantiser ``round(4x)/4``: its input gradient is zero almost everywhere (a
    deliberately gradient-masking model)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)  # zero gradient almost everywhere


class Logits:
    """A stand-in for the task's ``LogitsObjective``: ``x -> model(x)`` with ``.y``, ``.num_classes``."""

    def __init__(self, model: nn.Module, y: torch.Tensor, num_classes: int = 10):
        self.model, self.y, self.num_classes = model, y, num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class CountingLogits(Logits):
    rows = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.model(x)


def fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != y


def check_ball(out: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert (out - x).abs().max().item() <= eps + 1e-6
    assert out.min().item() >= 0 and out.max().item() <= 1


class ModeSpy(nn.Module):
    """Conv + BatchNorm2d + dropout net that records every train()/eval() call after construction."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
        self.calls: list[bool] = []

    def train(self, mode: bool = True):
        if hasattr(self, "calls"):
            self.calls.append(mode)
        return super().train(mode)

    def forward(self, x):
        return self.net(x)


def spy(training: bool) -> ModeSpy:
    m = ModeSpy().train(training)
    m.calls.clear()
    return m


def digits_like(model: nn.Module, n=24, seed=1):
    """Random 8x8 images labelled with the model's predictions, except the first 4 (misclassified)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10
    return x, y


# ------------------------------------------------------------------------ APGD / AutoAttack
DIGITS_EPS = 0.2  # the digits threat model


def correct(model, x, y) -> torch.Tensor:
    """Which rows the model classifies correctly."""
    with torch.no_grad():
        return model(x).argmax(1) == y


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def ta_apgd(model, loss: str, seed: int, steps: int = 100, eot_iter: int = 1):
    """torchattacks' APGD (L-inf, one restart, rho 0.75) at the digits eps."""
    import torchattacks

    return torchattacks.APGD(model, norm="Linf", eps=DIGITS_EPS, steps=steps, n_restarts=1, loss=loss, rho=0.75,
                             seed=seed, eot_iter=eot_iter)


def ta_apgdt(model, seed: int, steps: int = 100):
    """torchattacks' APGD-T (L-inf, one restart, 10 classes, rho 0.75) at the digits eps."""
    import torchattacks

    return torchattacks.APGDT(model, norm="Linf", eps=DIGITS_EPS, steps=steps, n_restarts=1, n_classes=10, rho=0.75, seed=seed)


def in_ball(x_adv, x, eps=DIGITS_EPS):
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
