"""Every derivative transform, side by side with the lower-then-differentiate reference.

Run with ``./run.sh bench-transforms`` (or ``PYTHONPATH=. .venv/bin/python
benchmarks/bench_transforms.py``; ``--quick`` for one repeat of fewer calls).
For each graph family and transform it builds, in one process, the project's
graph (the transform applied to the un-lowered graph, integration on) and the
reference (the same transform applied to
``rewrite_graph(..., include=("lower_xtensor",), clone=True)`` with the
integration off), compiles both in each mode, checks they agree, and prints

* ``nodes``: compiled apply nodes ours:reference, counting the nodes of the
  inner graphs of ``Scan`` and ``OpFromGraph`` (recursively);
* ``run``: runtime per call, ours / reference, the two sides alternated, the
  best of ``--repeat`` batches of ``--calls`` calls each.

Transforms: ``grad``, ``hessian``, ``hvp`` (``hessian_vector_product``: the
pullback of grad . v), ``jac_loop`` (``jacobian(vectorize=False)``, a Scan
over rows), ``jac_vec`` (``jacobian(vectorize=True)``), ``pushfwd_op``
(``pushforward(use_op_pushforward=True)``), ``pushfwd`` (``pushforward(...,
use_op_pushforward=False)``, the transpose trick) and ``pullback``.  ``--pymc``
adds PyMC's ``compile_d2logp`` and ``find_hessian`` on a ``pymc.dims`` model
with a labelled ``Potential`` against the same model with plain tensors (not
the same graph: the labelled ``dot`` lowers to an ``Einsum``, whose pullback
is an ``OpFromGraph``, where the plain model has a ``Dot``), and ``d2logp_ref``
compares ``compile_d2logp`` with its reference: the model's logp lowered first,
then PyMC's ``rewrite_pregrad`` and ``hessian`` with the integration off.

Absolute times are noise on a shared 2-core machine; ratios are the measurement.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
from pytensor.compile.mode import get_mode
from pytensor.graph.rewriting.utils import rewrite_graph

sys.path.insert(0, str(Path(__file__).parent))

import pytensor_lazy_pullback  # noqa: E402
from pytensor_lazy_pullback import integration_disabled  # noqa: E402
from graphs import count_nodes  # noqa: E402


# ---------------------------------------------------------------------------
# Families: each returns (inputs, w, cost, out); w (a plain vector under a
# label) is what every transform differentiates with respect to, cost a
# scalar and out a vector output (for jacobians, pushforward and pullback).
# Inputs are plain tensors labelled with as_xtensor: the reference's lowered
# graph then holds no xtensor conversion, which PyTensor's own
# pushforward(use_op_pushforward=True) could not differentiate (constants
# likewise, see _labelled).
# ---------------------------------------------------------------------------


def _labelled(data, dims):
    """A labelled constant that lowers to a plain tensor constant (no conversion left)."""
    return px.as_xtensor(pt.constant(data), dims=dims)


def dense():
    """A labelled dense layer: tanh(dot(x, w)) weighted by a labelled mean."""
    xt = pt.matrix("x", shape=(20, 30))
    x = px.as_xtensor(xt, dims=("a", "b"))
    wt = pt.vector("w", shape=(30,))
    w = px.as_xtensor(wt, dims=("b",))
    h = px.math.tanh(px.dot(x, w, dim="b"))
    out = h * px.math.exp(x).mean("b")
    cost = (out**2).sum()
    return [xt, wt], wt, cost.values, out.values


def index_concat():
    """Slices and integer-array gathers of a labelled vector, concatenated, then a cumsum."""
    rng = np.random.default_rng(3)
    pt_ = pt.vector("p", shape=(24,))
    p = px.as_xtensor(pt_, dims=("i",))
    idx = _labelled(rng.integers(0, 24, size=16), ("j",))
    head = p.isel(i=slice(0, 12)).rename(i="k")
    tail = px.math.exp(p.isel(i=slice(12, None))).rename(i="k")
    gathered = px.math.sin(p.isel(i=idx)).rename(j="k")
    c = px.concat([head, tail * 0.5, gathered], dim="k")
    out = px.math.tanh(c) * c.cumsum("k")
    cost = (out**2).sum()
    return [pt_], pt_, cost.values, out.values


def glm():
    """A Poisson GLM log-likelihood: counts * log(rate) - rate, rate = exp(dot(X, beta))."""
    rng = np.random.default_rng(4)
    X = _labelled(rng.normal(size=(200, 8)) * 0.3, ("obs", "feature"))
    counts = _labelled(rng.poisson(2.0, size=200).astype("float64"), ("obs",))
    bt = pt.vector("beta", shape=(8,))
    beta = px.as_xtensor(bt, dims=("feature",))
    rate = px.math.exp(px.dot(X, beta, dim="feature"))
    loglik = counts * px.math.log(rate) - rate
    cost = -loglik.sum() + 0.5 * (beta**2).sum()
    return [bt], bt, cost.values, loglik.values


FAMILIES = {"dense": dense, "index_concat": index_concat, "glm": glm}


def _vec_like(var, name):
    return pt.vector(name, shape=var.type.shape)


TRANSFORMS = {
    "grad": lambda cost, out, w, v, u: [pt.grad(cost, w)],
    "hessian": lambda cost, out, w, v, u: [gradient.hessian(cost, w)],
    "hvp": lambda cost, out, w, v, u: [gradient.hessian_vector_product(cost, w, v)],
    "jac_loop": lambda cost, out, w, v, u: [gradient.jacobian(out, w, vectorize=False)],
    "jac_vec": lambda cost, out, w, v, u: [gradient.jacobian(out, w, vectorize=True)],
    "pushfwd_op": lambda cost, out, w, v, u: [
        gradient.pushforward(out, w, v, use_op_pushforward=True)
    ],
    "pushfwd": lambda cost, out, w, v, u: [
        gradient.pushforward(out, w, v, use_op_pushforward=False)
    ],
    "pullback": lambda cost, out, w, v, u: [gradient.pullback(out, w, u)],
}


def build(family, transform):
    """``(inputs, ours, reference)`` for one cell; `inputs` include the tangent/cotangent."""
    inputs, w, cost, out = FAMILIES[family]()
    v, u = _vec_like(w, "v"), _vec_like(out, "u")
    ours = TRANSFORMS[transform](cost, out, w, v, u)
    with integration_disabled():
        low_cost, low_out = rewrite_graph([cost, out], include=("lower_xtensor",), clone=True)
        ref = TRANSFORMS[transform](low_cost, low_out, w, v, u)
    return [*inputs, v, u], ours, ref


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


def values_for(inputs, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.9, 0.9, size=i.type.shape).astype(i.type.dtype) for i in inputs]


def per_call(fn, vals, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn(*vals)
    return (time.perf_counter() - start) / calls


def measure(inputs, ours, ref, mode, args):
    """Compile both sides in `mode`; node counts and the runtime ratio (best of, alternated)."""
    fns = {
        side: pytensor.function(
            inputs, outs, mode=get_mode(mode), on_unused_input="ignore", trust_input=True
        )
        for side, outs in (("ours", ours), ("ref", ref))
    }
    nodes = {side: count_nodes(fn.maker.fgraph.apply_nodes) for side, fn in fns.items()}
    vals = values_for(inputs)
    got = {side: fn(*vals) for side, fn in fns.items()}  # also warms up
    for o, r in zip(got["ours"], got["ref"], strict=True):
        np.testing.assert_allclose(o, r, rtol=1e-7, atol=1e-10)
    best = {side: math.inf for side in fns}
    for _ in range(args.repeat):
        for side, fn in fns.items():
            gc.collect()
            best[side] = min(best[side], per_call(fn, vals, args.calls))
    return nodes, best["ours"] / best["ref"]


# ---------------------------------------------------------------------------
# PyMC: d2logp and find_hessian of a dims model with a labelled Potential
# ---------------------------------------------------------------------------


def pymc_cells(args):
    """``(name, mode, ours, ref)`` cells for PyMC's second-order entry points.

    Each side is ``(callable, args, compiled apply nodes or None)``.
    """
    import pymc as pm
    import pymc.dims as pmd
    from pymc.pytensorf import hessian, rewrite_pregrad

    rng = np.random.default_rng(5)
    n_obs, features = 50, ["a", "b", "c", "d"]
    X = rng.normal(size=(n_obs, len(features)))
    y = X @ np.array([0.5, -1.0, 0.8, 0.1]) + 0.7 * rng.normal(size=n_obs)
    coords = {"obs": np.arange(n_obs), "feature": features}

    def labelled():
        with pm.Model(coords=coords) as model:
            beta = pmd.Normal("beta", 0.0, 1.5, dims="feature")
            resid = (pmd.as_xtensor(y, dims=("obs",)) - pmd.math.dot(
                pmd.as_xtensor(X, dims=("obs", "feature")), beta, dim="feature")) / 0.7
            pmd.Potential("lik", (-0.5 * resid**2).sum())
        return model

    def plain():
        with pm.Model(coords=coords) as model:
            beta = pm.Normal("beta", 0.0, 1.5, dims="feature")
            resid = (y - pt.dot(X, beta)) / 0.7
            pm.Potential("lik", (-0.5 * resid**2).sum())
        return model

    point = {"beta": np.array([0.3, -0.2, 1.0, 0.0])}
    cells = []
    for mode in args.modes:
        def d2logp(make, mode=mode):
            model = make()
            fn = model.compile_d2logp(negate_output=False, mode=mode)
            return fn, (point,), count_nodes(fn.f.maker.fgraph.apply_nodes)

        def find_hessian(make, mode=mode):
            model = make()
            with pytensor.config.change_flags(mode=mode):
                pm.find_hessian(point, model=model, negate_output=False)  # warm
            return (
                lambda p: pm.find_hessian(p, model=model, negate_output=False),
                (point,),
                None,
            )

        def d2logp_lowered_first(make, mode=mode):
            # What compile_d2logp builds from the logp, lowered first.  (Lowered
            # after rewrite_pregrad, the two conversions of the labelled value
            # variable are not merged: its gradient is then a labelled sum that
            # PyTensor cannot differentiate again.)
            model = make()
            with integration_disabled():
                logp = rewrite_graph(model.logp(), include=("lower_xtensor",), clone=True)
                hess = hessian(
                    rewrite_pregrad(logp), model.continuous_value_vars, negate_output=False
                )
            fn = model.compile_fn(
                inputs=model.value_vars, outs=hess, mode=mode, on_unused_input="ignore"
            )
            return fn, (point,), count_nodes(fn.f.maker.fgraph.apply_nodes)

        cells.append(("pymc_d2logp", mode, d2logp(labelled), d2logp(plain)))
        cells.append(("pymc_find_hessian", mode, find_hessian(labelled), find_hessian(plain)))
        cells.append(("pymc_d2logp_ref", mode, d2logp(labelled), d2logp_lowered_first(labelled)))
    return cells


def measure_pymc(ours, ref, mode, args):
    """Runtime ratio of two PyMC entry points; ``find_hessian`` compiles at each call."""
    (f_o, a_o, n_o), (f_r, a_r, n_r) = ours, ref
    compiles = n_o is None
    calls = 1 if compiles else args.calls
    repeat = min(args.repeat, 3) if compiles else args.repeat
    with pytensor.config.change_flags(mode=mode):
        np.testing.assert_allclose(f_o(*a_o), f_r(*a_r), rtol=1e-7, atol=1e-10)
        best = {"ours": math.inf, "ref": math.inf}
        for _ in range(repeat):
            for side, (f, a) in (("ours", (f_o, a_o)), ("ref", (f_r, a_r))):
                gc.collect()
                start = time.perf_counter()
                for _ in range(calls):
                    f(*a)
                best[side] = min(best[side], (time.perf_counter() - start) / calls)
    nodes = f"{n_o}:{n_r}" if not compiles else "-"
    return nodes, best["ours"] / best["ref"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer calls")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--modes", nargs="+", default=["NUMBA", "CVM"])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--transforms", nargs="+", default=list(TRANSFORMS))
    parser.add_argument("--pymc", action="store_true", help="also PyMC d2logp / find_hessian")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.calls = 2, 50

    header = ["family", "transform", *[f"{m.lower()} nodes" for m in args.modes],
              *[f"{m.lower()} run" for m in args.modes]]
    widths = [12, 10] + [11] * (2 * len(args.modes))
    print(" | ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)), flush=True)
    ratios: dict[str, list[float]] = {m: [] for m in args.modes}
    worse_nodes = []
    for family in args.families:
        for transform in args.transforms:
            try:
                inputs, ours, ref = build(family, transform)
            except NotImplementedError as err:  # e.g. a pushforward PyTensor lacks
                print(f"{family:>12} | {transform:>10} | not built: {str(err)[:70]}", flush=True)
                continue
            nodes, runs = [], []
            for mode in args.modes:
                (n, r) = measure(inputs, ours, ref, mode, args)
                nodes.append(f"{n['ours']}:{n['ref']}")
                runs.append(f"{r:.3f}")
                ratios[mode].append(r)
                if n["ours"] > n["ref"]:
                    worse_nodes.append((family, transform, mode, n["ours"], n["ref"]))
            cells = [family, transform, *nodes, *runs]
            print(" | ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)), flush=True)
    if args.pymc:
        by_name: dict[str, dict[str, tuple]] = {}
        for name, mode, o, r in pymc_cells(args):
            by_name.setdefault(name, {})[mode] = measure_pymc(o, r, mode, args)
        for name, per_mode in by_name.items():
            cells = ["pymc", name.removeprefix("pymc_")[:10]]
            cells += [per_mode[m][0] for m in args.modes]
            cells += [f"{per_mode[m][1]:.3f}" for m in args.modes]
            print(" | ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)), flush=True)

    def gmean(xs):
        return math.exp(sum(map(math.log, xs)) / len(xs))

    print()
    for mode, rs in ratios.items():
        print(f"geometric mean of runtime ratios ours/reference, {mode}: {gmean(rs):.3f}")
    print(f"all modes: {gmean([r for rs in ratios.values() for r in rs]):.3f}")
    print("cells with more apply nodes than the reference:", worse_nodes or "none")
    print("nodes: ours:reference apply nodes, inner graphs of Scan/OpFromGraph included; "
          f"run: best of {args.repeat} x {args.calls} calls, ours / reference.")


if __name__ == "__main__":
    main()
