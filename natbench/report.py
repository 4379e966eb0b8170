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
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from .analysis import html as H
from .analysis import plots
from .errors import ConfigError, RunError
from .safety import atomic_write

log = logging.getLogger(__name__)

REPORT_DIR = "report"
REPORT_PAGE = "index.html"


@dataclass
class ReportOptions:
    """What the analyses of a report compute (defaults: the whole test set, PGD-20 as the suite's)."""

    checkpoint: str = "best"  # checkpoint analysed: best | last
    attack_steps: int = 20  # PGD steps for "under attack" (sparsity, adversarial features); step eps/4
    eps_multiples: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)  # eps curve, x task eps
    eps_steps: int = 20  # PGD steps per point of the eps curve
    max_samples: int | None = None  # test samples used by the analyses (None: all)
    embed_samples: int = 1000  # at most this many samples are embedded in 2-D
    embed_method: str = "auto"  # auto (UMAP if importable, else t-SNE) | umap | tsne
    surface_index: int = 0  # test sample whose loss surface is drawn
    surface_n: int = 21  # grid points per axis
    surface_span: float = 2.0  # grid half-width in units of eps
    boundary_row: int = 0  # class whose boundary distances are drawn as bars (NAT Fig. 6: class 0)
    seed: int = 0  # attacks' random starts, embedding, orthogonal direction


@dataclass
class _Run:
    run_id: str
    record: Any  # natbench.store.RunRecord
    resolved: Any  # natbench.resolve.Resolved
    history: list[dict]
    label: str = ""
    model: Any = None
    task: Any = None
    data: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ report
def build_report(root: Path, run_id: str, compare: Sequence[str] = (), *, data_root: Path | None = None,
                 device: torch.device | str = "cpu", reporter: Any = None, registry: Any = None,
                 options: ReportOptions | None = None, db: str | None = None) -> Path:
    """Write the report of ``run_id`` (with ``compare`` runs side by side); return the page's path.
    ``db``: the results store URL (default: ``$NATBENCH_DB`` or ``<root>/natbench.sqlite``)."""
    from .registry import get_registry
    from .runner import Reporter, Runner
    from .store import open_store, store_exists, store_url

    opts = options or ReportOptions()
    if opts.checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint {opts.checkpoint!r}: expected best or last")
    root = Path(root)
    reg = registry or get_registry()
    reporter = reporter or Reporter()
    if not store_exists(root, db):
        raise RunError(f"no results store at {store_url(root, db)}; run something first, "
                       f"e.g. natbench run --task digits --defense vanilla")
    runner = Runner(root, data_root, torch.device(device), reporter, reg, db=db)
    store = runner._store = open_store(root, db, readonly=True)  # a reading command never writes the store
    try:
        ids = list(dict.fromkeys([run_id, *compare]))
        runs = [_load_run(root, store, rid, reg) for rid in ids]
        _label_runs(runs)
        task_name = runs[0].resolved.task
        for r in runs[1:]:
            if r.resolved.task != task_name:
                raise ConfigError(f"--compare {r.run_id}: its task is {r.resolved.task}, the report's run is of {task_name}; "
                                  f"compare runs of one task")
        out_dir = root / run_id / REPORT_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        sections: list[str] = []
        sections.append(_overview(runs, opts))
        sections.append(_training_section(runs, out_dir))
        sections.append(_analysis_sections(runs, runner, out_dir, opts, reporter))
        sections.append(_results_section(runs, store))
        sections.append(_provenance_section(runs))
        title = f"natbench report: {run_id}"
        page = H.page(title, "\n".join(sections))
        path = out_dir / REPORT_PAGE
        atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))  # a unique temporary name
        reporter.message(f"wrote {path} ({len(page) / 1e6:.1f} MB) and {len(list(out_dir.glob('*.png')))} PNGs")
        return path
    finally:
        store.close()




