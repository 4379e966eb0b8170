"""Task kinds, one package each over :mod:`natbench.tasks._base` (what every kind does the same way):
:mod:`.classification`, :mod:`.reid` and :mod:`.detection`, each split into ``model``, ``losses``,
``data`` and ``task`` modules (classification: ``data`` and ``task``; its model is
:func:`natbench.models.build`'s). Every name the former single-file modules defined is importable
from the kind's package."""
