"""Gradients through graphs holding the Ops of ``pytensor.xtensor.random`` (``XRV``).

A draw elsewhere in the graph is a plain region input; a reparameterised draw
has the reference's gradient (and the closed form); a draw's parameter on the
path from ``wrt`` to the cost gives a ``NullTypeGradError`` at ``pt.grad`` time,
as for the reference, unless ``consider_constant`` cuts the draw.
"""

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.random as pxr
import pytest
from pytensor.gradient import NullTypeGradError
from pytensor.graph.null_type import NullType
from pytensor.xtensor.type import XTensorType

from helpers import (
    MODE,
    assert_lazy,
    assert_no_integer_cotangent,
    random_values,
    reference_grad,
    weighted_cost,
)


@pytest.fixture
def no_rng_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # XRV's hidden-rng warning
        yield


def test_random_draw_elsewhere_in_graph(no_rng_warning):
    """(a) cost = f(x) + g(draw), and a draw multiplying x: the draw is a plain region input."""
    t = pt.tensor("t", shape=(3, 4))
    x = px.as_xtensor(t, dims=("a", "b"))
    rng = pytensor.shared(np.random.default_rng(7))
    draw = pxr.normal(0, 1, extra_dims={"a": 3, "c": 2}, rng=rng)
    other = pxr.uniform(0.5, 1.5, extra_dims={"b": 4}, rng=pytensor.shared(np.random.default_rng(8)))
    cost = (
        weighted_cost(px.math.exp(x).sum("b") * 2)
        + (draw**2).sum().values
        + weighted_cost(x * draw.sum("c") * other)
    )
    ours = pt.grad(cost, [t, x])
    assert_lazy(ours)
    assert_no_integer_cotangent(ours)
    refs = reference_grad(cost, [t, x])
    for o, r in zip(ours, refs, strict=True):
        assert o.type == r.type
    values = random_values([t])
    # One function, so both see the same draws.
    fn = pytensor.function([t], [*ours, *refs], mode=MODE)
    got = fn(*values)
    for o, r in zip(got[:2], got[2:], strict=True):
        np.testing.assert_allclose(o, r, rtol=1e-7)

    def fun(t):
        x = px.as_xtensor(t, dims=("a", "b"))
        return weighted_cost(px.math.exp(x).sum("b") * 2) + weighted_cost(
            x * draw.sum("c") * other
        ) + (draw**2).sum().values

    pytensor.gradient.verify_grad(fun, values, rng=np.random.default_rng(2), mode=MODE)


def test_reparameterised_draw(no_rng_warning):
    """(b) ``mu + sigma * eps`` with a draw of constant parameters: the gradient wrt mu, sigma."""
    mu_t = pt.tensor("mu", shape=(3,))
    sigma_t = pt.tensor("sigma", shape=(3,))
    mu = px.as_xtensor(mu_t, dims=("a",))
    sigma = px.as_xtensor(sigma_t, dims=("a",))
    rng = pytensor.shared(np.random.default_rng(42))
    eps = pxr.normal(0, 1, extra_dims={"a": 3, "c": 2}, rng=rng)
    y = mu + sigma * eps
    weights = np.random.default_rng(1).uniform(-1, 1, size=(3, 2))
    cost = ((y**2) * px.as_xtensor(weights, dims=("a", "c"))).sum().values

    wrt = [mu_t, sigma_t, mu, sigma]
    ours = pt.grad(cost, wrt)
    assert_lazy(ours)
    assert_no_integer_cotangent(ours)
    refs = reference_grad(cost, wrt)
    for o, r in zip(ours, refs, strict=True):
        assert o.type == r.type
    fn = pytensor.function([mu_t, sigma_t], [*ours, *refs, eps.values], mode=MODE)
    mu_v, sigma_v = np.array([0.5, -1.0, 2.0]), np.array([1.5, 0.7, 2.0])
    *got, eps_v = fn(mu_v, sigma_v)
    for o, r in zip(got[:4], got[4:], strict=True):
        np.testing.assert_allclose(o, r, rtol=1e-7)
    # And the closed form, on the very draw used.
    dy = 2 * (mu_v[:, None] + sigma_v[:, None] * eps_v) * weights
    np.testing.assert_allclose(got[0], dy.sum(1), rtol=1e-10)
    np.testing.assert_allclose(got[1], (dy * eps_v).sum(1), rtol=1e-10)

    def fun(mu_t, sigma_t):
        y = px.as_xtensor(mu_t, dims=("a",)) + px.as_xtensor(sigma_t, dims=("a",)) * eps
        return ((y**2) * px.as_xtensor(weights, dims=("a", "c"))).sum().values

    pytensor.gradient.verify_grad(fun, [mu_v, sigma_v], rng=np.random.default_rng(2), mode=MODE)


