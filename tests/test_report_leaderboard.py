"""The html leaderboard page from hand-filled stores: sortable table, clean-vs-robust scatter (worst case
or last attack, error bars over seeds), cost of each row, flags; self-contained (no network address)."""
from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from natbench import leaderboard
from natbench.cli import main
from natbench.store import CheckRow, FlagRow, ResultRow, RunRecord, Store

SUITE = {"attacks": [{"id": "fgsm", "attack": "fgsm", "params": {}}, {"id": "pgd-20", "attack": "pgd", "params": {"steps": 20}}]}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "natbench.sqlite")
    yield s
    s.close()


def add(store, run_id, defense, seed, accs, *, flags=None, checks=(), task="digits", wall=10.0, device="cpu",
        config=None, metric="accuracy"):
    suite = list(next(iter(accs.values())))
    run = RunRecord(run_id=run_id, task=task, defense=defense, profile="default", seed=seed, config_hash=f"h-{run_id}",
                    git_rev="g", versions={}, device=device, started=f"2024-01-01T00:00:{len(store.runs()):02d}Z",
                    finished="2024-01-01T01:00:00Z", wall_train_s=wall, wall_eval_s=2.0,
                    config={"suite": SUITE} if config is None else config, suite=suite)
    rows = [ResultRow(ck, a, metric, v) for ck, d in accs.items() for a, v in d.items()]
    store.record_run(run, rows, [FlagRow(ck, a, np.array(f, bool)) for (ck, a), f in (flags or {}).items()], list(checks))


