"""xtensor inside composite Ops (OpFromGraph, Scan), and 0-d labelled costs."""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytest
from pytensor.compile.builders import OpFromGraph
from pytensor.graph.op import HasInnerGraph
from pytensor.graph.rewriting.utils import rewrite_graph
from pytensor.graph.traversal import applys_between, graph_inputs
from pytensor.xtensor.type import XTensorType

from pytensor_lazy_pullback import LazyPullback
from helpers import (
    MODE,
    assert_lazy,
    assert_same_gradients,
    random_values,
    reference_grad,
    weighted_cost,
)


def holds_lazy_pullback(outputs):
    """Whether a LazyPullback sits in the graph or in any (nested) inner graph."""
    outputs = list(outputs)
    for node in applys_between(list(graph_inputs(outputs)), outputs):
        if isinstance(node.op, LazyPullback):
            return True
        if isinstance(node.op, HasInnerGraph) and holds_lazy_pullback(node.op.inner_outputs):
            return True
    return False


# ---------------------------------------------------------------------------
# 1. OpFromGraph
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
    ref_cost = rewrite_graph(
        (ofg_body(A, B) * OFG_WEIGHTS).sum(), include=("lower_xtensor",), clone=True
    )
    refs = hvp(ref_cost)
    assert_same_gradients(ours, refs, [A, B], random_values([A, B]))


# ---------------------------------------------------------------------------
# 2. Scan
# ---------------------------------------------------------------------------


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
            out = rewrite_graph(out, include=("lower_xtensor",), clone=True)
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


# ---------------------------------------------------------------------------
# 3. A 0-d labelled cost
# ---------------------------------------------------------------------------


def test_zero_d_xtensor_cost():
    t = pt.tensor("t", shape=(3, 4))
    x = px.as_xtensor(t, dims=("a", "b"))
    weights = px.as_xtensor(np.random.default_rng(1).uniform(-1, 1, size=(4, 3)), dims=("b", "a"))
    cost = (x**2 * weights).sum()
    assert isinstance(cost.type, XTensorType) and cost.type.ndim == 0

    ours = pt.grad(cost, [t, x])
    assert_lazy(ours)
    assert isinstance(ours[1].type, XTensorType) and ours[1].type.dims == ("a", "b")
    values = random_values([t])
    assert_same_gradients(ours, pt.grad(cost.values, [t, x]), [t], values)
    assert_same_gradients(ours, reference_grad(cost.values, [t, x]), [t], values)
    # And the closed form.
    got = pytensor.function([t], ours[0], mode=MODE)(*values)
    np.testing.assert_allclose(got, 2 * values[0] * weights.values.eval().T, rtol=1e-12)


def test_zero_d_xtensor_cost_single_wrt_and_pullback():
    t = pt.tensor("t", shape=(3, 4))
    x = px.as_xtensor(t, dims=("a", "b"))
    cost = px.math.log(x.sum("a")).prod()
    g = pt.grad(cost, t)
    assert g.type == t.type
    values = random_values([t])
    assert_same_gradients([g], [pt.grad(cost.values, t)], [t], values)
    assert_same_gradients([g], reference_grad(cost.values, [t]), [t], values)
    # `pullback` with a labelled 0-d cotangent, as pt.grad seeds it.
    [pb] = pytensor.gradient.pullback([cost], [t], [px.as_xtensor(pt.constant(2.0), dims=())])
    assert_same_gradients([pb], [2 * g], [t], values)
