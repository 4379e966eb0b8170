"""The analyses of a classification run's report (docs/analysis.md), one function per section, in the
order of the page: the attack of the analyses (:mod:`natbench.report.attack`), output sparsity (NAT
Fig. 3), signed boundary distances (Eq. 10, Fig. 6), the head geometry (:func:`head_sections`), a
2-D embedding (Fig. 5), the loss surface (NuAT Fig. 1) and robust accuracy against eps."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..analysis import embedding as E
from ..analysis import geometry as G
from ..analysis import html as H
from ..analysis import plots
from ..analysis import robustness as R
from ..analysis import sparsity as S
from ..analysis import surface as U
from ..analysis.collect import LimitedLoader, collect
from .attack import analysis_attack, attack_consistency, n_test, same_point
from .head import head_sections, head_weights
from .runs import ReportEnv, ReportOptions, ReportRun


def classification_analyses(runs: list[ReportRun], env: ReportEnv, out_dir: Path, opts: ReportOptions) -> str:
    main = runs[0]
    task = main.task
    eps = float(task.threat.eps)
    ebs = main.resolved.profile.eval_batch_size
    _, _, test_loader = task.loaders(ebs, torch.Generator().manual_seed(0), ebs)
    if opts.max_samples is not None:
        test_loader = LimitedLoader(test_loader, opts.max_samples)
    n_batches = len(test_loader)
    eps_list = R.default_eps_list(eps, opts.eps_multiples, cap=1.0 if task.threat.norm == "linf" else float("inf"))
    total = len(runs) * (n_batches + len(eps_list) + 2)
    reporter = env.reporter
    bar = reporter.start("report analyses", total)
    advance = lambda: reporter.advance(bar, 1)  # noqa: E731
    parts = []
    try:
        labels = _collect(runs, env, opts, test_loader, eps, advance)
        attack_label = "/".join(dict.fromkeys(labels.values()))
        parts.append(attack_consistency(runs, env.store, opts, n_test(env.store, main.run_id, opts.checkpoint)))
        parts.append(_sparsity(runs, out_dir, labels, attack_label, eps))
        boundaries = _boundaries(runs, out_dir, opts)
        if boundaries:
            parts.append(boundaries)
        parts.append(head_sections(runs, out_dir))
        for _ in runs:
            advance()
        parts.append(_embedding(runs, out_dir, opts))
        parts.append(_surface(runs, out_dir, opts, test_loader, eps, env.device, advance))
        parts.append(_eps_curve(runs, out_dir, opts, test_loader, eps, eps_list, env.device, advance))
    finally:
        reporter.stop(bar)
    return "\n".join(parts)


def _collect(runs: list[ReportRun], env: ReportEnv, opts: ReportOptions, test_loader, eps: float,
             advance: Callable[[], None]) -> dict[str, str]:
    """Each run's clean and attacked logits and features (``r.data["out"]``) under the attack of the
    analyses (``r.data["attack"]``); returns run label -> the attack's name."""
    labels = {}
    for r in runs:
        attack, seed, aid = analysis_attack(r, opts, eps)
        r.data["attack"] = (attack, seed, aid)
        labels[r.label] = aid or f"PGD-{opts.attack_steps}"
        r.data["out"] = collect(r.task, r.model, test_loader, attack, device=env.device,
                                generator=torch.Generator().manual_seed(seed), on_batch=advance)
    return labels


def _sparsity(runs: list[ReportRun], out_dir: Path, labels: dict[str, str], attack_label: str, eps: float) -> str:
    """Output-probability sparsity, clean and under the attack (NAT Fig. 3)."""
    prof = {r.label: {"clean": S.profile(r.data["out"].logits, r.data["out"].y),
                      "adv": S.profile(r.data["out"].adv_logits, r.data["out"].y)} for r in runs}
    p = plots.sparsity_plot(prof, out_dir / "sparsity.png", attack_label)
    rows = []
    for label, d in prof.items():
        for which, name in (("clean", "clean"), ("adv", labels[label])):
            q = d[which]
            rows.append([label, name, f"{100 * q['accuracy']:.2f}", f"{q['entropy_mean']:.4f}",
                         f"{q['nontarget_entropy_mean']:.4f}", f"{q['hoyer_mean']:.4f}",
                         f"{q['sorted_mean'][0]:.4f}", f"{q['sorted_mean'][1]:.4f}" if len(q['sorted_mean']) > 1 else ""])
    n = len(runs[0].data["out"])
    return ("<h3>Output-probability sparsity (NAT Fig. 3)</h3>" + H.table(
        ["run", "inputs", "accuracy %", "entropy", "non-target entropy", "Hoyer", "mean top-1 prob", "mean top-2 prob"],
        rows, numeric=[False, False] + [True] * 6)
        + H.img(p, "sparsity", f"{n} test images, clean and under {attack_label} (the attack of the table above, eps "
                f"{eps:.4g}). Left: mean of each sample's probabilities sorted in decreasing order (log scale). "
                f"Non-target entropy: entropy of the probabilities off the true class, renormalised."))


