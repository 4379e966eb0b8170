"""The catalogue of bad inputs (issue 13): every case is a command that must exit 2 with ONE line on
stderr containing a given fragment, print nothing on stdout, leave the store unchanged and write no
new file anywhere (inside or outside ``--root``). Most cases fail before any data is read; the ones
that need a finished run use a hand-built digits run (an untrained model's checkpoints, one result
row), copied fresh for every case. No training."""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

import natbench.runner  # noqa: F401 - the first CLI call is not slowed by torch's import
from natbench.cli import main
from natbench.registry import get_registry
from natbench.resolve import resolve
from natbench.store import Store

from helpers import make_run, tree_snapshot

DIGITS = "natbench/specs/tasks/digits.yaml"
REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("template") / "runs"
    return root, make_run(root)


# ------------------------------------------------------------------------------- the catalogue
@dataclass(frozen=True)
class Ctx:
    tmp: Path  # the test's folder; the command runs in tmp/cwd
    root: Path  # --root
    run_id: str  # the hand-built finished run (when the case asked for one)

    @property
    def run_dir(self) -> Path:
        return self.root / self.run_id


@dataclass(frozen=True)
class Case:
    argv: Callable[[Ctx], list[str]] | list[str]
    needle: str  # a fragment of the one error line
    setup: Callable[[Ctx], None] | None = None
    needs_run: bool = False
    root: bool = True  # append --root


def _yaml(ctx: Ctx, name: str, text: str) -> str:
    p = ctx.tmp / name
    p.write_text(text)
    return str(p)


RUN = ["run", "--task", "digits", "--defense", "vanilla", "--no-leaderboard"]

