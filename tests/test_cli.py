"""Tests for the natbench command line, in process (``natbench.cli.main``): exit codes, the one-line
user error, stdout hygiene and leaderboards from a hand-filled store. No training."""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pandas as pd
import pytest

import natbench.runner  # noqa: F401 - imported here so the first CLI call is not slowed by torch's import
from natbench.cli import main
from natbench.store import ResultRow, RunRecord, Store

# ------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No results/data root leaks in from the environment or the repository's ./runs, ./data."""
    monkeypatch.delenv("NATBENCH_ROOT", raising=False)
    monkeypatch.delenv("NATBENCH_DATA", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "runs"


def _no_run_recorded(root: Path) -> None:
    db = root / "natbench.sqlite"
    if db.exists():
        with Store(db) as s:
            assert s.runs().empty, "a failed command left a run row in the store"
    if root.exists():
        leftovers = [p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").exists()]
        assert leftovers == [], f"a failed command left run directories: {leftovers}"


def _bad_input_cases(tmp: Path) -> dict[str, tuple[list[str], str | None]]:
    malformed = tmp / "malformed.yaml"
    malformed.write_text("task: digits\nthreat_model: [1, 2\nkind: classification\n")
    dupkey = tmp / "dupkey.yaml"
    dupkey.write_text("task: digits\nkind: classification\ntask: digits\n")
    run = ["run", "--task", "digits", "--defense", "vanilla"]
    return {
        "unknown-task": (["run", "--task", "digitz", "--defense", "vanilla"], "Did you mean: digits"),
        "unknown-defense": (["run", "--task", "digits", "--defense", "trade"], "Did you mean: trades"),
        "two-bases": (["run", "--task", "digits", "--defense", "pgd-at+trades"], "exactly one"),
        "unknown-component": (["run", "--task", "digits", "--defense", "pgd-at+natt"], "Did you mean: nat"),
        "malformed-task-file": (["run", "--task", str(malformed), "--defense", "vanilla"], "malformed YAML"),
        "dupkey-task-file": (["run", "--task", str(dupkey), "--defense", "vanilla"], "duplicate key 'task'"),
        "missing-task-file": (["run", "--task", str(tmp / "nope.yaml"), "--defense", "vanilla"], "no such config file"),
        "set-unknown-top": ([*run, "--set", "trainig.epochs=1"], "Did you mean: training"),
        "set-unknown-leaf": ([*run, "--set", "training.epoch=1"], "Did you mean: epochs"),
        "set-malformed": ([*run, "--set", "epochs3"], "key.path=value"),
        "set-eps-negative": ([*run, "--set", "threat_model.eps=-0.1"], "eps"),
        "set-eps-not-a-number": ([*run, "--set", "threat_model.eps=abc"], "eps"),
        "set-component-not-composed": ([*run, "--set", "nat.omega=0.06"], "nat"),
        "missing-data-root": ([*run, "--data-root", str(tmp / "missing")], "missing"),
        "unknown-profile": ([*run, "--profile", "nosuch"], "nosuch"),
        "unknown-suite": ([*run, "--suite", "nosuch"], "nosuch"),
        "bad-device": ([*run, "--device", "tpu"], "tpu"),
        "negative-seed": ([*run, "--seed", "-1"], "seed"),
        "sweep-malformed": ([*run, "--sweep", "training.lr"], "key.path=v1,v2"),
        "sweep-duplicate-value": ([*run, "--sweep", "training.lr=0.1,0.1"], "twice"),
        "sweep-bad-value": ([*run, "--sweep", "training.epochs=1,0"], "epochs"),
        "second-seed-bad-set": ([*run, "--seed", "0", "--seed", "1", "--set", "training.epochs=0"], "epochs"),
        "eval-unknown-run": (["eval", "no-such-run"], "no-such-run"),
        "eval-bad-checkpoint": (["eval", "no-such-run", "--checkpoint", "middle"], "middle"),
        "leaderboard-no-store": (["leaderboard"], "natbench.sqlite"),
        "leaderboard-bad-format": (["leaderboard", "--format", "xml"], "xml"),
        "list-unknown-kind": (["list", "nosuchkind"], "nosuchkind"),
        "list-unknown-name": (["list", "defenses", "trade"], "Did you mean: trades"),
        "threads-zero": ([*run, "--threads", "0"], "--threads 0"),
        "suite-missing-yaml": ([*run, "--suite", str(tmp / "nosuch.yaml")], "no such config file"),
        "fixture-unknown-dataset": (["data", "fixture", "nosuch", "--out", str(tmp / "fx")], "nosuch"),
    }


BAD_IDS = [
    "unknown-task", "unknown-defense", "two-bases", "unknown-component", "malformed-task-file", "dupkey-task-file",
    "missing-task-file", "set-unknown-top", "set-unknown-leaf", "set-malformed", "set-eps-negative",
    "set-eps-not-a-number", "set-component-not-composed", "missing-data-root", "unknown-profile", "unknown-suite",
    "bad-device", "negative-seed", "sweep-malformed", "sweep-duplicate-value", "sweep-bad-value", "second-seed-bad-set", "eval-unknown-run", "eval-bad-checkpoint",
    "leaderboard-no-store", "leaderboard-bad-format", "list-unknown-kind", "fixture-unknown-dataset",
    "list-unknown-name", "threads-zero", "suite-missing-yaml",
]


# ------------------------------------------------------------------------------- user errors
@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_input_is_one_line_exit_2(case, tmp_path, root, capsys):
    cases = _bad_input_cases(tmp_path)
    argv, needle = cases[case]
    if argv[0] in ("run", "eval", "leaderboard"):
        argv = [*argv, "--root", str(root)]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, f"exit code {rc}; stderr:\n{err}"
    assert out == "", f"stdout must stay empty on a user error, got:\n{out}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and err.strip() == lines[0], f"expected ONE line on stderr, got:\n{err}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    if needle:
        assert needle in lines[0], lines[0]
    _no_run_recorded(root)


def test_bad_case_list_is_complete(tmp_path):
    assert sorted(_bad_input_cases(tmp_path)) == sorted(BAD_IDS)


@pytest.mark.parametrize("argv", [
    ["run", "--task", "digits"],
    ["run", "--task", "digits", "--defense", "vanilla", "--seed", "abc"],
    ["nosuchcommand"],
], ids=["missing-option", "bad-int", "unknown-command"])
def test_usage_errors_exit_2(argv, root, capsys):
    rc = main([*argv, "--root", str(root)] if argv[0] == "run" else argv)
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err
    _no_run_recorded(root)


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "run" in capsys.readouterr().out


# ------------------------------------------------------------------------------- list / check
def test_list_all(capsys):
    assert main(["list"]) == 0
    out, err = capsys.readouterr()
    for name in ("pgd-at", "trades", "vanilla", "nat", "digits", "fgsm", "pgd", "classification", "smoke"):
        assert name in out, name
    assert "pgd-at+nat" in out  # nat's alias
    assert err == ""


def test_list_defenses(capsys):
    assert main(["list", "defenses"]) == 0
    out, err = capsys.readouterr()
    assert "pgd-at" in out and "trades" in out and "vanilla" in out
    assert "fgsm" not in out and "smoke" not in out  # only the defenses table
    assert err == ""


@pytest.mark.parametrize("kind", ["tasks", "regularizers", "perturbations", "attacks", "suites", "task_kinds"])
def test_list_each_kind(kind, capsys):
    assert main(["list", kind]) == 0
    assert kind in capsys.readouterr().out


def test_check(capsys):
    assert main(["check"]) == 0
    out, _ = capsys.readouterr()
    assert "trades" in out and "nat" in out and "ok" in out
    assert "failed" not in out


# ------------------------------------------------------------------------------- leaderboard
def _fill_store(root: Path) -> None:
    """Two fake finished runs of task digits (written by hand, nothing trained)."""
    accs = {
        ("digits-vanilla-s0-aaaa", "vanilla"): {"best": {"clean": 0.98, "pgd-20": 0.02}, "last": {"clean": 0.97, "pgd-20": 0.01}},
        ("digits-pgd-at-s0-bbbb", "pgd-at"): {"best": {"clean": 0.90, "pgd-20": 0.60}, "last": {"clean": 0.91, "pgd-20": 0.55}},
    }
    with Store(root / "natbench.sqlite") as store:
        for i, ((run_id, defense), per_ckpt) in enumerate(accs.items()):
            run = RunRecord(run_id=run_id, task="digits", defense=defense, profile="default", seed=0,
                            config_hash=f"hash-{i}", git_rev="test", versions={}, device="cpu",
                            started=f"2024-01-01T00:00:0{i}+00:00", finished=f"2024-01-01T00:01:0{i}+00:00",
                            wall_train_s=1.0, wall_eval_s=1.0, config={}, suite=["clean", "pgd-20"])
            rows = [ResultRow(ck, a, "accuracy", v) for ck, d in per_ckpt.items() for a, v in d.items()]
            store.record_run(run, rows, [], [])


def _csv_only(text: str) -> pd.DataFrame:
    assert text.strip(), "no CSV on stdout"
    lines = text.strip().splitlines()
    n = lines[0].count(",")
    assert n >= 3 and all(ln.count(",") == n for ln in lines), f"stdout is not plain CSV:\n{text}"
    return pd.read_csv(io.StringIO(text))


def test_leaderboard_csv(root, capsys):
    _fill_store(root)
    assert main(["leaderboard", "--format", "csv", "--root", str(root)]) == 0
    out, _ = capsys.readouterr()
    df = _csv_only(out)
    for col in ("defense", "checkpoint", "clean", "avg"):
        assert col in df.columns
    assert sorted(df["defense"].unique()) == ["pgd-at", "vanilla"]
    assert len(df) == 4
    row = df[(df.defense == "pgd-at") & (df.checkpoint == "best")].iloc[0]
    assert row["clean"] == pytest.approx(90.0) and row["pgd-20"] == pytest.approx(60.0)
    assert row["avg"] == pytest.approx(60.0)  # the mean over the suite's attacks (pgd-20), clean never part of it


def test_leaderboard_csv_one_task(root, capsys):
    _fill_store(root)
    assert main(["leaderboard", "--task", "digits", "-f", "csv", "--root", str(root)]) == 0
    df = _csv_only(capsys.readouterr().out)
    assert {"defense", "checkpoint", "clean", "avg"} <= set(df.columns)


def test_leaderboard_json(root, capsys):
    _fill_store(root)
    assert main(["leaderboard", "--format", "json", "--root", str(root)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 4 and {"defense", "checkpoint", "clean", "avg"} <= set(records[0])


def test_leaderboard_table(root, capsys):
    _fill_store(root)
    assert main(["leaderboard", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "vanilla" in out and "pgd-at" in out and "digits" in out


def test_leaderboard_unknown_task(root, capsys):
    _fill_store(root)
    assert main(["leaderboard", "--task", "cifar10", "--format", "csv", "--root", str(root)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "cifar10" in err


def test_leaderboard_write(root, tmp_path, capsys):
    _fill_store(root)
    dest = tmp_path / "lb"
    assert main(["leaderboard", "--write", "--out", str(dest), "--format", "csv", "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    stdout_df = _csv_only(out)  # the "wrote ..." messages go to stderr, not stdout
    assert sorted(p.name for p in dest.iterdir()) == ["digits.csv", "digits.json", "digits.md"]
    file_df = pd.read_csv(dest / "digits.csv")
    pd.testing.assert_frame_equal(file_df, stdout_df)
    assert len(json.loads((dest / "digits.json").read_text())) == 4
    md = (dest / "digits.md").read_text()
    assert "pgd-at" in md and "| defense" in md
    assert "digits.md" in err


# ------------------------------------------------------------------------------- start-up, options, plugins
def test_cli_answers_without_importing_torch():
    """--help, --version, list and argument errors never import torch (what made them take seconds)."""
    import subprocess
    import sys

    code = ("import sys\nfrom natbench.cli import main\nassert 'torch' not in sys.modules, 'import natbench.cli'\n"
            "for argv in (['--help'], ['--version'], ['list'], ['list', 'defenses'], ['run', '--task', 'digits'],\n"
            "             ['run', '--task', 'digits', '--defense', 'trade'], ['run', '--task', 'digitz', '--defense', 'vanilla']):\n"
            "    main(argv)\n    assert 'torch' not in sys.modules, argv\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_version(capsys):
    from natbench import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"natbench {__version__}"


def test_every_option_has_help():
    import typer.main

    from natbench.cli import app

    def walk(cmd, path):
        for p in cmd.params:
            yield f"{path} {p.name}", getattr(p, "help", None)
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    missing = [where for where, text in walk(typer.main.get_command(app), "natbench") if not (text or "").strip()]
    assert missing == []


def test_list_one_defense_shows_params_defaults_and_comments(capsys):
    assert main(["list", "defenses", "trades"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if "trades.beta" in ln)
    assert " 6 " in row and "robust-term weight" in row  # the --set key, its default and its comment
    assert "Zhang et al." in out


def test_list_one_suite_shows_its_attacks(capsys):
    assert main(["list", "suites", "digits"]) == 0
    out = capsys.readouterr().out
    assert [w for w in ("fgsm", "pgd-10", "pgd-20", "pgd-50", "cw-inf") if w in out] == ["fgsm", "pgd-10", "pgd-20", "pgd-50", "cw-inf"]
    assert "steps=20" in out


def test_list_one_task_shows_its_profiles(capsys):
    assert main(["list", "tasks", "digits"]) == 0
    out = capsys.readouterr().out
    assert "quick" in out and "default" in out and "training.epochs" in out
    row = next(ln for ln in out.splitlines() if "training.epochs" in ln)
    assert " 15 " in row and " 3 " in row  # default and quick profile epochs
    assert "lr_points" in out and "[[epoch, lr], ...]" in out  # comments are printed literally, not as markup


def test_describe_field_comments():
    from natbench.describe import field_comments
    from natbench.taskspec import ProfileCfg

    c = field_comments(ProfileCfg)
    assert c["epochs"] == "training epochs" and c["momentum"] == "SGD momentum"


def test_suite_option_takes_a_yaml_path(tmp_path):
    from natbench.registry import get_registry
    from natbench.resolve import resolve

    path = tmp_path / "mine.yaml"
    path.write_text("suite: mine\nattacks:\n  - {id: pgd-3, attack: pgd, params: {steps: 3}}\n")
    r = resolve(get_registry(), "digits", "vanilla", suite=str(path))
    assert r.suite.suite == "mine" and [a.id for a in r.suite.attacks] == ["pgd-3"]
    assert r.run_id == resolve(get_registry(), "digits", "vanilla").run_id  # the suite is not in the run's hash


@pytest.fixture
def plugin_registry(monkeypatch):
    """Install fake entry points for one test; the process-wide registry is rebuilt around it."""
    import importlib.metadata

    import natbench.registry as registry_mod

    def install(*eps):
        def entry_points(*, group=None, **kw):
            return [ep for ep in eps if group is None or ep.group == group]

        monkeypatch.setattr(registry_mod.metadata, "entry_points", entry_points)
        registry_mod.get_registry.cache_clear()
        return importlib.metadata.EntryPoint

    yield install
    registry_mod.get_registry.cache_clear()


def test_run_with_a_plugin_that_fails_to_import_is_one_line(plugin_registry, root, capsys):
    import importlib.metadata

    plugin_registry(importlib.metadata.EntryPoint(name="broken", value="natbench_no_such_plugin:Defense",
                                                  group="natbench.defenses"))
    assert main(["run", "--task", "digits", "--defense", "broken", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "failed to import" in err and "natbench_no_such_plugin" in err
    _no_run_recorded(root)


def test_plugin_with_a_builtin_name_fails_check_naming_both(plugin_registry, capsys):
    import importlib.metadata

    plugin_registry(importlib.metadata.EntryPoint(name="pgd-at", value="mypkg.defense:PGDAT", group="natbench.defenses"))
    assert main(["check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mypkg.defense:PGDAT" in err and "natbench.defenses.pgd_at" in err


def test_threads_option_and_env(monkeypatch):
    from natbench import threads
    from natbench.errors import ConfigError

    for var in (threads.ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    assert threads.requested(None) == threads.DEFAULT_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.requested(None) == 3
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.requested(None) == 2 and threads.requested(5) == 5
    monkeypatch.setenv(threads.ENV, "two")
    with pytest.raises(ConfigError, match="NATBENCH_THREADS"):
        threads.requested(None)


def test_eval_says_when_its_numerics_differ_from_the_run():
    import types

    import torch

    from natbench.suite import _note_numerics

    said: list[str] = []
    rec = RunRecord(run_id="r", task="digits", defense="vanilla", profile="default", seed=0, config_hash="h",
                    git_rev="x", versions={"torch": torch.__version__}, device="cpu threads=77", started="", finished="",
                    wall_train_s=0.0, wall_eval_s=0.0)
    runner = types.SimpleNamespace(store=types.SimpleNamespace(get_run=lambda rid: rec), device=torch.device("cpu"),
                                   reporter=types.SimpleNamespace(message=said.append))
    _note_numerics(runner, "r")
    assert len(said) == 1 and "77 thread(s)" in said[0] and f"{torch.get_num_threads()} thread(s)" in said[0]
    said.clear()
    rec = dataclasses.replace(rec, device=f"cpu threads={torch.get_num_threads()}")
    _note_numerics(runner, "r")
    assert said == []


def _all_entries():
    from natbench.registry import get_registry

    reg = get_registry()
    return [(k, n) for k in reg.kinds() for n in reg.names(k)]


@pytest.mark.parametrize(("kind", "name"), _all_entries(), ids=[f"{k}/{n}" for k, n in _all_entries()])
def test_list_kind_name_describes_every_entry(kind, name):
    """Every registry entry can be shown by `natbench list KIND NAME`; a code plugin's table lists
    each Params field once, with its comment (every field has one: the house style)."""
    import dataclasses

    from natbench.describe import describe
    from natbench.registry import get_registry

    reg = get_registry()
    tables = describe(reg, kind, name)
    assert tables[0][2][0] == ["source", "builtin"]
    if kind in ("tasks", "suites"):
        assert tables[-1][2], "a task's profiles / a suite's attacks"
        return
    params = getattr(reg.load(kind, name), "Params", None)
    if params is not None and dataclasses.is_dataclass(params):
        rows = tables[-1][2]
        assert [r[0].rsplit(".", 1)[-1] for r in rows] == [f.name for f in dataclasses.fields(params)]
        assert all(r[2] for r in rows), [r[0] for r in rows if not r[2]]
