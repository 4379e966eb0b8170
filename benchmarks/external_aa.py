"""An outside model through ``natbench.evaluate`` and natbench's AutoAttack vs the original, side by side.

The model is ``examples/digits_cnn.py`` with the weights of ``examples/train_digits_cnn.py`` (PGD-AT),
evaluated on the digits test set (359 images, L-inf eps 0.2) with ``--normalize 0.3,0.4``. In one
process, on the same model and images:

A. ``natbench.evaluate(..., suite="autoattack", store=None)``: the whole engine (output contract,
   clean pass, AutoAttack standard, sanity checks; AutoAttack's seed derived from the run as the CLI's);
B. natbench's ``autoattack`` attack alone, seed 0 (``task.evaluate`` with a generator seeded 0);
C. the original AutoAttack (``pyautoattack``, by its authors): ``AutoAttack(model, norm="Linf",
   eps=0.2, version="standard", seed=0).run_standard_evaluation(x, y, batch_size=...)``.

Prints clean and robust accuracy, per-sample agreement of the robust flags (B vs C, A vs C), wall and
process CPU seconds (the CPU time is the steadier number on a shared machine). No assertions: a benchmark (tests/test_apgd_autoattack.py holds the checks).

Usage: python benchmarks/external_aa.py --weights digits_cnn.pt [--threads 1] [--n 359]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=None, help="first n test images (default: all 359)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import natbench
    from natbench.attacks.autoattack import AutoAttack
    from natbench.external import load
    from natbench.registry import get_registry
    from natbench.resolve import resolve, task_kind_cls

    spec = str(Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.py") + ":build"
    t0, c0 = time.perf_counter(), time.process_time()
    res = natbench.evaluate(spec, task="digits", suite="autoattack", weights=a.weights, normalize="0.3,0.4",
                            name="digits_cnn (PGD-AT)", n=a.n, store=None)
    t_a, c_a = time.perf_counter() - t0, time.process_time() - c0

    reg = get_registry()
    r = resolve(reg, "digits", "vanilla")
    task = task_kind_cls(reg, r.spec)(r.spec, None)
    model = load(spec, task, weights=a.weights, normalize="0.3,0.4").model.eval()
    test = next(iter(task.loaders(1000, torch.Generator().manual_seed(0), 1000)[2]))
    x, y = (test.x, test.y) if a.n is None else (test.x[: a.n], test.y[: a.n])
    loader = [test.rows(0, len(y))]

    t0, c0 = time.perf_counter(), time.process_time()
    nb = task.evaluate(model, loader, AutoAttack(), objective="logits", generator=torch.Generator().manual_seed(0))
    t_b, c_b = time.perf_counter() - t0, time.process_time() - c0
    nb_flags = nb.correct.numpy()
    print(f"(A: {100 * res.per_sample['aa'].mean():.2f}% {t_a:.1f}s; B: {100 * nb_flags.mean():.2f}% {t_b:.1f}s)", flush=True)

    from pyautoattack import AutoAttack as Original

    t0, c0 = time.perf_counter(), time.process_time()
    orig = Original(model, norm="Linf", eps=r.spec.threat_model.eps, version="standard", seed=0)
    x_adv, _ = orig.run_standard_evaluation(x, y, batch_size=len(y))
    t_c, c_c = time.perf_counter() - t0, time.process_time() - c0
    assert (x_adv - x).abs().max() <= r.spec.threat_model.eps + 1e-6
    with torch.no_grad():
        or_flags = (model(x_adv).argmax(1) == y).numpy()

    ev = res.per_sample["aa"]
    print(f"model {spec}, {res.provenance['params']:,} parameters, weights sha256 {res.provenance['weights_sha256'][:12]}; "
          f"{len(y)} digits test images, L-inf eps {r.spec.threat_model.eps}; torch threads {torch.get_num_threads()}")
    print(f"clean accuracy: {100 * res.clean:.2f}%  (flags: {', '.join(res.flags) or 'none'})")
    print(f"{'':44} {'robust acc':>10} {'wall s':>8} {'CPU s':>8}")
    print(f"{'A natbench.evaluate(suite=autoattack)':44} {100 * ev.mean():>9.2f}% {t_a:>8.1f} {c_a:>8.1f}  (whole engine: clean, AA, checks)")
    print(f"{'B natbench autoattack, seed 0':44} {100 * nb_flags.mean():>9.2f}% {t_b:>8.1f} {c_b:>8.1f}")
    print(f"{'C original AutoAttack (pyautoattack), seed 0':44} {100 * or_flags.mean():>9.2f}% {t_c:>8.1f} {c_c:>8.1f}")
    print(f"per-sample agreement B vs C: {int((nb_flags == or_flags).sum())}/{len(y)}; "
          f"A vs C: {int((ev == or_flags).sum())}/{len(y)}; time B/C: wall {t_b / t_c:.2f}, CPU {c_b / c_c:.2f}")


if __name__ == "__main__":
    main()
