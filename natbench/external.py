"""Outside models: evaluate a checkpoint natbench did not train, under the same suites and checks.

``--model`` (``natbench eval --task T --model SPEC``, :func:`natbench.evaluate`) is one of

- ``path/to/file.py:factory`` or ``package.module:factory``: a callable returning an ``nn.Module``;
  it is given ``num_classes=`` (the task's) when its signature takes that keyword;
- ``timm:<name>`` / ``torchvision:<name>``: the library's architecture with the task's number of
  classes, untrained (``pretrained=False`` / ``weights=None``; give ``--weights``);
- ``torchscript:<file>``: a TorchScript module saved with ``torch.jit.save``;
- ``robustbench:<model name>``: a RobustBench zoo model (package ``robustbench``, extra
  ``natbench[robustbench]``) for the task's dataset and threat model (:func:`natbench.zoo.robustbench_names`);
  with ``--weights`` the zoo architecture is built and the local file loaded (nothing downloaded),
  without it ``robustbench.utils.load_model`` downloads the published weights.

``--weights`` is a state dict: ``.pt``/``.pth``/``.bin``/``.ckpt`` read with
``torch.load(weights_only=True)`` or ``.safetensors``; the usual wrappers (a ``state_dict``,
``model`` or ``net`` entry, ``module.`` prefixes of DataParallel) are unwrapped and a mismatch names
the first missing and unexpected keys. The model receives pixels in [0, 1]; ``--normalize`` wraps
it in ``(x - mean) / std`` (default ``none``: the model normalises itself, as RobustBench models
do), so attacks always work in pixel space and eps means what the leaderboard says.

What the model must return (checked on a test batch before anything is evaluated or stored):

- classification: a floating tensor of logits ``(B, num_classes)``;
- re-id: an embedding ``(B, D)``: from ``features(x)`` when the model has that method, else from
  ``forward(x)`` (evaluation ranks the gallery by embedding distance; no identity classifier needed);
- detection: a :class:`natbench.tasks.detection.DetectionNet` (a torchvision SSD wrapped by natbench,
  its normalisation inside); natbench's detection attacks need its anchors and heads, so any other
  detector is refused.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

SOURCES = ("file", "module", "timm", "torchvision", "torchscript", "robustbench")
PREFIXES = ("timm", "torchvision", "torchscript", "robustbench")
#: checkpoint label of an external model's results (it has no best/last)
CHECKPOINT = "external"
#: profile recorded for external runs (they are not trained)
PROFILE = "external"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_WRAPPERS = ("state_dict", "model", "net", "model_state_dict")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


@dataclass(frozen=True)
class Spec:
    """A parsed ``--model``: ``source`` (one of :data:`SOURCES`), ``target`` (file, module or model
    name) and ``factory`` (the callable's name for ``file``/``module``)."""

    text: str
    source: str
    target: str
    factory: str = ""


def parse_spec(text: str) -> Spec:
    """``"my.py:build"`` -> Spec("file", "my.py", "build"), ``"timm:resnet18"`` -> Spec("timm", "resnet18"), ..."""
    text = text.strip()
    head, sep, tail = text.partition(":")
    if sep and head in PREFIXES:
        if not tail:
            raise ConfigError(f"--model {text}: give a name after '{head}:', e.g. {head}:resnet18")
        return Spec(text, head, tail)
    target, sep, factory = text.rpartition(":")
    if not sep or not target or not factory or not factory.isidentifier():
        raise ConfigError(f"--model {text!r}: expected path/to/file.py:factory, package.module:factory, "
                          f"or one of {', '.join(p + ':<name>' for p in PREFIXES)}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        return Spec(text, "file", target, factory)
    return Spec(text, "module", target, factory)


# ------------------------------------------------------------------------------------------ building
def _load_module(spec: Spec) -> Any:
    if spec.source == "module":
        try:
            return importlib.import_module(spec.target)
        except ImportError as e:
            raise ConfigError(f"--model {spec.text}: cannot import module '{spec.target}' ({_one_line(e)}); "
                              f"check the name or use path/to/file.py:{spec.factory}") from None
    path = Path(spec.target)
    if not path.is_file():
        raise ConfigError(f"--model {spec.text}: no such file {path}; give an existing .py file")
    name = "natbench_external_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    mspec = importlib.util.spec_from_file_location(name, path)
    if mspec is None or mspec.loader is None:
        raise ConfigError(f"--model {spec.text}: {path} is not a Python file; give a .py file")
    module = importlib.util.module_from_spec(mspec)
    sys.path.insert(0, str(path.resolve().parent))  # its sibling modules import as they would in a script
    try:
        sys.modules[name] = module
        mspec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file failed: one line, exit 2
        sys.modules.pop(name, None)
        raise ConfigError(f"--model {spec.text}: importing {path} raised {_one_line(e)}") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _call_factory(spec: Spec, fn: Any, num_classes: int) -> nn.Module:
    if not callable(fn):
        raise ConfigError(f"--model {spec.text}: '{spec.factory}' is not callable; name a function or class returning an nn.Module")
    try:
        params = inspect.signature(fn).parameters
        takes = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):  # a builtin without a signature
        takes = False
    try:
        model = fn(num_classes=num_classes) if takes else fn()
    except Exception as e:  # noqa: BLE001 - the user's factory failed: one line, exit 2
        raise ConfigError(f"--model {spec.text}: the factory raised {_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec.text}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build(spec: Spec, task_spec: Any, num_classes: int, weights: Path | None = None,
          model_dir: Path = Path("robustbench-models")) -> nn.Module:
    """The bare model of ``spec`` (weights not yet loaded; random initialisation seeded)."""
    torch.manual_seed(0)  # a factory's random initialisation is reproducible (and so is its hash)
    if spec.source in ("file", "module"):
        module = _load_module(spec)
        if not hasattr(module, spec.factory):
            from .errors import suggest

            names = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
            raise ConfigError(f"--model {spec.text}: {spec.target} has no '{spec.factory}'.{suggest(spec.factory, names)} "
                              f"Callables there: {', '.join(sorted(names)) or '(none)'}")
        return _call_factory(spec, getattr(module, spec.factory), num_classes)
    if spec.source == "timm":
        import timm

        if not timm.is_model(spec.target):
            from .errors import suggest

            raise ConfigError(f"--model {spec.text}: timm has no model '{spec.target}'.{suggest(spec.target, timm.list_models())}")
        in_chans = getattr(task_spec.model, "in_channels", 3)
        return timm.create_model(spec.target, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    if spec.source == "torchvision":
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        if spec.target not in names:
            from .errors import suggest

            raise ConfigError(f"--model {spec.text}: torchvision has no classification model '{spec.target}'.{suggest(spec.target, names)}")
        return torchvision.models.get_model(spec.target, weights=None, num_classes=num_classes)
    if spec.source == "torchscript":
        path = Path(spec.target)
        if not path.is_file():
            raise ConfigError(f"--model {spec.text}: no such file {path}; save one with torch.jit.save(torch.jit.script(model), path)")
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"--model {spec.text}: {path} is not a TorchScript file ({_one_line(e)})") from None
    if spec.source == "robustbench":
        from .zoo import robustbench_model

        return robustbench_model(spec, task_spec, weights, model_dir)
    raise AssertionError(spec.source)


# ------------------------------------------------------------------------------------------ weights
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain ``name -> tensor`` dict from ``path`` (wrappers and ``module.`` prefixes removed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--weights {path}: no such file")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ConfigError(f"--weights {path}: expected one of {', '.join(WEIGHT_SUFFIXES)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickled objects refused by weights_only, a corrupt file
        raise ConfigError(f"--weights {path}: cannot read a state dict ({_one_line(e)}); "
                          f"save one with torch.save(model.state_dict(), path)") from None
    while isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"--weights {path}: not a state dict of tensors (keys: {', '.join(map(str, list(state)[:5])) if isinstance(state, dict) else type(state).__name__}); "
                          f"save one with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``model.load_state_dict(state)``, strictly; a mismatch names the first offending keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} ({len(missing)})"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)})"] if unexpected else [])
        raise ConfigError(f"--weights {where}: the weights do not fit the model: {'; '.join(parts)}; "
                          f"check --model (and num_classes) or the checkpoint")
    for k, v in own.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise ConfigError(f"--weights {where}: {k} has shape {tuple(state[k].shape)} in the file, "
                              f"{tuple(v.shape)} in the model; check --model (and num_classes)")
    model.load_state_dict(state)


