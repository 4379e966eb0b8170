"""``natbench ablation`` and ``natbench report`` end to end on digits with a tiny budget (one epoch of
the quick profile, the smoke suite), the re-id report (what does not apply is skipped with a note),
and the user errors. Every page must be self-contained: no network address, images as data URIs."""
from __future__ import annotations

import base64
import json
import logging
import re

import pandas as pd
import pytest
import torch
import yaml

import natbench.runner  # noqa: F401 - torch imported before the CLI call
from natbench.cli import main
from natbench.report import REPORT_DIR, REPORT_PAGE

PNGS = {"sparsity.png", "boundary_distance_class.png", "boundary_distance_matrix.png", "boundary_distance_pairwise.png",
        "weight_distances.png", "shortest_distances.png", "weight_distances_scaled.png", "shortest_distances_scaled.png",
        "embedding.png", "loss_surface.png", "eps_curve.png"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("NATBENCH_ROOT", raising=False)
    monkeypatch.delenv("NATBENCH_DATA", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers  # the commands install a rich INFO handler; later tests expect none
    root.setLevel(level)


def assert_offline(page: str) -> None:
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"https?:", page), "a network address in the page"
    assert "<link" not in page and "url(" not in page and "<script src" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ablation_then_report_with_compare(tmp_path, capsys):
    root = tmp_path / "runs"
    rc = main(["ablation", "--task", "digits", "--defense", "nat", "--param", "nat.omega", "--values", "0,0.06",
               "--profile", "quick", "--set", "training.epochs=1", "--set", "model.width=8", "--suite", "smoke", "--root", str(root),
               "--device", "cpu"])
    assert rc == 0
    out, err = capsys.readouterr()
    png, csv = root / "ablation-digits-nat.omega.png", root / "ablation-digits-nat.omega.csv"
    assert png.read_bytes()[:4] == b"\x89PNG" and f"wrote {png}" in err
    df = pd.read_csv(csv)
    assert df["value"].tolist() == [0.0, 0.06] and set(df["param"]) == {"nat.omega"}
    # the smoke suite has no PGD-20: robust is the per-sample worst case, and the table says so
    assert df["robust"].str.contains("worst case").all() and "worst case" in out
    assert ((df[["best_clean", "best_robust", "last_clean", "last_robust"]] >= 0).all().all()
            and (df["best_robust"] <= df["best_clean"]).all())
    nat0, nat6 = df["run_id"].tolist()
    assert nat0 != nat6 and nat0.startswith("digits-pgd-at+nat-s0-")
    runs = sorted(p.name for p in root.iterdir() if p.is_dir())
    vanilla = [r for r in runs if r.startswith("digits-vanilla-")]
    assert len(runs) == 3 and len(vanilla) == 1  # one shared adversary for both values
    # the same values again: every run is reused, nothing trains
    assert main(["ablation", "--task", "digits", "--defense", "nat", "--param", "nat.omega", "--values", "0,0.06",
                 "--profile", "quick", "--set", "training.epochs=1", "--set", "model.width=8", "--suite", "smoke",
                 "--root", str(root)]) == 0
    assert "already complete" in capsys.readouterr().err

    rc = main(["report", nat6, "--compare", nat0, "--compare", vanilla[0], "--root", str(root), "--max-samples", "60",
               "--device", "cpu"])
    assert rc == 0
    rdir = root / nat6 / REPORT_DIR
    names = {p.name for p in rdir.iterdir()}
    assert PNGS <= names and {f"training_{r.replace('+', '_')}.png" for r in (nat6, nat0, vanilla[0])} <= names
    assert not any(n.endswith(".tmp.png") or n.endswith(".tmp") for n in names)
    page = (rdir / REPORT_PAGE).read_text()
    assert_offline(page)
    assert len(re.findall(r"<img ", page)) == len(PNGS) + 3
    for text in ("Output-probability sparsity", "Eq. 10", "Eq. 11", "Eq. 12", "t-SNE", "Loss surface", "against eps",
                 "eps_curve_non_increasing", "Provenance", nat0, vanilla[0], "config hash", "train s", "pgd-5",
                 "Best epoch", "Per-sample worst case"):
        assert text in page, text
    assert "No sanity check failed" in page or "Flags (failed sanity checks" in page
    record = json.loads((root / nat6 / "record.json").read_text())
    assert record["config_hash"] in page and record["git_rev"] in page


def _reid_run(tmp_path):
    """A finished re-id run written by hand (untrained reid_cnn, quick profile): config.yaml, best.pt,
    last.pt, record.json and a store row; nothing is trained."""
    from natbench.data.market1501 import write_market1501_fixture
    from natbench.registry import get_registry
    from natbench.resolve import resolve
    from natbench.runner import Runner
    from natbench.store import ResultRow, RunRecord

    data, root = tmp_path / "data", tmp_path / "runs"
    write_market1501_fixture(data)
    reg = get_registry()
    r = resolve(reg, "reid_market", "vanilla", profile="quick", suite="reid-smoke")
    runner = Runner(root, data, torch.device("cpu"), registry=reg)
    task = runner.task(r)
    torch.manual_seed(0)
    model = task.build_model()
    run_dir = root / r.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(r.config, sort_keys=False))
    for ck in ("best", "last"):
        torch.save(model.state_dict(), run_dir / f"{ck}.pt")
    history = [{"epoch": 0, "lr": 0.1, "loss": 5.0, "ce_clean": 3.0, "triplet_clean": 2.0, "val_clean": 0.5,
                "val_robust": 0.3, "seconds": 1.0}]
    (run_dir / "record.json").write_text(json.dumps({"history": history}))
    rec = RunRecord(run_id=r.run_id, task=r.task, defense=r.defense, profile=r.profile_name, seed=0, config_hash=r.config_hash,
                    git_rev="g", versions={"torch": torch.__version__}, device="cpu", started="2024-01-01T00:00:00Z",
                    finished="2024-01-01T00:01:00Z", wall_train_s=1.0, wall_eval_s=1.0, config=r.config,
                    suite=["clean", "sma-8"], variant=r.variant)
    runner.store.record_run(rec, [ResultRow(ck, a, m, 0.5) for ck in ("best", "last") for a in ("clean", "sma-8")
                                  for m in ("mAP", "rank1")], [], [])
    runner.store.close()
    return root, data, r.run_id


