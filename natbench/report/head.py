"""The geometry of a run's linear head, which needs no data: class weight distances (NAT Eq. 11,
Fig. 7) and shortest boundary distances (Eq. 12, Fig. 4), raw and divided by the head's scale."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..analysis import html as H
from ..analysis import plots
from .runs import ReportRun

log = logging.getLogger(__name__)


def head_weights(runs: list[ReportRun]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from ..analysis.geometry import head_weights as weights

    out = {}
    for r in runs:
        try:
            out[r.label] = weights(r.model)
        except TypeError as e:
            log.info("%s: no linear head (%s)", r.run_id, e)
    return out


def head_sections(runs: list[ReportRun], out_dir: Path) -> str:
    """Eq. 11 and Eq. 12 matrices (no data needed)."""
    from ..analysis.geometry import offdiag_mean, shortest_boundary_distances, weight_distances

    heads = head_weights(runs)
    if not heads:
        return '<p class="note">No final linear layer found: weight and boundary matrices skipped.</p>'
    wd = {k: weight_distances(w).numpy() for k, (w, _) in heads.items()}
    sd = {k: shortest_boundary_distances(w, "min").numpy() for k, (w, _) in heads.items()}
    norm = {k: float(w.norm(dim=1).mean()) for k, (w, _) in heads.items()}  # mean ||w_c||: the head's scale
    c = next(iter(wd.values())).shape[0]
    p1 = plots.matrix_plot(wd, out_dir / "weight_distances.png",
                           "L2 distance between class weight vectors ||w_j - w_i|| (NAT Eq. 11, Fig. 7)", "distance")
    p1s = plots.matrix_plot({k: v / norm[k] for k, v in wd.items()}, out_dir / "weight_distances_scaled.png",
                            "Scale-free: ||w_j - w_i|| / mean_c ||w_c||", "distance / mean weight norm")
    p2 = plots.matrix_plot(sd, out_dir / "shortest_distances.png",
                           "Shortest distance between class boundaries by projection (NAT Eq. 12, Fig. 4), "
                           "symmetrised by min", "distance")
    p2s = plots.matrix_plot({k: v / norm[k] for k, v in sd.items()}, out_dir / "shortest_distances_scaled.png",
                            "Scale-free: Eq. 12 / mean_c ||w_c||", "distance / mean weight norm")
    rows = [[k, f"{offdiag_mean(torch.as_tensor(wd[k])):.4g}", f"{offdiag_mean(torch.as_tensor(sd[k])):.4g}",
             f"{norm[k]:.4g}", f"{offdiag_mean(torch.as_tensor(wd[k])) / norm[k]:.4g}",
             f"{offdiag_mean(torch.as_tensor(sd[k])) / norm[k]:.4g}"] for k in heads]
    tbl = H.table(["run", "mean ||w_j - w_i|| (i != j)", "mean shortest distance (i != j)", "mean ||w_c||",
                   "mean ||w_j - w_i|| / mean ||w_c||", "mean shortest distance / mean ||w_c||"], rows,
                  numeric=[False, True, True, True, True, True])
    return ("<h3>Class weight vectors of the linear head</h3>" + tbl
            + '<p class="note">Eq. 11 and Eq. 12 grow with the scale of the weights: a head whose every w_c is 1.5 times '
              "longer has 1.5 times the distances and the same decision boundaries. The scale-free views (right) divide "
              "by the run's mean ||w_c||; a margin gain shows there, a change of scale does not.</p>"
            + _side_by_side(H.img(p1, "weight distances", f"Eq. 11 on the {c} x {c} head; biases ignored as in the paper."),
                            H.img(p1s, "weight distances, scale-free", "The same divided by the run's mean ||w_c||."))
            + _side_by_side(H.img(p2, "shortest distances", "Eq. 12: the part of w_j - w_i orthogonal to w_i, ||w_j|| "
                                  "sin(angle); Eq. 12 is not symmetric when norms differ, the matrix shows min(D_ij, D_ji) "
                                  "(docs/analysis.md)."),
                            H.img(p2s, "shortest distances, scale-free", "The same divided by the run's mean ||w_c||.")))


def _side_by_side(*figures: str) -> str:
    return '<div style="display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start">' + "".join(figures) + "</div>"

