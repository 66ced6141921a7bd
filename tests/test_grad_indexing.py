"""More op families: indexing, linalg, signal and random draws.

Each gradient is compared with the reference (lower, then ``pt.grad``) and, where it
applies, with finite differences.
"""

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.linalg as pxl
import pytensor.xtensor.random as pxr
import pytensor.xtensor.signal as pxs
import pytest
from pytensor.gradient import NullTypeGradError
from pytensor.graph.null_type import NullType
from pytensor.tensor.type import continuous_dtypes
from pytensor.xtensor.type import XTensorType

from helpers import (
    MODE,
    assert_lazy,
    assert_same_gradients,
    check_family,
    lazy_nodes,
    random_values,
    reference_grad,
    weighted_cost,
)

AB = [("a", "b")]
AB_54 = [(5, 4)]


def any_weighted_cost(out, seed=1):
    """``sum(out * W)`` with fixed non-uniform weights, also for symbolic output shapes.

    With an unknown static shape the weights are a fixed array cut to the output's
    run-time shape, so each entry's weight still depends on its position.
    """
    if None not in out.type.shape:
        return weighted_cost(out, seed)
    rng = np.random.default_rng(seed)
    big = rng.uniform(-1, 1, size=(9,) * out.type.ndim).astype(out.type.dtype)
    shape = out.values.shape
    weights = pt.constant(big)[tuple(slice(0, shape[i]) for i in range(out.type.ndim))]
    return (out * px.as_xtensor(weights, dims=out.type.dims)).sum().values


def assert_no_integer_cotangent(grads):
    """No LazyPullback returns a cotangent for a non-float region input (indices, rngs)."""
    for node in lazy_nodes(list(grads)):
        for i in node.op.wrt:
            dtype = getattr(node.op.fgraph.inputs[i].type, "dtype", None)
            assert dtype in continuous_dtypes, (node.op, i, node.op.fgraph.inputs[i].type)


def assert_gradients_match(ours, refs, inputs, values, rtol=1e-7):
    """`assert_same_gradients`, except that our static shape may refine the reference's.

    The reference's pullback sometimes loses a static length (``None``) that ours,
    typed like the region input, keeps; every known length must still agree (the
    strict comparison is `test_convolve1d_static_shape_equals_reference`).
    """
    for o, r in zip(ours, refs, strict=True):
        assert o.type.dtype == r.type.dtype, (o.type, r.type)
        assert type(o.type) is type(r.type), (o.type, r.type)
        assert getattr(o.type, "dims", None) == getattr(r.type, "dims", None)
        assert len(o.type.shape) == len(r.type.shape)
        for so, sr in zip(o.type.shape, r.type.shape, strict=True):
            assert sr is None or so == sr, (o.type, r.type)
    got = pytensor.function(inputs, list(ours), mode=MODE, on_unused_input="ignore")(*values)
    want = pytensor.function(inputs, list(refs), mode=MODE, on_unused_input="ignore")(*values)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-10)


def check_labelled(fn, dims, shapes, ints=(), int_values=(), rtol=1e-7):
    """Like `check_family`, for outputs of symbolic shape and with extra integer inputs.

    ``fn(*labelled, *ints)`` builds the output; the integer inputs are inputs of the
    compiled functions (values `int_values`); the gradient is taken with respect to the
    float inputs only.  Finite differences use shared variables holding `int_values`.
    """
    tensors = [pt.tensor(f"t{i}", shape=tuple(s)) for i, s in enumerate(shapes)]
    labelled = [px.as_xtensor(t, dims=tuple(d)) for t, d in zip(tensors, dims, strict=True)]
    cost = any_weighted_cost(fn(*labelled, *ints))
    inputs = [*tensors, *ints]
    values = [*random_values(tensors), *int_values]

    ours = pt.grad(cost, tensors)
    assert_lazy(ours)
    assert_no_integer_cotangent(ours)
    assert_gradients_match(ours, reference_grad(cost, tensors), inputs, values, rtol=rtol)

    ours_x = pt.grad(cost, labelled)
    for g, x in zip(ours_x, labelled, strict=True):
        assert g.type.dims == x.type.dims
    assert_gradients_match(ours_x, reference_grad(cost, labelled), inputs, values, rtol=rtol)

    shared_ints = [pytensor.shared(np.asarray(v, dtype=i.type.dtype)) for i, v in zip(ints, int_values, strict=True)]

    def fun(*ts):
        xs = [px.as_xtensor(t, dims=tuple(d)) for t, d in zip(ts, dims, strict=True)]
        return any_weighted_cost(fn(*xs, *shared_ints))

    pytensor.gradient.verify_grad(
        fun, values[: len(tensors)], rng=np.random.default_rng(2), mode=MODE
    )


