"""Pieces shared by regularizers (``cached_logits`` lives in natbench.contracts: bases use it too)."""
from __future__ import annotations

from ..contracts import cached_logits

__all__ = ["cached_logits"]