def offline(page: str) -> None:
    """No network address anywhere, nothing loaded from outside the page."""
    assert not re.search(r"https?:", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    for src in re.findall(r'src="([^"]*)"', page):
        assert src.startswith("data:image/png;base64,")
    assert "<script src" not in page


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_html_page_with_seeds_worst_case_cost_and_flags(store):
    full = [1, 1, 1, 1]
    for s, (c, f, p, wall) in enumerate([(0.9, 0.6, 0.5, 10.0), (0.8, 0.5, 0.45, 14.0)]):
        add(store, f"at{s}", "pgd-at", s, {"best": {"clean": c, "fgsm": f, "pgd-20": p}}, wall=wall,
            flags={("best", "clean"): full, ("best", "fgsm"): [1, 1, 0, 1], ("best", "pgd-20"): [1, 0, 0, 1]})
    add(store, "v0", "vanilla", 0, {"best": {"clean": 0.99, "fgsm": 0.05, "pgd-20": 0.0}}, device="cuda",
        flags={("best", "clean"): full, ("best", "fgsm"): [0, 0, 0, 1], ("best", "pgd-20"): [0, 0, 0, 0]},
        checks=[CheckRow("best", "more_steps_not_weaker", False, "pgd-20 weaker than pgd-10 (9 vs 1 discordant samples)")])
    page = leaderboard.html_page(store, "digits")
    offline(page)
    assert page.startswith("<!doctype html>") and '<table class="sortable">' in page and "<script>" in page
    # the table: mean ± std over the two pgd-at seeds, a flags column
    assert "85.00 ± 7.07" in page and "more_steps_not_weaker" in page
    # the scatter uses the worst-case column (per-sample, from flags) and says so
    assert "Robust = &#x27;worst-case&#x27;" in page and "Error bars" in page
    imgs = images(page)
    assert len(imgs) == 1 and imgs[0][:4] == b"\x89PNG"
    # cost: mean and range of the training wall time over seeds, device, estimated budget per image
    assert "12.0" in page and "10.0-14.0" in page and "cuda" in page
    assert "23 fwd / 21 bwd" in page  # fgsm 2/1 + pgd-20 21/20
    assert "estimated budget per image" in page
    # flags section with the check's detail
    assert "9 vs 1 discordant samples" in page
    points, xlabel, caption = leaderboard.scatter_points(leaderboard.table(store, "digits"))
    at = next(p for p in points if p["label"] == "pgd-at")
    assert at["x"] == 85.0 and at["yerr"] == 0.0 and at["xerr"] == pytest.approx(7.07, abs=0.01)  # worst case 50 % in both seeds


def test_scatter_uses_the_last_attack_without_flags(store):
    add(store, "a", "pgd-at", 0, {"best": {"clean": 0.9, "fgsm": 0.6, "pgd-20": 0.5}}, config={})
    df = leaderboard.table(store, "digits")
    assert "worst-case" not in df.columns
    points, _, caption = leaderboard.scatter_points(df)
    assert [(p["x"], p["y"], p["column"]) for p in points] == [(90.0, 50.0, "pgd-20")]
    assert "last attack" in caption
    page = leaderboard.html_page(store, "digits", df)
    offline(page)
    assert "n/a" in page  # no suite config stored: the budget cannot be estimated


def test_reid_frames_with_two_metrics(store):
    cfg = {"task": {"kind": "reid"}, "suite": {"attacks": [{"id": "sma-8", "attack": "sma", "params": {"eps": 8 / 255}}]}}
    run = RunRecord(run_id="r", task="reid_market", defense="amd", profile="quick", seed=0, config_hash="h", git_rev="g",
                    versions={}, device="cpu", started="2024-01-01T00:00:00Z", finished="2024-01-01T01:00:00Z",
                    wall_train_s=3.0, wall_eval_s=1.0, config=cfg, suite=["clean", "sma-8", "fna-8"])
    vals = {"clean": (0.8, 0.75), "sma-8": (0.6, 0.5), "fna-8": (0.4, 0.25)}
    res = [ResultRow("best", a, m, v) for a, (mp, r1) in vals.items() for m, v in (("mAP", mp), ("rank1", r1))]
    flags = [FlagRow("best", "clean", np.array([1, 1, 1, 0], bool)), FlagRow("best", "sma-8", np.array([1, 1, 0, 0], bool)),
             FlagRow("best", "fna-8", np.array([1, 0, 1, 0], bool))]
    store.record_run(run, res, flags, [])
    df = leaderboard.table(store, "reid_market")
    assert "clean mAP" in df.columns and "worst-case rank1" in df.columns
    points, xlabel, caption = leaderboard.scatter_points(df)
    assert [(p["x"], p["y"], p["column"]) for p in points] == [(75.0, 25.0, "worst-case rank1")]
    assert "rank1" in xlabel
    page = leaderboard.html_page(store, "reid_market", df)
    offline(page)
    assert "clean mAP" in page and "17 fwd / 16 bwd" in page  # SMA: 16 steps (fna-8 has no suite entry: unknown)


def test_write_html_only_when_asked(store, tmp_path):
    add(store, "a", "pgd-at", 0, {"best": {"clean": 0.9, "pgd-20": 0.5}})
    out = tmp_path / "lb"
    assert [p.name for p in leaderboard.write(store, out)] == ["digits.md", "digits.csv", "digits.json"]
    paths = leaderboard.write(store, out, formats=leaderboard.WRITE_FORMATS_HTML)
    assert [p.name for p in paths] == ["digits.md", "digits.csv", "digits.json", "digits.html"]
    page = (out / "digits.html").read_text()
    offline(page)
    assert sorted(p.name for p in out.iterdir()) == ["digits.csv", "digits.html", "digits.json", "digits.md"]  # no tmp left
    from natbench.errors import ConfigError

    with pytest.raises(ConfigError, match="pdf"):
        leaderboard.write(store, out, formats=("pdf",))


def test_cli_format_html_write(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NATBENCH_ROOT", raising=False)
    root = tmp_path / "runs"
    with Store(root / "natbench.sqlite") as s:
        add(s, "a", "pgd-at", 0, {"best": {"clean": 0.9, "pgd-20": 0.5}, "last": {"clean": 0.8, "pgd-20": 0.4}})
    dest = tmp_path / "lb"
    assert main(["leaderboard", "--format", "html", "--write", "--out", str(dest), "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    assert sorted(p.name for p in dest.iterdir()) == ["digits.csv", "digits.html", "digits.json", "digits.md"]
    assert "digits.html" in err and out.startswith("<!doctype html>")
    offline((dest / "digits.html").read_text())
