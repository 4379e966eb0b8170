"""Shared pytest set-up: GPU-only tests (``@pytest.mark.gpu``) are skipped without CUDA."""
from __future__ import annotations

import pytest
import torch

# natbench's default numerics are one intra-op thread (natbench/threads.py); the tests run under them, so
# an outcome does not depend on the machine's core count (a randomized model's EOT escalation passed with
# 1 thread and failed with torch's default 2 on the same commit).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_logging():
    """A CLI command sets up rich logging on stderr for the whole process (``ui.setup_logging``); every
    test gets the root logger back as it was, so a later test's stderr holds only its own lines."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
