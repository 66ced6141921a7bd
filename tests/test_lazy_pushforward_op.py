"""The `LazyPushforward` Op: the pushforward of an un-lowered region, built at compile time.

One node per region, compiled to no more than the reference's graph; equality,
merging, ``infer_shape``, pickling, ``dprint``; second order stays lazy.
"""

import io
import pickle

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytest
from pytensor.graph.basic import equal_computations

from pytensor_lazy_pullback import LazyPullback, LazyPushforward, expand_lazy_pullbacks
from helpers import (
    COUNT_MODE,
    MODE,
    all_nodes,
    assert_same_gradients,
    check_compiled_graph,
    lazy_nodes,
    lower,
    reference_transform,
)

W = np.array([0.3, -0.7, 1.1])


def model():
    xt = pt.matrix("xt", shape=(4, 3))
    wt = pt.vector("wt", shape=(3,))
    x = px.as_xtensor(xt, dims=("a", "b"))
    w = px.as_xtensor(wt, dims=("b",))
    h = px.math.tanh(px.dot(x, w, dim="b")) * px.math.exp(x).mean("b")
    return xt, wt, h.values


def values():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(4, 3)), W, rng.normal(size=3)]


def test_one_lazy_pushforward_per_region_and_values():
    xt, wt, h = model()
    t = pt.vector("t", shape=(3,))
    jvp = gradient.pushforward(h, wt, t, use_op_pushforward=True)
    assert len(lazy_nodes([jvp], LazyPushforward)) == 1
    assert not lazy_nodes([jvp], LazyPullback)  # not the transpose trick
    reference = gradient.pushforward(lower(h), wt, t, use_op_pushforward=True)
    assert_same_gradients([jvp], [reference], [xt, wt, t], values())
    fn = pytensor.function([xt, wt, t], jvp)
    assert not [n for n in fn.maker.fgraph.apply_nodes if isinstance(n.op, LazyPushforward)]


def test_compiles_to_the_references_graph():
    xt, wt, h = model()
    t = pt.vector("t", shape=(3,))
    jvp = gradient.pushforward(h, wt, t, use_op_pushforward=True)
    reference = gradient.pushforward(lower(h), wt, t, use_op_pushforward=True)
    ours_fn = pytensor.function([xt, wt, t], [h, jvp], mode=COUNT_MODE)
    ref_fn = pytensor.function([xt, wt, t], [lower(h), reference], mode=COUNT_MODE)
    check_compiled_graph(ours_fn, ref_fn)


def test_infer_shape_equality_pickle_and_dprint():
    xt, wt, h = model()
    t = pt.vector("t", shape=(3,))
    a = gradient.pushforward(h, wt, t, use_op_pushforward=True)
    b = gradient.pushforward(h, wt, t, use_op_pushforward=True)
    [node_a] = lazy_nodes([a], LazyPushforward)
    [node_b] = lazy_nodes([b], LazyPushforward)
    assert node_a.op == node_b.op and hash(node_a.op) == hash(node_b.op)
    assert equal_computations([a], [b])
    both = pytensor.function([xt, wt, t], [a, b], mode=COUNT_MODE)
    one = pytensor.function([xt, wt, t], a, mode=COUNT_MODE)
    # merged: the second output is at most a copy of the first
    assert len(both.maker.fgraph.apply_nodes) <= len(one.maker.fgraph.apply_nodes) + 1
    shape = pytensor.function([xt, wt, t], a.shape, mode=MODE)(*values())
    assert tuple(shape) == (4,)
    clone = pickle.loads(pickle.dumps(node_a.op))
    assert clone == node_a.op
    text = io.StringIO()
    pytensor.dprint(a, file=text)
    assert "LazyPushforward{" in text.getvalue() and "Inner graphs" in text.getvalue()
    assert str(node_a.op).startswith("LazyPushforward{XTensorFromTensor")  # names the region's Ops
    assert "fgraph=" not in text.getvalue()