CASES: dict[str, Case] = {
    # ---- names that become paths (security)
    "task-name-traversal": Case(lambda c: [*RUN[:2], _yaml(c, "esc.yaml", f"include: {REPO / DIGITS}\ntask: ../../escaped\n"),
                                           *RUN[3:]], "not a safe name"),
    "task-name-absolute": Case(lambda c: [*RUN[:2], _yaml(c, "abs.yaml", f"include: {REPO / DIGITS}\ntask: {c.tmp}/abs\n"),
                                          *RUN[3:]], "not a safe name"),
    "task-name-space": Case(lambda c: [*RUN[:2], _yaml(c, "sp.yaml", f"include: {REPO / DIGITS}\ntask: my task\n"),
                                       *RUN[3:]], "not a safe name"),
    "eval-run-id-traversal": Case(["eval", "../outside"], "not a run id",
                                  setup=lambda c: (c.tmp / "outside").mkdir() or (c.tmp / "outside" / "config.yaml").write_text("{")),
    "eval-run-id-absolute": Case(lambda c: ["eval", str(c.tmp / "outside")], "not a run id",
                                 setup=lambda c: (c.tmp / "outside").mkdir() or (c.tmp / "outside" / "config.yaml").write_text("{")),
    "eval-run-id-symlink-out": Case(["eval", "link"], "outside the results root",
                                    setup=lambda c: (c.tmp / "outside").mkdir() or (c.root / "link").symlink_to(c.tmp / "outside")),
    "report-run-id-traversal": Case(["report", "../outside"], "not a run id"),
    "report-compare-traversal": Case(lambda c: ["report", c.run_id, "--compare", "/etc"], "not a run id", needs_run=True),
    "leaderboard-write-task-traversal": Case(lambda c: ["leaderboard", "--task", "../x", "--write", "--out", str(c.tmp / "lb")],
                                             "not a safe name", needs_run=True),
    "fixture-out-is-a-file": Case(lambda c: ["data", "fixture", "cifar10", "--out", str(c.tmp / "afile")], "is a file",
                                  setup=lambda c: (c.tmp / "afile").write_text("x"), root=False),

    # ---- names: tasks, defenses, suites, profiles, kinds
    "unknown-task": Case(["run", "--task", "digitz", "--defense", "vanilla"], "Did you mean: digits"),
    "unknown-defense": Case([*RUN[:4], "trade"], "Did you mean: trades"),
    "two-bases": Case([*RUN[:4], "pgd-at+trades"], "exactly one"),
    "unknown-component": Case([*RUN[:4], "pgd-at+natt"], "Did you mean: nat"),
    "empty-defense": Case([*RUN[:4], ""], "defense"),
    "defense-trailing-plus": Case([*RUN[:4], "pgd-at+"], "pgd-at+"),
    "second-defense-unknown": Case([*RUN, "--defense", "nope"], "nope"),
    "unknown-profile": Case([*RUN, "--profile", "nosuch"], "nosuch"),
    "unknown-suite": Case([*RUN, "--suite", "nosuch"], "nosuch"),
    "unknown-list-kind": Case(["list", "nosuchkind"], "nosuchkind", root=False),
    "unknown-fixture": Case(lambda c: ["data", "fixture", "nosuch", "--out", str(c.tmp / "fx")], "nosuch", root=False),
    "unknown-command": Case(["nosuchcommand"], "nosuchcommand", root=False),
    "bad-device": Case([*RUN, "--device", "tpu"], "tpu"),
    "cuda-without-gpu": Case([*RUN, "--device", "cuda"], "CUDA") if not torch.cuda.is_available() else Case([*RUN, "--device", "tpu"], "tpu"),
    "negative-seed": Case([*RUN, "--seed", "-1"], "seed"),
    "seed-not-int": Case([*RUN, "--seed", "abc"], "--seed"),
    "missing-defense-option": Case(["run", "--task", "digits"], "--defense"),
    "nproc-zero": Case([*RUN, "--nproc", "0"], "--nproc"),
    "sync-bn-on-cpu": Case([*RUN, "--sync-bn", "--device", "cpu"], "SyncBatchNorm"),
    "eval-bf16-on-cpu": Case([*RUN, "--eval-bf16", "--device", "cpu"], "bf16"),
    # ---- task files
    "malformed-task-file": Case(lambda c: ["run", "--task", _yaml(c, "m.yaml", "task: digits\nthreat_model: [1, 2\n"), *RUN[3:]],
                                "malformed YAML"),
    "dupkey-task-file": Case(lambda c: ["run", "--task", _yaml(c, "d.yaml", "task: digits\nkind: classification\ntask: digits\n"),
                                        *RUN[3:]], "duplicate key 'task'"),
    "missing-task-file": Case(lambda c: ["run", "--task", str(c.tmp / "nope.yaml"), *RUN[3:]], "no such config file"),
    "task-file-is-a-list": Case(lambda c: ["run", "--task", _yaml(c, "l.yaml", "- 1\n- 2\n"), *RUN[3:]], "mapping"),
    "task-file-unknown-key": Case(lambda c: ["run", "--task", _yaml(c, "u.yaml", f"include: {REPO / DIGITS}\ntaks: x\n"), *RUN[3:]],
                                  "unknown key 'taks'"),
    "task-file-no-name": Case(lambda c: ["run", "--task", _yaml(c, "n.yaml", "kind: classification\n"), *RUN[3:]], "missing 'task'"),
    "task-file-unknown-kind": Case(lambda c: ["run", "--task", _yaml(c, "k.yaml", f"include: {REPO / DIGITS}\nkind: regression\n"),
                                              *RUN[3:]], "regression"),
    "task-file-include-missing": Case(lambda c: ["run", "--task", _yaml(c, "i.yaml", "include: nope.yaml\ntask: x\n"), *RUN[3:]],
                                      "nope.yaml"),
    "task-file-nested-include": Case(lambda c: ["run", "--task", _yaml(c, "i2.yaml", f"include: {_yaml(c, 'i1.yaml', 'include: x.yaml')}\n"),
                                                *RUN[3:]], "one level"),
    "task-file-binary": Case(lambda c: ["run", "--task", _bytes(c, "b.yaml", bytes(range(256))), *RUN[3:]], "b.yaml"),
    "task-file-unknown-dataset": Case(lambda c: ["run", "--task", _yaml(c, "ds.yaml", f"include: {REPO / DIGITS}\ndata: {{dataset: mnist}}\n"),
                                                 *RUN[3:], "--profile", "quick"], "mnist"),
    "task-file-bad-defense-params": Case(lambda c: ["run", "--task", _yaml(c, "dp.yaml", f"include: {REPO / DIGITS}\ndefense_params: {{natt: {{omega: 1}}}}\n"),
                                                    *RUN[3:]], "natt"),
    # ---- --set keys, values, types
    "set-unknown-top": Case([*RUN, "--set", "trainig.epochs=1"], "Did you mean: training"),
    "set-unknown-leaf": Case([*RUN, "--set", "training.epoch=1"], "Did you mean: epochs"),
    "set-malformed": Case([*RUN, "--set", "epochs3"], "key.path=value"),
    "set-empty-key": Case([*RUN, "--set", "=3"], "key.path=value"),
    "set-no-field": Case([*RUN, "--set", "training=3"], "give a field"),
    "set-fixed-field": Case([*RUN, "--set", "task.task=x"], "cannot be overridden"),
    "set-component-not-composed": Case([*RUN, "--set", "nat.omega=0.06"], "not part of --defense"),
    "set-eps-negative": Case([*RUN, "--set", "threat_model.eps=-0.1"], "eps"),
    "set-eps-above-one": Case([*RUN, "--set", "threat_model.eps=8"], "eps"),
    # ---- threat-model norms (issue 16): refused before anything trains
    "norm-unknown": Case([*RUN, "--set", "threat_model.norm=l3"], "unknown norm 'l3'"),
    "norm-attack-unsupported": Case([*RUN, "--set", "threat_model.norm=l2", "--suite", "digits"],
                                    "suite.cw-inf: attack 'cw-inf' supports the norms linf"),
    "norm-l1-training": Case([*RUN[:4], "pgd-at", "--set", "threat_model.norm=l1"], "L1 adversarial training has no reference"),
    "norm-defense-without-l2": Case([*RUN[:4], "fast-at", "--set", "threat_model.norm=l2"], "fast-at's training attack"),
    "norm-l2-eps-absurd": Case([*RUN, "--set", "threat_model.norm=l2", "--set", "threat_model.eps=1e6"], "eps"),
    "set-eps-not-a-number": Case([*RUN, "--set", "threat_model.eps=abc"], "eps"),
    "set-eps-division-by-zero": Case([*RUN, "--set", "threat_model.eps=8/0"], "eps"),
    "set-epochs-huge": Case([*RUN, "--set", "training.epochs=99999999999999999999999"], "outside the valid range [1, 100000]"),
    "set-epochs-zero": Case([*RUN, "--set", "training.epochs=0"], "epochs"),
    "set-epochs-float": Case([*RUN, "--set", "training.epochs=1.5"], "integer"),
    "set-epochs-string": Case([*RUN, "--set", "training.epochs=abc"], "integer"),
    "set-epochs-bool": Case([*RUN, "--set", "training.epochs=true"], "integer"),
    "set-lr-negative": Case([*RUN, "--set", "training.lr=-1"], "lr"),
    "set-lr-huge": Case([*RUN, "--set", "training.lr=1e9"], "outside the valid range"),
    "set-lr-inf": Case([*RUN, "--set", "training.lr=.inf"], "finite"),
    "set-lr-nan": Case([*RUN, "--set", "training.lr=.nan"], "finite"),
    "set-momentum-one": Case([*RUN, "--set", "training.momentum=1"], "momentum"),
    "set-batch-zero": Case([*RUN, "--set", "training.batch_size=0"], "batch"),
    "set-batch-huge": Case([*RUN, "--set", "training.batch_size=10000000000"], "outside the valid range"),
    "set-optimizer-unknown": Case([*RUN, "--set", "training.optimizer=rmsprop"], "rmsprop"),
    "set-milestones-negative": Case([*RUN, "--set", "training.milestones=[5,-1]"], "outside the valid range"),
    "set-milestones-not-list": Case([*RUN, "--set", "training.milestones=5"], "list"),
    "set-lr-points-bad": Case([*RUN, "--set", "training.lr_points=[[1,0.1]]"], "lr_points"),
    "set-gamma-huge": Case([*RUN, "--set", "training.gamma=1000"], "outside the valid range"),
    "set-val-fraction-one": Case([*RUN, "--set", "data.val_fraction=1"], "val_fraction"),
    "set-split-seed-negative": Case([*RUN, "--set", "data.split_seed=-1"], "outside the valid range"),
    "set-num-workers-negative": Case([*RUN, "--set", "data.num_workers=-1"], "num_workers"),
    "set-arch-unknown": Case([*RUN, "--set", "model.arch=resnet9999"], "unknown architecture 'resnet9999'"),
    "set-in-channels-mean-std": Case([*RUN, "--set", "model.in_channels=3"], "mean/std"),
    "set-in-channels-vs-data": Case([*RUN, "--set", "model.in_channels=3", "--set", "model.mean=[0.5,0.5,0.5]",
                                     "--set", "model.std=[0.5,0.5,0.5]"], "the digits images have 1 channel"),
    "set-num-classes-vs-labels": Case([*RUN, "--set", "model.num_classes=3"], "digits has labels 0..9"),
    "set-num-classes-huge": Case([*RUN, "--set", "model.num_classes=10000000000"], "outside the valid range"),
    "set-width-zero": Case([*RUN, "--set", "model.width=0"], "outside the valid range"),
    "set-std-zero": Case([*RUN, "--set", "model.std=[0]"], "outside the valid range"),
    "set-selection-steps-negative": Case([*RUN, "--set", "selection.steps=-1"], "outside the valid range"),
    "set-omega-negative": Case(["run", "--task", "digits", "--defense", "nat", "--set", "nat.omega=-1"], "nat.omega: -1.0 is outside"),
    "set-tau-huge": Case(["run", "--task", "digits", "--defense", "nat", "--set", "nat.tau=1e9"], "nat.tau"),
    "set-nat-adversary-unknown": Case(["run", "--task", "digits", "--defense", "nat", "--set", "nat.adversary=nosuch"], "nosuch"),
    "set-trades-beta-negative": Case(["run", "--task", "digits", "--defense", "trades", "--set", "trades.beta=-1"], "beta"),
    "set-trades-unknown-param": Case(["run", "--task", "digits", "--defense", "trades", "--set", "trades.betta=1"], "Did you mean: beta"),
    "set-awp-gamma-negative": Case(["run", "--task", "digits", "--defense", "pgd-at+awp", "--set", "awp.gamma=-1"], "gamma"),
    "set-ema-decay-above-one": Case(["run", "--task", "digits", "--defense", "pgd-at+ema", "--set", "ema.decay=1.5"], "decay"),
    "set-pgd-at-steps-zero": Case(["run", "--task", "digits", "--defense", "pgd-at", "--set", "pgd-at.steps=0"], "steps"),
    "set-profile-training-key": Case([*RUN, "--set", "training.sets=[training.epochs=3]"], "training field"),
    # ---- sweeps and multi-run commands (all checked before the first run)
    "sweep-malformed": Case([*RUN, "--sweep", "training.lr"], "key.path=v1,v2"),
    "sweep-duplicate-value": Case([*RUN, "--sweep", "training.lr=0.1,0.1"], "twice"),
    "sweep-bad-value": Case([*RUN, "--sweep", "training.epochs=1,0"], "epochs"),
    "second-seed-bad-set": Case([*RUN, "--seed", "0", "--seed", "1", "--set", "training.epochs=0"], "epochs"),
    "sweep-cmd-bad-seeds": Case(["sweep", "--tasks", "digits", "--defenses", "vanilla", "--seeds", "a,b"], "--seeds"),
    "sweep-cmd-unknown-task": Case(["sweep", "--tasks", "digitz", "--defenses", "vanilla"], "digitz"),
    "sweep-cmd-unknown-executor": Case(["sweep", "--tasks", "digits", "--defenses", "vanilla", "--executor", "k8s"], "k8s"),
    "ablation-unknown-param": Case(["ablation", "--task", "digits", "--defense", "nat", "--param", "nat.omgea", "--values", "0,1"],
                                   "omgea"),
    "ablation-bad-value": Case(["ablation", "--task", "digits", "--defense", "nat", "--param", "nat.omega", "--values", "0,-1"],
                               "omega"),
    # ---- data
    "missing-data-root": Case(lambda c: [*RUN, "--data-root", str(c.tmp / "missing")], "missing"),
    "cifar-no-data": Case(lambda c: ["run", "--task", "cifar10", "--defense", "vanilla", "--data-root", str(c.tmp / "data")],
                          "CIFAR-10", setup=lambda c: (c.tmp / "data").mkdir()),
    "cifar-truncated-batch": Case(lambda c: ["run", "--task", "cifar10", "--defense", "vanilla", "--data-root", str(c.tmp / "data")],
                                  "not a readable pickle", setup=lambda c: _cifar(c, "truncated")),
    "cifar-pickle-payload": Case(lambda c: ["run", "--task", "cifar10", "--defense", "vanilla", "--data-root", str(c.tmp / "data")],
                                 "not allowed in a data file", setup=lambda c: _cifar(c, "payload")),
    "cifar-wrong-keys": Case(lambda c: ["run", "--task", "cifar10", "--defense", "vanilla", "--data-root", str(c.tmp / "data")],
                             "'data'", setup=lambda c: _cifar(c, "wrong-keys")),
    "imagenet100-no-data": Case(lambda c: ["run", "--task", "imagenet100", "--defense", "vanilla", "--data-root", str(c.tmp / "data")],
                                "ImageNet-100", setup=lambda c: (c.tmp / "data").mkdir()),
    "market-no-data": Case(lambda c: ["run", "--task", "reid_market", "--defense", "vanilla", "--data-root", str(c.tmp / "data")],
                           "Market", setup=lambda c: (c.tmp / "data").mkdir()),
    "voc-no-data": Case(lambda c: ["run", "--task", "voc_detection", "--defense", "vanilla", "--data-root", str(c.tmp / "data")],
                        "VOC", setup=lambda c: (c.tmp / "data").mkdir()),
    "voc-entity-bomb": Case(lambda c: ["run", "--task", "voc_detection", "--defense", "vanilla", "--profile", "quick",
                                       "--data-root", str(c.tmp / "data")], "unsafe XML", setup=lambda c: _voc_bomb(c)),
    "voc-decompression-bomb": Case(lambda c: ["run", "--task", "voc_detection", "--defense", "vanilla", "--profile", "quick",
                                              "--data-root", str(c.tmp / "data")], "decompression bomb", setup=lambda c: _voc_bomb(c, image=True)),
    # ---- eval / report / leaderboard arguments
    "eval-unknown-run": Case(["eval", "no-such-run"], "no-such-run"),
    "eval-bad-checkpoint": Case(["eval", "no-such-run", "--checkpoint", "middle"], "middle"),
    "eval-unknown-suite": Case(lambda c: ["eval", c.run_id, "--suite", "nosuch"], "nosuch", needs_run=True),
    "eval-run-not-in-store": Case(lambda c: ["eval", c.run_id, "--device", "cpu"], "not complete", needs_run=True,
                                  setup=lambda c: _drop_run_row(c)),
    "eval-threat-model-no-eps": Case(lambda c: ["eval", c.run_id, "--threat-model", "l2"], "NORM:EPS", needs_run=True),
    "eval-threat-model-unknown-norm": Case(lambda c: ["eval", c.run_id, "--threat-model", "l3:1"], "unknown norm", needs_run=True),
    "eval-threat-model-eps-zero": Case(lambda c: ["eval", c.run_id, "--threat-model", "l2:0"], "must be > 0", needs_run=True),
    "eval-threat-model-eps-text": Case(lambda c: ["eval", c.run_id, "--threat-model", "l1:five"], "not a number", needs_run=True),
    "eval-threat-model-linf-above-1": Case(lambda c: ["eval", c.run_id, "--threat-model", "linf:8"], "pixel range", needs_run=True),
    "eval-threat-model-attack-lacks-norm": Case(lambda c: ["eval", c.run_id, "--threat-model", "l1:5", "--device", "cpu"],
                                                "(suite.fgsm) supports linf, l2 only", needs_run=True),
    # an L2-only attack under --threat-model l2 on an L-inf run passes the suite checks (it reaches the store's)
    "eval-threat-model-l2-only-attack": Case(lambda c: ["eval", c.run_id, "--suite", "minnorm-l2", "--threat-model", "l2:1",
                                                        "--device", "cpu"], "not complete", needs_run=True,
                                             setup=lambda c: _drop_run_row(c)),
    # corruptions do not depend on the threat model: stored under another key, the corruptions table never read them
    "eval-threat-model-corruptions": Case(lambda c: ["eval", c.run_id, "--suite", "corruptions", "--threat-model", "l2:1",
                                                     "--device", "cpu"], "corruptions do not depend on the threat model",
                                          needs_run=True, setup=lambda c: _drop_run_row(c)),
    "eval-threat-model-outside-model": Case(["eval", "--task", "digits", "--model", "m.py:f", "--threat-model", "l2:0.5"],
                                            "outside model"),
    "leaderboard-threat-model-bad": Case(["leaderboard", "--threat-model", "l2:"], "NORM:EPS", needs_run=True),
    "leaderboard-threat-model-absent": Case(["leaderboard", "--task", "digits", "--threat-model", "l2:0.5"],
                                            "Evaluated under: linf:0.2", needs_run=True),
    "eval-tampered-checkpoint": Case(lambda c: ["eval", c.run_id, "--device", "cpu"], "not the file its results were computed from",
                                     needs_run=True, setup=lambda c: _tamper(c)),
    "report-unknown-run": Case(["report", "no-such-run"], "no-such-run", needs_run=True),
    "report-bad-checkpoint": Case(lambda c: ["report", c.run_id, "--checkpoint", "middle"], "middle", needs_run=True),
    "report-max-samples-zero": Case(lambda c: ["report", c.run_id, "--max-samples", "0"], "--max-samples", needs_run=True),
    "report-no-store": Case(["report", "no-such-run"], "no results store"),
    "leaderboard-no-store": Case(["leaderboard"], "natbench.sqlite"),
    "leaderboard-bad-format": Case(["leaderboard", "--format", "xml"], "xml"),
    "leaderboard-unknown-task": Case(["leaderboard", "--task", "nosuch"], "nosuch", needs_run=True),
    "leaderboard-db-not-postgres": Case(["leaderboard", "--db", "mysql://x/y"], "PostgreSQL"),
    # ---- damaged checkpoints and run files
    **{f"eval-best-{how}": Case(lambda c, how=how: _damage(c.run_dir / "best.pt", how) or ["eval", c.run_id, "--device", "cpu"],
                                needle, needs_run=True)
       for how, needle in (("random", "not a readable checkpoint"), ("truncated", "not a readable checkpoint"),
                           ("empty", "empty or truncated"), ("deleted", "file not found"),
                           ("payload", "refused by the weights-only loader"), ("other-keys", "does not fit the run's model"),
                           ("not-a-dict", "not a state dict"))},
    "eval-last-deleted": Case(lambda c: _damage(c.run_dir / "last.pt", "deleted") or ["eval", c.run_id, "--device", "cpu"],
                              "file not found", needs_run=True),
    **{f"eval-partial-{how}": Case(lambda c, how=how: _damage(c.run_dir / "eval-partial.pt", how) or ["eval", c.run_id, "--device", "cpu"],
                                   needle, needs_run=True)
       for how, needle in (("random", "unfinished evaluations"), ("payload", "refused by the weights-only loader"),
                           ("empty", "empty or truncated"))},
    **{f"resume-state-{how}": Case(lambda c, how=how: _incomplete_run(c, how) or [*RUN, "--profile", "quick", "--device", "cpu"],
                                   needle)
       for how, needle in (("random", "training state"), ("truncated", "training state"), ("empty", "empty or truncated"),
                           ("payload", "refused by the weights-only loader"), ("other-keys", "not a natbench training state"))},
    "eval-config-malformed": Case(lambda c: ["eval", c.run_id], "malformed YAML", needs_run=True,
                                  setup=lambda c: (c.run_dir / "config.yaml").write_text("task: [")),
    "eval-config-deleted": Case(lambda c: ["eval", c.run_id], "config.yaml", needs_run=True,
                                setup=lambda c: (c.run_dir / "config.yaml").unlink()),
    # ---- damaged stores
    **{f"{cmd}-store-{how}": Case(lambda c, how=how, cmd=cmd: _damage(c.root / "natbench.sqlite", how) or _cmd(cmd, c),
                                  needle, needs_run=True)
       for cmd in ("leaderboard", "eval", "run", "report")
       for how, needle in (("random", "not a natbench store, or damaged"), ("truncated", "not a natbench store, or damaged"))},
    "leaderboard-store-empty": Case(lambda c: _damage(c.root / "natbench.sqlite", "empty") or ["leaderboard"],
                                    "not a natbench store"),
    "leaderboard-store-foreign": Case(lambda c: _foreign_sqlite(c.root / "natbench.sqlite") or ["leaderboard"],
                                      "not a natbench store"),
}


