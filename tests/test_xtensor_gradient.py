"""The xtensor gradient API: ``grad``, ``pullback``, ``pushforward`` and ``jacobian``
with labelled arguments and results, lazily.

Each result is checked against the reference (lower first, then
``pytensor.gradient``, on plain tensors) and against central finite
differences; cotangents and tangents are given in another dim order than their
variable's (square shapes, so a positional use would silently transpose).
Every test runs under both values of ``on_opt_error``.
"""

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
import pytest
from pytensor.graph.replace import clone_replace
from pytensor.xtensor.basic import XOp, XTypeCastOp
from pytensor.xtensor.type import XTensorType

from pytensor_lazy_pullback import LazyPullback, LazyPushforward
from pytensor_lazy_pullback.unlowered import LazyRegionOp
from pytensor_lazy_pullback.xtensor_gradient import grad, jacobian, pullback, pushforward
from helpers import (
    assert_same_gradients,
    central_differences,
    compile_values,
    graph_nodes,
    lazy_nodes,
    lower,
    random_values,
    reference_grad,
    vector_fn,
)

pytestmark = pytest.mark.usefixtures("on_opt_error")

W_AB = np.linspace(-0.9, 1.2, 9).reshape(3, 3)
"""Fixed non-uniform weights of dims ("a", "b")."""


def square_model():
    """``x`` (dims ("a", "b"), square) -> interior ``h`` -> ``y`` (dims ("a", "b")) and ``z`` (dims ("a",)).

    One region of xtensor Ops from ``x`` to ``y`` and ``z``; ``h`` is computed
    in its middle.
    """
    xt = pt.matrix("xt", shape=(3, 3))
    x = px.as_xtensor(xt, dims=("a", "b"))
    h = pxm.exp(x * 0.5) * x
    h.name = "h"
    y = pxm.sin(h) * px.as_xtensor(W_AB, dims=("a", "b")) + x.cumsum("a")
    z = (h * x.transpose("b", "a")).sum("b")
    return xt, x, h, y, z


def cut_at(outputs, var):
    """`outputs` with the interior XTensorVariable `var` replaced by a fresh plain input.

    Returns the new outputs, the fresh tensor (laid out in `var`'s dims) and
    the map that substitutes `var` back into a reference built on them.
    """
    fresh = pt.tensor(f"{var.name}_cut", dtype=var.type.dtype, shape=var.type.shape)
    cut = clone_replace(outputs, replace={var: px.as_xtensor(fresh, dims=var.type.dims)})
    return cut, fresh, {fresh: var.values}


def jvp_by_central_differences(fn, x0, t0):
    """``J(x0) @ t0`` of a numpy function `fn` by central differences."""
    return np.tensordot(central_differences(fn, x0), t0, axes=t0.ndim)


def vjp_by_central_differences(fn, x0, c0):
    """``c0 @ J(x0)`` of a numpy function `fn` by central differences."""
    return np.tensordot(c0, central_differences(fn, x0), axes=c0.ndim)


def assert_nothing_lowered(results, forward, n_lazy, lazy_type=LazyRegionOp):
    """The results hold `n_lazy` lazy nodes and, besides the forward graph, only xtensor Ops."""
    results = [r for r in results if r is not None]
    assert len(lazy_nodes(results, lazy_type)) == n_lazy
    known = set(graph_nodes(forward))
    for node in graph_nodes(results):
        if node not in known:
            assert isinstance(node.op, XOp | XTypeCastOp | LazyRegionOp), node


# ---------------------------------------------------------------------------
# grad
# ---------------------------------------------------------------------------


def test_grad_of_a_0d_xtensor_cost_is_labelled_lazy_and_the_reference():
    xt, x, _h, y, z = square_model()
    cost = (y * z).sum()
    assert isinstance(cost.type, XTensorType) and cost.type.dims == ()
    g_x = grad(cost, x)
    assert g_x.type.dims == ("a", "b")
    assert_nothing_lowered([g_x], [cost], n_lazy=1, lazy_type=LazyPullback)
    [reference] = reference_grad(cost.values, [xt])
    values = random_values([xt])
    assert_same_gradients([g_x.values], [reference], [xt], values)

    fn = pytensor.function([xt], cost.values, mode="FAST_COMPILE")
    [got] = compile_values([xt], [g_x.values], values)
    np.testing.assert_allclose(got, central_differences(fn, values[0]), rtol=1e-6, atol=1e-8)