def _boundaries(runs: list[ReportRun], out_dir: Path, opts: ReportOptions) -> str:
    """Signed distances of the samples to the class hyperplanes and pairwise boundaries (NAT Eq. 10,
    Fig. 6); empty without a linear head."""
    heads = head_weights(runs)
    if not heads:
        return ""
    c = next(iter(heads.values()))[0].shape[0]
    paper, pair = {}, {}
    for r in runs:
        if r.label not in heads:
            continue
        w, b = heads[r.label]
        o = r.data["out"]
        paper[r.label] = G.signed_boundary_distances(w, b, o.features.double(), o.y, c, "paper").numpy()
        pair[r.label] = G.signed_boundary_distances(w, b, o.features.double(), o.y, c, "pairwise").numpy()
    row = min(max(opts.boundary_row, 0), c - 1)
    p6 = plots.signed_distance_plot(paper, out_dir / "boundary_distance_class.png", row=row, kind="paper")
    pm = plots.matrix_plot(paper, out_dir / "boundary_distance_matrix.png",
                           "Mean signed distance (w_j.h + b_j)/||w_j|| of the samples of class k (rows) to "
                           "the hyperplane of class j (columns): NAT Eq. 10 without |.|", "signed distance",
                           diverging=True, row_label="true class k", col_label="boundary j")
    pp = plots.matrix_plot(pair, out_dir / "boundary_distance_pairwise.png",
                           "Mean signed distance to the pairwise decision boundary between k and j, "
                           "((w_k - w_j).h + b_k - b_j)/||w_k - w_j|| (positive: on k's side)", "signed distance",
                           diverging=True, row_label="true class k", col_label="other class j")
    rows = []
    for label in paper:
        diag = np.diag(paper[label])
        off = paper[label].copy()
        np.fill_diagonal(off, np.nan)
        hn = float(next(r for r in runs if r.label == label).data["out"].features.double().norm(dim=1).mean())
        rows.append([label, f"{np.nanmean(diag):.4g}", f"{np.nanmean(off):.4g}",
                     f"{np.nanmean(pair[label]):.4g}", f"{np.nanmin(pair[label]):.4g}", f"{hn:.4g}",
                     f"{np.nanmean(diag) / hn:.4g}", f"{np.nanmean(pair[label]) / hn:.4g}"])
    return ("<h3>Distance of samples to the class boundaries (NAT Eq. 10, Fig. 6)</h3>" + H.table(
        ["run", "own class (diagonal), mean", "other classes, mean", "pairwise margin, mean", "pairwise margin, min class mean",
         "mean ||h||", "own class mean / mean ||h||", "pairwise margin mean / mean ||h||"],
        rows, numeric=[False] + [True] * 7)
        + '<p class="note">Eq. 10 divides by ||w_j||, so it does not change with the head\'s scale, but it grows '
          "with the scale of the features h: the last two columns divide by the run's mean ||h|| (clean test "
          "features), the scale-free view.</p>"
        + H.img(p6, "boundary distance of one class", f"Class {row}'s clean test samples (NAT Fig. 6 uses class 0 "
                f"of CIFAR-10): the paper's Eq. 10 is the distance to the hyperplane w_j.h + b_j = 0 of class j; "
                f"the absolute value is removed as in the paper's Sec. 4.4.")
        + H.img(pm, "boundary distance matrix", "All classes: row k = mean over the clean test samples of true "
                "class k. h = the penultimate features (the head's input).")
        + H.img(pp, "pairwise boundary distance", "The pairwise decision boundaries (natbench's addition, not "
                "in the paper): positive = the sample is on its own class's side of the k-vs-j boundary; the "
                "row minimum is the margin in feature space. Diagonal undefined."))


def _embedding(runs: list[ReportRun], out_dir: Path, opts: ReportOptions) -> str:
    """A 2-D embedding of the penultimate features (NAT Fig. 5) and their separation."""
    embs, method = {}, ""
    for r in runs:
        o = r.data["out"]
        k = min(len(o), opts.embed_samples)
        feats, ys = o.features[:k].numpy(), o.y[:k].numpy()
        emb, method = E.embed_2d(feats, seed=opts.seed, method=opts.embed_method)
        embs[r.label] = (emb, ys, E.separation(feats, ys))
    pe = plots.embedding_plot(embs, out_dir / "embedding.png", method)
    rows = [[k, f"{v[2]['silhouette']:.4f}", f"{v[2]['intra_inter']:.4f}"] for k, v in embs.items()]
    return (f"<h3>{H.esc(method)} of the penultimate features (NAT Fig. 5)</h3>"
            + H.table(["run", "silhouette (features)", "intra/inter (features)"], rows, numeric=[False, True, True])
            + H.img(pe, "embedding", f"{method} of the clean test features ({'UMAP: umap-learn is installed' if method == 'UMAP' else 't-SNE: umap-learn is not installed'}). "
                    "Silhouette (higher = tighter, better separated classes) and intra/inter (mean same-class "
                    "distance / mean distance between class centroids; lower = more compact) are computed in "
                    "the feature space, not in the 2-D picture."))


