"""Run reports (``natbench report``) and one-parameter ablations (``natbench ablation``).

:func:`build_report` writes ``<root>/<run_id>/report/index.html`` -- one self-contained page (every
plot embedded as a base64 PNG, inline CSS, no script, no network address) -- plus the PNGs next to
it. It shows, for the run and the ``compare`` runs side by side:

- training curves from ``record.json`` (loss parts; clean and robust validation metric per epoch
  with the best and last epochs marked: robust overfitting is the gap between them);
- the analyses of :mod:`natbench.analysis` (``docs/analysis.md``): output sparsity clean and under
  PGD (NAT Fig. 3), signed sample-to-boundary distances (Eq. 10 without |.|, Fig. 6), class weight
  distances (Eq. 11, Fig. 7), shortest boundary distances (Eq. 12, Fig. 4), a 2-D embedding of
  the penultimate features (Fig. 5), the loss surface around one input (NuAT Fig. 1) and robust
  accuracy against eps with its sanity checks;
- the suite results and sanity checks stored for each run, and its provenance.

Task kinds: a classification task gets every analysis. Other kinds (re-id) get what applies to
their linear head (the weight and boundary matrices of the identity classifier); the analyses that
need class labels of the test images are skipped with a note in the report (re-id test identities
are not classes of the classifier).

:func:`ablation` trains a defense once per value of one parameter (as ``natbench run --sweep``:
``natbench.resolve.resolve`` with ``sets=[f"{param}={value}"]``, dependencies such as NAT's
adversary reused by provenance hash) and plots best/last clean and robust accuracy against the value.

Layout: :mod:`.runs` (options, the runs and their models, loaded by :mod:`natbench.run_model`, no
Runner), :mod:`.page` (the page and its non-analysis sections), :mod:`.analyses` (which analyses a task
kind gets), :mod:`.classification` (the analyses of a classification run), :mod:`.head` (the linear
head's geometry), :mod:`.attack` (the attack of the analyses), :mod:`.ablation`.
"""
from __future__ import annotations

from .ablation import AblationResult, ablation, parse_values
from .page import build_report
from .runs import REPORT_DIR, REPORT_PAGE, ReportOptions

__all__ = ["REPORT_DIR", "REPORT_PAGE", "AblationResult", "ReportOptions", "ablation", "build_report", "parse_values"]
