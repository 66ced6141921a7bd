"""The arguments of ``pt.grad`` on un-lowered xtensor graphs, against the reference.

A 0-d labelled cost; several ``wrt``, labelled leaves and interior variables;
``consider_constant``; ``known_grads``; ``disconnected_inputs`` and
``return_disconnected``; gradient names (``add_names``); and the user's graph
left untouched by all of them.  Each result is compared with the reference
(lower first, then ``pt.grad``: `helpers.reference_grad`), and with finite
differences where the graph has plain-tensor inputs.
"""

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
import pytest
from pytensor.gradient import DisconnectedInputError, DisconnectedType
from pytensor.graph.traversal import ancestors
from pytensor.xtensor.type import XTensorType, XTensorVariable

from helpers import (
    MODE,
    assert_graph_unchanged,
    assert_lazy,
    assert_same_gradients,
    compile_values,
    graph_snapshot,
    interior_graph,
    lower,
    random_values,
    reference_grad,
    weighted_cost,
)


# ---------------------------------------------------------------------------
# 1. A 0-d labelled cost
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


# ---------------------------------------------------------------------------
# 2. Several wrt at once
# ---------------------------------------------------------------------------


def test_several_wrt_tensor_and_labelled_leaves():
    t = pt.tensor("t", shape=(3, 4))
    u = pt.tensor("u", shape=(4,))
    y = px.xtensor("y", dims=("b",), shape=(4,))
    x = px.as_xtensor(t, dims=("a", "b"))
    ux = px.as_xtensor(u, dims=("b",))
    cost = weighted_cost(x * y + pxm.tanh(x.sum("a") * ux) * y**2)

    wrt = [t, y, x, u]
    ours = pt.grad(cost, wrt)
    assert_lazy(ours)
    assert isinstance(ours[1], XTensorVariable) and ours[1].type.dims == ("b",)
    assert isinstance(ours[2], XTensorVariable) and ours[2].type.dims == ("a", "b")
    assert not isinstance(ours[0].type, XTensorType)
    inputs = [t, y, u]
    assert_same_gradients(ours, reference_grad(cost, wrt), inputs, random_values(inputs))

    def fn(t, y, u):
        x = px.as_xtensor(t, dims=("a", "b"))
        yx = px.as_xtensor(y, dims=("b",))
        ux = px.as_xtensor(u, dims=("b",))
        return weighted_cost(x * yx + pxm.tanh(x.sum("a") * ux) * yx**2)

    pytensor.gradient.verify_grad(
        fn, random_values([t, y, u]), rng=np.random.default_rng(2), mode=MODE
    )


# ---------------------------------------------------------------------------
# 3. wrt an xtensor leaf
# ---------------------------------------------------------------------------


def test_wrt_xtensor_leaf_keeps_dims():
    x = px.xtensor("x", dims=("a", "b", "c"), shape=(2, 3, 4))
    out = (pxm.exp(x) * x.sum("b")).transpose("c", "a", "b").std("a")
    cost = weighted_cost(out)
    g = pt.grad(cost, x)
    assert isinstance(g, XTensorVariable)
    assert g.type.dims == ("a", "b", "c")
    assert g.type.shape == (2, 3, 4)
    assert g.type.dtype == x.type.dtype
    assert_lazy([g])
    assert_same_gradients([g], reference_grad(cost, [x]), [x], random_values([x]))


# ---------------------------------------------------------------------------
# 4. wrt interior variables
# ---------------------------------------------------------------------------


def test_wrt_interior_xtensor_and_tensor_with_upstream_leaf():
    x, h, v, cost = interior_graph()
    wrt = [x, h, v]
    ours = pt.grad(cost, wrt)
    assert_lazy(ours)
    assert isinstance(ours[1], XTensorVariable) and ours[1].type.dims == h.type.dims
    assert not isinstance(ours[2].type, XTensorType)
    values = random_values([x])
    refs = reference_grad(cost, wrt)
    assert_same_gradients(ours, refs, [x], values)

    # The path through the interior wrt h and v is kept: the gradient wrt x is the
    # total derivative, not the derivative with h and v held fixed.
    [cut] = reference_grad(cost, [x], consider_constant=[h, v])
    got, held = compile_values([x], [ours[0], cut], values)
    assert not np.allclose(got, held)


def test_wrt_interior_alone_and_in_other_order():
    x, h, v, cost = interior_graph()
    for wrt in ([h], [v], [v, h], [h, x]):
        ours = pt.grad(cost, wrt)
        assert_same_gradients(ours, reference_grad(cost, wrt), [x], random_values([x]))


# ---------------------------------------------------------------------------
# 5. consider_constant on an interior variable
# ---------------------------------------------------------------------------