def _bytes(c: Ctx, name: str, data: bytes) -> str:
    p = c.tmp / name
    p.write_bytes(data)
    return str(p)


def _cifar(c: Ctx, how: str) -> None:
    import pickle

    from natbench.data import cifar

    cifar.write_cifar10_fixture(c.tmp / "data")
    batch = c.tmp / "data" / "cifar-10-batches-py" / "data_batch_1"
    if how == "truncated":
        batch.write_bytes(batch.read_bytes()[:100])
    elif how == "payload":
        batch.write_bytes(pickle.dumps({"data": _Payload(), "labels": [0]}, protocol=2))
    elif how == "wrong-keys":
        batch.write_bytes(pickle.dumps({"pixels": [1, 2], "labels": [0]}, protocol=2))


def _voc_bomb(c: Ctx, image: bool = False) -> None:
    from natbench.data import voc

    voc.write_voc_fixture(c.tmp / "data")
    if image:  # every image's header claims 30000 x 30000 pixels
        from test_safety import _bomb

        for p in (c.tmp / "data").rglob("JPEGImages/*.jpg"):
            _bomb(p)
        return
    ann = sorted((c.tmp / "data").rglob("Annotations/*.xml"))[0]
    ann.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bbbbbbbbbb"><!ENTITY c "&b;&b;&b;&b;&b;&b;">]>'
                   "<annotation><filename>&c;</filename></annotation>")


