"""The corruptions suite: the grid entry's expansion, the corruption entry on each task kind
(classification on the fly and from a published CIFAR-10-C, re-id query and gallery, detection),
the gradient-masking checks skipping it, per-sample storage, and mean / mCE (hand-derived)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from natbench import corruptions as C
from natbench.attacks.corruption import Corruption, entry_id, parse_id, version_code
from natbench.contracts import Batch
from natbench.corruption_suite import expand, summary
from natbench.errors import ConfigError, DataError
from natbench.registry import get_registry
from natbench.resolve import check_suite, load_suite, resolve, task_kind_cls
from natbench.taskspec import SuiteAttack, SuiteSpec

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(C.available() is not None, reason=f"imagecorruptions: {C.available()}")]
REG = get_registry()


def corr(c: str = "gaussian_noise", s: int = 3, **kw) -> Corruption:
    return Corruption(Corruption.Params(corruption=c, severity=s, **kw))


# ----------------------------------------------------------------------------- the grid entry
def test_the_builtin_suite_is_the_full_grid_and_a_subset_expands_in_order():
    s = load_suite(REG, "corruptions")
    assert len(s.attacks) == 75 and s.attacks[0].id == "corr-gaussian_noise-1" and s.attacks[-1].id == "corr-jpeg_compression-5"
    assert {parse_id(a.id) for a in s.attacks} == {(c, k) for c in C.CORRUPTIONS for k in C.SEVERITIES}
    sub = expand(SuiteSpec("q", "", (SuiteAttack("fgsm", "fgsm"), SuiteAttack("corr", "corruption", {
        "corruptions": ["fog", "snow"], "severities": [2, 5], "seed": 3}))))
    assert [a.id for a in sub.attacks] == ["fgsm", "corr-fog-2", "corr-fog-5", "corr-snow-2", "corr-snow-5"]
    assert sub.attacks[1].params == {"seed": 3, "corruption": "fog", "severity": 2}
    assert parse_id("corr-fog-6") is None and parse_id("pgd-20") is None and entry_id("fog", 2) == "corr-fog-2"
    assert version_code("1.1.2") == 10102.0


@pytest.mark.parametrize("entry,msg", [
    (SuiteAttack("c", "corruption"), "id must be 'corr'"),
    (SuiteAttack("corr", "corruption", {"corruptions": ["fogg"]}), "Unknown corruption 'fogg'"),
    (SuiteAttack("corr", "corruption", {"severities": [0]}), "severity 0"),
    (SuiteAttack("corr", "corruption", {"severities": []}), "non-empty lists"),
    (SuiteAttack("x", "corruption", {"corruption": "fog", "severity": 2}), "must be corr-fog-2"),
    (SuiteAttack("corr-fog-2", "corruption", {"corruption": "fog", "severity": 2, "severities": [1]}), "either"),
])
def test_bad_corruption_entries_are_one_line_errors(entry, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        expand(SuiteSpec("bad", "", (entry,)))
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- classification, on the fly
def _digits_task():
    r = resolve(REG, "digits", "vanilla", profile="quick")
    return task_kind_cls(REG, r.spec)(r.spec, None)


def test_digits_entry_is_the_upscaled_corruption_of_each_test_image_in_any_batch_split():
    from natbench.tasks.classification.data import TensorLoader

    task = _digits_task()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(7, 1, 8, 8), torch.randint(0, 10, (7,))
    atk = corr("gaussian_noise", 5)
    out = task.evaluate(model, TensorLoader(x, y, 3), atk)  # severity 5 leaves any eps-ball: no ball check
    want = C.corrupt_batch(x, "gaussian_noise", 5, seed=0, indices=range(7), upscale=True)
    assert torch.equal(out.correct, model(want).argmax(1) == y)
    assert (want - x).abs().max() > task.threat.eps  # outside the eps-ball, and no ball check failed
    assert torch.equal(task.evaluate(model, TensorLoader(x, y, 7), atk).correct, out.correct)
    assert atk.result_metrics == {"published_set": 0.0, "imagecorruptions_version": version_code(C.version())}
    other = task.evaluate(model, TensorLoader(x, y, 7), corr("gaussian_noise", 5, seed=1)).correct
    assert torch.equal(atk(None, x), want) and not torch.equal(corr("gaussian_noise", 5, seed=1)(None, x), want)
    assert other.shape == out.correct.shape


# ----------------------------------------------------------------------------- classification, published set
@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    from natbench.data.cifar import write_cifar10_fixture
    from natbench.data.corrupted import write_cifar10_c_fixture

    root = tmp_path_factory.mktemp("c10")
    write_cifar10_fixture(root)
    return write_cifar10_c_fixture(root)


def test_cifar10_entry_reads_cifar10_c_rows_of_the_test_set(cifar_root):
    from natbench.data.corrupted import read_cifar_c

    r = resolve(REG, "cifar10", "vanilla", profile="quick")
    task = task_kind_cls(REG, r.spec)(r.spec, cifar_root)
    _, _, test = task.loaders(8, torch.Generator().manual_seed(0), 8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    atk = corr("fog", 4)
    out = task.evaluate(model, test, atk)
    xc, yc = read_cifar_c(cifar_root, "cifar10-c", "fog", 4)
    assert torch.equal(yc, test.y)  # the fixture is the clean test set corrupted in order, as the real archive
    assert torch.equal(out.correct, model(xc.float() / 255).argmax(1) == yc)
    assert atk.result_metrics == {"published_set": 1.0}
    gen = corr("fog", 4, source="generated")
    task.evaluate(model, test, gen)
    assert gen.result_metrics["published_set"] == 0.0  # the same table shape, another source
    batch = next(iter(test))
    assert not torch.equal(gen.corrupt(batch, task), atk.corrupt(batch, task))
    bad = Batch(batch.x, (batch.y + 1) % 10, batch.index)
    with pytest.raises(DataError, match="labels differ"):
        atk.corrupt(bad, task)
    with pytest.raises(ConfigError, match="no published corrupted set"):
        corr(source="published").corrupt(batch, _digits_task())


# ----------------------------------------------------------------------------- re-id and detection
def test_reid_entry_corrupts_query_and_gallery_with_different_draws(tmp_path, monkeypatch):
    from natbench.data.market1501 import write_market1501_fixture

    root = write_market1501_fixture(tmp_path / "market", n_train_ids=8, n_test_ids=4, train_images=4, n_distractors=2,
                                    n_junk=1, height=64, width=32)
    r = resolve(REG, "reid_market", "vanilla", profile="quick",
                sets=["model.arch=reid_cnn", "model.width=8", "task.params.height=64", "task.params.width=32"])
    task = task_kind_cls(REG, r.spec)(r.spec, root)
    _, _, test = task.loaders(16, torch.Generator().manual_seed(0), 64)
    torch.manual_seed(0)
    model = task.build_model()
    seen: dict[str, list] = {}
    real = Corruption._generate

    def spy(self, x, index, split):
        seen.setdefault(split, []).append(index.clone())
        return real(self, x, index, split)

    monkeypatch.setattr(Corruption, "_generate", spy)
    check_suite(REG, load_suite(REG, "corruptions"), r.plan, type(task), r.spec)  # a corruption needs no objective
    out = task.evaluate(model, test, corr("impulse_noise", 2), objective=Corruption.objective_kind)  # as the suite calls it
    assert set(seen) == {"query", "gallery"} and set(out.metrics) >= {"mAP", "rank1"}
    assert len(out.correct) == len(test.query.items)
    seen.clear()
    task.evaluate(model, test, corr("impulse_noise", 2, side="query"))
    assert set(seen) == {"query"}
    x = torch.rand(2, 3, 64, 32)
    a = corr("impulse_noise", 2)
    assert not torch.equal(a._generate(x, torch.arange(2), "query"), a._generate(x, torch.arange(2), "gallery"))


def test_detection_entry_keeps_the_boxes_and_scores_map(tmp_path):
    from natbench.data.voc import write_voc_fixture

    root = write_voc_fixture(tmp_path / "voc", n_trainval=4, n_test=3, seed=5)
    r = resolve(REG, "voc_detection", "vanilla", profile="quick")
    task = task_kind_cls(REG, r.spec)(r.spec, root)
    _, _, test = task.loaders(4, torch.Generator().manual_seed(0), 4)
    boxes = [np.array(it.boxes, copy=True) for it in test.items]
    torch.manual_seed(0)
    model = task.build_model()
    check_suite(REG, load_suite(REG, "corruptions"), r.plan, type(task), r.spec)
    out = task.evaluate(model, test, corr("brightness", 3), objective=Corruption.objective_kind)
    assert "mAP" in out.metrics and len(out.correct) == 3
    assert all(np.array_equal(b, it.boxes) for b, it in zip(boxes, test.items))


# ----------------------------------------------------------------------------- mean and mCE
def test_mce_summary_by_hand():
    vals = {(c, s): 0.9 - 0.1 * s for c in C.CORRUPTIONS for s in C.SEVERITIES}  # errors 0.2 .. 0.6, sum 2.0
    base = {(c, s): 0.8 - 0.1 * s for c in C.CORRUPTIONS for s in C.SEVERITIES}  # errors 0.3 .. 0.7, sum 2.5
    del vals[("fog", 3)]
    s = summary(vals, "accuracy", base, "vanilla")
    assert s.ce["snow"] == pytest.approx(80.0) and "fog" not in s.ce
    assert s.mce == pytest.approx(80.0) and "missing: fog" in s.mce_note
    assert s.per_corruption["fog"] == pytest.approx((0.8 + 0.7 + 0.5 + 0.4) / 4)
    assert s.mean == pytest.approx((15 * 3.0 - 0.6) / 74)  # each corruption sums 0.8+0.7+0.6+0.5+0.4 = 3.0
    none = summary(vals, "accuracy", None, no_baseline="no vanilla quick row")
    assert math.isnan(none.mce) and none.mce_note == "no vanilla quick row"


# ----------------------------------------------------------------------------- the suite end to end
def test_eval_stores_corruption_entries_per_sample_and_the_checks_skip_them(tmp_path, monkeypatch):
    import natbench.suite as S
    from natbench import leaderboard as lb
    from natbench import leaderboard_corruptions as lc
    from natbench.cli_eval import eval_run
    from natbench.store import Store

    from helpers import make_run

    run_id = make_run(tmp_path)
    seen: dict[str, list] = {"suite": [], "model": []}
    real_suite = S.suite_checks
    monkeypatch.setattr(S, "suite_checks", lambda acc, *a: seen["suite"].append(set(acc)) or real_suite(acc, *a))
    monkeypatch.setattr(S, "model_checks", lambda *a, **k: seen["model"].append(1) or [])  # (an untrained model fails them)
    for name, entries in (("mixed", "[{id: fgsm, attack: fgsm}, "), ("only", "[")):
        (tmp_path / f"{name}.yaml").write_text(f"suite: {name}\nattacks: {entries}{{id: corr, attack: corruption, "
                                               f"params: {{corruptions: [gaussian_noise], severities: [2]}}}}]\n")
    eval_run(run_id, str(tmp_path / "mixed.yaml"), "best", "cpu", tmp_path, None, None, False, False, 1)
    assert seen == {"suite": [{"clean", "fgsm"}], "model": [1]}  # the corruption entry is in no check
    eval_run(run_id, str(tmp_path / "only.yaml"), "best", "cpu", tmp_path, None, None, False, False, 1)
    assert seen["model"] == [1]  # a corruptions-only suite runs no gradient-masking model check
    with Store(tmp_path / "natbench.sqlite", readonly=True) as store:
        flags = store.flags(run_id, "best")["corr-gaussian_noise-2"]
        res = store.results("digits")
        mine = res[res["attack"] == "corr-gaussian_noise-2"].set_index("metric")["value"]
        assert len(flags) == len(store.flags(run_id, "best")["clean"]) > 300 and mine["accuracy"] == pytest.approx(flags.mean())
        assert mine["imagecorruptions_version"] == version_code(C.version()) and mine["published_set"] == 0
        assert not any(c.startswith("corr-") for c in lb.table(store, "digits").columns)  # adversarial table only
        df = lc.table(store, "digits")
        assert len(df) == 1 and df.loc[0, "entries"] == 1 and df.loc[0, "gaussian_noise"] == pytest.approx(100 * flags.mean())
        assert math.isnan(df.loc[0, "mCE"]) and "all 5 severities" in df.loc[0, "mCE note"]
    from natbench.cli import main

    assert main(["leaderboard", "--root", str(tmp_path), "--baseline", run_id, "--format", "csv", "--write",
                 "--out", str(tmp_path / "lb")]) == 0
    assert "corr" not in (tmp_path / "lb" / "digits.csv").read_text()
    assert "gaussian_noise" in (tmp_path / "lb" / "digits-corruptions.csv").read_text()
    assert main(["leaderboard", "--root", str(tmp_path), "--format", "html", "--write", "--out", str(tmp_path / "lb")]) == 0
    page = (tmp_path / "lb" / "digits.html").read_text()  # the page has the corruptions table too
    assert "<h2>Common corruptions" in page and "gaussian_noise" in page and "all 5 severities" in page
    assert main(["leaderboard", "--root", str(tmp_path), "--baseline", "nope"]) == 2  # one line, exit 2


class _Store:
    def __init__(self, rows):
        self.df = pd.DataFrame(rows, columns=["run_id", "task", "defense", "profile", "variant", "seed", "checkpoint",
                                              "attack", "metric", "value"])

    def results(self, task=None):
        return self.df if task is None else self.df[self.df["task"] == task]


def test_corruptions_table_mce_against_the_vanilla_row_or_a_named_run():
    from natbench.leaderboard_corruptions import table

    rows = []
    for run, defense, seed, acc in (("v0", "vanilla", 0, 0.5), ("v1", "vanilla", 1, 0.3), ("p0", "pgd-at", 0, 0.6)):
        rows.append((run, "t", defense, "quick", "", seed, "best", "clean", "accuracy", acc + 0.3))
        for c in C.CORRUPTIONS:
            for s in C.SEVERITIES:
                rows.append((run, "t", defense, "quick", "", seed, "best", entry_id(c, s), "accuracy", acc))
    store = _Store(rows)
    df = table(store, "t", "accuracy").set_index("defense")
    # vanilla: seeds averaged entry by entry, error 0.6; pgd-at error 0.4: CE = 0.4 / 0.6 for every corruption
    assert df.loc["vanilla", "seeds"] == 2 and df.loc["vanilla", "mean"] == pytest.approx(40.0)
    assert df.loc["vanilla", "mCE"] == pytest.approx(100.0) and df.loc["pgd-at", "mCE"] == pytest.approx(100 * 0.4 / 0.6)
    assert df.loc["pgd-at", "fog"] == pytest.approx(60.0) and df.loc["pgd-at", "clean"] == pytest.approx(90.0)
    named = table(store, "t", "accuracy", baseline="v1").set_index("defense")  # error 0.7
    assert named.loc["pgd-at", "mCE"] == pytest.approx(100 * 0.4 / 0.7) and named.loc["pgd-at", "baseline"] == "v1"
    no_vanilla = table(_Store([r for r in rows if r[2] != "vanilla"]), "t", "accuracy")
    assert math.isnan(no_vanilla.loc[0, "mCE"]) and "no vanilla quick row" in no_vanilla.loc[0, "mCE note"]


# ----------------------------------------------------------------------------- the report's heat map
def test_report_section_draws_the_heat_map_with_missing_cells_blank(tmp_path):
    from types import SimpleNamespace

    from natbench.report.corruptions import corruptions_section, grid

    rows = [("r1", "digits", "vanilla", "quick", "", 0, "best", entry_id(c, s), "accuracy", 0.1 * s)
            for c in ("fog", "snow") for s in (1, 3)] + [("r1", "digits", "vanilla", "quick", "", 0, "best", "fgsm", "accuracy", 0.2)]
    store = _Store(rows)
    g = grid(store.results(), "accuracy")
    assert g.shape == (15, 5) and g[C.CORRUPTIONS.index("fog"), 2] == pytest.approx(30.0)
    assert np.isnan(g[C.CORRUPTIONS.index("fog"), 1]) and np.isnan(g[0]).all()  # not run: missing, never 0
    spec = resolve(REG, "digits", "vanilla").spec
    run = SimpleNamespace(run_id="r1", label="A", resolved=SimpleNamespace(spec=spec))
    html = corruptions_section([run], store, tmp_path, "best")
    png = tmp_path / "corruptions_r1.png"
    assert png.is_file() and png.stat().st_size > 10_000 and "Common corruptions" in html and "20.00" in html
    assert corruptions_section([run], store, tmp_path, "last") == ""  # no corruption results: no section


def test_imagenet100_entry_reads_imagenet_c_copies_of_the_test_files(tmp_path):
    from natbench.data.corrupted import write_imagenet_c_fixture
    from natbench.data.imagenet100 import write_imagenet100_fixture

    write_imagenet100_fixture(tmp_path, n_classes=100, per_class=1, size=40)
    write_imagenet_c_fixture(tmp_path, size=32, corruptions=("fog",))
    r = resolve(REG, "imagenet100", "vanilla", profile="quick", sets=["data.image_size=32"])
    task = task_kind_cls(REG, r.spec)(r.spec, tmp_path)
    _, _, test = task.loaders(2, torch.Generator().manual_seed(0), 2)
    files = task._data()["test"][0]
    batch = next(iter(test))
    atk = corr("fog", 2)
    x = atk.corrupt(batch, task)
    from PIL import Image

    def copy(f):  # ImageNet-C's file of the same wnid folder and name, already 32 x 32 (no resize)
        with Image.open(tmp_path / "ImageNet-C" / "fog" / "2" / f.parent.name / f.name) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)

    want = torch.stack([copy(files[i]) for i in batch.index.tolist()]).float() / 255
    assert x.shape == batch.x.shape and torch.equal(x, want) and atk.result_metrics == {"published_set": 1.0}
    assert not torch.equal(corr("fog", 2, source="generated").corrupt(batch, task), x)
    with pytest.raises(DataError, match="folder not found"):
        corr("snow", 2, source="published").corrupt(batch, task)