def constant_graph():
    """Like `interior_graph`, but h is read only inside its own region."""
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    h = pxm.exp(x * 0.5) * x
    v = h.sum("b").values
    back = px.as_xtensor(pt.sin(v) * v, dims=("a",))
    cost = weighted_cost(back * h.std("b") + x.sum("b"))
    return x, h, v, cost


@pytest.mark.parametrize("which", ["labelled", "tensor"])
def test_consider_constant_interior_stops_gradient(which):
    x, h, v, cost = constant_graph()
    constant = h if which == "labelled" else v
    [ours] = pt.grad(cost, [x], consider_constant=[constant])
    [free] = pt.grad(cost, [x])
    [ref] = reference_grad(cost, [x], consider_constant=[constant])
    values = random_values([x])
    assert_same_gradients([ours], [ref], [x], values)
    got, unconstrained = compile_values([x], [ours, free], values)
    assert not np.allclose(got, unconstrained)


# ---------------------------------------------------------------------------
# 6. known_grads
# ---------------------------------------------------------------------------


def known_grads_reference(key, cotangent, wrt):
    [lowered_key] = lower([key])
    return pt.grad(cost=None, wrt=wrt, known_grads={lowered_key: cotangent})


def test_known_grads_interior_key():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    h = pxm.exp(x * 0.5) * x.sum("a")  # interior of a region
    out = (h * h).std("b") + x.mean("b")
    del out  # the key's downstream graph is irrelevant with cost=None
    g = px.xtensor("g", dims=("a", "b"), shape=(3, 4))
    ours = pt.grad(cost=None, wrt=[x], known_grads={h: g})
    assert_lazy(ours)
    assert ours[0].type.dims == ("a", "b")
    ref = known_grads_reference(h, g, [x])
    assert_same_gradients(ours, ref, [x, g], random_values([x, g]))


def test_known_grads_exit_key_with_cost():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    h = (pxm.exp(x * 0.5) * x).sum("a")  # region output, consumed by .values
    cost = (h.values**2).sum() + (x * x).sum().values
    g = px.xtensor("g", dims=("b",), shape=(4,))
    ours = pt.grad(cost=None, wrt=[x], known_grads={h: g})
    ref = known_grads_reference(h, g, [x])
    assert_same_gradients(ours, ref, [x, g], random_values([x, g]))

    # Together with a cost, the known gradient of h replaces what the cost would
    # send back through h (pytensor's rule: a known_grads entry is final), so the
    # gradient is the cost's with h held constant plus the pullback of g through h.
    [ours_both] = pt.grad(cost, [x], known_grads={h: g})
    [held] = reference_grad(cost, [x], consider_constant=[h])
    [through_h] = known_grads_reference(h, g, [x])
    values = random_values([x, g])
    assert_same_gradients([ours_both], [held + through_h], [x, g], values)
    [free] = pt.grad(cost, [x])
    got, unconstrained = compile_values([x, g], [ours_both, free], values)
    assert not np.allclose(got, unconstrained)


def test_known_grads_dims_matched_by_name():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 3))
    h = pxm.exp(x * 0.5) * x.sum("a") + x.transpose("b", "a")
    g = px.xtensor("g", dims=("b", "a"), shape=(3, 3))  # other order, square
    ours = pt.grad(cost=None, wrt=[x], known_grads={h: g})
    by_name = known_grads_reference(h, g.transpose("a", "b"), [x])
    positional = known_grads_reference(
        h, px.as_xtensor(g.values, dims=("a", "b")), [x]
    )
    values = random_values([x, g])
    assert_same_gradients(ours, by_name, [x, g], values)
    got, wrong = compile_values([x, g], [ours[0], positional[0]], values)
    assert not np.allclose(got, wrong)


def test_known_grads_labelled_key_needs_labelled_cotangent():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    h = pxm.exp(x) * 2
    with pytest.raises(TypeError, match="must be an XTensorVariable"):
        pt.grad(cost=None, wrt=[x], known_grads={h: pt.tensor("g", shape=(3, 4))})


# ---------------------------------------------------------------------------
# 7. Disconnected wrt
# ---------------------------------------------------------------------------


def disconnected_setup():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    cost = weighted_cost(pxm.exp(x).sum("b"))
    z = pt.tensor("z", shape=(5,))
    zx = px.xtensor("zx", dims=("c", "d"), shape=(2, 3))
    return x, cost, z, zx


@pytest.mark.parametrize("kind", ["tensor", "labelled"])
def test_disconnected_inputs_settings(kind):
    x, cost, z, zx = disconnected_setup()
    wrt = z if kind == "tensor" else zx
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g_ignore = pt.grad(cost, [x, wrt], disconnected_inputs="ignore")
    with pytest.warns(UserWarning, match="not part of the computational graph"):
        pt.grad(cost, [x, wrt], disconnected_inputs="warn")
    with pytest.raises(DisconnectedInputError):
        pt.grad(cost, [x, wrt], disconnected_inputs="raise")
    # The reference behaves the same way.
    with pytest.raises(DisconnectedInputError):
        reference_grad(cost, [wrt], disconnected_inputs="raise")
    ref = reference_grad(cost, [x, wrt], disconnected_inputs="ignore")
    assert_same_gradients(g_ignore, ref, [x, wrt], random_values([x, wrt]))