def test_grad_wrt_an_interior_variable_and_a_leaf():
    xt, x, h, y, z = square_model()
    cost = (y * z).sum()
    g_x, g_h = grad(cost, [x, h])
    assert g_x.type.dims == g_h.type.dims == ("a", "b")
    [cut], fresh, back = cut_at([cost.values], h)
    reference_h = clone_replace(pt.grad(lower(cut), fresh), replace=back)
    [reference_x] = reference_grad(cost.values, [xt])
    values = random_values([xt])
    assert_same_gradients([g_x.values, g_h.values], [reference_x, reference_h], [xt], values)


def test_grad_with_an_interior_consider_constant():
    xt, x, h, y, z = square_model()
    cost = (y * z).sum()
    held = grad(cost, x, consider_constant=[h])
    free = grad(cost, x)
    [reference] = reference_grad(cost.values, [xt], consider_constant=[h])
    values = random_values([xt])
    assert_same_gradients([held.values], [reference], [xt], values)
    got_held, got_free = compile_values([xt], [held.values, free.values], values)
    assert not np.allclose(got_held, got_free)


def test_grad_keeps_the_container_of_wrt():
    _, x, h, y, _ = square_model()
    cost = y.sum()
    assert isinstance(grad(cost, x).type, XTensorType)
    assert isinstance(grad(cost, [x]), list) and len(grad(cost, [x])) == 1
    assert isinstance(grad(cost, (x, h)), tuple)


def test_grad_of_a_labelled_cost_with_dims_is_a_type_error():
    _, x, _, y, _ = square_model()
    with pytest.raises(TypeError, match=r"must be a 0-d variable, got dims \('a', 'b'\).*sum\(\)"):
        grad(y, x)


# ---------------------------------------------------------------------------
# pullback
# ---------------------------------------------------------------------------


def test_pullback_of_several_outputs_with_cotangents_by_dim_name():
    xt, x, _h, y, z = square_model()
    # y's cotangent in dims ("b", "a"): its value is c.T in y's own order.
    ct, dt = pt.matrix("c", shape=(3, 3)), pt.vector("d", shape=(3,))
    cotangents = [px.as_xtensor(ct, dims=("b", "a")), px.as_xtensor(dt, dims=("a",))]
    [g_x] = pullback([y, z], [x], cotangents)
    assert g_x.type.dims == ("a", "b")
    assert_nothing_lowered([g_x], [y, z], n_lazy=1, lazy_type=LazyPullback)

    reference = gradient.pullback([lower(y).values, lower(z).values], xt, [ct.T, dt])
    inputs = [xt, ct, dt]
    values = random_values(inputs)
    assert_same_gradients([g_x.values], [reference], inputs, values)

    def forward(x0):
        y0, z0 = compile_values([xt], [y.values, z.values], [x0])
        return np.concatenate([y0.ravel(), z0])

    x0, c0, d0 = values
    [got] = compile_values(inputs, [g_x.values], values)
    want = vjp_by_central_differences(forward, x0, np.concatenate([c0.T.ravel(), d0]))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_pullback_wrt_an_interior_variable():
    xt, _x, h, y, _z = square_model()
    ct = pt.matrix("c", shape=(3, 3))
    g_h = pullback(y, h, px.as_xtensor(ct, dims=("b", "a")))
    assert g_h.type.dims == h.type.dims
    [cut], fresh, back = cut_at([y.values], h)
    reference = clone_replace(gradient.pullback(lower(cut), fresh, ct.T), replace=back)
    inputs = [xt, ct]
    assert_same_gradients([g_h.values], [reference], inputs, random_values(inputs))


def test_pullback_keeps_the_container_of_wrt():
    _, x, h, y, _ = square_model()
    c = px.xtensor("c", dims=("a", "b"), shape=(3, 3))
    assert isinstance(pullback(y, x, c).type, XTensorType)
    assert isinstance(pullback([y], [x, h], [c]), list)
    assert isinstance(pullback(y, (x,), c), tuple)


def test_pullback_plain_cotangent_for_an_xtensor_output_is_a_type_error():
    _, x, _, y, _ = square_model()
    y.name = "y"
    with pytest.raises(TypeError, match=r"XTensorVariable y.*both must be xtensor.*as_xtensor"):
        pullback(y, x, pt.matrix("c", shape=(3, 3)))


def test_pullback_xtensor_cotangent_for_a_plain_output_is_a_type_error():
    _, x, _, y, _ = square_model()
    values = y.values
    values.name = "y_values"
    with pytest.raises(TypeError, match=r"tensor y_values is an XTensorVariable: both must be"):
        pullback(values, x, px.xtensor("c", dims=("a", "b"), shape=(3, 3)))


