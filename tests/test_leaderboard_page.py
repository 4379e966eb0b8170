"""The html leaderboard page from hand-filled stores: sortable table, clean-vs-robust scatter (worst case,
else the minimum over attacks; error bars = 95 % intervals), cost of each row, flags; self-contained (no
network address)."""
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
    # the table: mean over the two pgd-at seeds ± its 95 % interval, a flags column
    assert "85.00 ± " in page and "more_steps_not_weaker" in page
    assert "What each row was measured on" in page and "at0 at1" in page  # the run ids of the row
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
    # worst case 50 % in both seeds (no spread), on 4 test points: the Wilson interval of 2/4 (scipy's)
    from scipy import stats

    ci = stats.binomtest(2, 4).proportion_ci(method="wilson")
    assert at["x"] == 85.0 and at["y"] == 50.0
    assert at["yerr"] == pytest.approx((50 - 100 * ci.low, 100 * ci.high - 50), abs=0.01)
    assert at["xerr"][0] > 7.07  # the clean spread over seeds (std 7.07) widens its interval


def test_scatter_uses_the_minimum_over_attacks_without_flags(store):
    add(store, "a", "pgd-at", 0, {"best": {"clean": 0.9, "pgd-20": 0.5, "fgsm": 0.6}}, config={})
    df = leaderboard.table(store, "digits")
    assert "worst-case" not in df.columns
    points, _, caption = leaderboard.scatter_points(df)
    # the weakest value over the attacks, not the suite's last attack (fgsm here, 60 %)
    assert [(p["x"], p["y"], p["column"]) for p in points] == [(90.0, 50.0, "pgd-20")]
    assert "minimum over the row's attacks" in caption
    page = leaderboard.html_page(store, "digits", df)
    offline(page)
    assert "n/a" in page  # no suite config stored: the budget cannot be estimated


def test_reid_frames_with_two_metrics(store):
    cfg = {"task": {"kind": "reid", "threat_model": {"norm": "linf", "eps": 8 / 255}},
           "suite": {"attacks": [{"id": "sma-8", "attack": "sma", "params": {"eps": "8/255"}}]}}
    run = RunRecord(run_id="r", task="reid_market", defense="amd", profile="quick", seed=0, config_hash="h", git_rev="g",
                    versions={}, device="cpu", started="2024-01-01T00:00:00Z", finished="2024-01-01T01:00:00Z",
                    wall_train_s=3.0, wall_eval_s=1.0, config=cfg, suite=["clean", "sma-8", "fna-8"])
    vals = {"clean": (0.8, 0.75), "sma-8": (0.6, 0.5), "fna-8": (0.4, 0.25)}
    res = [ResultRow("best", a, m, v) for a, (mp, r1) in vals.items() for m, v in (("mAP", mp), ("rank1", r1))]
    flags = [FlagRow("best", "clean", np.array([1, 1, 1, 0], bool)), FlagRow("best", "sma-8", np.array([1, 1, 0, 0], bool)),
             FlagRow("best", "fna-8", np.array([1, 0, 1, 0], bool))]
    store.record_run(run, res, flags, [])
    df = leaderboard.table(store, "reid_market")
    # the worst case names its metric and its eps (re-id's attacks come at 8/255 and 10/255)
    assert "clean mAP" in df.columns and "worst-case rank1 @8/255" in df.columns
    points, xlabel, caption = leaderboard.scatter_points(df)
    assert [(p["x"], p["y"], p["column"]) for p in points] == [(75.0, 25.0, "worst-case rank1 @8/255")]
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
    """``--format html`` prints the same page ``--write`` writes (it used to print a bare table)."""
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
    strip = lambda page: re.sub(r'src="data:image/png;base64,[^"]+"', "", page)  # noqa: E731 - PNG bytes may differ
    assert strip(out) == strip((dest / "digits.html").read_text())


def test_cli_write_defaults_under_root(tmp_path, capsys, monkeypatch):
    """``--write`` without ``--out`` writes under ``--root``, never into the working directory's
    (a checkout's tracked) ``leaderboards/``."""
    monkeypatch.delenv("NATBENCH_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    with Store(root / "natbench.sqlite") as s:
        add(s, "a", "pgd-at", 0, {"best": {"clean": 0.9, "pgd-20": 0.5}})
    assert main(["leaderboard", "--write", "--format", "md", "--root", str(root)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (root / "leaderboards").iterdir()) == ["digits.csv", "digits.json", "digits.md"]
    assert not (tmp_path / "leaderboards").exists()


def test_cli_terminal_table_never_cuts_names_and_folds(tmp_path, capsys, monkeypatch):
    """In a narrow terminal, pgd-at, pgd-at+nat and pgd-at+myreg stay whole; a wide table folds into the
    headline view (clean, headline attack, worst case), ``--columns all`` shows every attack."""
    import io

    from rich.console import Console

    from natbench import cli_output

    monkeypatch.delenv("NATBENCH_ROOT", raising=False)
    root = tmp_path / "runs"
    attacks = ["clean", "fgsm", "pgd-10", "pgd-20", "pgd-50", "cw-inf"]
    with Store(root / "natbench.sqlite") as s:
        for i, d in enumerate(("pgd-at", "pgd-at+nat", "pgd-at+myreg")):
            flags = {("best", a): [1, 1, 1, 0] if a == "clean" else [1, 0, i > 0, 0] for a in attacks}
            accs = {a: 0.75 if a == "clean" else 0.25 if a == "pgd-20" else 0.5 for a in attacks}  # pgd-20: the strongest
            add(s, d, d, 0, {"best": accs}, flags=flags)
    for columns, want, absent in (("auto", "pgd-20", "cw-inf"), ("all", "cw-inf", None)):
        buf = io.StringIO()
        monkeypatch.setattr(cli_output, "out", Console(file=buf, width=70, soft_wrap=True))
        assert main(["leaderboard", "--root", str(root), "--columns", columns]) == 0
        text = buf.getvalue()
        for name in ("pgd-at+myreg", "pgd-at+nat"):
            assert name in text
        assert want in text and (absent is None or absent not in text)
        assert ("headline view" in text) == (columns == "auto")


def test_cli_write_to_an_unwritable_folder_is_one_line(tmp_path, capsys, monkeypatch):
    """--write where no folder can be made (read-only root, a file in the way): one line, exit 2."""
    monkeypatch.delenv("NATBENCH_ROOT", raising=False)
    root = tmp_path / "runs"
    with Store(root / "natbench.sqlite") as s:
        add(s, "a", "pgd-at", 0, {"best": {"clean": 0.9, "pgd-20": 0.5}})
    (tmp_path / "afile").write_text("x")
    assert main(["leaderboard", "--write", "--out", str(tmp_path / "afile" / "lb"), "--root", str(root), "-f", "csv"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "--out" in err
