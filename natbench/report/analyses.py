"""The analyses of a report (docs/analysis.md). A classification task gets every analysis
(:mod:`natbench.report.classification`). Other kinds (re-id, detection) get what applies to their
linear head (:mod:`natbench.report.head`: the weight and boundary matrices of the classifier); the
analyses that need class labels of the test images are skipped with a note in the report (re-id test
identities are not classes of the classifier)."""
from __future__ import annotations

from pathlib import Path

from ..analysis import html as H
from .head import head_sections
from .runs import ReportEnv, ReportOptions, ReportRun, load_models


def analysis_sections(runs: list[ReportRun], env: ReportEnv, out_dir: Path, opts: ReportOptions) -> str:
    """The analyses section of the page: every analysis for a classification task, the head geometry
    (and a note on what is skipped and why) for the other kinds."""
    main = runs[0]
    load_models(runs, env, opts.checkpoint)
    objectives = getattr(main.task, "OBJECTIVES", ())
    classification = "ce" in objectives and "logits" in objectives
    parts = ["<h2>Analyses</h2>"]
    if classification:
        from .classification import classification_analyses

        parts.append(classification_analyses(runs, env, out_dir, opts))
    else:
        kind = main.resolved.config["task"].get("kind", "?")
        why = {"reid": "re-id test identities are unseen: they are not classes of the identity classifier",
               "detection": "a detection image has many boxes and no single class, and the SSD class head is "
                            "convolutional (per anchor), not a linear layer over one feature vector"}.get(
            kind, "the task's test images have no single class of the model's classifier")
        parts.append(f'<p class="note">Task kind {H.esc(kind)}: the analyses that need one class label per test '
                     f"image (output sparsity, signed boundary distances, the 2-D embedding coloured by class, the "
                     f"loss surface of the CE and robust accuracy against eps) are skipped: {H.esc(why)}. The head's "
                     f"own geometry (its class weight vectors) is shown below when the model has a final linear "
                     f"layer.</p>")
        parts.append(head_sections(runs, out_dir))
    return "\n".join(parts)

