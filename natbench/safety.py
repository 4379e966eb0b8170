"""Names that become paths, paths that must stay inside ``--root``, and files that must not run code.

- :func:`check_name` / :func:`check_run_id`: task names, defense specs and run ids become folder
  names under the results root; they are restricted to a safe character set (letters, digits and
  ``_ . + - =``), may not start with a dot or a dash, and are at most :data:`MAX_NAME` characters.
  A run id is checked *before* any file is opened (``natbench eval ../outside`` reads nothing).
- :func:`inside`: every path natbench writes under the results root is resolved (symlinks and ``..``
  followed) and must still lie inside the resolved root.
- :func:`load_torch`: ``torch.load(weights_only=True)`` of a checkpoint, with every failure
  (random bytes, truncated, zero bytes, a pickle payload the weights-only unpickler refuses, a
  missing file) turned into one line naming the file and the fix.
- :class:`RestrictedUnpickler`: the unpickler of data files (CIFAR's python pickles) that resolves
  only the globals a real file uses; anything else (``os.system``, ``builtins.eval``, ...) is refused
  before it can run.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import uuid
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, RunError

MAX_NAME = 120
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*")


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a path part (or ``None`` when it can)."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    if len(name) > MAX_NAME:
        return f"it is longer than {MAX_NAME} characters"
    if not _NAME.fullmatch(name) or ".." in name:
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_.+=-"))})
        what = f"characters {''.join(bad)!r}" if bad else "'..' or a leading '.'/'-'"
        return f"it contains {what}"
    return None


def check_name(what: str, name: Any, fix: str = "") -> str:
    """``name`` unchanged, or a :class:`ConfigError` saying why it cannot become a folder name."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{what} {name!r}: not a safe name ({problem}); use letters, digits and _ . + - = "
                          f"only{fix and '; ' + fix}")
    return name


def check_run_id(run_id: Any) -> str:
    """A run id as given on the command line: a single safe folder name (no ``/``, no ``..``)."""
    problem = name_problem(run_id)
    if problem:
        raise RunError(f"run id {run_id!r}: not a run id ({problem}); give the id of a run under --root, "
                       f"e.g. digits-vanilla-s0-1a2b3c4d (list runs with: natbench leaderboard --format csv)")
    return run_id


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, after checking that it lies inside ``root`` (also resolved)."""
    root_r = Path(root).resolve()
    path_r = Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise RunError(f"{path}: resolves to {path_r}, outside the results root {root_r}; natbench writes only "
                       f"inside --root (remove the link, or choose another --root)")
    return path_r


def run_dir(root: str | Path, run_id: str) -> Path:
    """``<root>/<run_id>``: the run id checked, the folder checked to resolve inside ``root``."""
    inside(root, Path(root) / check_run_id(run_id))
    return Path(root) / run_id


def tmp_path(path: Path) -> Path:
    """A unique temporary name next to ``path`` (same directory: ``os.replace`` is atomic); the file is
    created by the writer, so it gets the usual permissions (umask), unlike ``mkstemp``'s 0600."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a unique temporary file, then move it over ``path`` atomically."""
    tmp = tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a unique temporary file (two writers never share one) and a rename."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# ------------------------------------------------------------------------------------ checkpoints
def load_torch(path: Path, what: str, fix: str, **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)``; any failure is one :class:`RunError` line naming the
    file, the problem and ``fix`` (never a traceback, never the interpreter's EOF "aborted")."""
    import torch

    if not Path(path).is_file():
        raise RunError(f"{what} {path}: file not found; {fix}")
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - zip/pickle/EOF/runtime errors of a damaged or crafted file
        problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in str(e) or isinstance(e, pickle.UnpicklingError):
            problem = "holds objects other than tensors (refused by the weights-only loader)"
        elif isinstance(e, EOFError) or Path(path).stat().st_size == 0:
            problem = "empty or truncated"
        raise RunError(f"{what} {path}: not a readable checkpoint ({problem[:160]}); {fix}") from None


def load_weights(model: Any, path: Path, what: str, fix: str, map_location: Any = None) -> None:
    """Load a state dict file into ``model``; a file of other keys or shapes is one-line error."""
    state = load_torch(path, what, fix, map_location=map_location)
    if not isinstance(state, dict):
        raise RunError(f"{what} {path}: holds a {type(state).__name__}, not a state dict; {fix}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{what} {path}: does not fit the run's model ({first[:160]}); {fix}") from None


# ------------------------------------------------------------------------------------ data pickles
#: the globals a pickle of plain data with numpy arrays may use (numpy 1 and 2 module paths; ``_codecs.encode``
#: is how a protocol-2 pickle written by Python 3 spells bytes)
ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"), ("builtins", "bytearray"), ("__builtin__", "bytearray"),
})


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; dicts, lists, tuples, strings, bytes and numbers need
    no global. Any other global is refused (:class:`pickle.UnpicklingError`) before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a data file")
        return super().find_class(module, name)


def restricted_load(f: io.BufferedIOBase, **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(f, **kwargs).load()


# ------------------------------------------------------------------------------------ XML
class UnsafeXML(ValueError):
    """An XML file with a DOCTYPE or an entity declaration (never in a real annotation)."""


def parse_xml(data: bytes) -> Any:
    """The root :class:`xml.etree.ElementTree.Element` of ``data``, refusing any ``<!DOCTYPE>`` or
    ``<!ENTITY>`` declaration first (stdlib ``xml.etree`` expands internal entities: the "billion
    laughs"; external entities are not fetched by expat, but a DOCTYPE has no place in the data anyway).
    The pre-scan is expat itself, so every encoding the parser accepts is scanned the same way."""
    import xml.etree.ElementTree as ET
    from xml.parsers import expat

    def refuse(*_: Any) -> None:
        raise UnsafeXML("a DOCTYPE or ENTITY declaration (refused: natbench does not expand XML entities)")

    scan = expat.ParserCreate()
    scan.StartDoctypeDeclHandler = refuse
    scan.EntityDeclHandler = refuse
    scan.UnparsedEntityDeclHandler = refuse
    scan.ExternalEntityRefHandler = lambda *a: refuse()
    try:
        scan.Parse(data, True)
    except expat.ExpatError as e:
        raise ET.ParseError(str(e)) from None
    return ET.fromstring(data)


STATE_KEYS = ("config_hash", "epoch", "best", "model", "optimizer", "history")


def load_state(path: Path, run_id: str, map_location: Any = None) -> dict:
    """A run's resumable training state (``state.pt``), its keys checked."""
    fix = "delete it to train from the first epoch, or run with --force"
    state = load_torch(path, f"run {run_id}: training state", fix, map_location=map_location)
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise RunError(f"run {run_id}: training state {path}: not a natbench training state (no {', '.join(missing)}); {fix}")
    return state
