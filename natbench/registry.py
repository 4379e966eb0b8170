"""The registry: ``natbench/registry.yaml`` (built-ins) plus entry points (third-party plugins).

Entries are lazy ``"module:attr"`` strings: nothing is imported until a name is resolved, and no
registry is filled by import side effects. Task and suite entries point at YAML specs instead.

Third-party packages add plugins through the entry-point groups ``natbench.task_kinds``,
``natbench.defenses``, ``natbench.regularizers``, ``natbench.perturbations``, ``natbench.averagers`` and
``natbench.attacks`` (value ``"module:attr"``); tasks and suites come from ``natbench.tasks`` and
``natbench.suites`` (value: a path to the YAML spec). A plugin class may carry ``cite`` (its paper or
source, shown by ``natbench list``) and ``task_kinds`` (the task kinds it supports, checked when a
defense is composed) as class attributes; they are read when the plugin is first loaded. A plugin
whose name is a built-in's (or another plugin's) is refused, and one that fails to import is a user
error (one line, exit 2), not a traceback.

This module imports neither torch nor any plugin: ``natbench list`` and ``--help`` stay fast.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, unknown

PACKAGE_DIR = Path(__file__).resolve().parent
REGISTRY_FILE = PACKAGE_DIR / "registry.yaml"
SPECS_DIR = PACKAGE_DIR / "specs"
CODE_KINDS = ("task_kinds", "defenses", "regularizers", "perturbations", "averagers", "attacks")
SPEC_KINDS = ("tasks", "suites")
ENTRY_KEYS = {"target", "spec", "cite", "alias", "tasks", "kind"}
#: registry sections -> the word used in messages (also ``natbench.contracts.KINDS``)
KINDS: Mapping[str, str] = {
    "task_kinds": "task kind",
    "tasks": "task",
    "defenses": "defense",
    "regularizers": "regularizer",
    "perturbations": "weight perturbation",
    "averagers": "weight averager",
    "attacks": "attack",
    "suites": "suite",
}


@dataclass(frozen=True)
class Entry:
    """One registry entry. ``target`` for code plugins, ``spec`` (a YAML path) for tasks/suites."""

    kind: str
    name: str
    cite: str
    target: str | None = None
    spec: str | None = None
    alias: str | None = None  # defense spec this name expands to when used alone (e.g. nat -> pgd-at+nat)
    tasks: tuple[str, ...] | None = None  # task kinds the plugin supports (None: all)
    task_kind: str | None = None  # for tasks: the task kind that runs the spec
    source: str = "builtin"

    def spec_path(self) -> Path:
        assert self.spec is not None
        p = Path(self.spec)
        return p if p.is_absolute() else SPECS_DIR / p


class Registry:
    """Name -> entry maps per kind, with did-you-mean errors."""

    def __init__(self, entries: dict[str, dict[str, Entry]]):
        self._entries = entries

    @classmethod
    def from_file(cls, path: Path = REGISTRY_FILE, *, entry_points: bool = True) -> "Registry":
        from .config import load_yaml  # late: config imports registry-free helpers only

        raw = load_yaml(path)
        entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        for kind, items in raw.items():
            if kind not in KINDS:
                raise ConfigError(f"{path}: unknown registry section '{kind}'. Sections: {', '.join(KINDS)}")
            if not isinstance(items or {}, dict):
                raise ConfigError(f"{path}: section {kind} must map names to entries, got a {type(items).__name__}")
            for name, body in (items or {}).items():
                if not isinstance(body, dict):
                    raise ConfigError(f"{path}: {kind}.{name} must be a mapping with at least 'cite' and 'target' or 'spec'")
                if "tasks" in body and not (isinstance(body["tasks"], list) and all(isinstance(t, str) for t in body["tasks"])):
                    raise ConfigError(f"{path}: {kind}.{name}.tasks must be a list of task kinds, e.g. [classification]")
                bad = set(body) - ENTRY_KEYS
                if bad:
                    raise ConfigError(f"{path}: {kind}.{name} has unknown keys {sorted(bad)}; allowed: {sorted(ENTRY_KEYS)}")
                if "cite" not in body:
                    raise ConfigError(f"{path}: {kind}.{name} has no 'cite'; every built-in names its paper or source")
                entries[kind][name] = Entry(
                    kind=kind, name=name, cite=body["cite"], target=body.get("target"), spec=body.get("spec"),
                    alias=body.get("alias"), tasks=tuple(body["tasks"]) if body.get("tasks") else None,
                    task_kind=body.get("kind"),
                )
        if entry_points:
            _add_entry_points(entries)
        return cls(entries)

    def kinds(self) -> list[str]:
        return list(self._entries)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[kind][n] for n in self.names(kind)]

    def has(self, kind: str, name: str) -> bool:
        return name in self._entries[kind]

    def entry(self, kind: str, name: str) -> Entry:
        try:
            return self._entries[kind][name]
        except KeyError:
            raise unknown(KINDS[kind], name, self._entries[kind]) from None

    def load(self, kind: str, name: str) -> Any:
        """Import and return the object behind a code entry. A third-party plugin that fails to
        import is a user error (ConfigError: one line, exit 2); its ``cite`` and ``task_kinds``
        class attributes, if any, are copied into its entry."""
        e = self.entry(kind, name)
        if e.source == "builtin":
            return load_target(e.target or "")
        try:
            obj = load_target(e.target or "")
        except Exception as err:  # noqa: BLE001 - whatever a third-party import raises
            raise ConfigError(f"{KINDS[kind]} plugin '{name}' ({e.target}, {e.source}) failed to import: "
                              f"{type(err).__name__}: {err}; fix or uninstall the package that provides it") from None
        self._entries[kind][name] = _with_class_attributes(e, obj)
        return obj


def load_target(target: str) -> Any:
    """Import ``"package.module:attr"``; raise ImportError/AttributeError with the target named."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ConfigError(f"Registry target '{target}' is not of the form 'module:attr'")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _with_class_attributes(e: Entry, obj: Any) -> Entry:
    """``e`` with the plugin class's ``cite`` and ``task_kinds`` attributes (when it declares them)."""
    cite, kinds = getattr(obj, "cite", None), getattr(obj, "task_kinds", None)
    if isinstance(kinds, str):
        kinds = (kinds,)
    changes: dict[str, Any] = {}
    if isinstance(cite, str) and cite.strip():
        changes["cite"] = cite.strip()
    if kinds and all(isinstance(k, str) for k in kinds):
        changes["tasks"] = tuple(kinds)
    return dataclasses.replace(e, **changes) if changes else e


