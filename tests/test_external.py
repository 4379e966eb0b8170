"""natbench.external and ``natbench eval --task T --model SPEC``: outside models as external runs."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from natbench import external, zoo
from natbench.cli import main
from natbench.errors import ConfigError

USER_FILE = '''
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, num_classes)

    def forward(self, x):
        z = torch.relu(self.conv(x))
        return self.fc(nn.functional.max_pool2d(z, 2).flatten(1))


def build(num_classes):
    return TinyCNN(num_classes)


def build_no_args():
    return TinyCNN(10)


def seven_outputs():
    return TinyCNN(7)


def not_a_module():
    return 42


def raises():
    raise RuntimeError("cannot build\\nthis model")
'''


@pytest.fixture()
def user_file(tmp_path) -> Path:
    p = tmp_path / "my_models.py"
    p.write_text(USER_FILE)
    return p


def _tiny(seed: int = 1) -> nn.Module:
    ns: dict = {}
    exec(compile(USER_FILE, "user", "exec"), ns)
    torch.manual_seed(seed)
    return ns["TinyCNN"](10)


def _digits_test():
    """The digits test split as the task reads it (x in [0, 1], labels)."""
    from natbench.registry import get_registry
    from natbench.resolve import resolve
    from natbench.tasks.classification import ClassificationTask

    r = resolve(get_registry(), "digits", "vanilla")
    test = ClassificationTask(r.spec).loaders(64, torch.Generator().manual_seed(0), 1000)[2]
    b = next(iter(test))
    return b.x, b.y


# ------------------------------------------------------------------------------------------ specs and weights
@pytest.mark.parametrize("text, want", [
    ("my_models.py:build", ("file", "my_models.py", "build")),
    ("dir/sub/m.py:make_model", ("file", "dir/sub/m.py", "make_model")),
    ("natbench.models.small_cnn:SmallCNN", ("module", "natbench.models.small_cnn", "SmallCNN")),
    ("timm:resnet18", ("timm", "resnet18", "")),
    ("torchvision:resnet18", ("torchvision", "resnet18", "")),
    ("torchscript:/tmp/m.pt", ("torchscript", "/tmp/m.pt", "")),
    ("robustbench:Wang2023Better_WRN-28-10", ("robustbench", "Wang2023Better_WRN-28-10", "")),
])
def test_parse_spec(text, want):
    s = external.parse_spec(text)
    assert (s.source, s.target, s.factory) == want


@pytest.mark.parametrize("text", ["my_models.py", "timm:", "x.py:1bad", ":build"])
def test_parse_spec_rejects(text):
    with pytest.raises(ConfigError, match="--model"):
        external.parse_spec(text)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module", "state_dict+module"])
def test_read_state_dict_unwraps(tmp_path, wrap):
    m = _tiny()
    sd = m.state_dict()
    if "module" in wrap:
        sd = {"module." + k: v for k, v in sd.items()}
    obj = {"state_dict": sd, "epoch": 3} if wrap.startswith("state_dict") else {"model": sd, "optimizer": {}} if wrap == "model" else sd
    torch.save(obj, tmp_path / "w.pth")
    got = external.read_state_dict(tmp_path / "w.pth")
    assert list(got) == list(m.state_dict())
    assert all(torch.equal(got[k], v) for k, v in m.state_dict().items())


def test_read_safetensors(tmp_path):
    from safetensors.torch import save_file

    m = _tiny()
    save_file(m.state_dict(), str(tmp_path / "w.safetensors"))
    got = external.read_state_dict(tmp_path / "w.safetensors")
    assert all(torch.equal(got[k], v) for k, v in m.state_dict().items())


def test_read_refuses_pickled_objects(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "whole.pt")  # a whole module: weights_only=True refuses it
    with pytest.raises(ConfigError, match="cannot read a state dict"):
        external.read_state_dict(tmp_path / "whole.pt")


def test_mismatch_names_keys():
    m = _tiny()
    sd = dict(m.state_dict())
    sd["extra.weight"] = sd.pop("fc.weight")
    with pytest.raises(ConfigError, match=r"missing fc\.weight \(1\); unexpected extra\.weight \(1\)"):
        external.load_weights(m, sd, "w.pt")
    sd = dict(m.state_dict())
    sd["fc.bias"] = torch.zeros(7)
    with pytest.raises(ConfigError, match=r"fc\.bias has shape \(7,\) in the file, \(10,\) in the model"):
        external.load_weights(m, sd, "w.pt")


def test_parse_normalize():
    assert external.parse_normalize("none", 3) is None
    assert external.parse_normalize("0.5,0.25", 3) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert external.parse_normalize("1,2,3,4,5,6", 3) == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    for bad in ("1,2,3", "a,b", "0.5,0"):
        with pytest.raises(ConfigError, match="--normalize"):
            external.parse_normalize(bad, 3)


def test_normalized_wrapper_is_pixel_space():
    m = _tiny()
    w = external.Normalized(m, (0.3,), (0.4,))
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(w(x), m((x - 0.3) / 0.4))


def test_identity_changes_with_weights_and_name():
    prov = {"source": "file", "spec": "m.py:build", "name": "a", "weights_sha256": "0" * 64, "params": 10, "normalize": "none"}
    task = {"task": "digits", "kind": "classification"}
    h, rid = external.identity(prov, task, None)
    assert rid == f"digits-ext-a-{h[:8]}"
    assert external.identity(prov, task, None) == (h, rid)  # stable
    assert external.identity({**prov, "weights_sha256": "1" * 64}, task, None)[0] != h
    assert external.identity({**prov, "name": "b"}, task, None)[0] != h
    assert external.identity(prov, task, 100)[0] != h


def test_library_models_build_for_the_task():
    from natbench.registry import get_registry
    from natbench.resolve import load_task

    spec = load_task(get_registry(), "digits")
    tv = external.build(external.parse_spec("torchvision:resnet18"), spec, 10)
    assert tv.fc.out_features == 10
    tm = external.build(external.parse_spec("timm:resnet18"), spec, 10)
    assert tm(torch.rand(2, 1, 8, 8)).shape == (2, 10)  # in_chans from the task
    with pytest.raises(ConfigError, match="torchvision has no classification model 'resnet17'"):
        external.build(external.parse_spec("torchvision:resnet17"), spec, 10)


def test_detection_contract_refuses_other_modules(user_file):
    spec = SimpleNamespace(kind="detection", task="voc", model=SimpleNamespace(in_channels=3, num_classes=21))
    task = SimpleNamespace(spec=spec)
    with pytest.raises(ConfigError, match="must be a natbench.tasks.detection.DetectionNet"):
        external.load(f"{user_file}:build", task)
    with pytest.raises(ConfigError, match="drop --normalize"):
        external.load(f"{user_file}:build", task, normalize="0.5,0.5")


# ------------------------------------------------------------------------------------------ robustbench
def _fake_robustbench(monkeypatch, calls: list) -> None:
    """A stand-in for the robustbench package: its model_zoo dict, enums and load_model."""
    from enum import Enum

    class BenchmarkDataset(Enum):
        cifar_10, cifar_100, imagenet = "cifar10", "cifar100", "imagenet"

    class ThreatModel(Enum):
        Linf, L2, corruptions = "Linf", "L2", "corruptions"

    zoo = {BenchmarkDataset(d): {ThreatModel(t): {"Tiny2024": {"model": lambda: _tiny(3)}} for t in ("Linf", "L2")}
           for d in ("cifar10", "cifar100")}

    def load_model(model_name, model_dir, dataset, threat_model):
        calls.append((model_name, dataset, threat_model))
        return _tiny(4)

    mods = {"robustbench": types.ModuleType("robustbench"), "robustbench.model_zoo": types.ModuleType("robustbench.model_zoo"),
            "robustbench.model_zoo.enums": types.ModuleType("robustbench.model_zoo.enums"),
            "robustbench.utils": types.ModuleType("robustbench.utils")}
    mods["robustbench.model_zoo"].model_dicts = zoo
    mods["robustbench.model_zoo.enums"].BenchmarkDataset = BenchmarkDataset
    mods["robustbench.model_zoo.enums"].ThreatModel = ThreatModel
    mods["robustbench.utils"].load_model = load_model
    for k, v in mods.items():
        monkeypatch.setitem(sys.modules, k, v)


@pytest.mark.parametrize("dataset, norm, want", [("cifar10", "linf", ("cifar10", "Linf")),
                                                 ("cifar100", "l2", ("cifar100", "L2"))])
def test_robustbench_names(dataset, norm, want):
    spec = SimpleNamespace(task="t", data=SimpleNamespace(dataset=dataset), threat_model=SimpleNamespace(norm=norm))
    assert zoo.robustbench_names(spec) == want


def test_robustbench_names_refuse_other_datasets():
    spec = SimpleNamespace(task="digits", data=SimpleNamespace(dataset="digits"), threat_model=SimpleNamespace(norm="linf"))
    with pytest.raises(ConfigError, match="no zoo for dataset 'digits'"):
        zoo.robustbench_names(spec)


def test_robustbench_path_passes_dataset_and_threat_model(monkeypatch, tmp_path):
    calls: list = []
    _fake_robustbench(monkeypatch, calls)
    from natbench.registry import get_registry
    from natbench.resolve import load_task

    spec = load_task(get_registry(), "cifar10")
    m = external.build(external.parse_spec("robustbench:Tiny2024"), spec, 10, None, tmp_path)
    assert calls == [("Tiny2024", "cifar10", "Linf")]
    assert torch.equal(m.fc.weight, _tiny(4).fc.weight)
    m = external.build(external.parse_spec("robustbench:Tiny2024"), spec, 10, tmp_path / "w.pt", tmp_path)
    assert len(calls) == 1  # with --weights: the zoo architecture, nothing loaded by robustbench
    assert torch.equal(m.fc.weight, _tiny(3).fc.weight)
    with pytest.raises(ConfigError, match="no RobustBench cifar10/Linf model 'Tiny2023'. Did you mean: Tiny2024"):
        external.build(external.parse_spec("robustbench:Tiny2023"), spec, 10, None, tmp_path)


# ------------------------------------------------------------------------------------------ the command line
def _store_runs(root: Path) -> list[tuple]:
    db = root / "natbench.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return c.execute("SELECT run_id, defense, profile, suite_json, config_json FROM runs").fetchall()


@pytest.mark.parametrize("case", ["missing_file", "no_factory", "not_a_module", "wrong_shape", "weights_do_not_fit",
                                  "factory_raises", "missing_weights", "bad_normalize", "run_id_and_model"])
def test_bad_inputs_exit_2_one_line_store_nothing(case, user_file, tmp_path, capsys):
    root = tmp_path / "runs"
    torch.save({"conv.weight": torch.zeros(8, 1, 3, 3)}, tmp_path / "partial.pt")
    model = {"missing_file": f"{tmp_path}/nope.py:build", "no_factory": f"{user_file}:buidl",
             "not_a_module": f"{user_file}:not_a_module", "wrong_shape": f"{user_file}:seven_outputs",
             "factory_raises": f"{user_file}:raises"}.get(case, f"{user_file}:build")
    argv = ["eval", "--task", "digits", "--model", model, "--suite", "smoke", "--root", str(root)]
    if case == "weights_do_not_fit":
        argv += ["--weights", str(tmp_path / "partial.pt")]
    if case == "missing_weights":
        argv += ["--weights", str(tmp_path / "none.pt")]
    if case == "bad_normalize":
        argv += ["--normalize", "0.5,0.5,0.5"]
    if case == "run_id_and_model":
        argv.insert(1, "some-run")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    want = {"missing_file": "no such file", "no_factory": "Did you mean: build", "not_a_module": "not a torch.nn.Module",
            "wrong_shape": "must return logits of shape (4, 10)", "weights_do_not_fit": "missing conv.bias, fc.weight, fc.bias",
            "factory_raises": "the factory raised RuntimeError: cannot build this model", "missing_weights": "no such file",
            "bad_normalize": "--normalize", "run_id_and_model": "no RUN_ID"}[case]
    assert want in err, err
    assert not root.exists() or not any(p.is_dir() for p in root.iterdir())  # no run directory
    assert _store_runs(root) == []


def test_file_factory_with_weights_is_an_external_run(user_file, tmp_path, capsys):
    root = tmp_path / "runs"
    m = _tiny(7)
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, tmp_path / "w.pth")
    argv = ["eval", "--task", "digits", "--model", f"{user_file}:build", "--weights", str(tmp_path / "w.pth"),
            "--name", "Tiny (ours)", "--suite", "smoke", "--root", str(root)]
    assert main(argv) == 0
    (run_id, defense, profile, suite, config), = _store_runs(root)
    prov = json.loads(config)["external"]
    assert defense == "Tiny (ours)" and profile == external.PROFILE and json.loads(suite) == ["clean", "fgsm", "pgd-5"]
    assert prov["weights_sha256"] == hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    assert prov["source"] == "file" and prov["params"] == sum(p.numel() for p in m.parameters())
    assert run_id.startswith("digits-ext-Tiny-ours-")
    # the clean accuracy is that of the same weights computed here
    from natbench.store import Store

    x, y = _digits_test()
    with torch.no_grad():
        want = (m.eval()(x).argmax(1) == y)
    with Store(root / "natbench.sqlite") as st:
        flags = st.flags(run_id, external.CHECKPOINT)
        assert torch.equal(torch.from_numpy(flags["clean"]), want)
        assert set(st.checks(run_id)["name"]) >= {"deterministic", "gradient_nonzero", "clean_is_upper_bound"}
    # a second eval of the same weights with another suite adds the missing attacks to the same run
    argv[argv.index("smoke")] = "digits"
    assert main(argv) == 0
    (run_id2, _, _, suite2, _), = _store_runs(root)
    assert run_id2 == run_id
    assert json.loads(suite2) == ["clean", "fgsm", "pgd-5", "pgd-10", "pgd-20", "pgd-50", "cw-inf"]
    capsys.readouterr()
    assert main(["leaderboard", "--task", "digits", "--format", "csv", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "Tiny (ours)" in out


def test_torchscript_model_gives_the_same_numbers(user_file, tmp_path):
    root = tmp_path / "runs"
    m = _tiny(7)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    torch.jit.save(torch.jit.trace(m.eval(), torch.rand(2, 1, 8, 8)), str(tmp_path / "m.ts"))
    assert main(["eval", "--task", "digits", "--model", f"{user_file}:build", "--weights", str(tmp_path / "w.pt"),
                 "--suite", "smoke", "--root", str(root)]) == 0
    assert main(["eval", "--task", "digits", "--model", f"torchscript:{tmp_path / 'm.ts'}", "--suite", "smoke",
                 "--root", str(root)]) == 0
    runs = _store_runs(root)
    assert len(runs) == 2 and json.loads(runs[1][4])["external"]["source"] == "torchscript"
    from natbench.store import Store

    with Store(root / "natbench.sqlite") as st:
        a, b = (st.flags(r[0], external.CHECKPOINT) for r in runs)
    assert all((a[k] == b[k]).all() for k in ("clean", "fgsm", "pgd-5"))  # same seeds, same model


REID_MODEL = '''
import torch
from torch import nn


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)

    def features(self, x):
        return torch.relu(self.conv(x)).mean((2, 3))

    def forward(self, x):
        raise RuntimeError("natbench evaluates re-id through features()")


def build():
    return Embed()
'''


def test_reid_model_from_a_user_file(tmp_path, capsys):
    """An outside re-id model returns an embedding (features); evaluated on the Market-1501 fixture."""
    root, data = tmp_path / "runs", tmp_path / "data"
    assert main(["data", "fixture", "market1501", "--out", str(data)]) == 0
    import yaml

    from natbench.registry import get_registry

    spec = yaml.safe_load(get_registry().entry("tasks", "reid_market").spec_path().read_text())
    spec["params"].update(height=32, width=16)
    (tmp_path / "reid_small.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "my_reid.py").write_text(REID_MODEL)
    assert main(["eval", "--task", str(tmp_path / "reid_small.yaml"), "--model", f"{tmp_path / 'my_reid.py'}:build",
                 "--suite", "reid-smoke", "--data-root", str(data), "--root", str(root)]) == 0
    (run_id, *_), = _store_runs(root)
    from natbench.store import Store

    with Store(root / "natbench.sqlite") as st:
        res = st.results("reid_market")
    clean = res[(res["attack"] == "clean") & (res["metric"] == "mAP")]["value"].item()
    assert 0 < clean <= 1
    (tmp_path / "bad_reid.py").write_text("from torch import nn\ndef build():\n    return nn.Conv2d(3, 4, 3)\n")
    capsys.readouterr()
    assert main(["eval", "--task", str(tmp_path / "reid_small.yaml"), "--model", f"{tmp_path / 'bad_reid.py'}:build",
                 "--suite", "reid-smoke", "--data-root", str(data), "--root", str(root)]) == 2
    assert "must return an embedding (B, D)" in capsys.readouterr().err


def test_robustbench_zoo_architecture_with_local_weights(tmp_path, monkeypatch):
    """The real package (skipped where it is not installed; see docs/external.md for the arrangement):
    a zoo architecture with random weights saved locally, evaluated on the CIFAR-10 fixture."""
    try:
        zoo.import_robustbench()
    except ConfigError as e:
        pytest.skip(str(e))
    import robustbench.utils

    import natbench

    model_dicts, BD, TM = zoo.import_robustbench()
    torch.manual_seed(0)
    arch = model_dicts[BD("cifar10")][TM("Linf")]["Ding2020MMA"]["model"]()
    torch.save(arch.state_dict(), tmp_path / "ding.pt")
    data = tmp_path / "data"
    assert main(["data", "fixture", "cifar10", "--out", str(data)]) == 0
    res = natbench.evaluate("robustbench:Ding2020MMA", task="cifar10", suite="smoke", weights=tmp_path / "ding.pt",
                            n=6, data_root=data, root=tmp_path / "runs")
    assert res.provenance["source"] == "robustbench" and res.provenance["params"] == sum(p.numel() for p in arch.parameters())
    assert set(res.robust) >= {"fgsm", "pgd-5"}
    calls = []
    monkeypatch.setattr(robustbench.utils, "load_model", lambda **kw: calls.append(kw) or arch)
    from natbench.registry import get_registry
    from natbench.resolve import load_task

    external.build(external.parse_spec("robustbench:Ding2020MMA"), load_task(get_registry(), "cifar10"), 10, None, tmp_path)
    assert calls == [{"model_name": "Ding2020MMA", "model_dir": str(tmp_path), "dataset": "cifar10", "threat_model": "Linf"}]


def test_leaderboard_source_column_and_reported_rows(user_file, tmp_path, capsys):
    import io

    import pandas as pd

    from natbench.store import ResultRow, RunRecord, Store

    root = tmp_path / "runs"
    root.mkdir()
    with Store(root / "natbench.sqlite") as st:  # a trained run, written by hand
        st.record_run(RunRecord(run_id="digits-vanilla-s0-aaaa", task="digits", defense="vanilla", profile="default", seed=0,
                                config_hash="h0", git_rev="t", versions={}, device="cpu", started="2024-01-01T00:00:00+00:00",
                                finished="2024-01-01T00:01:00+00:00", wall_train_s=1.0, wall_eval_s=1.0, config={},
                                suite=["clean", "fgsm", "pgd-5"]),
                      [ResultRow(ck, a, "accuracy", v) for ck in ("best", "last")
                       for a, v in (("clean", 0.98), ("fgsm", 0.3), ("pgd-5", 0.1))], [], [])
    assert main(["eval", "--task", "digits", "--model", f"{user_file}:build", "--name", "Tiny2024", "--suite", "smoke",
                 "--root", str(root)]) == 0
    ref = tmp_path / "model_info"
    ref.mkdir()
    (ref / "Tiny2024.json").write_text(json.dumps({"name": "Tiny nets are robust", "clean_acc": "91.50", "autoattack_acc": "60.25",
                                                   "eps": "0.2", "architecture": "TinyCNN", "venue": "arXiv, Jan 2024"}))
    (ref / "Other2023.json").write_text(json.dumps({"name": "Other", "clean_acc": 80, "autoattack_acc": 50.5, "eps": "0.2",
                                                    "architecture": "WRN", "venue": "ICML 2023", "dataset": "digits"}))
    (ref / "Cifar2023.json").write_text(json.dumps({"name": "C", "clean_acc": 80, "autoattack_acc": 50, "dataset": "cifar10"}))
    capsys.readouterr()
    assert main(["leaderboard", "--task", "digits", "--format", "csv", "--root", str(root)]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out), dtype={"seeds": str})
    assert dict(zip(df["defense"], df["source"])) == {"vanilla": "trained", "Tiny2024": "external"}
    assert df.loc[df["source"] == "external", "seeds"].tolist() == ["-"]
    assert set(df.loc[df["source"] == "trained", "seeds"]) == {"1"}
    assert main(["leaderboard", "--task", "digits", "--format", "csv", "--root", str(root), "--reference", str(ref)]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out), dtype={"seeds": str})
    ext = df.index[df["source"] == "external"][0]
    assert df.loc[ext + 1, "defense"] == "Tiny2024" and df.loc[ext + 1, "source"] == "reported"  # side by side
    assert df.loc[ext + 1, "clean"] == 91.5 and df.loc[ext + 1, "autoattack"] == 60.25 and df.loc[ext + 1, "seeds"] == "-"
    assert df.iloc[-1]["defense"] == "Other2023" and df.iloc[-1]["source"] == "reported"
    assert "Cifar2023" not in set(df["defense"])  # another dataset
    assert df.loc[df["source"] != "reported", "autoattack"].isna().all()  # claimed numbers stay in their own rows
    for fmt in ("table", "md", "json"):
        assert main(["leaderboard", "--task", "digits", "--format", fmt, "--root", str(root), "--reference", str(ref)]) == 0
        assert "reported" in capsys.readouterr().out
    (ref / "bad.json").write_text(json.dumps({"name": "x"}))
    assert main(["leaderboard", "--task", "digits", "--root", str(root), "--reference", str(ref)]) == 2
    assert "needs name, clean_acc, autoattack_acc" in capsys.readouterr().err