def _surface(runs: list[ReportRun], out_dir: Path, opts: ReportOptions, test_loader, eps: float, device,
             advance: Callable[[], None]) -> str:
    """The CE loss surface around one test input (NuAT Fig. 1)."""
    x0, y0 = _sample(test_loader, opts.surface_index)
    surfs = {}
    for r in runs:
        s = U.loss_surface(r.model, x0.to(device), y0, span=opts.surface_span * eps, n=opts.surface_n,
                           generator=torch.Generator().manual_seed(opts.seed))
        surfs[r.label] = (s, U.surface_summary(s, eps))
        advance()
    ps = plots.surface_plot(surfs, out_dir / "loss_surface.png", eps)
    rows = [[k, f"{v[1]['loss_at_x']:.4g}", f"{v[1]['max_along_g']:.4g}", f"{v[1]['max_along_r']:.4g}",
             f"{v[1]['max_in_ball']:.4g}", f"{v[1]['rise_along_g']:+.4g}"] for k, v in surfs.items()]
    return ("<h3>Loss surface (NuAT Fig. 1)</h3>" + H.table(
        ["run", "CE at x", "max CE along +g (0 < a <= eps)", "max CE along r (|b| <= eps)", "max CE in the eps-ball (|a|+|b| <= eps)",
         "CE(x + eps g) - CE(x)"], rows, numeric=[False] + [True] * 5)
        + H.img(ps, "loss surface", f"Test sample {opts.surface_index} (label {y0}); CE at x + a sign(grad) + b r, "
                f"r a random sign vector orthogonal to sign(grad); a, b in [-{opts.surface_span:g} eps, "
                f"{opts.surface_span:g} eps], not clipped to [0, 1]. A smooth surface rising along +g rules out "
                f"gradient masking at this input; a flat or jagged one along g while the loss rises along r "
                f"is masking."))


def _eps_curve(runs: list[ReportRun], out_dir: Path, opts: ReportOptions, test_loader, eps: float, eps_list,
               device, advance: Callable[[], None]) -> str:
    """Robust accuracy against eps, with its sanity checks."""
    curves, check_rows, classes = {}, [], []
    for r in runs:
        c = R.accuracy_vs_eps(r.task, r.model, test_loader, eps_list, steps=opts.eps_steps, device=device,
                              seed=opts.seed, on_point=advance)
        same_point(c, r, opts, eps)
        curves[r.label] = c
        for chk in R.eps_curve_checks(c):
            check_rows.append([r.label, chk.name, "pass" if chk.passed else "FAIL", chk.detail])
            classes.append("" if chk.passed else "fail")
    attack_eps = next(iter(curves.values())).attack
    pc = plots.eps_curve_plot(curves, out_dir / "eps_curve.png", eps, attack_eps)
    header = ["run"] + [f"{e:.3g}" for e in eps_list]
    rows = [[k] + [f"{100 * a:.2f}" for a in c.accuracy] for k, c in curves.items()]
    n = len(runs[0].data["out"])
    return ("<h3>Robust accuracy against eps</h3>"
            + H.table(["run \\ eps"] + header[1:], rows, numeric=[False] + [True] * len(eps_list))
            + H.img(pc, "accuracy vs eps", f"{attack_eps} at each eps (eps 0 = clean), {n} test images; each "
                    f"point draws its own random start (seed {opts.seed}), except the point at the task's eps "
                    f"{eps:.4g}, which is the evaluation of the first table (the suite's random start where "
                    f"the suite has the same PGD), so one (checkpoint, attack) has one number in this report.")
            + H.table(["run", "check", "result", "detail"], check_rows, row_classes=classes)
            + '<p class="note">eps_curve_non_increasing: a larger eps must not be significantly weaker than '
              "a smaller one (paired sign test on the per-sample flags, as natbench.checks); "
              "eps_curve_reaches_zero: at the largest eps the accuracy should be near 0 (at most 5%).</p>")


def _sample(loader, index: int) -> tuple[torch.Tensor, int]:
    """Test sample ``index`` (clamped to the loader's size) as ``(x (1, ...), y)``."""
    seen, last = 0, None
    for batch in loader:
        if index < seen + len(batch):
            i = index - seen
            return batch.x[i: i + 1], int(batch.y[i])
        seen += len(batch)
        last = batch
    if last is None:
        raise ValueError("the test loader is empty")
    return last.x[-1:], int(last.y[-1])

