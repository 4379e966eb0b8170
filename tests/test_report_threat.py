"""The report's store section labels every table with the threat model it was evaluated under: the
run's own first, then those of ``natbench eval --threat-model`` (natbench.report.page)."""
from __future__ import annotations

from types import SimpleNamespace

from natbench.report.page import _results_section
from natbench.store import Store

from test_leaderboard_threat import root  # noqa: F401 - the fixture: run a (L-inf 0.3, also under L2 0.5), run b (L2)


def test_results_are_labelled_with_their_threat_model(root):  # noqa: F811
    store = Store(root / "natbench.sqlite", readonly=True)
    runs = [SimpleNamespace(run_id=rid, label=rid, record=store.get_run(rid)) for rid in ("a", "b")]
    html = _results_section(runs, store)
    a, b = html.split("<h3>b ")
    assert "Threat model L-inf eps 0.3 (trained under)" in a
    assert "Threat model L2 eps 0.5 (natbench eval --threat-model; trained under L-inf eps 0.3)" in a
    assert a.index("L-inf eps 0.3 (trained under)") < a.index("pgd") < a.index("L2 eps 0.5 (natbench") < a.index("apgd-l2")
    assert "12.50%" in a and "25.00%" in a  # worst case under L2 (sample 0) and under L-inf (samples 0, 1)
    assert "Threat model L2 eps 0.5 (trained under)" in b and "natbench eval" not in b