def _load_run(root: Path, store, run_id: str, reg) -> _Run:
    from .runner import run_from_dir

    rec = store.get_run(run_id)
    if rec is None:
        raise RunError(f"run '{run_id}' is not a complete run in the results store under {root}; "
                       f"list runs with: natbench leaderboard --format csv")
    resolved = run_from_dir(root, run_id, reg)
    path = root / run_id / "record.json"
    history = json.loads(path.read_text()).get("history", []) if path.is_file() else []
    return _Run(run_id, rec, resolved, history)


def _label_runs(runs: list[_Run]) -> None:
    for r in runs:
        rec = r.record
        r.label = rec.defense + (f" [{rec.variant}]" if rec.variant else "") + f" s{rec.seed}"
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.label] = counts.get(r.label, 0) + 1
    for r in runs:
        if counts[r.label] > 1:
            r.label += f" ({r.run_id[-8:]})"


def _headline_metric(r: _Run) -> str:
    """The run's task kind's ``headline_metric`` (accuracy, re-id's and detection's mAP)."""
    try:
        from .registry import get_registry
        from .resolve import task_kind_cls

        return getattr(task_kind_cls(get_registry(), r.resolved.spec), "headline_metric", "accuracy")
    except Exception:  # noqa: BLE001 - a label only
        return "accuracy"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _overview(runs: list[_Run], opts: ReportOptions) -> str:
    main = runs[0]
    rows = [[r.label, r.run_id, r.record.task, r.record.profile, r.record.seed] for r in runs]
    text = (f"<p>Task <b>{H.esc(main.record.task)}</b>; analyses on the <b>{H.esc(opts.checkpoint)}</b> checkpoint "
            f"of each run, on the test set. Plots are side by side (one panel or line per run) where that makes "
            f"sense. Definitions: docs/analysis.md.</p>")
    return "<h2>Runs</h2>" + text + H.table(["label", "run id", "task", "profile", "seed"], rows,
                                            numeric=[False, False, False, False, True])


# ------------------------------------------------------------------------------------------ training
def _training_section(runs: list[_Run], out_dir: Path) -> str:
    parts = ["<h2>Training curves</h2>"]
    for r in runs:
        if not r.history:
            parts.append(f'<p class="note">{H.esc(r.label)}: no per-epoch history in record.json.</p>')
            continue
        select_on = getattr(r.resolved.plan.base.cls, "select_on", "robust")
        metric = _headline_metric(r)
        png = plots.training_report(r.history, out_dir / f"training_{_slug(r.run_id)}.png",
                                    f"{r.label}: {r.run_id}", metric, select_on)
        val = [h for h in r.history if "val_clean" in h]
        cap = ""
        if val:
            key = "val_clean" if select_on == "clean" else "val_robust"
            ib = max(range(len(val)), key=lambda i: (val[i][key], -i))
            b, last = val[ib], val[-1]
            cap = (f"Best epoch {b['epoch'] + 1} (validation {metric} clean {100 * b['val_clean']:.2f}%, robust "
                   f"{100 * b['val_robust']:.2f}%); last epoch {last['epoch'] + 1} (clean {100 * last['val_clean']:.2f}%, "
                   f"robust {100 * last['val_robust']:.2f}%). Validation robust = PGD-{r.resolved.spec.selection.steps} "
                   f"on the held-out validation split. Training time "
                   f"{sum(h.get('seconds', 0.0) for h in r.history):.1f} s over {len(r.history)} epochs.")
        parts.append(H.img(png, f"training curves of {r.label}", cap))
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ analyses
def _analysis_sections(runs: list[_Run], runner, out_dir: Path, opts: ReportOptions, reporter) -> str:
    main = runs[0]
    tasks: dict[str, Any] = {}
    for r in runs:  # one task object (data read once) per distinct task config
        key = json.dumps(r.resolved.config["task"], sort_keys=True, default=str)
        if key not in tasks:
            tasks[key] = runner.task(r.resolved)
        r.task = tasks[key]
        ckpt = runner.root / r.run_id / f"{opts.checkpoint}.pt"
        if not ckpt.is_file():
            raise RunError(f"run '{r.run_id}': no {ckpt}; the report needs the run's {opts.checkpoint} checkpoint "
                           f"(try --checkpoint {'last' if opts.checkpoint == 'best' else 'best'})")
        r.model = runner.load_model(r.task, r.run_id, opts.checkpoint)
        r.model.eval()
    objectives = getattr(main.task, "OBJECTIVES", ())
    classification = "ce" in objectives and "logits" in objectives
    parts = ["<h2>Analyses</h2>"]
    if classification:
        parts.append(_classification_analyses(runs, runner, out_dir, opts, reporter))
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
        parts.append(_head_sections(runs, out_dir))
    return "\n".join(parts)


