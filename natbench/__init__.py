"""natbench: a declarative, multi-task benchmark harness for adversarial robustness.

The Python API (:mod:`natbench.api`), imported on first use so ``import natbench`` stays light:
``natbench.evaluate(model, task=..., suite=...)``, ``natbench.train(task=..., defense=...)``,
``natbench.leaderboard(task)``. ``natbench.leaderboard`` is also the module of the same name; calling
it calls :func:`natbench.api.leaderboard` (see :class:`natbench.api.CallableModule`).
"""

__version__ = "0.1.0"
__all__ = ["evaluate", "train", "leaderboard", "Evaluation", "TrainedRun"]


def __getattr__(name: str):
    if name == "leaderboard":  # the module (callable): importing it sets the attribute for good
        import importlib

        return importlib.import_module(".leaderboard", __name__)
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'natbench' has no attribute {name!r}")
