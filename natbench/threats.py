"""Threat models as keys: the ``(norm, eps)`` a result was evaluated under.

A run is trained (and by default evaluated) under its own threat model, ``task.threat_model`` of its
config. ``natbench eval RUN --threat-model l1:5`` evaluates its checkpoints under another one; the
store keeps those rows apart under the key :func:`key` (``"l1:5.0"``), the run's own rows under
``''`` (:data:`OWN`; every row of a store written before schema 3 is one of those). An override equal
to the run's own threat model is the run's own (``''``): a result is never stored twice.

Text forms: ``NORM:EPS`` on the command line (:func:`parse`; ``linf:8/255``, ``l2:0.5``, ``l1:5``);
the store key ``norm:repr(eps)`` (exact round trip of the float); titles ``"L2 eps 0.5"``
(:func:`describe`).
"""
from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError

#: the store key of rows evaluated under their run's own threat model
OWN = ""
#: the norms in the order the leaderboard lists their tables (natbench.attacks._base.NORMS)
NORMS = ("linf", "l2", "l1")
_TITLE = {"linf": "L-inf", "l2": "L2", "l1": "L1"}


def parse(text: str, where: str = "--threat-model") -> tuple[str, float]:
    """``"l2:0.5"`` -> ``("l2", 0.5)``; ``linf`` eps may be written ``8/255``. A bad value is a
    one-line :class:`ConfigError` naming ``where`` and an example."""
    from .config import parse_float

    example = "e.g. l2:0.5, l1:5 or linf:8/255"
    norm, sep, eps_text = str(text).strip().partition(":")
    norm = norm.strip().lower()
    if not sep or not norm or not eps_text.strip():
        raise ConfigError(f"{where} {text!r}: expected NORM:EPS, {example}")
    if norm not in NORMS:
        raise ConfigError(f"{where} {text!r}: unknown norm '{norm}'; one of {', '.join(NORMS)} ({example})")
    try:
        eps = parse_float(eps_text.strip(), where)
    except ConfigError:
        raise ConfigError(f"{where} {text!r}: eps '{eps_text.strip()}' is not a number or a fraction ({example})") from None
    if not eps > 0:
        raise ConfigError(f"{where} {text!r}: eps must be > 0 (eps 0 is the clean accuracy), {example}")
    if norm == "linf" and eps > 1:
        raise ConfigError(f"{where} {text!r}: an L-inf eps above 1 exceeds the [0,1] pixel range; write e.g. linf:8/255")
    return norm, eps


def key(norm: str, eps: float) -> str:
    """The store key of ``(norm, eps)``: ``"l1:5.0"`` (``repr`` of the float: exact round trip)."""
    return f"{norm}:{float(eps)!r}"


def from_key(k: str) -> tuple[str, float]:
    """Inverse of :func:`key`."""
    norm, _, eps = k.partition(":")
    return norm, float(eps)


def own(config: dict | None) -> tuple[str, float]:
    """``(norm, eps)`` of a run's resolved config (``task.threat_model``; norm ``linf`` where the
    config predates the field, eps NaN where unknown)."""
    task = (config or {}).get("task") if isinstance((config or {}).get("task"), dict) else {}
    threat = task.get("threat_model") if isinstance(task.get("threat_model"), dict) else {}
    try:
        eps = float(threat.get("eps"))
    except (TypeError, ValueError):
        eps = float("nan")
    return str(threat.get("norm") or "linf"), eps


def same(a: tuple[str, float], b: tuple[str, float]) -> bool:
    """The same threat model (eps equal to 1e-12 relative: ``8/255`` written two ways)."""
    return a[0] == b[0] and math.isclose(a[1], b[1], rel_tol=1e-12, abs_tol=0.0)


def stored_key(override: tuple[str, float] | None, run_own: tuple[str, float]) -> str:
    """The key rows of an evaluation under ``override`` are stored under: :data:`OWN` when there is
    none or it is the run's own threat model, else :func:`key`."""
    if override is None or same(override, run_own):
        return OWN
    return key(*override)


def title(norm: str) -> str:
    """``"L2"``, ``"L-inf"``: a norm as the tables name it."""
    return _TITLE.get(norm, norm)


def describe(norm: str, eps: float) -> str:
    """``"L2 eps 0.5"``, ``"L-inf eps 8/255"`` (the leaderboard's table titles)."""
    from .leaderboard_rows import eps_text

    return f"{_TITLE.get(norm, norm)} eps {eps_text(eps)}"


def short(norm: str, eps: float) -> str:
    """``"l2 0.5"``, ``"linf 8/255"`` (a table cell: the ``trained`` column)."""
    from .leaderboard_rows import eps_text

    return f"{norm} {eps_text(eps)}"


def order(t: tuple[str, float]) -> tuple[Any, ...]:
    """Sort key of threat models: by norm (L-inf, L2, L1, others), then eps."""
    norm, eps = t
    return (NORMS.index(norm) if norm in NORMS else len(NORMS), norm, eps if eps == eps else math.inf)
