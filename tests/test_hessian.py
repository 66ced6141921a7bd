"""Second order, lazily: grad of grad, hessian, hessian-vector products, the
jacobian of a gradient, and the pullback of a `LazyPullback`."""

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
import pytest

from pytensor_lazy_pullback import LazyPullback, integration_disabled
from helpers import (
    MODE,
    assert_same_gradients,
    central_differences,
    compile_values,
    lazy_nodes,
    lower,
    per_example_model,
    random_values,
    reference_grad,
)


def labelled_cost():
    vec = pt.vector("v", shape=(6,))
    x = px.as_xtensor(vec.reshape((2, 3)), dims=("a", "b"))
    w = px.as_xtensor(np.array([0.5, -1.0, 2.0]), dims=("b",))
    cost = (pxm.exp(x * 0.3) * (x * w).sum("b") + pxm.sin(x).cumsum("a")).sum().values
    return vec, cost


def test_grad_of_grad_is_lazy_and_matches_reference():
    vec, cost = labelled_cost()
    u = np.linspace(-1, 1, 6)
    g = pt.grad(cost, vec)
    gg = pt.grad((g * u).sum(), vec)
    # Lazy at second order too: a LazyPullback whose region holds the first one.
    nested = [
        node
        for node in lazy_nodes([gg])
        if any(isinstance(n.op, LazyPullback) for n in node.op.fgraph.toposort())
    ]
    assert nested, "the second-order region should contain the first-order LazyPullback"
    g_ref = pt.grad(lower(cost), vec)
    gg_ref = pt.grad((g_ref * u).sum(), vec)
    assert_same_gradients([g, gg], [g_ref, gg_ref], [vec], random_values([vec]))


def test_hessian_matches_reference_and_finite_differences():
    vec, cost = labelled_cost()
    h = gradient.hessian(cost, vec)
    h_ref = gradient.hessian(lower(cost), vec)
    [value] = random_values([vec])
    assert_same_gradients([h], [h_ref], [vec], [value])
    # The Hessian is the jacobian of the gradient: check it against central differences.
    grad_fn = pytensor.function([vec], pt.grad(cost, vec), mode=MODE)
    numeric = central_differences(grad_fn, value)
    np.testing.assert_allclose(h.eval({vec: value}, mode=MODE), numeric, rtol=1e-5, atol=1e-7)


def test_hessian_vector_product():
    vec, cost = labelled_cost()
    p = pt.vector("p", shape=(6,))
    hvp = gradient.hessian_vector_product(cost, vec, p)
    hvp_ref = gradient.hessian_vector_product(lower(cost), vec, p)
    assert_same_gradients([hvp], [hvp_ref], [vec, p], random_values([vec, p]))


def test_hessian_wrt_labelled_leaf_through_pullback():
    x = px.xtensor("x", dims=("a",), shape=(4,))
    cost = (pxm.exp(x) * x.cumsum("a")).sum().values
    g = pt.grad(cost, x)
    assert g.type.dims == ("a",)
    u = px.as_xtensor(np.array([1.0, -2.0, 0.5, 3.0]), dims=("a",))
    gg = pt.grad((g * u).sum().values, x)
    assert gg.type.dims == ("a",)
    ref = reference_grad(cost, [x])[0]
    gg_ref = reference_grad((ref * u).sum().values, [x])[0]
    assert_same_gradients([gg], [gg_ref], [x], random_values([x]))


def test_lazy_pullback_pullback_is_another_lazy_pullback():
    mat = pt.matrix("m", shape=(2, 3))
    x = px.as_xtensor(mat, dims=("a", "b"))
    cost = (pxm.exp(x * 0.3) * x.sum("b") + pxm.sin(x).cumsum("a")).sum().values
    g = pt.grad(cost, mat)
    [node] = lazy_nodes([g])
    cotangent = pt.matrix("c", shape=(2, 3))
    # The pullback of the LazyPullback, as grad takes it: a region of its own.
    second = gradient.grad(None, mat, known_grads={g: cotangent})
    assert isinstance(second.owner.op, LazyPullback)
    [inner] = lazy_nodes(second.owner.op.fgraph.outputs)
    assert inner.op == node.op
    # Its value: d/dm <g(m), c>, the Hessian applied to c.
    reference = gradient.hessian_vector_product(lower(cost), mat, cotangent)
    assert_same_gradients([second], [reference], [mat, cotangent], random_values([mat, cotangent]))


@pytest.mark.parametrize("vectorize", [True, False])
def test_jacobian_of_gradient(vectorize):
    vec, cost = labelled_cost()
    jac = gradient.jacobian(pt.grad(cost, vec), vec, vectorize=vectorize)
    jac_ref = gradient.jacobian(pt.grad(lower(cost), vec), vec, vectorize=vectorize)
    assert_same_gradients([jac], [jac_ref], [vec], random_values([vec]))


@pytest.mark.parametrize("vectorize", [True, False])
def test_jacobian_of_a_gradient_wrt_a_plain_tensor(vectorize):
    w, xi, yi, cost = per_example_model()
    g = pt.grad(cost, w)
    [ref] = reference_grad(cost, [w])
    jac = gradient.jacobian(g, w, vectorize=vectorize)
    with integration_disabled():
        jac_ref = gradient.jacobian(ref, w, vectorize=vectorize)
    rng = np.random.default_rng(1)
    values = [rng.normal(size=3), rng.normal(size=3), rng.normal()]
    got, want = compile_values([w, xi, yi], [jac, jac_ref], values)
    np.testing.assert_allclose(got, want, rtol=1e-10)