def _draw_cost(mu, rng, through=lambda m: m):
    z = pxr.normal(through(mu), 1, extra_dims={"c": 2}, rng=rng)
    return weighted_cost(z * mu)


DRAW_PARAMS = {
    "param_is_input": lambda m: m,
    "param_through_xtensor_ops": lambda m: px.math.exp(m).isel(a=slice(None, None, -1)),
    "param_through_tensor_op": lambda m: px.as_xtensor(pt.exp(m.values), dims=m.type.dims),
}


@pytest.mark.parametrize("through", list(DRAW_PARAMS))
@pytest.mark.parametrize("labelled_wrt", [False, True])
def test_gradient_through_draw_raises_at_grad_time(no_rng_warning, through, labelled_wrt):
    """(c) A draw's parameter on the path: NullTypeGradError from ``pt.grad`` itself."""
    mu_t = pt.tensor("mu", shape=(3,))
    mu = px.as_xtensor(mu_t, dims=("a",))
    rng = pytensor.shared(np.random.default_rng(42))
    cost = _draw_cost(mu, rng, DRAW_PARAMS[through])
    wrt = mu if labelled_wrt else mu_t
    with pytest.raises(NullTypeGradError):
        reference_grad(cost, [wrt])
    # The message names the region whose gradient is undefined, and why.
    region = r"of the region of \d+ node\(s\) \[.*\] op is undefined\. No gradient defined"
    with pytest.raises(NullTypeGradError, match=region):
        pt.grad(cost, wrt)
    with pytest.raises(NullTypeGradError, match=region):
        pt.grad(cost, wrt, null_gradients="raise")

    [ref] = reference_grad(cost, [wrt], null_gradients="return")
    ours = pt.grad(cost, wrt, null_gradients="return")
    assert isinstance(ref.type, NullType)
    assert isinstance(ours.type, NullType)


def test_gradient_through_draw_wrt_interior_parameter(no_rng_warning):
    mu_t = pt.tensor("mu", shape=(3,))
    mu = px.as_xtensor(mu_t, dims=("a",))
    param = px.math.exp(mu)
    z = pxr.normal(param, 1, extra_dims={"c": 2}, rng=pytensor.shared(np.random.default_rng(0)))
    cost = weighted_cost(z * mu)
    with pytest.raises(NullTypeGradError):
        reference_grad(cost, [param])
    with pytest.raises(NullTypeGradError):
        pt.grad(cost, param)
    assert isinstance(pt.grad(cost, param, null_gradients="return").type, NullType)


def test_draw_with_differentiable_param_cut_by_consider_constant(no_rng_warning):
    """consider_constant on the draw removes it from the path: no NullType, same values."""
    mu_t = pt.tensor("mu", shape=(3,))
    mu = px.as_xtensor(mu_t, dims=("a",))
    z = pxr.normal(px.math.exp(mu), 1, extra_dims={"c": 2}, rng=pytensor.shared(np.random.default_rng(0)))
    cost = weighted_cost(z * mu * mu)
    ours = pt.grad(cost, [mu_t, mu], consider_constant=[z])
    refs = reference_grad(cost, [mu_t, mu], consider_constant=[z])
    for o, r in zip(ours, refs, strict=True):
        assert not isinstance(o.type, NullType)
        assert o.type == r.type
    got = pytensor.function([mu_t], [*ours, *refs], mode=MODE)(np.array([0.3, -0.2, 1.0]))
    for o, r in zip(got[:2], got[2:], strict=True):
        np.testing.assert_allclose(o, r, rtol=1e-7)
    assert isinstance(ours[1].type, XTensorType)