def _head_weights(runs: list[_Run]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from .analysis.geometry import head_weights

    out = {}
    for r in runs:
        try:
            out[r.label] = head_weights(r.model)
        except TypeError as e:
            log.info("%s: no linear head (%s)", r.run_id, e)
    return out


def _head_sections(runs: list[_Run], out_dir: Path) -> str:
    """Eq. 11 and Eq. 12 matrices (no data needed)."""
    from .analysis.geometry import offdiag_mean, shortest_boundary_distances, weight_distances

    heads = _head_weights(runs)
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


def _classification_analyses(runs: list[_Run], runner, out_dir: Path, opts: ReportOptions, reporter) -> str:
    from .analysis import embedding as E
    from .analysis import geometry as G
    from .analysis import robustness as R
    from .analysis import sparsity as S
    from .analysis import surface as U
    from .analysis.collect import LimitedLoader, collect
    from .report_attack import analysis_attack, attack_consistency, n_test, same_point

    main = runs[0]
    task = main.task
    eps = float(task.threat.eps)
    ebs = main.resolved.profile.eval_batch_size
    _, _, test_loader = task.loaders(ebs, torch.Generator().manual_seed(0), ebs)
    if opts.max_samples is not None:
        test_loader = LimitedLoader(test_loader, opts.max_samples)
    n_batches = len(test_loader)
    eps_list = R.default_eps_list(eps, opts.eps_multiples)
    total = len(runs) * (n_batches + len(eps_list) + 2)
    bar = reporter.start("report analyses", total)
    parts = []
    try:
        labels = {}
        for r in runs:
            attack, seed, aid = analysis_attack(r, opts, eps)
            r.data["attack"] = (attack, seed, aid)
            labels[r.label] = aid or f"PGD-{opts.attack_steps}"
            r.data["out"] = collect(r.task, r.model, test_loader, attack, device=runner.device,
                                    generator=torch.Generator().manual_seed(seed), on_batch=lambda: reporter.advance(bar, 1))
        attack_label = "/".join(dict.fromkeys(labels.values()))
        parts.append(attack_consistency(runs, runner.store, opts, n_test(runner.store, main.run_id, opts.checkpoint)))
        # -------------------------------------------------------------- sparsity (Fig. 3)
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
        n = len(main.data["out"])
        parts.append("<h3>Output-probability sparsity (NAT Fig. 3)</h3>" + H.table(
            ["run", "inputs", "accuracy %", "entropy", "non-target entropy", "Hoyer", "mean top-1 prob", "mean top-2 prob"],
            rows, numeric=[False, False] + [True] * 6)
            + H.img(p, "sparsity", f"{n} test images, clean and under {attack_label} (the attack of the table above, eps "
                    f"{eps:.4g}). Left: mean of each sample's probabilities sorted in decreasing order (log scale). "
                    f"Non-target entropy: entropy of the probabilities off the true class, renormalised."))
        # -------------------------------------------------------------- head geometry (Figs. 6, 7, 4)
        heads = _head_weights(runs)
        if heads:
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
            parts.append("<h3>Distance of samples to the class boundaries (NAT Eq. 10, Fig. 6)</h3>" + H.table(
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
        parts.append(_head_sections(runs, out_dir))
        for _ in runs:
            reporter.advance(bar, 1)
        # -------------------------------------------------------------- embedding (Fig. 5)
        embs, method = {}, ""
        for r in runs:
            o = r.data["out"]
            k = min(len(o), opts.embed_samples)
            feats, ys = o.features[:k].numpy(), o.y[:k].numpy()
            emb, method = E.embed_2d(feats, seed=opts.seed, method=opts.embed_method)
            embs[r.label] = (emb, ys, E.separation(feats, ys))
        pe = plots.embedding_plot(embs, out_dir / "embedding.png", method)
        rows = [[k, f"{v[2]['silhouette']:.4f}", f"{v[2]['intra_inter']:.4f}"] for k, v in embs.items()]
        parts.append(f"<h3>{H.esc(method)} of the penultimate features (NAT Fig. 5)</h3>"
                     + H.table(["run", "silhouette (features)", "intra/inter (features)"], rows, numeric=[False, True, True])
                     + H.img(pe, "embedding", f"{method} of the clean test features ({'UMAP: umap-learn is installed' if method == 'UMAP' else 't-SNE: umap-learn is not installed'}). "
                             "Silhouette (higher = tighter, better separated classes) and intra/inter (mean same-class "
                             "distance / mean distance between class centroids; lower = more compact) are computed in "
                             "the feature space, not in the 2-D picture."))
        # -------------------------------------------------------------- loss surface (NuAT Fig. 1)
        x0, y0 = _sample(test_loader, opts.surface_index)
        surfs = {}
        for r in runs:
            s = U.loss_surface(r.model, x0.to(runner.device), y0, span=opts.surface_span * eps, n=opts.surface_n,
                               generator=torch.Generator().manual_seed(opts.seed))
            surfs[r.label] = (s, U.surface_summary(s, eps))
            reporter.advance(bar, 1)
        ps = plots.surface_plot(surfs, out_dir / "loss_surface.png", eps)
        rows = [[k, f"{v[1]['loss_at_x']:.4g}", f"{v[1]['max_along_g']:.4g}", f"{v[1]['max_along_r']:.4g}",
                 f"{v[1]['max_in_ball']:.4g}", f"{v[1]['rise_along_g']:+.4g}"] for k, v in surfs.items()]
        parts.append("<h3>Loss surface (NuAT Fig. 1)</h3>" + H.table(
            ["run", "CE at x", "max CE along +g (0 < a <= eps)", "max CE along r (|b| <= eps)", "max CE in the eps-ball (|a|+|b| <= eps)",
             "CE(x + eps g) - CE(x)"], rows, numeric=[False] + [True] * 5)
            + H.img(ps, "loss surface", f"Test sample {opts.surface_index} (label {y0}); CE at x + a sign(grad) + b r, "
                    f"r a random sign vector orthogonal to sign(grad); a, b in [-{opts.surface_span:g} eps, "
                    f"{opts.surface_span:g} eps], not clipped to [0, 1]. A smooth surface rising along +g rules out "
                    f"gradient masking at this input; a flat or jagged one along g while the loss rises along r "
                    f"is masking."))
        # -------------------------------------------------------------- robust accuracy vs eps
        curves, check_rows, classes = {}, [], []
        for r in runs:
            c = R.accuracy_vs_eps(r.task, r.model, test_loader, eps_list, steps=opts.eps_steps, device=runner.device,
                                  seed=opts.seed, on_point=lambda: reporter.advance(bar, 1))
            same_point(c, r, opts, eps)
            curves[r.label] = c
            for chk in R.eps_curve_checks(c):
                check_rows.append([r.label, chk.name, "pass" if chk.passed else "FAIL", chk.detail])
                classes.append("" if chk.passed else "fail")
        attack_eps = next(iter(curves.values())).attack
        pc = plots.eps_curve_plot(curves, out_dir / "eps_curve.png", eps, attack_eps)
        header = ["run"] + [f"{e:.3g}" for e in eps_list]
        rows = [[k] + [f"{100 * a:.2f}" for a in c.accuracy] for k, c in curves.items()]
        parts.append("<h3>Robust accuracy against eps</h3>"
                     + H.table(["run \\ eps"] + header[1:], rows, numeric=[False] + [True] * len(eps_list))
                     + H.img(pc, "accuracy vs eps", f"{attack_eps} at each eps (eps 0 = clean), {n} test images; each "
                             f"point draws its own random start (seed {opts.seed}), except the point at the task's eps "
                             f"{eps:.4g}, which is the evaluation of the first table (the suite's random start where "
                             f"the suite has the same PGD), so one (checkpoint, attack) has one number in this report.")
                     + H.table(["run", "check", "result", "detail"], check_rows, row_classes=classes)
                     + '<p class="note">eps_curve_non_increasing: a larger eps must not be significantly weaker than '
                       "a smaller one (paired sign test on the per-sample flags, as natbench.checks); "
                       "eps_curve_reaches_zero: at the largest eps the accuracy should be near 0 (at most 5%).</p>")
    finally:
        reporter.stop(bar)
    return "\n".join(parts)


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


# ------------------------------------------------------------------------------------------ results
def _results_section(runs: list[_Run], store) -> str:
    parts = ["<h2>Suite results and sanity checks (from the store)</h2>"]
    for r in runs:
        res = store.results()
        res = res[res["run_id"] == r.run_id]
        order = list(dict.fromkeys([*r.record.suite, *res["attack"]]))
        metrics = [m for m in dict.fromkeys(res["metric"])]
        cks = [c for c in ("best", "last") if c in set(res["checkpoint"])] + sorted(set(res["checkpoint"]) - {"best", "last"})
        header = ["attack"] + [f"{ck} {m}" for ck in cks for m in metrics]
        rows = []
        for a in order:
            sub = res[res["attack"] == a]
            if sub.empty:
                continue
            row = [a]
            for ck in cks:
                for m in metrics:
                    v = sub[(sub["checkpoint"] == ck) & (sub["metric"] == m)]["value"]
                    x = float(v.iloc[0]) if len(v) else float("nan")
                    row.append("" if x != x else (f"{100 * x:.2f}" if m in ("accuracy", "mAP", "rank1", "rank5", "rank10") else f"{x:.4f}"))
            rows.append(row)
        wc = []
        for ck in cks:
            try:
                wc.append(f"{ck}: {100 * store.worst_case(r.run_id, ck):.2f}%")
            except (RunError, ValueError):
                pass
        chk = store.checks(r.run_id)
        crow = [[c.checkpoint, c.name, "pass" if c.passed else "FAIL", c.detail] for c in chk.itertuples()]
        classes = ["" if c.passed else "fail" for c in chk.itertuples()]
        failed = sorted({c.name for c in chk.itertuples() if not c.passed})
        parts.append(f"<h3>{H.esc(r.label)} <small>({H.esc(r.run_id)})</small></h3>"
                     + H.table(header, rows, numeric=[False] + [True] * (len(header) - 1))
                     + (f"<p>Per-sample worst case over every stored evaluation: {H.esc('; '.join(wc))}.</p>" if wc else "")
                     + (f'<p class="fail">Flags (failed sanity checks, see docs/flags.md): {H.esc(", ".join(failed))}</p>'
                        if failed else '<p class="pass">No sanity check failed.</p>')
                     + H.table(["checkpoint", "check", "result", "detail"], crow, row_classes=classes))
    parts.append('<p class="note">Accuracy-type metrics in percent; entropy, non-target entropy and Hoyer are the '
                 "clean evaluation's sparsity means.</p>")
    return "\n".join(parts)


def _provenance_section(runs: list[_Run]) -> str:
    rows = []
    for r in runs:
        rec = r.record
        rows.append([r.label, rec.run_id, rec.config_hash[:16], rec.git_rev, rec.seed, rec.profile, rec.variant or "-",
                     rec.device, f"{rec.wall_train_s:.1f}", f"{rec.wall_eval_s:.1f}", rec.started, rec.finished,
                     ", ".join(f"{k} {v}" for k, v in sorted(rec.versions.items()))])
    parts = ["<h2>Provenance</h2>", H.table(
        ["run", "run id", "config hash", "git rev", "seed", "profile", "variant", "device", "train s", "eval s",
         "started", "finished", "versions"], rows, numeric=[False] * 4 + [True] + [False] * 3 + [True, True] + [False] * 3)]
    for r in runs:
        cfg = yaml.safe_dump(r.record.config, sort_keys=False, default_flow_style=None, width=120)
        parts.append(f"<details><summary>resolved config of {H.esc(r.label)} (config hash {H.esc(r.record.config_hash)})"
                     f"</summary><pre>{H.esc(cfg)}</pre></details>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ ablation
@dataclass
class AblationResult:
    frame: Any  # pandas DataFrame (natbench.analysis.ablation.ablation_frame)
    robust_label: str
    png: Path
    csv: Path
    run_ids: list[str]


def parse_values(values: str | Sequence[str]) -> list[str]:
    """``"0,0.02,0.04"`` (or a list of such strings) -> ``["0", "0.02", "0.04"]``; each value once."""
    items = [values] if isinstance(values, str) else list(values)
    out = [v.strip() for item in items for v in str(item).split(",")]
    if not out or not all(out):
        raise ConfigError(f"--values {values!r}: expected v1,v2,..., e.g. --values 0,0.02,0.04,0.06")
    if len(set(out)) != len(out):
        raise ConfigError(f"--values {values!r}: a value is listed twice; list each value once")
    return out


def ablation(task: str, defense: str, param: str, values: str | Sequence[str], *, root: Path,
             data_root: Path | None = None, profile: str | None = None, seed: int = 0, sets: Sequence[str] = (),
             suite: str | None = None, device: torch.device | str = "cpu", reporter: Any = None,
             registry: Any = None, robust: str | None = None, db: str | None = None) -> AblationResult:
    """Train ``defense`` on ``task`` once per value of ``param`` (every value resolved and checked
    before the first trains; finished identical runs and dependencies are reused), then write
    ``<root>/ablation-<task>-<param>.png`` and ``.csv``: best/last clean and robust metric per value."""
    from .analysis.ablation import ablation_frame
    from .registry import get_registry
    from .resolve import resolve, task_kind_cls
    from .runner import Reporter, Runner

    if not param or "=" in param or "." not in param:
        raise ConfigError(f"--param {param!r}: expected a config key such as nat.omega or training.epochs")
    vals = parse_values(values)
    reg = registry or get_registry()
    resolved = [resolve(reg, task, defense, profile=profile, seed=seed, sets=[*sets, f"{param}={v}"], suite=suite)
                for v in vals]
    if len({r.config_hash for r in resolved}) != len(resolved):
        raise ConfigError(f"--values {','.join(vals)}: two values of {param} resolve to the same configuration "
                          f"(e.g. 0.06 and 6e-2); list each value once")
    runner = Runner(Path(root), data_root, torch.device(device), reporter or Reporter(), reg, db=db)
    ids = [runner.run(r) for r in resolved]
    metric = getattr(task_kind_cls(reg, resolved[0].spec), "headline_metric", "accuracy")
    df, label = ablation_frame(runner.store, list(zip(vals, ids)), metric=metric, robust=robust)
    name = _slug(f"ablation-{resolved[0].task}-{param}")
    png = plots.ablation_plot(df, param, Path(root) / f"{name}.png", label, metric)
    csv = Path(root) / f"{name}.csv"
    atomic_write(csv, lambda tmp: df.assign(param=param, robust=label).to_csv(tmp, index=False))
    return AblationResult(df, label, png, csv, ids)
