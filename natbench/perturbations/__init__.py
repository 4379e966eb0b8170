"""Weight perturbations: wrap the composite loss of one base defense (at most one per run).

``restore = pert.apply(model, loss_fn)`` perturbs the model's weights in place, using
``loss_fn(m) -> scalar Tensor`` (the composite loss recomputed on any module ``m`` with the same
cached adversarial examples); the outer loss is then taken at the perturbed weights and
``restore()`` is called after the optimizer step (see ``natbench.compose.Composite.step_loss``).

Modules (loaded lazily by the registry as ``module:attr``; nothing is imported here):

- ``natbench.perturbations.awp:AWP`` -- Adversarial Weight Perturbation (Wu, Xia, Wang, NeurIPS 2020).
"""
