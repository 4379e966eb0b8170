"""Training (natbench.training, driven by the runner): runner-style optimisation steps of the components on a
digits-shaped model, per-iteration lr and momentum schedules, replays (Free-AT), the early-stop guard
(Fast-AT), weight averaging (EMA), bf16/channels_last only where asked, and exact resumption of component
state."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from natbench.compose import Composite, plan
from natbench.contracts import Batch
from natbench.defenses.fast_at import FastAT
from natbench.defenses.free_at import FreeAT
from natbench.defenses.pgd_at import PGDAT
from natbench.defenses.vanilla import Vanilla
from natbench.perturbations.sam import SAM
from natbench.registry import get_registry
from natbench.regularizers.mixup import Mixup
from natbench.resolve import resolve
from natbench.runner import Runner, lr_at, momentum_at
from natbench.store import Store
from natbench.tasks.classification import ClassificationTask
from natbench.taskspec import ProfileCfg

from helpers import SMALL, TaskSlice, run_digits, same_state, snapshot

REG = get_registry()


def _weights(path):
    return torch.load(path, weights_only=True)


# ---------------------------------------------------------------------------------- lr schedules
def test_lr_points_are_interpolated_per_iteration_and_decayed_at_milestones():
    p = ProfileCfg(lr=0.2, lr_points=((0, 0.0), (7.5, 0.2), (15, 0.0)), epochs=15)
    assert lr_at(p, 0) == 0.0
    assert lr_at(p, 3.75) == pytest.approx(0.1)
    assert lr_at(p, 7.5) == pytest.approx(0.2)
    assert lr_at(p, 7.5 + 3.75) == pytest.approx(0.1)
    assert lr_at(p, 15) == 0.0
    q = ProfileCfg(lr=0.1, lr_points=((0, 0.0), (40, 0.1), (80, 0.02)), milestones=(85, 90), epochs=100)  # NuAT's
    assert lr_at(q, 84.9) == pytest.approx(0.02)
    assert lr_at(q, 85.0) == pytest.approx(0.002)
    assert lr_at(q, 95) == pytest.approx(0.0002)
    assert lr_at(ProfileCfg(lr=0.05, milestones=(2,)), 1.5) == 0.05  # step schedule unchanged


@pytest.mark.slow
def test_runner_sets_lr_every_iteration(tmp_path, monkeypatch):
    seen = []
    import natbench.training as train_mod

    real = train_mod.train_step

    def spy(composite, model, batch, task, optimizer, generator, *args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return real(composite, model, batch, task, optimizer, generator, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", spy)
    run_digits(tmp_path, "vanilla", "training.lr_points=[[0,0],[1,0.2],[2,0]]", "training.epochs=2")
    n = len(seen) // 2  # batches per epoch
    assert len(seen) == 2 * n and n >= 2
    assert seen == pytest.approx([min(t, 2 - t) * 0.2 for t in (i / n for i in range(2 * n))])


@pytest.mark.slow
# ---------------------------------------------------------------------------------- replays
def test_free_at_takes_m_optimizer_steps_per_batch(tmp_path):
    r, run_dir = run_digits(tmp_path, "free-at", "free-at.m=3", "training.optimizer=adam", "training.epochs=1")
    state = torch.load(run_dir / "state.pt", weights_only=True)
    batches = -(-1295 // 128)  # digits. training split / batch 128
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {3 * batches}
    assert "free-at" in state["components"]  # the persistent delta is saved for resumption


@pytest.mark.slow
# ---------------------------------------------------------------------------------- early stop
def test_guard_stop_keeps_previous_epochs_weights(tmp_path, monkeypatch):
    calls = []

    def stop_at_second_call(self, model, task, batch, generator):  # the real guard also moves BN stats
        calls.append(1)
        return {"guard_robust": 0.5, "stop": 1.0 if len(calls) == 2 else 0.0}

    monkeypatch.setattr(FastAT, "epoch_end", stop_at_second_call)
    _, one = run_digits(tmp_path / "a", "fast-at", "training.epochs=1")
    calls.clear()
    r, three = run_digits(tmp_path / "b", "fast-at", "training.epochs=3")
    history = json.loads((three / "record.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[1]["stop"] == 1.0 and "val_robust" not in history[1]
    assert same_state(_weights(three / "last.pt"), _weights(one / "last.pt"))  # epoch 0's weights
    assert torch.load(three / "state.pt", weights_only=True)["stopped"] is True
    # starting it again does not train further
    Runner(tmp_path / "b", registry=REG).run(r, force=False)
    assert same_state(_weights(three / "last.pt"), _weights(one / "last.pt"))


@pytest.mark.slow
# ---------------------------------------------------------------------------------- averaging
def test_ema_checkpoints_hold_the_averaged_model(tmp_path):
    r, run_dir = run_digits(tmp_path, "pgd-at+ema", "ema.decay=0.5")
    raw = torch.load(run_dir / "state.pt", weights_only=True)["model"]
    last = _weights(run_dir / "last.pt")
    assert set(last) == set(raw)
    assert not same_state(last, raw)
    _, plain = run_digits(tmp_path / "plain", "pgd-at")
    assert same_state(torch.load(plain / "state.pt", weights_only=True)["model"], _weights(plain / "last.pt"))
    assert same_state(raw, torch.load(plain / "state.pt", weights_only=True)["model"])  # EMA does not change training


@pytest.mark.slow
# ---------------------------------------------------------------------------------- resumption
@pytest.mark.parametrize("defense", ["free-at", "nuat2+ema"])
def test_component_state_resumes_exactly(tmp_path, monkeypatch, defense):
    sets = ["free-at.m=2"] if defense == "free-at" else ["nuat2.attack_ema=0.99"]
    _, ref = run_digits(tmp_path / "ref", defense, *sets)

    import natbench.training as train_mod

    real = train_mod.validate

    def crash_at_epoch_1(r, task, model, loader, epoch, device):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(r, task, model, loader, epoch, device)

    monkeypatch.setattr(train_mod, "validate", crash_at_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run_digits(tmp_path / "cut", defense, *sets)
    monkeypatch.setattr(train_mod, "validate", real)
    _, cut = run_digits(tmp_path / "cut", defense, *sets)
    assert same_state(_weights(cut / "last.pt"), _weights(ref / "last.pt"))
    assert same_state(_weights(cut / "best.pt"), _weights(ref / "best.pt"))


@pytest.mark.parametrize("name", ["nuat", "nuat-wa", "nuat2", "nuat2-wa", "fast"])
def test_cyclic_profiles_match_torch_cycliclr_as_the_references_step_it(name):
    """The cifar10 recipe profiles against torch's CyclicLR driven the way each reference drives it,
    with its default ``cycle_momentum=True`` (momentum 0.9 at lr 0, 0.8 at the peak): lr and momentum."""
    prof = resolve(REG, "cifar10", "pgd-at", profile=name).profile
    iters = 8
    up, down, stop_at, drops = {"nuat": (40, 50, 80, (85, 90)), "nuat-wa": (25, 75, 100, ()),
                                "nuat2": (20, 20, 35, (40, 45)), "nuat2-wa": (20, 60, 80, ()),
                                "fast": (7.5, 7.5, 15, ())}[name]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    peak = 0.2 if name == "fast" else 0.1
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.0, max_lr=peak, step_size_up=int(iters * up),
                                              step_size_down=int(iters * down))
    for epoch in range(prof.epochs):
        for i in range(iters):
            assert lr_at(prof, epoch + i / iters) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), (epoch, i)
            assert momentum_at(prof, epoch + i / iters) == pytest.approx(opt.param_groups[0]["momentum"], abs=1e-12), (epoch, i)
            if epoch < stop_at:
                opt.step()  # (no gradients: only keeps torch's step-order check quiet)
                sched.step()
        if epoch in drops:  # NuAT: "if (epoch - lr_up - lr_down) in [5, 10]: LR /= 10" at the end of the epoch
            for g in opt.param_groups:
                g["lr"] /= 10


def test_amp_and_channels_last_only_on_cuda():
    from natbench.runner import cuda_speedups

    assert cuda_speedups(ProfileCfg(), torch.device("cpu")) == (None, False)
    assert cuda_speedups(ProfileCfg(amp=True), torch.device("cpu")) == (None, False)
    ctx, cl = cuda_speedups(ProfileCfg(amp=False, channels_last=False), torch.device("cuda"))
    assert ctx is None and cl is False
    ctx, cl = cuda_speedups(ProfileCfg(amp=True), torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and cl is True


def test_training_is_fp32_unless_the_profile_opts_into_bf16():
    """Every reference trains in fp32: no built-in profile trains under autocast on CUDA by default;
    ``--set training.amp=true`` opts in, is hashed (a new run id) and shows as a variant."""
    from natbench.runner import cuda_speedups

    assert cuda_speedups(ProfileCfg(), torch.device("cuda"))[0] is None
    for task in REG.names("tasks"):
        spec = resolve(REG, task, "vanilla").spec
        for name in spec.profiles:
            prof = resolve(REG, task, "vanilla", profile=name).profile
            assert prof.amp is False and cuda_speedups(prof, torch.device("cuda"))[0] is None, (task, name)
    plain = resolve(REG, "digits", "pgd-at", profile="quick")
    bf16 = resolve(REG, "digits", "pgd-at", profile="quick", sets=["training.amp=true"])
    assert bf16.profile.amp and bf16.run_id != plain.run_id and bf16.variant == "training.amp=true"


def test_cycle_momentum_needs_lr_points_and_sgd():
    from natbench.config import ConfigError

    for bad in (dict(cycle_momentum=(0.8, 0.9)), dict(cycle_momentum=(0.9, 0.8), lr_points=((0, 0.0), (1, 0.1))),
                dict(cycle_momentum=(0.8,), lr_points=((0, 0.0), (1, 0.1))),
                dict(cycle_momentum=(0.8, 0.9), lr_points=((0, 0.0), (1, 0.1)), optimizer="adam")):
        with pytest.raises(ConfigError, match="cycle_momentum"):
            ProfileCfg(**bad).validate("training")


@pytest.mark.slow
def test_runner_cycles_momentum_every_iteration(tmp_path, monkeypatch):
    """The momentum the optimizer holds at each step is ``momentum_at`` of that step's fractional epoch."""
    import natbench.training as train_mod

    seen = []
    real = train_mod.train_step

    def spy(composite, model, batch, task, optimizer, *a, **k):
        seen.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"]))
        return real(composite, model, batch, task, optimizer, *a, **k)

    monkeypatch.setattr(train_mod, "train_step", spy)
    r, _ = run_digits(tmp_path, "vanilla", "training.lr_points=[[0,0.0],[1,0.1],[2,0.0]]", "training.cycle_momentum=[0.8,0.9]")
    iters = len(seen) // 2
    for j, (lr, mom) in enumerate(seen):
        t = j / iters
        assert lr == pytest.approx(lr_at(r.profile, t)) and mom == pytest.approx(momentum_at(r.profile, t))
        assert mom == pytest.approx(0.9 - lr)  # 0.9 at lr 0, 0.8 at the peak 0.1
    assert min(m for _, m in seen) < 0.85