def file_sha256(path: Path) -> str:
    """The sha256 of a file (the weights, a TorchScript archive), as checkpoints are hashed."""
    from .integrity import sha256_file

    return sha256_file(path)


def state_sha256(model: nn.Module) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, values): :func:`provenance.weights_digest`."""
    from .provenance import weights_digest

    return weights_digest(model.state_dict())


# ------------------------------------------------------------------------------------------ wrappers
def parse_normalize(text: str | None, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``none`` -> None; ``"m,s"`` -> the same mean/std on every channel; ``"m1,..,mC,s1,..,sC"``."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--normalize {text}: expected none, MEAN,STD or {channels} means then {channels} stds, "
                          f"comma-separated") from None
    if len(vals) == 2:
        vals = [vals[0]] * channels + [vals[1]] * channels
    if len(vals) != 2 * channels or any(s <= 0 for s in vals[channels:]):
        raise ConfigError(f"--normalize {text}: the task has {channels} input channel(s): give MEAN,STD or "
                          f"{channels} means then {channels} positive stds")
    return tuple(vals[:channels]), tuple(vals[channels:])


class Normalized(nn.Module):
    """``net((x - mean) / std)``; ``features`` passed through (re-id)."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        from .models import Normalize

        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> Any:
        return self.net(self.normalize(x))


