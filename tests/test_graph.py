"""The dependency runs of a run (natbench.graph; the runner trains them): NAT's random adversary is untrained and
not the target's initialisation, an adversary of another architecture is a recorded run of its own, and a
dependency cycle is refused."""
from __future__ import annotations

import pytest
import torch

from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.runner import Runner

from helpers import SMALL, run_digits, same_state

REG = get_registry()


@pytest.mark.slow
def test_random_adversary_is_untrained_and_not_the_targets_init(tmp_path, monkeypatch):
    from natbench.regularizers.nat import NAT

    bound = {}
    real_bind = NAT.bind

    def spy(self, role, model):
        bound[role] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_bind(self, role, model)

    monkeypatch.setattr(NAT, "bind", spy)
    r, run_dir = run_digits(tmp_path, "nat", "nat.adversary=random", "training.epochs=1")
    from natbench.store import Store

    assert list(Store(tmp_path / "natbench.sqlite").runs().defense) == ["pgd-at+nat"]  # nothing else trained
    torch.manual_seed(__import__("natbench.runner", fromlist=["derive_seed"]).derive_seed(0, "init"))
    target_init = Runner(tmp_path, registry=REG).task(r).build_model().state_dict()
    assert not same_state(bound["adversary"], target_init)


@pytest.mark.slow
def test_adversary_of_another_architecture_is_a_recorded_run(tmp_path, monkeypatch):
    import natbench.suite as suite_mod

    # a ResNet-18 after one epoch on 8x8 digits is degenerate (about 20 % clean) and fails the
    # large-eps check; its escalated Square would cost minutes on CPU and is not what this tests
    monkeypatch.setattr(suite_mod, "escalations", lambda *a, **k: [])
    r, _ = run_digits(tmp_path, "nat", "nat.adversary_arch=[resnet18]", "training.epochs=1")
    from natbench.store import Store

    runs = Store(tmp_path / "natbench.sqlite").runs().set_index("defense")
    assert "model.arch=resnet18" in runs.loc["vanilla", "variant"]
    assert "nat.adversary_arch=[resnet18]" in runs.loc["pgd-at+nat", "variant"]


def test_dependency_cycle_is_refused(tmp_path):
    from natbench.errors import CompositionError

    spec = tmp_path / "nasty_digits.yaml"
    from natbench.registry import SPECS_DIR

    spec.write_text(f"include: {SPECS_DIR / 'tasks' / 'digits.yaml'}\ndefense_params: {{nat: {{adversary: nasty}}}}\n")
    r = resolve(REG, str(spec), "nat", profile="quick", sets=SMALL, suite="smoke")
    with pytest.raises(CompositionError, match="needs itself"):
        Runner(tmp_path / "runs", registry=REG).run(r)