@pytest.mark.gpu
def test_cuda_bf16_channels_last_training_run(tmp_path):
    """On a GPU: a NAT run that opts into bf16 trains under autocast + channels_last and evaluates in fp32."""
    r = resolve(REG, "digits", "pgd-at+nat", profile="quick", sets=[*SMALL, "training.amp=true"], suite="smoke")
    Runner(tmp_path, device=torch.device("cuda"), registry=REG).run(r)
    history = json.loads((tmp_path / r.run_id / "record.json").read_text())["history"]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    state = torch.load(tmp_path / r.run_id / "last.pt", weights_only=True)
    assert all(v.is_contiguous() for v in state.values())


@pytest.mark.slow
def test_resumed_run_records_the_sum_of_its_attempts_training_time(tmp_path, monkeypatch):
    """Attempt 1 trains every epoch and dies in evaluation; attempt 2 resumes (nothing left to train)
    and evaluates. The recorded training time is both attempts' (before: only the second's, ~0 s)."""
    from natbench.runner import Runner

    monkeypatch.setattr("natbench.suite.escalations", lambda *a, **k: [])
    reg = get_registry()
    r = resolve(reg, "digits", "vanilla", profile="quick", sets=["training.epochs=2"], suite="smoke")
    runner = Runner(tmp_path / "runs", None, torch.device("cpu"), registry=reg)
    real = Runner.evaluate

    def dies(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Runner, "evaluate", dies)
    with pytest.raises(KeyboardInterrupt):
        runner.run(r)
    state = torch.load(tmp_path / "runs" / r.run_id / "state.pt", weights_only=True)
    first = state["train_s"]
    assert first > 0 and state["epoch"] == 1
    monkeypatch.setattr(Runner, "evaluate", real)
    Runner(tmp_path / "runs", None, torch.device("cpu"), registry=reg).run(r)
    with Store(tmp_path / "runs" / "natbench.sqlite") as s:
        recorded = s.get_run(r.run_id).wall_train_s
    assert first <= recorded < first + 30, (first, recorded)


