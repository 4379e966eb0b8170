"""L-infinity evasion attacks: ``attack(objective, x, eps=..., generator=...) -> x_adv``.

Each attack follows :class:`natbench.contracts.Attack`. It sees only an *objective* (``x -> (B,)``
per-sample loss to maximise, built by the task for the attack's ``objective_kind``), never the
model, so it cannot change the model's train/eval mode or leave gradients in its parameters.

Modules (loaded lazily by the registry as ``module:attr``; nothing is imported here):

- ``natbench.attacks.fgsm:FGSM``  -- one signed step of size eps (Goodfellow et al., ICLR 2015).
- ``natbench.attacks.pgd:PGD``    -- projected signed-gradient ascent on CE (Madry et al., ICLR 2018).
- ``natbench.attacks.cw:CWInf``   -- the same PGD loop on the Carlini-Wagner margin ("CW-inf").
- ``natbench.attacks._base``      -- projection, random start, CW margin and the ``LinfAttack`` base.
"""