class ReIDEmbedding(nn.Module):
    """An outside re-id model as the reid task evaluates it: ``features(x)`` = the embedding (the
    model's own ``features`` when it has one, else its ``forward``), ``forward`` = the same."""

    def __init__(self, net: nn.Module, norm: tuple | None):
        super().__init__()
        from .models import Normalize

        self.net = net
        self.normalize = Normalize(*norm) if norm else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalize(x)
        f = getattr(self.net, "features", None)
        return f(z) if callable(f) else self.net(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# ------------------------------------------------------------------------------------------ loaded model
@dataclass
class External:
    """An outside model ready to evaluate, and what identifies it (its provenance)."""

    model: nn.Module
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return self.provenance["weights_sha256"]


def default_name(spec: Spec) -> str:
    if spec.source == "file":
        return f"{Path(spec.target).stem}:{spec.factory}"
    if spec.source == "module":
        return f"{spec.target}:{spec.factory}"
    if spec.source == "torchscript":
        return Path(spec.target).stem
    return spec.target


def load(model: str, task: Any, *, weights: str | Path | None = None, name: str | None = None,
         normalize: str | None = None, model_dir: Path = Path("robustbench-models")) -> External:
    """Build ``--model``, load ``--weights``, wrap ``--normalize`` for ``task`` (a task object)."""
    spec = parse_spec(model)
    tspec = task.spec
    kind = tspec.kind
    wpath = Path(weights) if weights is not None else None
    if wpath is not None and not wpath.is_file():
        raise ConfigError(f"--weights {wpath}: no such file")
    num_classes = task.num_classes() if kind == "reid" else tspec.model.num_classes
    norm = parse_normalize(normalize, tspec.model.in_channels)
    if kind == "detection" and norm is not None:
        raise ConfigError("--normalize: a detection model (DetectionNet) normalises inside its SSD transform; drop --normalize")
    net = build(spec, tspec, num_classes, wpath, model_dir)
    if wpath is not None:
        if spec.source == "torchscript":
            raise ConfigError(f"--weights {wpath}: a TorchScript file carries its weights; drop --weights")
        load_weights(net, read_state_dict(wpath), str(wpath))
        sha, sha_of = file_sha256(wpath), "weights file"
    elif spec.source == "torchscript":
        sha, sha_of = file_sha256(Path(spec.target)), "torchscript file"
    else:
        sha, sha_of = state_sha256(net), "state dict"
    params = sum(p.numel() for p in net.parameters())
    if kind == "detection":
        from .tasks.detection import DetectionNet

        if not isinstance(net, DetectionNet):
            raise ConfigError(f"--model {spec.text}: returned {type(net).__name__}; an outside detection model must be a "
                              f"natbench.tasks.detection.DetectionNet (a torchvision SSD; see docs/external.md)")
        wrapped: nn.Module = net
    elif kind == "reid":
        wrapped = ReIDEmbedding(net, norm)
    elif kind == "classification":
        wrapped = Normalized(net, *norm) if norm else net
    else:
        raise ConfigError(f"--model: task kind '{kind}' has no outside-model contract; use a classification, reid or detection task")
    wrapped.eval()
    prov = {"source": spec.source, "spec": spec.text, "name": name or default_name(spec),
            "weights": str(wpath) if wpath else "", "weights_sha256": sha, "sha256_of": sha_of,
            "params": int(params), "normalize": [list(norm[0]), list(norm[1])] if norm else "none"}
    return External(wrapped, prov)


def check_output(ext: External, task: Any, batch: Any, where: str) -> None:
    """One forward on a test batch: what the task kind needs, or one line saying what came back."""
    kind = task.spec.kind
    x = batch.x[:4]
    try:
        with torch.no_grad():
            if kind == "reid":
                out = ext.model.features(x)
            elif kind == "detection":
                out = ext.model.detect(x)
            else:
                out = ext.model(x)
    except Exception as e:  # noqa: BLE001 - the model cannot run on the task's inputs
        raise ConfigError(f"--model {where}: the model failed on a batch of the task's inputs {tuple(x.shape)} "
                          f"in [0, 1] ({_one_line(e)})") from None
    if kind == "detection":
        return
    desc = f"{type(out).__name__}" + (f" of shape {tuple(out.shape)}" if torch.is_tensor(out) else "")
    if kind == "reid":
        if not (torch.is_tensor(out) and out.dim() == 2 and out.shape[0] == len(x) and out.is_floating_point()):
            raise ConfigError(f"--model {where}: an outside re-id model must return an embedding (B, D) from "
                              f"features(x) or forward(x); it returned {desc}")
        return
    c = task.spec.model.num_classes
    if not (torch.is_tensor(out) and out.dim() == 2 and tuple(out.shape) == (len(x), c) and out.is_floating_point()):
        raise ConfigError(f"--model {where}: must return logits of shape ({len(x)}, {c}) for task {task.spec.task}; "
                          f"it returned {desc}")


def identity(prov: dict[str, Any], task_cfg: dict[str, Any], n: int | None) -> tuple[str, str]:
    """``(config_hash, run_id)`` of an external run: derived from the task, the model's source,
    spec, name, weights' sha256, parameter count, normalisation and the number of test samples."""
    from .config import config_hash

    keys = {k: prov[k] for k in ("source", "spec", "name", "weights_sha256", "params", "normalize")}
    h = config_hash({"external": keys, "task": task_cfg, "n": n})
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", prov["name"]).strip("-")[:40] or "model"
    return h, f"{task_cfg['task']}-ext-{slug}-{h[:8]}"