# ---------------------------------------------------------------------------
# 1. Indexing
# ---------------------------------------------------------------------------

STATIC_INDEXING = {
    "isel_int": lambda x: x.isel(a=1),
    "isel_negative_int": lambda x: x.isel(a=-2, b=-1),
    "getitem_int": lambda x: x[3],
    "getitem_negative_int": lambda x: x[-1, -3],
    "isel_step_slices": lambda x: x.isel(a=slice(None, None, 2), b=slice(3, 0, -2)),
    "getitem_step_slices": lambda x: x[1::2, ::-1],
    "getitem_int_and_slice": lambda x: x[-2, 1:],
    "isel_numpy_array": lambda x: x.isel(a=np.array([0, 2, 4, 1])),
    "isel_numpy_array_repeated": lambda x: x.isel(a=np.array([0, 2, 2, 4, 2])),
    "getitem_numpy_array_negative": lambda x: x[:, np.array([-1, 0, -1])],
    "isel_xtensor_new_dim": lambda x: x.isel(
        a=px.as_xtensor(np.array([0, 2, 1]), dims=("new",))
    ),
    "isel_xtensor_repeated": lambda x: x.isel(
        a=px.as_xtensor(np.array([0, 2, 2, 2]), dims=("new",))
    ),
    "isel_two_xtensors_same_new_dim": lambda x: x.isel(
        a=px.as_xtensor(np.array([0, 2, 1, 2]), dims=("new",)),
        b=px.as_xtensor(np.array([1, 1, 3, 1]), dims=("new",)),
    ),
    "isel_two_xtensors_outer": lambda x: x.isel(
        a=px.as_xtensor(np.array([0, 4, 4]), dims=("p",)),
        b=px.as_xtensor(np.array([[1, 3], [3, 3]]), dims=("q", "r")),
    ),
    "index_of_index_and_reuse": lambda x: x[1:][::2] * x.isel(a=0) + x[2:4].sum("a"),
}


@pytest.mark.parametrize("name", list(STATIC_INDEXING))
def test_indexing_static(name):
    check_family(STATIC_INDEXING[name], AB, AB_54)


def test_indexing_symbolic_slice_bounds():
    lo, hi = pt.iscalar("lo"), pt.iscalar("hi")
    check_labelled(
        lambda x, lo, hi: x.isel(a=slice(lo, hi)), AB, AB_54, ints=(lo, hi), int_values=(1, 4)
    )


def test_indexing_symbolic_slice_bounds_with_step_and_getitem():
    lo, hi = pt.iscalar("lo"), pt.iscalar("hi")
    check_labelled(
        lambda x, lo, hi: x[lo::2, :hi] * x[lo:hi, 0].sum("a"),
        AB,
        AB_54,
        ints=(lo, hi),
        int_values=(1, 3),
    )


def test_indexing_symbolic_negative_step_slice():
    lo, step = pt.iscalar("lo"), pt.iscalar("step")
    check_labelled(
        lambda x, lo, step: x.isel(b=slice(lo, None, step)),
        AB,
        AB_54,
        ints=(lo, step),
        int_values=(-1, -2),
    )