def _drop_run_row(c: Ctx) -> None:
    with Store(c.root / "natbench.sqlite") as s:
        s.delete_run(c.run_id)


def _tamper(c: Ctx) -> None:
    from natbench.integrity import sha256_file

    with Store(c.root / "natbench.sqlite") as s:
        s.add_results(c.run_id, [], [], [], suite=["clean"], checkpoints={k: sha256_file(c.run_dir / f"{k}.pt") for k in ("best", "last")})
    state = torch.load(c.run_dir / "best.pt", weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] * 0
    torch.save(state, c.run_dir / "best.pt")


def _cmd(cmd: str, c: Ctx) -> list[str]:
    return {"leaderboard": ["leaderboard"], "eval": ["eval", c.run_id, "--device", "cpu"],
            "run": [*RUN, "--profile", "quick", "--device", "cpu"], "report": ["report", c.run_id, "--device", "cpu"]}[cmd]


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _damage(path: Path, how: str) -> None:
    """Damage ``path`` as users and crashes do."""
    import numpy as np

    if how == "random":
        path.write_bytes(np.random.default_rng(1).bytes(8192))
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "deleted":
        path.unlink()
    elif how == "payload":
        torch.save({"model": _Payload(), "config_hash": _Payload()}, path)
    elif how == "other-keys":
        torch.save({"conv.weight": torch.zeros(3)}, path)
    elif how == "not-a-dict":
        torch.save([torch.zeros(3)], path)
    else:
        raise AssertionError(how)


