"""xtensor Ops and lazy pullbacks inside ``Scan`` and ``OpFromGraph`` inner graphs.

The gradient through a user's ``OpFromGraph`` (inlined or not) or ``Scan``
whose inner graph holds xtensor Ops equals the reference and finite
differences, also at second order.

``hessian`` and ``jacobian(vectorize=False)`` map a gradient over rows with a
``Scan`` whose inner graph holds a `LazyPullback`.  The ``expand_inner_graphs``
rewrite expands and lowers such inner graphs before PyTensor's Scan rewrites, so
the loop-invariant forward pass and first-order pullback are pushed out of the
loop, as they are for the reference (lower first, then differentiate).
"""

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.scalar as ps
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytest
from pytensor.compile import optdb
from pytensor.compile.builders import OpFromGraph
from pytensor.graph.op import HasInnerGraph
from pytensor.graph.rewriting.utils import rewrite_graph
from pytensor.graph.traversal import applys_between
from pytensor.xtensor.rewriting.utils import lower_xtensor_db
from pytensor.scan.op import Scan
from pytensor.xtensor.basic import XOp

from pytensor_lazy_pullback import LazyPullback, integration_disabled
from helpers import (
    COUNT_MODE,
    MODE,
    all_nodes,
    assert_same_gradients,
    central_differences,
    check_compiled_graph,
    graph_nodes,
    lower,
    random_values,
    reference_grad,
    reference_transform,
    weighted_cost,
)


# The model of the benchmark: a labelled dense layer, differentiated wrt w.
N_A, N_B = 5, 4


def dense_model(plain_x=False):
    """The model; `plain_x`: ``x`` is a plain tensor under a label, not an xtensor input."""
    if plain_x:
        xt = pt.matrix("x", shape=(N_A, N_B))
        x_in, x = xt, px.as_xtensor(xt, dims=("a", "b"))
        wt = pt.vector("w", shape=(N_B,))
        w = px.as_xtensor(wt, dims=("b",))
        h = px.math.tanh(px.dot(x, w, dim="b"))
        return x_in, wt, ((h * px.math.exp(x).mean("b")) ** 2).sum().values
    x = px.xtensor("x", dims=("a", "b"), shape=(N_A, N_B))
    wt = pt.vector("w", shape=(N_B,))
    w = px.as_xtensor(wt, dims=("b",))
    h = px.math.tanh(px.dot(x, w, dim="b"))
    cost = ((h * px.math.exp(x).mean("b")) ** 2).sum().values
    return x, wt, cost


def values():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(N_A, N_B)), rng.normal(size=N_B)]


def graph_ops(fgraph):
    """Every Op of `fgraph` and of its inner graphs (Scan, OpFromGraph, Composite ...)."""
    for node in fgraph.apply_nodes:
        for op in (node.op, getattr(node.op, "scalar_op", None)):
            if op is None:
                continue
            yield op
            if isinstance(op, HasInnerGraph) and not isinstance(op, LazyPullback):
                yield from graph_ops(op.fgraph)


def loop_ops(fn):
    """Every Op inside the loops (Scan inner graphs) of the compiled `fn`, recursively."""
    for node in fn.maker.fgraph.apply_nodes:
        if isinstance(node.op, Scan):
            yield from graph_ops(node.op.fgraph)


def inner_graph_ops(fn):
    """Every Op inside the Scan/OpFromGraph inner graphs of the compiled `fn`, recursively."""
    for node in fn.maker.fgraph.apply_nodes:
        if isinstance(node.op, Scan | OpFromGraph):
            yield from graph_ops(node.op.fgraph)


def holds_lazy_pullback(outputs):
    """Whether a LazyPullback sits in the graph or in any (nested) inner graph."""
    return any(isinstance(node.op, LazyPullback) for node in all_nodes(outputs))


def scans(fn):
    return [n for n in fn.maker.fgraph.apply_nodes if isinstance(n.op, Scan)]


TRANSFORMS = {
    "hessian": lambda cost, wt: gradient.hessian(cost, wt),
    "jacobian": lambda cost, wt: gradient.jacobian(pt.grad(cost, wt), wt, vectorize=False),
}