def _add_entry_points(entries: dict[str, dict[str, Entry]]) -> None:
    """Add the entry-point plugins; a name that is already taken (a built-in, or another plugin with
    another target) is refused with one line naming both."""
    for kind in KINDS:
        for ep in metadata.entry_points(group=f"natbench.{kind}"):
            have = entries[kind].get(ep.name)
            if have is not None:
                if have.source != "builtin" and (have.target or have.spec) == ep.value:
                    continue  # the same plugin seen twice (e.g. installed as egg-link and dist-info)
                what = f"the built-in {KINDS[kind]} '{ep.name}' ({have.target or have.spec})" if have.source == "builtin" \
                    else f"the {KINDS[kind]} plugin '{ep.name}' ({have.target or have.spec}, {have.source})"
                raise ConfigError(f"{KINDS[kind]} plugin '{ep.name}' ({ep.value}, entry point {ep.group}) has the name of "
                                  f"{what}; rename the plugin in its package's entry points")
            is_spec = kind in SPEC_KINDS
            entries[kind][ep.name] = Entry(
                kind=kind, name=ep.name, cite=f"third-party plugin ({ep.value})",
                target=None if is_spec else ep.value, spec=ep.value if is_spec else None,
                source=f"entry point {ep.group}",
            )


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry (built-ins + entry points), loaded once."""
    return Registry.from_file()