# ------------------------------------------------------------------------------- runner-style loop
def _digits_model(seed: int = 0) -> nn.Module:
    from natbench.models import build
    from natbench.taskspec import ModelCfg

    torch.manual_seed(seed)
    return build(ModelCfg())


def _digits_batches(n: int, size: int = 16):
    g = torch.Generator().manual_seed(0)
    return [Batch(torch.rand(size if i < n - 1 else 10, 1, 8, 8, generator=g), torch.randint(0, 10, (size if i < n - 1 else 10,), generator=g))
            for i in range(n)]


def _hooks(comp):
    return [c for c in (comp.base, *comp.regularizers, comp.perturbation) if c is not None]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("spec", ["fast-at", "free-at", "vanilla+sam", "pgd-at+mixup", "fast-at+mixup+sam", "free-at+mixup+sam"])
def test_runner_loop_on_a_digits_shaped_model(spec):
    bases = {"fast-at": lambda: FastAT(), "free-at": lambda: FreeAT(FreeAT.Params(m=2)), "vanilla": Vanilla,
             "pgd-at": lambda: PGDAT(PGDAT.Params(steps=2))}
    names = spec.split("+")
    comp = Composite(None, bases[names[0]](), [Mixup()] if "mixup" in names else [],
                     SAM() if "sam" in names else None)
    model, task = _digits_model(), TaskSlice(eps=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    before = snapshot(model)
    batches = _digits_batches(3)
    for epoch in range(2):
        torch.manual_seed(epoch)
        comp.set_epoch(epoch, 2)
        for batch in batches:
            for _ in range(getattr(comp.base, "replays", 1)):
                out = comp.step_loss(model, batch, task, gen)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                comp.restore()
                for c in _hooks(comp):
                    hook = getattr(c, "after_step", None)
                    if callable(hook):
                        hook(model)
                assert math.isfinite(out.loss.item()) and out.parts
                assert all(math.isfinite(v) for v in out.parts.values())
                if "mixup" in names:
                    assert any(k.startswith("mixup_ce_") for k in out.parts)
        for c in _hooks(comp):
            hook = getattr(c, "epoch_end", None)
            if callable(hook):
                res = hook(model, task, batches[0], gen)
                assert set(res) == {"guard_robust", "stop"} and 0.0 <= res["guard_robust"] <= 1.0
            state = getattr(c, "state_dict", None)
            if callable(state):
                c.load_state_dict(state())
    assert model.training and comp._restore is None
    assert not torch.equal(model.state_dict()["1.fc.weight"], before["1.fc.weight"])
    assert all(torch.isfinite(v.float()).all() for v in model.state_dict().values())
    if names[0] == "free-at":
        d = comp.base.delta
        assert d.shape == (16, 1, 8, 8) and 0 < d.abs().max().item() <= 0.2 + 1e-7


@pytest.mark.gpu
def test_training_step_runs_on_cuda():
    from natbench.runner import make_optimizer, train_step

    reg = get_registry()
    r = resolve(reg, "digits", "trades", suite="smoke")
    task = ClassificationTask(r.spec)
    model = task.build_model().cuda()
    comp = Composite.build(plan("trades", reg, task.capabilities), r.params)
    batch = next(iter(task.loaders(64, torch.Generator().manual_seed(0))[0])).to("cuda")
    out = train_step(comp, model, batch, task, make_optimizer(r.profile, model), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
