"""L-infinity evasion attacks: ``attack(objective, x, eps=..., generator=...) -> x_adv``.

Each attack follows :class:`natbench.contracts.Attack`. It sees only an *objective* (``x -> (B,)``
per-sample loss to maximise, built by the task for the attack's ``objective_kind``), never the
model, so it cannot change the model's train/eval mode or leave gradients in its parameters.

Modules (loaded lazily by the registry as ``module:attr``; nothing is imported here):

- ``natbench.attacks.fgsm:FGSM``  -- one signed step of size eps (Goodfellow et al., ICLR 2015).
- ``natbench.attacks.pgd:PGD``    -- projected signed-gradient ascent on CE (Madry et al., ICLR 2018).
- ``natbench.attacks.cw:CWInf``   -- the same PGD loop on the Carlini-Wagner margin ("CW-inf").
- ``natbench.attacks.square:Square``  -- L-inf Square Attack, AutoAttack standard (Andriushchenko et al., ECCV 2020).
- ``natbench.attacks.fab:FABT``     -- targeted L-inf FAB, AutoAttack's FAB-T (Croce & Hein, ICML 2020).
- ``natbench.attacks.gama:GAMAPGD`` -- GAMA-PGD, softmax margin + guide term (Sriramanan et al., NeurIPS 2020).
- ``natbench.attacks.apgd:APGDCE`` / ``APGDDLR`` / ``APGDT`` -- APGD on CE, DLR, targeted DLR (Croce & Hein, ICML 2020).
- ``natbench.attacks.malt:MALT``  -- APGD-T on targets ranked by mesoscopic almost-linearity (Melamed et al., NeurIPS 2024).
- ``natbench.attacks.autoattack:AutoAttack`` / ``AutoAttackRand`` -- AutoAttack standard / rand cascades (same paper).
- ``natbench.attacks._base``      -- projection, random start, CW margin and the ``LinfAttack`` base.
"""
