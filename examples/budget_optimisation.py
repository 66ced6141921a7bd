"""Split a marketing budget across channels, with scipy and a lazy labelled gradient.

A budget-optimisation problem of the kind media-mix tools (pymc-marketing's
budget optimiser, for instance) solve, written with :mod:`pytensor.xtensor`:
each channel's spend saturates, each region responds with its own coefficient::

    response = sum over ("region", "channel") of
                   coef[region, channel] * (1 - exp(-lam[channel] * spend[channel]))

    maximise response   subject to   sum(spend) = BUDGET,  spend >= 0

Such tools lower the labelled graph by hand (``rewrite_graph(...,
include=("lower_xtensor",))``) before calling ``pt.grad``. Here the gradient is
``pt.grad`` of the *un-lowered* labelled objective: the gradient graph holds one
``LazyPullback`` node, expanded when it is compiled -- once -- into a function
that returns the objective and its gradient, which
``scipy.optimize.minimize(method="SLSQP")`` gets as ``fun`` and ``jac``.

The script checks the gradient against central finite differences at the start,
and the optimum against the closed-form "water-filling" solution (at the optimum
every funded channel has the same marginal response, and an unfunded channel a
smaller one); it raises if either disagrees.

Run it with ``.venv/bin/python examples/budget_optimisation.py`` (a few seconds).
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
from pytensor.graph.traversal import applys_between
from scipy.optimize import brentq, minimize

import pytensor_lazy_pullback  # noqa: F401  once: pt.grad now works on xtensor graphs

try:  # the add-on
    from pytensor_lazy_pullback import LazyPullback
except ImportError:  # a PyTensor with the in-tree patch (./run.sh upstream): no add-on
    from pytensor.gradient_lazy import LazyPullback

BUDGET = 100.0
CHANNELS = ["tv", "radio", "search", "social"]
REGIONS = ["north", "south", "west"]
# Saturation rate per unit of spend, per channel.
LAM = np.array([0.02, 0.05, 0.08, 0.04])
# Response at saturation, per region and channel: dims ("region", "channel").
COEF = np.array(
    [
        [30.0, 8.0, 12.0, 2.0],
        [25.0, 10.0, 9.0, 1.5],
        [20.0, 6.0, 14.0, 1.0],
    ]
)


def labelled_objective(spend):
    """Minus the total response; ``spend`` has dims ("channel",)."""
    coef = px.as_xtensor(COEF, dims=("region", "channel"))
    lam = px.as_xtensor(LAM, dims=("channel",))
    saturation = 1 - px.math.exp(-lam * spend)  # dims ("channel",)
    response = (coef * saturation).sum(("region", "channel"))
    return -response


def water_filling():
    """Closed form: spend_c = max(0, log(A_c lam_c / nu) / lam_c), with sum(spend) = BUDGET."""
    A = COEF.sum(axis=0)

    def alloc(nu):
        return np.maximum(0.0, np.log(A * LAM / nu) / LAM)

    nu = brentq(lambda nu: alloc(nu).sum() - BUDGET, 1e-12, float(np.max(A * LAM)))
    return alloc(nu), nu


def show(label, values, fmt="{:9.3f}"):
    print(f"  {label:<26}" + "".join(fmt.format(v) for v in values))


def main() -> None:
    print("== The labelled objective ==")
    spend = px.xtensor("spend", dims=("channel",), shape=(len(CHANNELS),))
    objective = labelled_objective(spend)
    print(f"  spend dims={spend.type.dims}, coef dims=('region', 'channel'), lam dims=('channel',)")
    print(f"  objective dims={objective.type.dims}: "
          "-sum over region, channel of coef * (1 - exp(-lam * spend))")

    print("\n== pt.grad on the un-lowered graph, compiled once ==")
    grad = pt.grad(objective, spend)  # the labelled scalar itself: no .values, no lowering
    n_lazy = sum(isinstance(node.op, LazyPullback) for node in applys_between([spend], [grad]))
    print(f"  grad = pt.grad(objective, spend): dims={grad.type.dims}, "
          f"LazyPullback nodes: {n_lazy}")
    fn = pytensor.function([spend], [objective, grad])
    left = sum(isinstance(node.op, LazyPullback) for node in fn.maker.fgraph.apply_nodes)
    print(f"  fn = pytensor.function([spend], [objective, grad]); LazyPullback left after compiling: {left}")
    if n_lazy != 1 or left:
        raise AssertionError("expected one lazy pullback, expanded at compile time")

    cache: dict[bytes, tuple[float, np.ndarray]] = {}

    def evaluate(x):
        key = np.asarray(x, dtype=float).tobytes()
        if key not in cache:
            value, gradient = fn(np.asarray(x, dtype=float))
            cache.clear()
            cache[key] = (float(value), np.asarray(gradient))
        return cache[key]

    def fun(x):
        return evaluate(x)[0]

    def jac(x):
        return evaluate(x)[1]

    print("\n== Gradient check at the start (equal split) ==")
    x0 = np.full(len(CHANNELS), BUDGET / len(CHANNELS))
    eps = 1e-5
    fd = np.array([(fun(x0 + eps * e) - fun(x0 - eps * e)) / (2 * eps) for e in np.eye(len(CHANNELS))])
    print("  " + " " * 26 + "".join(f"{c:>9}" for c in CHANNELS))
    show("pt.grad (lazy)", jac(x0))
    show("central differences", fd)
    diff = float(np.max(np.abs(jac(x0) - fd)))
    print(f"  max abs difference: {diff:.1e}")
    if not np.allclose(jac(x0), fd, rtol=1e-6, atol=1e-8):
        raise AssertionError("the lazy gradient disagrees with finite differences")

    print("\n== scipy.optimize.minimize(fun, x0, jac=jac, method='SLSQP') ==")
    res = minimize(
        fun,
        x0,
        jac=jac,
        method="SLSQP",
        bounds=[(0.0, BUDGET)] * len(CHANNELS),
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - BUDGET, "jac": lambda x: np.ones_like(x)}],
        options={"ftol": 1e-12, "maxiter": 200},
    )
    print(f"  {res.message} after {res.nit} iterations, {res.njev} gradient evaluations")
    if not res.success:
        raise AssertionError(f"SLSQP failed: {res.message}")

    best, nu = water_filling()
    print("\n== Optimal allocation, per channel ==")
    print("  " + " " * 26 + "".join(f"{c:>9}" for c in CHANNELS))
    show("spend (SLSQP)", res.x)
    show("spend (closed form)", best)
    show("share of budget", 100 * res.x / BUDGET, "{:8.1f}%")
    show("marginal response", -jac(res.x), "{:9.4f}")
    print(f"  total response: start {-fun(x0):.3f}  ->  optimum {-res.fun:.3f}  "
          f"(closed form {-fun(best):.3f}); funded channels' marginal response = {nu:.4f}")
    if not np.allclose(res.x, best, atol=1e-4 * BUDGET):
        raise AssertionError("SLSQP's allocation disagrees with the closed form")


if __name__ == "__main__":
    main()
