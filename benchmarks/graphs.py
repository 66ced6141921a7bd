"""Benchmark graph families: each builder returns ``(inputs, cost, wrt, n_xtensor_nodes)``.

All graphs are labelled (``pytensor.xtensor``) and left un-lowered; a size
parameter scales the number of xtensor nodes.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
from pytensor.graph.op import HasInnerGraph
from pytensor.graph.traversal import applys_between
from pytensor.xtensor.basic import XOp


def count_nodes(nodes) -> int:
    """Apply nodes, counting those of inner graphs (Scan, OpFromGraph, ...) recursively."""
    total = 0
    for node in nodes:
        total += 1
        op = node.op
        if isinstance(op, HasInnerGraph):
            fgraph = getattr(op, "fgraph", None)
            if fgraph is not None:
                total += count_nodes(fgraph.apply_nodes)
            else:
                total += count_nodes(applys_between(op.inner_inputs, op.inner_outputs))
    return total


def count_xops(inputs, outputs) -> int:
    return sum(isinstance(n.op, XOp) for n in applys_between(inputs, outputs))


def chain(n: int):
    """A chain of labelled elementwise ops and reductions (about n xtensor nodes)."""
    x = px.xtensor("x", dims=("a", "b"), shape=(8, 16))
    y = x
    for i in range(max(n // 3, 1)):
        if i % 2 == 0:
            y = pxm.tanh(y * 0.9 + 0.05)
        else:
            y = y - y.mean("a") * 0.5
    cost = (y**2).sum().values
    return [x], cost, [x], count_xops([x], [cost])


def mlp(n: int):
    """A labelled multilayer perceptron: n layers of ``px.dot`` over named dims."""
    rng = np.random.default_rng(0)
    data = px.as_xtensor(rng.normal(size=(32, 8)), dims=("obs", "h0"))
    target = px.as_xtensor(rng.normal(size=(32,)), dims=("obs",))
    weights = []
    h = data
    for layer in range(n):
        w = px.xtensor(f"w{layer}", dims=(f"h{layer}", f"h{layer + 1}"), shape=(8, 8))
        b = px.xtensor(f"b{layer}", dims=(f"h{layer + 1}",), shape=(8,))
        weights += [w, b]
        h = pxm.tanh(px.dot(h, w, dim=f"h{layer}") + b)
    pred = h.sum(f"h{n}")
    cost = ((pred - target) ** 2).mean().values
    return weights, cost, weights, count_xops(weights, [cost])


def marketing_mix(n: int):
    """Adstock over "date" with n lagged slices, saturation, per-channel coefficients, normal loglik."""
    rng = np.random.default_rng(1)
    n_date, n_channel, n_lag = 52, 4, max(n, 1)
    spend = px.as_xtensor(rng.uniform(0, 1, size=(n_date + n_lag, n_channel)), dims=("date", "channel"))
    sales = px.as_xtensor(rng.normal(size=(n_date,)), dims=("date",))
    alpha = px.xtensor("alpha", dims=("channel",), shape=(n_channel,))
    lam = px.xtensor("lam", dims=("channel",), shape=(n_channel,))
    beta = px.xtensor("beta", dims=("channel",), shape=(n_channel,))
    sigma = px.xtensor("sigma", dims=(), shape=())
    adstock = spend.isel(date=slice(n_lag, None))
    decay = pxm.sigmoid(alpha)
    for lag in range(1, n_lag + 1):
        lagged = spend.isel(date=slice(n_lag - lag, n_date + n_lag - lag))
        adstock = adstock + decay**lag * lagged
    saturated = (1 - pxm.exp(-pxm.exp(lam) * adstock)) / (1 + pxm.exp(-pxm.exp(lam) * adstock))
    mu = (beta * saturated).sum("channel")
    s = pxm.exp(sigma)
    loglik = (-0.5 * ((sales - mu) / s) ** 2 - pxm.log(s)).sum()
    params = [alpha, lam, beta, sigma]
    cost = -loglik.values
    return params, cost, params, count_xops(params, [cost])


def gather(n: int):
    """Gather-heavy indexing: n integer-array lookups of a labelled table."""
    rng = np.random.default_rng(2)
    table = px.xtensor("table", dims=("item", "feature"), shape=(50, 6))
    total = 0
    for i in range(max(n, 1)):
        idx = px.as_xtensor(rng.integers(0, 50, size=20), dims=("draw",))
        rows = table.isel(item=idx)
        total = total + (pxm.log1p(rows**2) * (i + 1)).sum()
    cost = total.values
    return [table], cost, [table], count_xops([table], [cost])


FAMILIES = {"chain": chain, "mlp": mlp, "marketing_mix": marketing_mix, "gather": gather}