def test_indexing_symbolic_integer_scalar():
    i = pt.iscalar("i")
    check_labelled(lambda x, i: x.isel(a=i) * x[i - 1], AB, AB_54, ints=(i,), int_values=(-2,))


def test_indexing_symbolic_integer_vector_with_repeats():
    iv = pt.ivector("iv")
    check_labelled(
        lambda x, iv: x.isel(a=iv), AB, AB_54, ints=(iv,),
        int_values=(np.array([0, 3, 3, 1, 3], dtype="int32"),),
    )


def test_indexing_symbolic_xtensor_indexer_new_dim():
    iv = pt.ivector("iv")
    check_labelled(
        lambda x, iv: x.isel(a=px.as_xtensor(iv, dims=("new",)), b=px.as_xtensor(iv, dims=("new",))),
        AB,
        AB_54,
        ints=(iv,),
        int_values=(np.array([0, 3, 3, 1, 3], dtype="int32"),),
    )


def test_repeated_indices_accumulate_exact_values():
    """The gradient of a gather with repeats is a scatter-add, checked against numpy."""
    t = pt.tensor("t", shape=(5, 4))
    x = px.as_xtensor(t, dims=("a", "b"))
    index = np.array([0, 2, 2, 4, 2])
    weights = np.random.default_rng(3).uniform(-1, 1, size=(5, 4))
    cost = (x.isel(a=px.as_xtensor(index, dims=("new",))) * px.as_xtensor(weights, dims=("new", "b"))).sum().values
    [g] = pt.grad(cost, [t])
    assert_lazy([g])
    got = pytensor.function([t], g, mode=MODE)(np.ones((5, 4)))
    expected = np.zeros((5, 4))
    np.add.at(expected, index, weights)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.all(got[[1, 3]] == 0)


@pytest.mark.parametrize("disconnected_inputs", ["raise", "ignore"])
def test_gradient_wrt_integer_index_inputs_matches_reference(disconnected_inputs):
    """Asking for the gradient wrt an index: same error, or same (float) zeros."""
    t = pt.tensor("t", shape=(5, 4))
    x = px.as_xtensor(t, dims=("a", "b"))
    iv, lo = pt.ivector("iv"), pt.iscalar("lo")
    labelled_iv = px.as_xtensor(iv, dims=("new",))
    out = x.isel(a=labelled_iv) * x[lo:lo + 1].sum("a")
    cost = any_weighted_cost(out)
    wrt = [t, iv, lo, labelled_iv]
    inputs = [t, iv, lo]
    values = [random_values([t])[0], np.array([0, 4, 4], dtype="int32"), 2]
    if disconnected_inputs == "raise":
        with pytest.raises(pytensor.gradient.DisconnectedInputError):
            reference_grad(cost, wrt[1:2], disconnected_inputs="raise")
        with pytest.raises(pytensor.gradient.DisconnectedInputError):
            pt.grad(cost, wrt, disconnected_inputs="raise")
        return
    ours = pt.grad(cost, wrt, disconnected_inputs="ignore")
    refs = reference_grad(cost, wrt, disconnected_inputs="ignore")
    assert_no_integer_cotangent(ours)
    assert_same_gradients(ours, refs, inputs, values)


@pytest.mark.parametrize("method", ["set", "inc"])
def test_index_update(method):
    """IndexUpdate (``x[idx].set(y)`` / ``.inc(y)``): gradient wrt both x and y."""
    idx = np.array([0, 2, 3]) if method == "set" else np.array([0, 2, 2])

    def fn(x, y):
        out = getattr(x.isel(a=px.as_xtensor(idx, dims=("new",))), method)(y * 2)
        return out * out

    check_family(fn, [("a", "b"), ("new", "b")], [(5, 4), (3, 4)])