def test_report_of_a_reid_run_skips_what_needs_class_labels(tmp_path, capsys):
    root, data, run_id = _reid_run(tmp_path)
    assert main(["report", run_id, "--root", str(root), "--data-root", str(data), "--device", "cpu"]) == 0
    rdir = root / run_id / REPORT_DIR
    assert {p.name for p in rdir.iterdir()} == {REPORT_PAGE, f"training_{run_id}.png", "weight_distances.png",
                                                "shortest_distances.png", "weight_distances_scaled.png",
                                                "shortest_distances_scaled.png"}
    page = (rdir / REPORT_PAGE).read_text()
    assert_offline(page)
    assert "are skipped" in page and "identity classifier" in page
    assert "sma-8" in page and "50.00" in page  # the stored results (mAP and rank-1, percent)



def test_report_loads_its_models_without_a_runner(tmp_path, monkeypatch):
    """A report reads runs (natbench.run_model); it never builds the Runner that trains and evaluates."""
    import natbench.runner
    from natbench.report import build_report

    root, data, run_id = _reid_run(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the report built a Runner")

    monkeypatch.setattr(natbench.runner, "Runner", refuse)
    assert build_report(root, run_id, data_root=data).name == REPORT_PAGE

def test_report_user_errors(tmp_path, capsys):
    root, data, run_id = _reid_run(tmp_path)
    capsys.readouterr()
    assert main(["report", "nope", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope" in err
    assert main(["report", run_id, "--root", str(tmp_path / "empty")]) == 2
    assert "no results store" in capsys.readouterr().err
    assert main(["report", run_id, "--root", str(root), "--checkpoint", "middle", "--data-root", str(data)]) == 2
    assert "best or last" in capsys.readouterr().err
    assert main(["ablation", "--task", "digits", "--defense", "nat", "--param", "nat.omega", "--values", "0,0",
                 "--root", str(root)]) == 2
    assert "twice" in capsys.readouterr().err
    assert main(["ablation", "--task", "digits", "--defense", "nat", "--param", "nat.omgea", "--values", "0,1",
                 "--root", str(root)]) == 2
    assert "omgea" in capsys.readouterr().err
    assert not list(root.glob("ablation-*"))  # nothing trained or written before the checks


@pytest.mark.slow
def test_report_has_one_number_per_checkpoint_and_attack(tmp_path, capsys):
    """PGD-20 of one checkpoint used to show three values in one report (sparsity table, eps curve at the
    task's eps, stored suite result: 36.49 / 35.10 / 34.26): the analyses now run the suite's pgd-20 with
    the stored evaluation's random-start seed, the eps curve reuses it at the task's eps, and a table says
    what was run next to the stored number. Also the scale-free views of Eq. 11/12."""
    from natbench.report import ReportOptions, build_report

    root = tmp_path / "runs"
    assert main(["run", "--task", "digits", "--defense", "vanilla", "--profile", "quick", "--set", "training.epochs=1",
                 "--set", "model.width=8", "--set", "threat_model.eps=0.05", "--suite", "digits", "--root", str(root),
                 "--device", "cpu", "--no-leaderboard"]) == 0
    run_id = next(p.name for p in root.iterdir() if p.is_dir())
    page = build_report(root, run_id, options=ReportOptions(eps_multiples=(0.0, 1.0, 2.0), surface_n=5,
                                                            embed_samples=100)).read_text()
    assert_offline(page)
    table = page[page.index("The attack of the analyses"):]
    row = re.search(r"<td class=\"num\">([0-9.]+)</td><td class=\"num\">([0-9.]+)</td><td class=\"num\">359</td>"
                    r"<td class=\"txt\">same</td>", table)
    assert row and row.group(1) == row.group(2), "the report's pgd-20 is not the stored one"
    here = row.group(1)
    curve = page[page.index("Robust accuracy against eps"):]
    header = re.findall(r"<th>([^<]*)</th>", curve)[:4]
    cells = re.findall(r'<td class="(?:num|txt)">([^<]*)</td>', curve)[:4]
    assert header[:3] == ["run \\ eps", "0", "0.05"] and cells[2] == here  # the eps curve at the task's eps
    sparsity = page[page.index("Output-probability sparsity"):page.index("Distance of samples")]
    assert f'<td class="txt">pgd-20</td><td class="num">{here}</td>' in sparsity
    assert "weight_distances_scaled.png" in {p.name for p in (root / run_id / REPORT_DIR).iterdir()}
    assert "mean ||w_j - w_i|| / mean ||w_c||" in page and "mean ||h||" in page
