"""Errors natbench raises on purpose.

A :class:`NatbenchError` is a *user* error: bad name, bad config, missing data. The CLI prints it as
one red line (what, where, one fix) and exits with code 2. Anything else is a bug and keeps its
traceback (exit code 1).
"""
from __future__ import annotations

import difflib
from typing import Iterable


class NatbenchError(Exception):
    """A user error: printed as one line, exit code 2."""

    exit_code = 2


class UnknownNameError(NatbenchError):
    """A name that is not in the registry (task, defense, attack, ...)."""


class ConfigError(NatbenchError):
    """A malformed, duplicate-key, unknown-key or ill-typed configuration value."""


class CompositionError(NatbenchError):
    """A defense spec such as ``pgd-at+trades`` that does not compose."""


class DataError(NatbenchError):
    """Missing or malformed dataset files."""


class RunError(NatbenchError):
    """A run that cannot be found, resumed or evaluated as asked."""


def suggest(name: str, choices: Iterable[str], *, n: int = 3) -> str:
    """Return ``" Did you mean: a, b?"`` for close matches of ``name`` in ``choices`` (or ``""``)."""
    close = difflib.get_close_matches(name, sorted(set(choices)), n=n, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Build the standard unknown-name error: what, close matches, and what exists."""
    choices = sorted(set(choices))
    return UnknownNameError(
        f"Unknown {kind} '{name}'.{suggest(name, choices)} Available: {', '.join(choices) or '(none)'}"
    )