@pytest.mark.parametrize("second", ["pullback", "pushforward"])
def test_second_order_stays_lazy(second):
    xt, wt, h = model()
    t = pt.vector("t", shape=(3,))
    jvp = gradient.pushforward(h, wt, t, use_op_pushforward=True)
    cost = (jvp**2).sum()
    if second == "pullback":
        ours = pt.grad(cost, wt)
        ref = pt.grad(
            (gradient.pushforward(lower(h), wt, t, use_op_pushforward=True) ** 2).sum(), wt
        )
    else:
        u = pt.vector("u", shape=(3,))
        ours = gradient.pushforward(jvp, wt, u, use_op_pushforward=True)
        ref = gradient.pushforward(
            gradient.pushforward(lower(h), wt, t, use_op_pushforward=True),
            wt,
            u,
            use_op_pushforward=True,
        )
        t_value = values()[2]
    assert lazy_nodes([ours], LazyPullback) or lazy_nodes([ours], LazyPushforward)
    inputs = [xt, wt, t] + ([u] if second == "pushforward" else [])
    vals = values() + ([t_value[::-1]] if second == "pushforward" else [])
    assert_same_gradients([ours], [ref], inputs, vals, rtol=1e-6)


def test_labelled_pushforward_expands_for_inspection():
    xt, wt, _ = model()
    x = px.as_xtensor(xt, dims=("a", "b"))
    w = px.as_xtensor(wt, dims=("b",))
    tt = pt.vector("tt", shape=(3,))
    out = px.math.tanh(px.dot(x, w, dim="b"))
    jvp = gradient.pushforward(out, w, px.as_xtensor(tt, dims=("b",)))
    assert jvp.type.dims == ("a",)
    expanded = expand_lazy_pullbacks(jvp)
    assert not lazy_nodes([expanded], LazyPushforward)
    reference = gradient.pushforward(lower(out).values, wt, tt, use_op_pushforward=True)
    x_v, w_v, t_v = values()
    assert_same_gradients([expanded.values], [reference], [xt, wt, tt], [x_v, w_v, t_v])
    # and central differences along the tangent
    f = pytensor.function([xt, wt], out.values, mode=MODE)
    eps = 1e-6
    fd = (f(x_v, w_v + eps * t_v) - f(x_v, w_v - eps * t_v)) / (2 * eps)
    got = pytensor.function([xt, wt, tt], expanded.values, mode=MODE)(x_v, w_v, t_v)
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8)


def _no_lazy_node(outputs):
    return not [
        node for node in all_nodes(outputs) if isinstance(node.op, LazyPullback | LazyPushforward)
    ]


@pytest.mark.parametrize("lower_too", [False, True], ids=["expanded", "lowered"])
@pytest.mark.parametrize("with_grad", [False, True], ids=["jvp", "jvp_and_grad"])
def test_expansion_of_a_labelled_jvp_leaves_no_lazy_node(with_grad, lower_too):
    """The transpose trick of a labelled pushforward pulls back through its seeds'
    un-lowered conversions: its expansion builds a `LazyPullback`, which
    ``expand_lazy_pullbacks`` expands too; the values are d(sin(x) exp(x))."""
    x = px.xtensor("x", dims=("a",), shape=(3,))
    t = px.xtensor("t", dims=("a",), shape=(3,))
    y = px.math.sin(x) * px.math.exp(x)
    outputs = [gradient.pushforward(y, x, t)]
    if with_grad:
        outputs.append(pt.grad(y.sum().values, x))
    expanded = expand_lazy_pullbacks(outputs, lower=lower_too)
    assert _no_lazy_node(expanded)
    x_v, t_v = np.array([0.3, -1.2, 2.0]), np.array([1.0, -0.5, 2.5])
    got = pytensor.function([x, t], expanded, mode=MODE, on_unused_input="ignore")(x_v, t_v)
    derivative = (np.cos(x_v) + np.sin(x_v)) * np.exp(x_v)
    np.testing.assert_allclose(got[0], derivative * t_v, rtol=1e-12)
    if with_grad:
        np.testing.assert_allclose(got[1], derivative, rtol=1e-12)


@pytest.mark.parametrize("lower_too", [False, True], ids=["expanded", "lowered"])
def test_expansion_of_a_hessian_leaves_no_lazy_node_in_its_scan(lower_too):
    """``hessian`` maps a lazy gradient over rows with a Scan, rebuilt expanded."""
    xt, wt, h = model()
    cost = (h**2).sum()
    [expanded] = expand_lazy_pullbacks([pt.hessian(cost, wt)], lower=lower_too)
    assert _no_lazy_node([expanded])
    reference = reference_transform(lambda c: pt.hessian(c, wt), cost)
    assert_same_gradients([expanded], [reference], [xt, wt], values()[:2], rtol=1e-6)