def test_pullback_cotangent_with_other_dims_is_a_type_error():
    _, x, _, y, _ = square_model()
    y.name = "y"
    with pytest.raises(TypeError, match=r"dims \('a', 'c'\).*XTensorVariable y"):
        pullback(y, x, px.xtensor("c", dims=("a", "c"), shape=(3, 3)))


def test_pullback_needs_one_cotangent_per_output():
    _, x, _, y, z = square_model()
    with pytest.raises(ValueError, match="one cotangent per output"):
        pullback([y, z], x, [px.xtensor("c", dims=("a", "b"))])


# ---------------------------------------------------------------------------
# pushforward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("use_op_pushforward", [False, True])
def test_pushforward_of_several_outputs_with_a_tangent_by_dim_name(use_op_pushforward):
    xt, x, h, y, z = square_model()
    # Without the cumsum, which has no pushforward of its own (use_op_pushforward=True).
    y = pxm.sin(h) * px.as_xtensor(W_AB, dims=("a", "b")) + x.transpose("b", "a")
    tt = pt.matrix("t", shape=(3, 3))
    # The tangent in dims ("b", "a"): its value is t.T in x's order.
    ours = pushforward(
        [y, z], [x], [px.as_xtensor(tt, dims=("b", "a"))], use_op_pushforward=use_op_pushforward
    )
    assert isinstance(ours, list)
    assert [out.type.dims for out in ours] == [("a", "b"), ("a",)]
    assert_nothing_lowered(ours, [y, z], n_lazy=1, lazy_type=LazyPushforward)

    reference = gradient.pushforward(
        [lower(y).values, lower(z).values], xt, tt.T, use_op_pushforward=use_op_pushforward
    )
    inputs = [xt, tt]
    values = random_values(inputs)
    assert_same_gradients([out.values for out in ours], reference, inputs, values)

    x0, t0 = values
    got = compile_values(inputs, [out.values for out in ours], values)
    for output, value in zip([y, z], got, strict=True):

        def forward(x_, output=output):
            [out] = compile_values([xt], [output.values], [x_])
            return out

        want = jvp_by_central_differences(forward, x0, t0.T)
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-8)


def test_pushforward_wrt_an_interior_variable():
    xt, _x, h, _y, z = square_model()
    tt = pt.matrix("t", shape=(3, 3))
    ours = pushforward(z, h, px.as_xtensor(tt, dims=("b", "a")))
    assert ours.type.dims == ("a",)
    [cut], fresh, back = cut_at([z.values], h)
    reference = clone_replace(gradient.pushforward(lower(cut), fresh, tt.T), replace=back)
    inputs = [xt, tt]
    assert_same_gradients([ours.values], [reference], inputs, random_values(inputs))


def test_pushforward_keeps_the_container_of_outputs():
    _, x, _, y, z = square_model()
    t = px.xtensor("t", dims=("a", "b"), shape=(3, 3))
    assert isinstance(pushforward(y, x, t).type, XTensorType)
    assert isinstance(pushforward([y, z], [x], [t]), list)
    assert isinstance(pushforward((y,), x, t), tuple)


def test_pushforward_plain_tangent_for_an_xtensor_variable_is_a_type_error():
    _, x, _, y, _ = square_model()
    x.name = "x"
    with pytest.raises(TypeError, match=r"tangent t of the XTensorVariable x.*both must be xtensor"):
        pushforward(y, x, pt.matrix("t", shape=(3, 3)))


def test_pushforward_needs_one_tangent_per_variable():
    _, x, h, y, _ = square_model()
    with pytest.raises(ValueError, match="one tangent per variable"):
        pushforward(y, [x, h], [px.xtensor("t", dims=("a", "b"))])


# ---------------------------------------------------------------------------
# jacobian
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("vectorize", [False, True])
def test_jacobian_is_labelled_and_pytensors_jacobian_of_an_xtensor_expression(vectorize):
    t = pt.vector("t", shape=(3,))
    x = px.as_xtensor(t, dims=("a",))
    ours = jacobian(vector_fn(x), x, vectorize=vectorize)
    assert ours.type.dims == ("i", "a")
    via_pytensor = gradient.jacobian(vector_fn(x), x, vectorize=vectorize)
    assert via_pytensor.type.dims == ("i", "a")
    values = random_values([t])
    got, same = compile_values([t], [ours.values, via_pytensor.values], values)
    np.testing.assert_allclose(got, same)
    fn = pytensor.function([t], vector_fn(x).values, mode="FAST_COMPILE")
    np.testing.assert_allclose(got, central_differences(fn, values[0]), rtol=1e-6, atol=1e-8)
