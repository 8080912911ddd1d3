"""One-time initialisation of a process, paid once and outside every stage's time.

The first stage a process computes used to pay for importing torch and scikit-learn, torch's
first optimizer step (which loads most of ``torch.optim``'s machinery), the first BLAS call
(thread pools) and the first sparse product: seconds that had nothing to do with the stage (a
cold ``miars-attack`` read featurize + attack at 4.6x their warm floor). :func:`warm_up` does all
of it once per process, before the first stage is computed; the walker records the seconds as
the ``warmup`` of the stage that paid them, and result.json reports them as their own timing.

Nothing here draws random numbers or changes thread counts: results do not depend on whether
a process warmed up.
"""

from __future__ import annotations

import importlib
import time

#: Modules imported by the warm-up when installed (the numeric stack the built-in stages use).
MODULES = ("numpy", "scipy.sparse", "scipy.sparse.linalg", "sklearn.utils.extmath", "sklearn.metrics", "torch")

_done = False


def warm_up() -> float:
    """Initialise the process once (imports, thread pools, torch's autograd and optimizer); seconds spent, 0 after the first call."""
    global _done
    if _done:
        return 0.0
    _done = True
    start = time.perf_counter()
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional part of the stack: nothing to warm
            continue
    _numeric()
    _torch()
    return time.perf_counter() - start


def _numeric() -> None:
    import numpy as np
    import scipy.sparse as sp

    a = np.ones((64, 64), dtype=np.float32)
    (a @ a).sum()
    m = sp.csr_matrix(a)
    (m @ a).sum()
    (m.T @ m).sum()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    with threadpool_limits(limits=1, user_api="blas"):
        (a @ a).sum()


def _torch() -> None:
    try:
        import torch
    except ImportError:
        return
    with torch.no_grad():
        x = torch.ones((64, 64))
        torch.topk(x @ x, 4, dim=1)
    with torch.random.fork_rng(devices=[]):  # a layer's initialisation draws: the global generator is restored
        w = torch.zeros((8, 4), requires_grad=True)
        layer = torch.nn.Linear(4, 1)
        opt = torch.optim.Adam([w, *layer.parameters()], lr=0.01)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(layer(w).squeeze(1), torch.ones(8))
        opt.zero_grad()
        loss.backward()
        opt.step()