@pytest.mark.parametrize("kind", ["tensor", "labelled"])
def test_return_disconnected(kind):
    x, cost, z, zx = disconnected_setup()
    wrt = z if kind == "tensor" else zx
    values = random_values([x, wrt])

    _, zero = pt.grad(cost, [x, wrt], disconnected_inputs="ignore", return_disconnected="zero")
    assert type(zero.type) is type(wrt.type)
    assert zero.type.shape == wrt.type.shape
    assert zero.type.dtype == wrt.type.dtype
    if kind == "labelled":
        assert isinstance(zero, XTensorVariable)
        assert zero.type.dims == ("c", "d")
    [got] = compile_values([x, wrt], [zero], values)
    np.testing.assert_array_equal(got, np.zeros(wrt.type.shape))
    [ref_zero] = reference_grad(cost, [wrt], disconnected_inputs="ignore", return_disconnected="zero")
    assert_same_gradients([zero], [ref_zero], [x, wrt], values)

    _, none = pt.grad(cost, [x, wrt], disconnected_inputs="ignore", return_disconnected="none")
    assert none is None

    g_x, disc = pt.grad(
        cost, [x, wrt], disconnected_inputs="ignore", return_disconnected="disconnected"
    )
    assert isinstance(disc.type, DisconnectedType)
    assert_same_gradients([g_x], reference_grad(cost, [x]), [x], values[:1])


def test_disconnected_through_non_differentiable_region_path():
    """A labelled wrt used only as an integer index inside a region is disconnected."""
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    idx = px.xtensor("idx", dims=("c",), shape=(2,), dtype="int64")
    cost = weighted_cost(pxm.exp(x)[{"a": idx}])
    with pytest.raises(DisconnectedInputError):
        reference_grad(cost, [idx], disconnected_inputs="raise")
    with pytest.raises(DisconnectedInputError):
        pt.grad(cost, [x, idx], disconnected_inputs="raise")
    g_x, g_idx = pt.grad(cost, [x, idx], disconnected_inputs="ignore")
    assert g_idx.type.dims == ("c",)
    refs = reference_grad(cost, [x, idx], disconnected_inputs="ignore")
    values = random_values([x, idx])
    assert_same_gradients([g_x, g_idx], refs, [x, idx], values)


# ---------------------------------------------------------------------------
# 8. Gradient names
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tensor", "labelled"])
def test_gradient_names(kind):
    if kind == "tensor":
        leaf = pt.tensor("x", shape=(3, 4))
        x = px.as_xtensor(leaf, dims=("a", "b"))
    else:
        leaf = x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    cost = weighted_cost(pxm.exp(x).sum("a") * x.mean("a"))
    cost.name = "cost"
    g = pt.grad(cost, leaf)
    assert g.name == "(dcost/dx)"
    # The reference names it the same way (lowering drops the cost's name; restore it).
    [lowered] = lower([cost])
    lowered.name = "cost"
    assert pt.grad(lowered, leaf).name == g.name
    assert pt.grad(cost, leaf, add_names=False).name is None
    assert pt.grad(lowered, leaf, add_names=False).name is None
    assert_same_gradients([g], reference_grad(cost, [leaf]), [leaf], random_values([leaf]))


# ---------------------------------------------------------------------------
# 9. The user's graph is not mutated
# ---------------------------------------------------------------------------


def test_user_graph_unchanged():
    t = pt.tensor("t", shape=(3, 4))
    x = px.as_xtensor(t, dims=("a", "b"))
    x.name = "x"
    y = px.xtensor("y", dims=("b",), shape=(4,))
    h = pxm.exp(x * 0.5) * y
    h.name = "h"
    v = h.sum("b").values
    back = px.as_xtensor(pt.exp(v), dims=("a",))
    cost = weighted_cost((back * h).std("a") + y * x.sum("a"))
    cost.name = "cost"
    outputs = [cost]

    before = graph_snapshot(outputs)
    grads = pt.grad(cost, [t, y, x, h, v])
    grads += pt.grad(cost, [t], consider_constant=[h])
    grads += pt.grad(None, [t], known_grads={h: px.xtensor("g", dims=h.type.dims, shape=(3, 4))})
    assert_graph_unchanged(before, graph_snapshot(outputs))
    # Nothing of the user's graph is lowered in place either.
    assert h.owner.op.__class__.__name__ == "XElemwise"
    assert_lazy(grads)
    # And the gradients still reference the user's own forward variables.
    assert {t, y, h, v} <= set(ancestors(grads))
