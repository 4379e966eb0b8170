"""Tests for natbench.taskspec: ``include:`` resolves next to the including file first, then among the
built-in specs, with or without ``.yaml``, and says which file it used."""
from __future__ import annotations

import logging

import pytest

from natbench.config import ConfigError
from natbench.taskspec import BUILTIN_SPECS, load_suite_spec, load_task_spec, resolve_include


def spec(tmp_path, text: str, name: str = "mine.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("inc", ["digits.yaml", "digits"])
def test_include_of_a_builtin_from_outside_the_package(tmp_path, inc, caplog):
    """The README's ``include: digits.yaml`` from a folder of one's own (it used to fail: the include was
    only looked for next to the including file)."""
    path = spec(tmp_path, f"include: {inc}\ntask: digits\nthreat_model:\n  eps: 0.1\n")
    with caplog.at_level(logging.INFO, logger="natbench.taskspec"):
        s = load_task_spec(path)
    assert s.task == "digits" and s.threat_model.eps == 0.1
    assert s.model.arch == "small_cnn" and "quick" in s.profiles  # the rest is digits'
    assert str(BUILTIN_SPECS / "tasks" / "digits.yaml") in caplog.text and "built-in" in caplog.text


def test_a_file_next_to_the_spec_wins_over_the_builtin(tmp_path, caplog):
    spec(tmp_path, "task: digits\ndescription: my local digits\nsuite: smoke\n", name="digits.yaml")
    path = spec(tmp_path, "include: digits\nthreat_model:\n  eps: 0.1\n")
    assert resolve_include(path, "digits", "tasks") == (tmp_path / "digits.yaml", "next to mine.yaml")
    with caplog.at_level(logging.INFO, logger="natbench.taskspec"):
        s = load_task_spec(path)
    assert s.description == "my local digits" and s.suite == "smoke"
    assert "next to mine.yaml" in caplog.text


def test_builtin_that_includes_a_builtin(tmp_path):
    s = load_task_spec(spec(tmp_path, "include: cifar100\ntask: my100\n"))
    assert s.task == "my100" and s.model.num_classes == 100


def test_unknown_include_is_one_clear_error(tmp_path):
    path = spec(tmp_path, "include: digitz.yaml\ntask: x\n")
    with pytest.raises(ConfigError, match=r"include: digitz.yaml found neither next to it .* nor among the built-in tasks \(.*digits"):
        load_task_spec(path)
    with pytest.raises(ConfigError, match="one file name"):
        load_task_spec(spec(tmp_path, "include: [a, b]\ntask: x\n", name="two.yaml"))


def test_suite_include_of_a_builtin(tmp_path):
    s = load_suite_spec(spec(tmp_path, "include: digits\nsuite: mine\n", name="suite.yaml"))
    assert s.suite == "mine" and [a.id for a in s.attacks][:2] == ["fgsm", "pgd-10"]


def test_run_says_which_file_an_include_used(tmp_path, capsys, monkeypatch):
    """`natbench run --task my.yaml` shows the include line (logging is set up before the spec is read)."""
    from natbench.cli import main

    monkeypatch.delenv("NATBENCH_ROOT", raising=False)
    spec = tmp_path / "my_digits.yaml"
    spec.write_text("include: digits\ntask: my_digits\nthreat_model:\n  eps: 0.1\n")
    # a bad --set stops the run after the spec was read and before anything is written
    code = main(["run", "--task", str(spec), "--defense", "vanilla", "--set", "training.epochs=abc",
                 "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "include: digits" in err and "built-in" in err
    assert not (tmp_path / "runs").exists()