def _foreign_sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE photos (name TEXT)")
    con.commit()
    con.close()


def _incomplete_run(c: Ctx, how: str) -> None:
    """A digits/vanilla (quick) run folder killed during training: config.yaml and a damaged state.pt."""
    r = resolve(get_registry(), "digits", "vanilla", profile="quick")
    d = c.root / r.run_id
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(r.config, sort_keys=False))
    torch.save({"config_hash": r.config_hash, "epoch": 0}, d / "state.pt")
    _damage(d / "state.pt", how)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tmp_path, template, capsys, monkeypatch):
    c = CASES[case]
    root_logger = logging.getLogger()  # as in a fresh process: INFO logs of earlier in-process commands stay off
    monkeypatch.setattr(root_logger, "level", logging.WARNING)
    monkeypatch.delenv("NATBENCH_ROOT", raising=False)
    monkeypatch.delenv("NATBENCH_DATA", raising=False)
    monkeypatch.delenv("NATBENCH_DB", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    root = tmp_path / "runs"
    run_id = ""
    if c.needs_run:
        shutil.copytree(template[0], root)
        run_id = template[1]
    else:
        root.mkdir()
    ctx = Ctx(tmp_path, root, run_id)
    if c.setup:
        c.setup(ctx)
    argv = c.argv(ctx) if callable(c.argv) else list(c.argv)
    if c.root:
        argv += ["--root", str(root)]
    before = tree_snapshot(tmp_path)
    capsys.readouterr()  # what the set-up logged
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, f"exit code {rc}; stderr:\n{err}"
    assert out == "", f"stdout must stay empty on a user error, got:\n{out}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    # ONE error line, the last thing printed (progress logs of the data read before it may precede it)
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected ONE error line on stderr, got:\n{err}"
    assert "Traceback" not in err and not any("WARNING" in ln or "ERROR" in ln for ln in lines), err
    assert c.needle in errors[0], errors[0]
    after = tree_snapshot(tmp_path)
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))}"
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "abs").exists()
    assert not (tmp_path / "cwd" / "PWNED").exists(), "a pickle payload ran"
