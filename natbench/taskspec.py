"""Typed schemas of task specs (``natbench/specs/tasks/*.yaml``) and suites (``specs/suites/*.yaml``).

Every field has a default and a comment; unknown keys are rejected by :func:`config.from_dict`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, deep_merge, from_dict, load_yaml
from .contracts import ThreatModel

log = logging.getLogger(__name__)
#: the built-in specs an ``include:`` falls back to (natbench/specs/tasks, natbench/specs/suites)
BUILTIN_SPECS = Path(__file__).resolve().parent / "specs"


@dataclass(frozen=True)
class DataCfg:
    dataset: str = "digits"  # reader name in natbench.data (digits, cifar10, ...)
    val_fraction: float = 0.1  # fraction of the training set held out for checkpoint selection
    test_fraction: float = 0.2  # for datasets without an official test split (digits)
    split_seed: int = 0  # the split is fixed by this seed, independent of the run's seed
    augment: str = "none"  # training augmentation: "none" | "crop_flip" | "resized_crop_flip" (file datasets only)
    image_size: int = 224  # file datasets (imagenet100): side of the square crops fed to the model
    resize: int | None = None  # file datasets: shorter side before the crop (val/test, crop_flip); None = round(image_size * 256 / 224)
    class_list: str = "cmc"  # imagenet100: pinned 100-class list, "cmc" (Tian et al., CMC) | "gat" (Sriramanan et al., GAT)
    num_workers: int = 0  # file datasets: decode threads per loader (results do not depend on it; not part of the run hash)

    def validate(self, where: str) -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{where}.{name}: must be in [0, 1), got {v}")
        if self.image_size < 1 or self.num_workers < 0 or (self.resize is not None and self.resize < self.image_size):
            raise ConfigError(f"{where}: need image_size >= 1, num_workers >= 0 and resize >= image_size (or null)")


@dataclass(frozen=True)
class ModelCfg:
    arch: str = "small_cnn"  # natbench.models.ARCHS name (small_cnn, resnet18, wrn34_10, ...), a timm name, or "timm:<name>"
    num_classes: int = 10  # output classes
    in_channels: int = 1  # input channels
    width: int = 32  # base width of small_cnn
    mean: tuple[float, ...] = (0.5,)  # per-channel mean of the normalisation inside the model
    std: tuple[float, ...] = (0.5,)  # per-channel std of the normalisation inside the model


@dataclass(frozen=True)
class ProfileCfg:
    epochs: int = 15  # training epochs
    batch_size: int = 64  # training batch
    optimizer: str = "sgd"  # "sgd" | "adam"
    lr: float = 0.05  # initial learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 weight decay
    milestones: tuple[int, ...] = ()  # epochs (0-indexed) at which lr is multiplied by gamma
    gamma: float = 0.1  # lr decay factor
    eval_batch_size: int = 256  # batch size of validation and test evaluation
    lr_points: tuple[tuple[float, float], ...] = ()  # piecewise-linear lr: [[epoch, lr], ...] in fractional epochs, set every iteration (cyclic schedules); () = constant lr
    cycle_momentum: tuple[float, ...] = ()  # [base, max]: SGD momentum cycled against lr_points as torch CyclicLR does (max at the lowest lr, base at the highest); () = constant momentum
    amp: bool = False  # opt-in bf16 autocast of training on CUDA (forwards and the inner attack); off: fp32 as every reference trains (TF32 per torch defaults); no effect on CPU; evaluation stays fp32
    channels_last: bool = True  # channels_last memory format on CUDA (off on CPU)
    gpu_resident: bool = True  # CUDA fast path: in-memory datasets held on the GPU, augmentation and attack noise drawn there (no effect on CPU; not hashed)
    compile: bool = False  # CUDA: torch.compile the training model (not hashed: a speed knob)
    sets: tuple[str, ...] = ()  # "key=value" overrides of the task spec (--set syntax) that come with this profile, e.g. ["model.arch=reid_cnn", "task.params.height=64"]; applied before the user's --set; a component's param (mart.beta=5) only when the component is in --defense
    suite: str = ""  # the suite this profile evaluates unless --suite is given ("": the task's), e.g. quick -> smoke; the leaderboard shows it

    def validate(self, where: str) -> None:
        if self.sets:
            from .config import parse_set

            for path, _ in parse_set(self.sets):
                if path[0] == "training":
                    raise ConfigError(f"{where}.sets: {'.'.join(path)} sets a training field; write it in the profile itself")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError(f"{where}: epochs and batch sizes must be >= 1")
        if self.lr_points:
            ts = [t for t, _ in self.lr_points]
            if ts != sorted(ts) or ts[0] != 0 or any(lr < 0 for _, lr in self.lr_points):
                raise ConfigError(f"{where}.lr_points: need [[0, lr0], [t1, lr1], ...] with increasing epochs from 0 and lr >= 0, "
                                  f"e.g. [[0, 0], [6, 0.2], [15, 0]]")
        if self.cycle_momentum and (len(self.cycle_momentum) != 2 or not self.lr_points or self.optimizer != "sgd"
                                    or not 0 <= self.cycle_momentum[0] <= self.cycle_momentum[1] < 1):
            raise ConfigError(f"{where}.cycle_momentum: need [base, max] with 0 <= base <= max < 1, lr_points and optimizer sgd, "
                              f"e.g. [0.8, 0.9] (torch CyclicLR's defaults)")
        if self.lr < 0 or (self.lr == 0 and not self.lr_points) or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError(f"{where}: need lr > 0, weight_decay >= 0, 0 <= momentum < 1")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"{where}.optimizer: '{self.optimizer}' is not one of sgd, adam")


@dataclass(frozen=True)
class SelectionCfg:
    steps: int = 5  # PGD steps of the cheap validation attack used to pick the `best` checkpoint
    step_size: float | None = None  # None: eps/4 ... rounded as the PGD attack does


#: the largest eps (and training step) accepted in L2 and L1, where the radius grows with the input
#: dimension (an 8x8 image reaches any other at L2 8, L1 64; a 224x224 RGB one at L2 388, L1 150528):
#: a sanity bound against typos, not a recommendation (natbench.ranges declares the same)
MAX_LP_EPS = 10_000.0


@dataclass(frozen=True)
class ThreatCfg(ThreatModel):
    def validate(self, where: str) -> None:
        from .attacks._base import NORMS

        if self.norm not in NORMS:
            raise ConfigError(f"{where}.norm: unknown norm '{self.norm}'; use one of {', '.join(NORMS)}, "
                              f"e.g. --set threat_model.norm=l2")
        if self.eps < 0:
            raise ConfigError(f"{where}.eps: must be >= 0, got {self.eps}; e.g. --set threat_model.eps=8/255")
        if self.norm == "linf" and self.eps > 1:
            raise ConfigError(f"{where}.eps: {self.eps} exceeds the [0,1] pixel range; write e.g. 8/255")
        if self.eps > MAX_LP_EPS:
            raise ConfigError(f"{where}.eps: {self.eps} exceeds {MAX_LP_EPS:g}, far beyond any {self.norm} distance "
                              f"between two images of a task natbench runs; write e.g. 0.5")
        if self.train_steps < 1 or self.train_step_size <= 0:
            raise ConfigError(f"{where}: train_steps must be >= 1 and train_step_size > 0")
        if self.norm == "linf" and self.train_step_size > 1:
            raise ConfigError(f"{where}.train_step_size: {self.train_step_size} exceeds the [0,1] pixel range; write e.g. 2/255")


@dataclass(frozen=True)
class NormDefaults:
    """A task's defaults for one threat-model norm (``threat_models: {l2: {...}}`` in a task spec), used when
    ``--set threat_model.norm=<norm>`` names a norm other than the spec's own; an explicit
    ``--set threat_model.<field>`` wins over them, and ``--suite`` over ``suite``."""

    eps: float | None = None  # radius in this norm ([0,1] pixel units); None: keep the spec's (rarely meaningful)
    train_steps: int | None = None  # steps of the training-time attack; None: the spec's
    train_step_size: float | None = None  # its step; None: the spec's
    suite: str = ""  # the suite evaluated in this norm unless --suite is given ("": the profile's or task's)


@dataclass(frozen=True)
class TaskSpec:
    task: str = ""  # task name (the leaderboard key)
    kind: str = "classification"  # task kind (registry section task_kinds)
    description: str = ""  # one line for `natbench list tasks`
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    threat_model: ThreatCfg = field(default_factory=ThreatCfg)
    profiles: dict[str, ProfileCfg] = field(default_factory=lambda: {"default": ProfileCfg()})
    default_profile: str = "default"  # profile used when --profile is not given
    selection: SelectionCfg = field(default_factory=SelectionCfg)
    suite: str = "digits"  # attack suite (registry section suites)
    defense_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-component param defaults for this task
    params: dict[str, Any] = field(default_factory=dict)  # task-kind parameters, checked against the kind's own Params dataclass (reid: height, width, num_instances, distance, ...)
    threat_models: dict[str, NormDefaults] = field(default_factory=dict)  # per-norm defaults (norm -> NormDefaults), applied by --set threat_model.norm=...; not part of a run's config

    def validate(self, where: str) -> None:
        if not self.task:
            raise ConfigError(f"{where}: missing 'task' (the task's name)")
        if self.default_profile not in self.profiles:
            raise ConfigError(f"{where}.default_profile: '{self.default_profile}' is not among profiles {sorted(self.profiles)}")
        from .attacks._base import NORMS

        for norm in self.threat_models:
            if norm not in NORMS:
                raise ConfigError(f"{where}.threat_models.{norm}: unknown norm; use one of {', '.join(NORMS)}")


@dataclass(frozen=True)
class SuiteAttack:
    id: str = ""  # column name on the leaderboard, e.g. pgd-20
    attack: str = ""  # registry name of the attack
    params: dict[str, Any] = field(default_factory=dict)  # the attack's Params overrides
    objective: str | None = None  # objective kind override (default: the attack's objective_kind)
    seed_as: str | None = None  # draw the random starts from the seed of this other entry's id (aa-audit)


@dataclass(frozen=True)
class SuiteSpec:
    suite: str = ""  # name
    description: str = ""
    attacks: tuple[SuiteAttack, ...] = ()  # evaluated in this order, after the clean pass

    def validate(self, where: str) -> None:
        ids = [a.id for a in self.attacks]
        if len(set(ids)) != len(ids) or "clean" in ids or not all(ids):
            raise ConfigError(f"{where}.attacks: ids must be non-empty, unique and not 'clean'")
        for i, a in enumerate(self.attacks):
            if a.seed_as is not None and (a.seed_as == a.id or a.seed_as not in ids):
                why = "is this entry's own id" if a.seed_as == a.id else "is not an id of this suite"
                raise ConfigError(f"{where}.attacks[{i}].seed_as: '{a.seed_as}' {why}; name another entry's id "
                                  f"({', '.join(x for x in ids if x != a.id)}) or drop the key")


def resolve_include(path: Path, inc: str, section: str) -> tuple[Path, str]:
    """Where ``include: inc`` of the spec ``path`` points: the including file's folder first, then the
    built-in specs of ``section`` (``tasks`` or ``suites``); ``inc`` may omit ``.yaml``
    (``include: digits``). Returns ``(file, "next to <file>" | "built-in")``."""
    names = [inc] if inc.endswith((".yaml", ".yml")) else [inc, f"{inc}.yaml", f"{inc}.yml"]
    if Path(inc).is_absolute():
        tried = [Path(n) for n in names]
        where = [(p, "absolute path") for p in tried]
    else:
        where = [(path.parent / n, f"next to {path.name}") for n in names]
        where += [(BUILTIN_SPECS / section / n, "built-in") for n in names]
    for candidate, how in where:
        if candidate.is_file():
            return candidate, how
    raise ConfigError(f"{path}: include: {inc} found neither next to it ({path.parent}) nor among the built-in "
                      f"{section} ({', '.join(sorted(p.stem for p in (BUILTIN_SPECS / section).glob('*.yaml')))}); "
                      f"write e.g. include: digits.yaml")


def load_spec_dict(path: Path, section: str = "tasks") -> dict:
    """A spec file as a plain dict, its ``include:`` (one level) resolved by :func:`resolve_include` and
    deep-merged under it; which file was included is logged (INFO) and kept as ``_included`` (not part of
    the spec: :func:`load_task_spec` removes it)."""
    path = Path(path)
    data = load_yaml(path)
    inc = data.pop("include", None)
    if inc is None:
        return data
    if not isinstance(inc, str) or not inc:
        raise ConfigError(f"{path}: 'include' must be one file name (e.g. include: digits.yaml), got {inc!r}")
    base_path, how = resolve_include(path, inc, section)
    base = load_yaml(base_path)
    if "include" in base:
        if how != "built-in":
            raise ConfigError(f"{base_path}: 'include' may be used one level deep only (included from {path})")
        base = load_spec_dict(base_path, section)  # a built-in spec that includes another built-in (cifar100)
        base.pop("_included", None)
    log.info("%s: include: %s -> %s (%s)", path.name, inc, base_path, how)
    out = deep_merge(base, data)
    out["_included"] = f"{base_path} ({how})"
    return out


def _load(cls, path: Path, section: str):
    data = load_spec_dict(path, section)
    data.pop("_included", None)
    return from_dict(cls, data, f"{Path(path).name}")


def load_task_spec(path: Path) -> TaskSpec:
    return _load(TaskSpec, path, "tasks")


def load_suite_spec(path: Path) -> SuiteSpec:
    from .corruption_suite import expand  # a corruption grid entry -> one entry per (corruption, severity)

    return expand(_load(SuiteSpec, path, "suites"))