@pytest.mark.parametrize("plain_x", [False, True])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_row_loop_holds_no_forward_pass(name, plain_x):
    x, wt, cost = dense_model(plain_x)
    ours = TRANSFORMS[name](cost, wt)
    fn = pytensor.function([x, wt], ours, mode=COUNT_MODE)
    [scan] = scans(fn)
    inner_ops = list(loop_ops(fn))
    assert not any(isinstance(op, LazyPullback | XOp) for op in inner_ops)
    # tanh and exp are the forward pass, loop-invariant: pushed out of the loop.
    assert not any(isinstance(op, ps.Tanh | ps.Exp) for op in inner_ops), scan.op.fgraph

    ref = reference_transform(lambda c: TRANSFORMS[name](c, wt), cost)
    ref_fn = pytensor.function([x, wt], ref, mode=COUNT_MODE)
    check_compiled_graph(fn, ref_fn)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_row_loop_values(name):
    x, wt, cost = dense_model()
    ours = TRANSFORMS[name](cost, wt)
    ref = reference_transform(lambda c: TRANSFORMS[name](c, wt), cost)
    vals = values()
    assert_same_gradients([ours], [ref], [x, wt], vals)
    grad_fn = pytensor.function([x, wt], pt.grad(cost, wt), mode=MODE)
    numeric = central_differences(lambda w: grad_fn(vals[0], w), vals[1])
    np.testing.assert_allclose(
        ours.eval({x: vals[0], wt: vals[1]}, mode=MODE), numeric, rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("mode", ["NUMBA", "CVM"])
def test_hessian_compiled_graph_against_the_reference(mode):
    x, wt, cost = dense_model()
    ours = gradient.hessian(cost, wt)
    ref = reference_transform(lambda c: gradient.hessian(c, wt), cost)
    fn = pytensor.function([x, wt], ours, mode=mode)
    ref_fn = pytensor.function([x, wt], ref, mode=mode)
    check_compiled_graph(fn, ref_fn)
    np.testing.assert_allclose(fn(*values()), ref_fn(*values()), rtol=1e-10)


def labelled_layer(xt, wt):
    x = px.as_xtensor(xt, dims=("a", "b"))
    w = px.as_xtensor(wt, dims=("b",))
    return (px.math.tanh(px.dot(x, w, dim="b")) * px.math.exp(x).mean("b")).values


def test_opfromgraph_holding_xtensor_ops():
    xt, wt = pt.matrix("x", shape=(N_A, N_B)), pt.vector("w", shape=(N_B,))
    ix, iw = pt.matrix(shape=(N_A, N_B)), pt.vector(shape=(N_B,))
    layer = OpFromGraph([ix, iw], [labelled_layer(ix, iw)])
    out = layer(xt, wt)
    cost = (out**2).sum()
    ours = [out, *pt.grad(cost, [xt, wt])]

    # The rewrite rebuilds the node with its inner graph lowered (and the
    # gradient's OpFromGraph with its lazy pullback expanded).
    rewritten = rewrite_graph(ours, include=("expand_inner_graphs_and_lower",), clone=True)
    ofgs = [n.op for n in applys_between([xt, wt], rewritten) if isinstance(n.op, OpFromGraph)]
    assert ofgs
    for op in ofgs:
        inner = [n.op for n in op.fgraph.apply_nodes]
        assert not any(isinstance(o, XOp | LazyPullback) for o in inner), inner

    ref_layer = OpFromGraph([ix, iw], [lower(labelled_layer(ix, iw))])
    ref_out = ref_layer(xt, wt)
    with integration_disabled():
        ref = [ref_out, *pt.grad((ref_out**2).sum(), [xt, wt])]
    vals = [values()[0], values()[1]]
    assert_same_gradients(ours, ref, [xt, wt], vals)
    cost_fn = pytensor.function([xt, wt], cost, mode=MODE)
    numeric = central_differences(lambda w: np.atleast_1d(cost_fn(vals[0], w)), vals[1])[0]
    got = ours[2].eval({xt: vals[0], wt: vals[1]}, mode=MODE)
    np.testing.assert_allclose(got, numeric, rtol=1e-6)


def test_user_scan_over_xtensor_ops():
    """A user's scan whose step holds xtensor Ops, and its gradient (a scan too)."""
    xt, wt = pt.matrix("x", shape=(N_A, N_B)), pt.vector("w", shape=(N_B,))

    def step(row, acc, w):
        r = px.as_xtensor(row, dims=("b",))
        lw = px.as_xtensor(w, dims=("b",))
        return acc + (px.math.tanh(r * lw) * px.math.exp(lw)).sum().values

    def run(step_fn):
        out = pytensor.scan(
            step_fn,
            sequences=[xt],
            outputs_info=[pt.zeros(())],
            non_sequences=[wt],
            return_updates=False,
        )
        return out[-1] ** 2

    cost = run(step)
    ours = [cost, pt.grad(cost, wt)]

    def lowered_step(row, acc, w):
        return lower(step(row, acc, w))

    with integration_disabled():
        ref_cost = run(lowered_step)
        ref = [ref_cost, pt.grad(ref_cost, wt)]
    vals = values()
    assert_same_gradients(ours, ref, [xt, wt], vals)

    fn = pytensor.function([xt, wt], ours, mode=COUNT_MODE)
    assert not any(isinstance(op, XOp | LazyPullback) for op in inner_graph_ops(fn))
    ops = list(loop_ops(fn))
    # exp(w) is loop-invariant: pushed out of both loops, as for the reference.
    assert not any(isinstance(op, ps.Exp) for op in ops)
    ref_fn = pytensor.function([xt, wt], ref, mode=COUNT_MODE)
    check_compiled_graph(fn, ref_fn)

    cost_fn = pytensor.function([xt, wt], cost, mode=MODE)
    numeric = central_differences(lambda w: np.atleast_1d(cost_fn(vals[0], w)), vals[1])[0]
    np.testing.assert_allclose(fn(*vals)[1], numeric, rtol=1e-6)


def test_nested_scan():
    """A hessian inside a user's scan: the inner-inner graph is expanded too."""
    x, wt, cost = dense_model()
    scale = pt.vector("s", shape=(3,))

    def total(c):
        rows = pytensor.scan(
            lambda s, w: gradient.hessian(c * s, w).sum(),
            sequences=[scale],
            non_sequences=[wt],
            return_updates=False,
        )
        return rows.sum()

    ours = total(cost)
    ref = reference_transform(total, cost)
    vals = [*values(), np.array([0.5, 1.0, 2.0])]
    assert_same_gradients([ours], [ref], [x, wt, scale], vals)
    fn = pytensor.function([x, wt, scale], ours, mode=COUNT_MODE)
    assert not any(isinstance(op, XOp | LazyPullback) for op in inner_graph_ops(fn))
    ref_fn = pytensor.function([x, wt, scale], ref, mode=COUNT_MODE)
    check_compiled_graph(fn, ref_fn)


def test_registered_before_scan_and_ofg_rewrites():
    position = optdb.__position__
    assert position["expand_inner_graphs_and_lower"] < position["scan_eqopt1"]
    assert position["expand_inner_graphs_and_lower"] < position["lower_xtensor"]
    # The expansion itself runs first in lower_xtensor, registered only there.
    assert "expand_lazy_pullback" not in optdb.__db__
    assert "expand_lazy_pullback" in lower_xtensor_db.__db__
    tags = optdb.__db__["expand_inner_graphs_and_lower"]
    for tag in ("fast_run", "fast_compile", "minimum_compile"):
        assert tag in optdb.__db__ and any(r in optdb.__db__[tag] for r in tags)


def test_transforms_stay_lazy():
    _, wt, cost = dense_model()
    for transform in TRANSFORMS.values():
        out = transform(cost, wt)
        nodes = graph_nodes([out])
        lazy_inside = [
            inner
            for n in nodes
            if isinstance(n.op, Scan)
            for inner in n.op.fgraph.apply_nodes
            if isinstance(inner.op, LazyPullback)
        ]
        assert lazy_inside, "the row loop should hold the lazy pullback until compilation"


def test_lower_xtensor_workaround_reaches_inner_graphs():
    """``rewrite_graph(..., include=("lower_xtensor",))`` also expands the row loop."""
    x, wt, cost = dense_model()
    ours = gradient.hessian(cost, wt)
    [rewritten] = rewrite_graph([ours], include=("lower_xtensor",), clone=True)
    nodes = graph_nodes([rewritten])
    loops = [n.op for n in nodes if isinstance(n.op, Scan)]
    assert loops
    for op in loops:
        assert not any(isinstance(o, XOp | LazyPullback) for o in graph_ops(op.fgraph))
    ref = reference_transform(lambda c: gradient.hessian(c, wt), cost)
    assert_same_gradients([rewritten], [ref], [x, wt], values())


# ---------------------------------------------------------------------------
# Gradients through a user's OpFromGraph or Scan holding xtensor Ops
# ---------------------------------------------------------------------------


def ofg_body(a, b):
    """Plain tensors in and out, xtensor Ops inside (reduce, index, broadcast by name)."""
    xa = px.as_xtensor(a, dims=("i", "j"))
    xb = px.as_xtensor(b, dims=("j",))
    out = px.math.exp(xa * xb).sum("j") * xa.isel(j=0) + (xa.transpose("j", "i") ** 2).sum("j")
    return out.values


def ofg_inputs():
    return pt.tensor("ia", shape=(3, 4)), pt.tensor("ib", shape=(4,))


OFG_WEIGHTS = np.array([0.3, -1.2, 0.7])


@pytest.mark.parametrize("inline", [False, True])
def test_xtensor_inside_opfromgraph(inline):
    ia, ib = ofg_inputs()
    ofg = OpFromGraph([ia, ib], [ofg_body(ia, ib)], inline=inline)
    A, B = pt.tensor("A", shape=(3, 4)), pt.tensor("B", shape=(4,))
    cost = (ofg(A, B) * OFG_WEIGHTS).sum() + (ofg(B * A, B) ** 2).sum()
    ours = pt.grad(cost, [A, B])
    assert holds_lazy_pullback(ours)

    # Reference: the same computation without OpFromGraph, lowered, then differentiated.
    ref_cost = (ofg_body(A, B) * OFG_WEIGHTS).sum() + (ofg_body(B * A, B) ** 2).sum()
    refs = reference_grad(ref_cost, [A, B])
    values = random_values([A, B])
    assert_same_gradients(ours, refs, [A, B], values)

    def fun(A, B):
        return (ofg(A, B) * OFG_WEIGHTS).sum() + (ofg(B * A, B) ** 2).sum()

    pytensor.gradient.verify_grad(fun, values, rng=np.random.default_rng(2), mode=MODE)


def test_opfromgraph_second_order():
    """Hessian-vector product through an OpFromGraph holding xtensor Ops."""
    ia, ib = ofg_inputs()
    ofg = OpFromGraph([ia, ib], [ofg_body(ia, ib)])
    A, B = pt.tensor("A", shape=(3, 4)), pt.tensor("B", shape=(4,))
    v = np.random.default_rng(5).uniform(-1, 1, size=(3, 4))

    def hvp(cost):
        [g] = pt.grad(cost, [A])
        return pt.grad((g * v).sum(), [A, B])

    ours = hvp((ofg(A, B) * OFG_WEIGHTS).sum())
    ref_cost = lower((ofg_body(A, B) * OFG_WEIGHTS).sum())
    refs = hvp(ref_cost)
    assert_same_gradients(ours, refs, [A, B], random_values([A, B]))


def rnn(xs, h0, W, lowered):
    """A small recurrent net whose step uses xtensor Ops on converted tensors."""

    def step(x_t, h, W):
        xh = px.as_xtensor(h, dims=("i",))
        xW = px.as_xtensor(W, dims=("i", "j"))
        xx = px.as_xtensor(x_t, dims=("j",))
        pre = px.dot(xh, xW, dim="i") + xx * xW.isel(i=-1)
        new = px.math.tanh(pre).rename(j="i") + 0.5 * xh
        out = new.values
        if lowered:
            out = lower(out)
        return out

    return pytensor.scan(
        step, sequences=[xs], outputs_info=[h0], non_sequences=[W], return_updates=False
    )


SCAN_WEIGHTS = np.random.default_rng(4).uniform(-1, 1, size=(4, 3))


def scan_inputs():
    return pt.tensor("xs", shape=(4, 3)), pt.tensor("h0", shape=(3,)), pt.tensor("W", shape=(3, 3))


def test_xtensor_inside_scan():
    xs, h0, W = scan_inputs()
    cost = (rnn(xs, h0, W, lowered=False) * SCAN_WEIGHTS).sum()
    ours = pt.grad(cost, [W, h0, xs])
    assert holds_lazy_pullback(ours)

    ref_cost = (rnn(xs, h0, W, lowered=True) * SCAN_WEIGHTS).sum()
    refs = pt.grad(ref_cost, [W, h0, xs])
    assert not holds_lazy_pullback(refs)
    values = random_values([xs, h0, W])
    assert_same_gradients(ours, refs, [xs, h0, W], values)

    def fun(xs, h0, W):
        return (rnn(xs, h0, W, lowered=False) * SCAN_WEIGHTS).sum()

    pytensor.gradient.verify_grad(fun, values, rng=np.random.default_rng(2), mode=MODE)


def test_scan_over_xtensor_graph_with_labelled_outer_cost():
    """Scan output relabelled outside the scan, cost is a labelled reduction."""
    xs, h0, W = scan_inputs()

    def cost_of(lowered):
        # Scan loses the static length of its output: restore it for the weights.
        hs = px.as_xtensor(pt.specify_shape(rnn(xs, h0, W, lowered), (4, 3)), dims=("t", "i"))
        return weighted_cost(hs.transpose("i", "t") * hs.sum("t"))

    ours = pt.grad(cost_of(False), [W, h0])
    refs = reference_grad(cost_of(True), [W, h0])
    assert_same_gradients(ours, refs, [xs, h0, W], random_values([xs, h0, W]))
