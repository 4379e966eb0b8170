"""Shared pytest set-up and fixtures.

GPU-only tests (``@pytest.mark.gpu``) are skipped without CUDA. Fixtures used by several test modules live
here; plain helper functions shared by several modules are in ``helpers.py``."""
from __future__ import annotations

import pytest
import torch

# natbench's default numerics are one intra-op thread (natbench/threads.py); the tests run under them, so
# an outcome does not depend on the machine's core count (a randomized model's EOT escalation passed with
# 1 thread and failed with torch's default 2 on the same commit).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_logging():
    """A CLI command sets up rich logging on stderr for the whole process (``ui.setup_logging``); every
    test gets the root logger back as it was, so a later test's stderr holds only its own lines."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models (threading costs more than it saves and thrashes on a
    loaded 2-core box); the previous count is restored after the module. Use it as
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def batch():
    """Six float64 4x4 one-channel images (uniform, seed 3) with labels 0, 1, 2, 3, 4, 0 (five classes)."""
    from natbench.contracts import Batch

    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    return Batch(x, y)


def _small_cnn():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 16, 32), nn.ReLU(), nn.Linear(32, 10),
    )


@pytest.fixture(scope="session")
def digits_at_cnn():
    """(model in eval mode, test x, test y): a small CNN after 2 clean + 10 PGD-AT epochs (5 steps of
    eps/2.5) at eps 0.2 on sklearn's digits, for the Square, FAB-T and GAMA-PGD cross-checks (a few
    seconds on one core; trained once per session)."""
    import torch.nn.functional as F
    from torch import nn

    from natbench.attacks.pgd import pgd_linf
    from natbench.data.digits import read

    EPS = 0.2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster, and the machine is shared
    d = read()
    torch.manual_seed(0)
    model = _small_cnn()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(12):
        perm = torch.randperm(len(d.train_x), generator=g)
        for i in range(0, len(perm), 64):
            xb, yb = d.train_x[perm[i:i + 64]], d.train_y[perm[i:i + 64]]
            if epoch >= 2:
                model.eval()
                xb = pgd_linf(lambda z: F.cross_entropy(model(z), yb, reduction="none"), xb, eps=EPS,
                              steps=5, step_size=EPS / 2.5, random_start=True, generator=g)
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    yield model, d.test_x, d.test_y
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_at_smallcnn():
    """(model, x_test, y_test): SmallCNN (width 8) after 8 epochs of PGD-AT (5 steps of eps/4) on digits, the
    target of the APGD and AutoAttack cross-checks (trained once per session).

    Measured (torch 2.15 CPU): clean 325/359; APGD-CE 135-138 robust over seeds 0-5, APGD-DLR 135-140,
    APGD-T 121, AutoAttack standard 121 (APGD-CE 136 -> APGD-T 122 -> FAB-T 121 -> Square 121 at seed 0):
    a mix of robust and non-robust points, so the comparisons mean something. About 9 s on one core.
    """
    import torch.nn.functional as F
    from torch import nn

    from natbench.attacks.pgd import pgd_linf
    from natbench.data import digits
    from natbench.models import Normalize
    from natbench.models.small_cnn import SmallCNN

    EPS = 0.2  # the digits threat model
    s = digits.read()
    torch.manual_seed(0)
    model = nn.Sequential(Normalize([0.3], [0.4]), SmallCNN(1, 10, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        perm = torch.randperm(len(s.train_y), generator=g)
        for i in range(0, len(perm), 64):
            xb, yb = s.train_x[perm[i: i + 64]], s.train_y[perm[i: i + 64]]
            model.eval()
            xa = pgd_linf(lambda z: F.cross_entropy(model(z), yb, reduction="none"), xb, eps=EPS, steps=5,
                          step_size=EPS / 4, random_start=True, generator=g)
            model.train()
            loss = F.cross_entropy(model(xa), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, s.test_x, s.test_y


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """(resolution, task, model, run directory): a digits CNN behind an input quantiser (helpers.Quantised),
    trained 6 epochs with plain CE and saved as a run's best/last checkpoints; the task builds that model."""
    from torch import nn

    from helpers import Quantised
    from natbench.registry import get_registry
    from natbench.resolve import resolve, task_kind_cls

    REG = get_registry()
    r = resolve(REG, "digits", "vanilla", suite="smoke")
    task = task_kind_cls(REG, r.spec)(r.spec, None)
    torch.manual_seed(0)
    model = Quantised(task.build_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(6):
        train, _, _ = task.loaders(64, torch.Generator().manual_seed(epoch))
        model.train()
        for b in train:
            loss = nn.functional.cross_entropy(model(b.x), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    import copy

    task.build_model = lambda: copy.deepcopy(model)  # the runner builds, then loads the checkpoint
    run_dir = tmp_path_factory.mktemp("masked")
    for ck in ("best", "last"):
        torch.save(model.state_dict(), run_dir / f"{ck}.pt")
    return r, task, model, run_dir