# ---------------------------------------------------------------------------
# 2. Linear algebra
# ---------------------------------------------------------------------------


def spd(x, row, col, n):
    """``x @ x.T + n I`` on labelled dims: symmetric positive definite, well-conditioned."""
    other = [d for d in x.type.dims if d != row][0]
    xt = x.rename({row: col})
    eye = px.as_xtensor(np.eye(n) * n, dims=(row, col))
    return px.dot(x, xt, dim=other) + eye


@pytest.mark.parametrize("lower", [True, False])
def test_cholesky(lower):
    check_family(
        lambda x: pxl.cholesky(spd(x, "a", "c", 3), lower=lower, dims=("a", "c")),
        [("a", "b")],
        [(3, 3)],
    )


def test_cholesky_batched_with_reversed_core_dims():
    def fn(x):
        # x: (batch, a, b) -> SPD over (a, c); decompose with core dims given as (c, a).
        xt = x.rename(a="c")
        eye = px.as_xtensor(np.eye(3) * 3, dims=("a", "c"))
        A = px.dot(x, xt, dim="b") + eye
        return pxl.cholesky(A, dims=("c", "a"))

    check_family(fn, [("batch", "a", "b")], [(2, 3, 4)])


@pytest.mark.parametrize("assume_a", ["gen", "pos", "sym"])
def test_solve_matrix_vector(assume_a):
    check_family(
        lambda x, b: pxl.solve(spd(x, "a", "c", 3), b, dims=("a", "c"), assume_a=assume_a),
        [("a", "b"), ("c",)],
        [(3, 4), (3,)],
    )


def test_solve_matrix_matrix_batched():
    def fn(x, b):
        return pxl.solve(spd(x, "a", "c", 3), b, dims=("a", "c", "n"))

    check_family(fn, [("a", "b"), ("batch", "n", "c")], [(3, 4), (2, 2, 3)])


def test_solve_with_cholesky_factor():
    """Composite: solve with the Cholesky factor of an SPD matrix."""

    def fn(x, b):
        L = pxl.cholesky(spd(x, "a", "c", 3), dims=("a", "c"))
        return pxl.solve(L, b, dims=("a", "c"))

    check_family(fn, [("a", "b"), ("c",)], [(3, 3), (3,)])


# ---------------------------------------------------------------------------
# 3. Signal
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "valid", "same"])
def test_convolve1d(mode):
    check_labelled(
        lambda x, k: pxs.convolve1d(x, k, mode=mode, dims=("a", "k")),
        [("b", "a"), ("k",)],
        [(2, 6), (3,)],
    )


@pytest.mark.parametrize("mode", ["full", "valid", "same"])
def test_convolve1d_batched_both_sides_even_kernel(mode):
    check_labelled(
        lambda x, k: pxs.convolve1d(x * k.sum("k"), k, mode=mode, dims=("a", "k")),
        [("a", "b"), ("b", "k")],
        [(5, 2), (2, 4)],
    )


@pytest.mark.xfail(
    reason="Contract says 'same static shapes': the reference's convolution pullback "
    "has an unknown length (None) where ours, typed like the region input, keeps it",
    strict=True,
)
def test_convolve1d_static_shape_equals_reference():
    t, k = pt.tensor("t", shape=(6,)), pt.tensor("k", shape=(3,))
    out = pxs.convolve1d(px.as_xtensor(t, dims=("a",)), px.as_xtensor(k, dims=("k",)), dims=("a", "k"))
    cost = any_weighted_cost(out)
    ours = pt.grad(cost, [t, k])
    refs = reference_grad(cost, [t, k])
    assert [o.type.shape for o in ours] == [r.type.shape for r in refs]


# ---------------------------------------------------------------------------
# 4. Random draws
# ---------------------------------------------------------------------------


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
    with pytest.raises(NullTypeGradError):
        pt.grad(cost, wrt)
    with pytest.raises(NullTypeGradError):
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
