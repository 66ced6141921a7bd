"""pullback and pushforward on labelled variables: matched by dim name, labelled results.

Also the pushforward of a labelled region between plain tensors, and PyTensor's
own pushforward for plain graphs.  The `LazyPushforward` Op itself is in
test_lazy_pushforward_op.py.
"""

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
import pytest

from pytensor_lazy_pullback import LazyPullbackExpansionError, LazyPushforward
from pytensor_lazy_pullback.unlowered import LazyRegionOp
from helpers import (
    MODE,
    assert_same_gradients,
    central_differences,
    lazy_nodes,
    lower,
    random_values,
)

WEIGHTS = np.arange(9.0).reshape(3, 3) - 4.0


def square_graph():
    """A square labelled function: positional use of a cotangent would silently transpose."""
    xt = pt.matrix("xt", shape=(3, 3))
    x = px.as_xtensor(xt, dims=("a", "b"))
    y = pxm.exp(x * 0.5) * px.as_xtensor(WEIGHTS, dims=("a", "b")) + x.cumsum("a")
    return xt, x, y


@pytest.mark.parametrize("cumulative", [False, True])
@pytest.mark.parametrize("use_op_pushforward", [False, True])
def test_pushforward_matches_reference_and_tangent_dims_by_name(
    use_op_pushforward, cumulative, on_opt_error
):
    xt, x, y = square_graph()
    if not cumulative:
        y = pxm.exp(x * 0.5) * px.as_xtensor(WEIGHTS, dims=("a", "b")) + x.transpose("b", "a")
    tangent = pt.matrix("t", shape=(3, 3))
    # The tangent is given with dims ("b", "a"): its value is tangent.T in x's order.
    labelled_tangent = px.as_xtensor(tangent, dims=("b", "a"))
    ours = gradient.pushforward(y, x, labelled_tangent, use_op_pushforward=use_op_pushforward)
    assert ours.type.dims == y.type.dims
    [node] = lazy_nodes([ours], LazyPushforward)
    assert node.op.use_op_pushforward is use_op_pushforward
    kwargs = {"use_op_pushforward": use_op_pushforward}
    if use_op_pushforward and cumulative:
        # Cumsum has no pushforward of its own: the reference fails at once,
        # ours (lazy) when the pushforward is compiled.
        with pytest.raises(NotImplementedError, match="pushforward not implemented for Cumsum"):
            gradient.pushforward(lower(y).values, xt, tangent.T, **kwargs)
        with pytest.raises(LazyPullbackExpansionError, match="pushforward not implemented for Cumsum"):
            pytensor.function([xt, tangent], ours)
        return
    reference = gradient.pushforward(lower(y).values, xt, tangent.T, **kwargs)
    assert_same_gradients(
        [ours.values], [reference], [xt, tangent], random_values([xt, tangent])
    )


def test_pushforward_several_outputs_keep_their_dims():
    xt, x, y = square_graph()
    z = y.sum("b")
    tangent = pt.matrix("t", shape=(3, 3))
    ours_y, ours_z = gradient.pushforward([y, z], [x], [px.as_xtensor(tangent, dims=("a", "b"))])
    assert ours_y.type.dims == ("a", "b") and ours_z.type.dims == ("a",)
    ref_y, ref_z = gradient.pushforward([lower(y).values, lower(z).values], [xt], [tangent])
    assert_same_gradients(
        [ours_y.values, ours_z.values], [ref_y, ref_z], [xt, tangent], random_values([xt, tangent])
    )


def test_pullback_cotangent_dims_by_name():
    xt, x, y = square_graph()
    cotangent = pt.matrix("c", shape=(3, 3))
    ours = gradient.pullback(y, x, px.as_xtensor(cotangent, dims=("b", "a")))
    assert ours.type.dims == x.type.dims
    reference = gradient.pullback(lower(y).values, xt, cotangent.T)
    assert_same_gradients([ours.values], [reference], [xt, cotangent], random_values([xt, cotangent]))


@pytest.mark.parametrize("use_op_pushforward", [False, True])
def test_pushforward_on_tensor_boundaries(use_op_pushforward):
    vec = pt.vector("v", shape=(6,))
    x = px.as_xtensor(vec.reshape((2, 3)), dims=("a", "b"))
    out = (pxm.exp(x) * x.sum("a")).values
    t = pt.vector("t", shape=(6,))
    ours = gradient.pushforward(out, vec, t, use_op_pushforward=use_op_pushforward)
    ref = gradient.pushforward(lower(out), vec, t, use_op_pushforward=False)
    assert_same_gradients([ours], [ref], [vec, t], random_values([vec, t]))


def test_pushforward_plain_tangent_for_labelled_input_is_a_type_error():
    _, x, y = square_graph()
    x.name = "x"
    with pytest.raises(TypeError, match=r"XTensorVariable x.*as_xtensor"):
        gradient.pushforward(y, x, pt.matrix("t", shape=(3, 3)))


def test_pushforward_tangent_with_other_dims_is_a_type_error():
    _, x, y = square_graph()
    x.name = "x"
    with pytest.raises(TypeError, match=r"dims \('a', 'c'\).*XTensorVariable x"):
        gradient.pushforward(y, x, px.xtensor("t", dims=("a", "c"), shape=(3, 3)))


def test_pushforward_of_plain_graphs_is_pytensors_own():
    xt = pt.vector("xt", shape=(3,))
    t = pt.vector("t", shape=(3,))
    got = gradient.pushforward((xt**2).sum(), xt, t).eval({xt: [1.0, 2.0, 3.0], t: [1.0, 0.5, 0.0]})
    np.testing.assert_allclose(got, 2 * 1.0 + 4 * 0.5)


def _jvp_by_central_differences(fn, x0, t0):
    """``J(x0) @ t0`` of a numpy function `fn` by central differences."""
    jac = central_differences(fn, x0)
    return np.tensordot(jac, t0, axes=t0.ndim)


SEVERAL_PATHS = {
    # wrt reaches the xtensor region directly and through ordinary tensor Ops.
    "exp": lambda w, x: pxm.sin(x) + px.as_xtensor(pt.exp(w), dims=("a",)),
    "slice": lambda w, x: pxm.sin(x) * px.as_xtensor(w[:1], dims=("k",)).sum("k"),
    "sum": lambda w, x: pxm.cos(x) * px.as_xtensor(w.sum() ** 2, dims=()),
    "new_dim": lambda w, x: (
        pxm.sin(x) * px.as_xtensor(pt.outer(w, w), dims=("a", "b"))
    ).sum("b"),
    # The region also reads a variable off the tangents' path: its tangent is
    # zero, not disconnected (a lowered Join would drop every tangent).
    "concat_off_path": lambda w, x: px.concat(
        [x, pxm.sin(px.as_xtensor(pt.exp(pt.arange(3.0)), dims=("a",)))], dim="a"
    ),
    "two_regions": lambda w, x: pxm.exp(
        px.as_xtensor(pt.tanh(pxm.sin(x).values) * w, dims=("a",))
    ) * x,
}


@pytest.mark.parametrize("use_op_pushforward", [False, True])
@pytest.mark.parametrize("labelled_wrt", [False, True])
@pytest.mark.parametrize("family", SEVERAL_PATHS)
def test_pushforward_where_wrt_reaches_a_region_by_several_paths(
    family, labelled_wrt, use_op_pushforward
):
    """Every path from wrt contributes: the plain-tensor program and finite differences agree."""
    t = pt.vector("t", shape=(3,))
    kwargs = {"use_op_pushforward": use_op_pushforward}
    if labelled_wrt:
        x = px.xtensor("x", dims=("a",), shape=(3,))
        y = SEVERAL_PATHS[family](x.values, x)
        ours = gradient.pushforward(y, x, px.as_xtensor(t, dims=("a",)), **kwargs).values
        inputs = [x, t]
    else:
        w = pt.vector("w", shape=(3,))
        x = px.as_xtensor(w, dims=("a",))
        y = SEVERAL_PATHS[family](w, x)
        ours = gradient.pushforward(y.values, w, t, **kwargs)
        inputs = [w, t]
    assert lazy_nodes([ours], LazyRegionOp)
    fn = pytensor.function(inputs[:1], lower(y).values, mode="FAST_COMPILE")
    w0, t0 = np.array([0.3, -0.7, 1.1]), np.array([1.0, -2.0, 0.5])
    got = pytensor.function(inputs, ours, mode="FAST_COMPILE")(w0, t0)
    np.testing.assert_allclose(got, _jvp_by_central_differences(fn, w0, t0), rtol=1e-6)
    if not labelled_wrt:
        # The plain-tensor program: PyTensor's own pushforward of the lowered graph.
        reference = gradient.pushforward(lower(y).values, w, t, **kwargs)
        assert_same_gradients([ours], [reference], [w, t], [w0, t0])


@pytest.mark.parametrize("use_op_pushforward", [False, True])
@pytest.mark.parametrize("stop", [gradient.zero_grad, gradient.disconnected_grad])
def test_pushforward_through_a_stopped_gradient_between_regions(stop, use_op_pushforward):
    w = pt.vector("w", shape=(3,))
    x = px.as_xtensor(w, dims=("a",))
    between = px.as_xtensor(stop(pxm.sin(x).values), dims=("a",))
    y = (pxm.exp(x) * between + pxm.cos(between)).values
    t = pt.vector("t", shape=(3,))
    ours = gradient.pushforward(y, w, t, use_op_pushforward=use_op_pushforward)
    reference = gradient.pushforward(lower(y), w, t, use_op_pushforward=False)
    values = [np.array([0.3, -0.7, 1.1]), np.array([1.0, -2.0, 0.5])]
    assert_same_gradients([ours], [reference], [w, t], values)


@pytest.mark.parametrize("use_op_pushforward", [False, True])
def test_pushforward_of_an_output_that_does_not_depend_on_wrt(use_op_pushforward):
    """PyTensor's return_disconnected: None, a DisconnectedType variable, or zeros."""
    x = px.xtensor("x", dims=("a",), shape=(3,))
    c = px.xtensor("c", dims=("a",), shape=(3,))
    t = px.xtensor("t", dims=("a",), shape=(3,))
    outputs = [pxm.sin(x) * 2, pxm.exp(c)]
    kwargs = {"disconnected_outputs": "ignore", "use_op_pushforward": use_op_pushforward}
    _, none = gradient.pushforward(outputs, x, t, return_disconnected="none", **kwargs)
    assert none is None
    _, disconnected = gradient.pushforward(
        outputs, x, t, return_disconnected="disconnected", **kwargs
    )
    assert isinstance(disconnected.type, gradient.DisconnectedType)
    _, zeros = gradient.pushforward(outputs, x, t, return_disconnected="zero", **kwargs)
    assert zeros.type.dims == ("a",)
    np.testing.assert_array_equal(zeros.eval({c: np.ones(3)}), np.zeros(3))
    with pytest.raises(gradient.DisconnectedInputError):
        gradient.pushforward(outputs, x, t, use_op_pushforward=use_op_pushforward)


@pytest.mark.parametrize("use_op_pushforward", [False, True])
def test_pushforward_of_a_wrt_variable_computed_from_another(use_op_pushforward):
    """A wrt variable computed from another keeps its own tangent, as in the reference."""
    w = pt.vector("w", shape=(3,))
    v = pt.exp(w)
    y = (pxm.sin(px.as_xtensor(v, dims=("a",))) * px.as_xtensor(w, dims=("a",))).values
    tw, tv = pt.vector("tw", shape=(3,)), pt.vector("tv", shape=(3,))
    kwargs = {"use_op_pushforward": use_op_pushforward}
    ours = gradient.pushforward([y, v], [w, v], [tw, tv], **kwargs)
    lowered_y, lowered_v = lower([y, v])
    reference = gradient.pushforward(
        [lowered_y, lowered_v], [w, lowered_v], [tw, tv], **kwargs
    )
    values = [np.array([0.3, -0.7, 1.1]), np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, -1.0])]
    assert_same_gradients(ours, reference, [w, tw, tv], values)


@pytest.mark.parametrize("use_op_pushforward", [False, True])
def test_pushforward_of_a_labelled_wrt_computed_from_another_by_a_conversion(
    use_op_pushforward,
):
    """Regression: through conversions and plain Ops only (a rename), the pullback-of-pullback
    form gave ``y = x.rename(a="d")`` the tangent of ``x`` added to its own;
    the wrt are independent variables, in both forms (and as in the
    reference: the direct walk, lower first)."""
    x = px.xtensor("x", dims=("a",), shape=(3,))
    y = x.rename(a="d")
    out = pt.sin(y.values)
    tx = px.xtensor("tx", dims=("a",), shape=(3,))
    ty = px.xtensor("ty", dims=("d",), shape=(3,))
    ours = gradient.pushforward(
        [y, out], [x, y], [tx, ty], use_op_pushforward=use_op_pushforward
    )
    values = [np.array([0.3, -0.7, 1.1]), np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, -1.0])]
    fn = pytensor.function([x, tx, ty], ours, mode=MODE, on_unused_input="ignore")
    got_y, got_out = fn(*values)
    np.testing.assert_allclose(got_y, values[2])
    np.testing.assert_allclose(got_out, np.cos(values[0]) * values[2])


def test_pushforward_needs_no_pushforward_of_an_op_whose_output_is_a_wrt():
    """Regression (the fuzzer): ``Cumprod`` has no ``pushforward``; with its result
    among ``wrt`` (its tangent given), ``use_op_pushforward=True`` raised while
    expanding the region, where the reference, with that ``wrt`` an input,
    never meets it."""
    t = pt.vector("t", shape=(3,))
    x = px.as_xtensor(t, dims=("b",))
    renamed, cumprod = x.rename(b="c"), x.cumprod("b")
    tt = pt.vector("tt", shape=(3,))
    tc = px.xtensor("tc", dims=("b",), shape=(3,))
    ours = gradient.pushforward(
        [renamed, cumprod], [cumprod, t], [tc, tt], use_op_pushforward=True
    )
    values = [np.array([0.3, -0.7, 1.1]), np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, -1.0])]
    fn = pytensor.function([t, tt, tc], ours, mode=MODE, on_unused_input="ignore")
    got_renamed, got_cumprod = fn(*values)
    np.testing.assert_array_equal(got_renamed, values[1])
    np.testing.assert_array_equal(got_cumprod, values[2])


@pytest.mark.parametrize("use_op_pushforward", [False, True])
def test_pushforward_of_a_region_that_outputs_its_input(use_op_pushforward):
    """Regression (the fuzzer): lowered, the region of ``x = as_xtensor(v)``,
    ``x.values`` and ``sin(x).values`` outputs its own input ``v``, an ancestor of
    its other output; PyTensor's pullback of a pullback, which takes its seeds
    as final, gave ``sin``'s output a zero tangent."""
    v = pt.scalar("v")
    x = px.as_xtensor(v, dims=())
    outs = [
        px.as_xtensor(pt.tanh(pxm.sin(x).values), dims=()),
        pxm.exp(0.1 * px.as_xtensor(pt.tanh(x.values), dims=())),
    ]
    tv = pt.scalar("tv")
    ours = gradient.pushforward(outs, v, tv, use_op_pushforward=use_op_pushforward)
    fn = pytensor.function([v, tv], ours, mode=MODE)
    value, tangent = 0.4, 1.7
    want = [
        (1 - np.tanh(np.sin(value)) ** 2) * np.cos(value) * tangent,
        np.exp(0.1 * np.tanh(value)) * 0.1 * (1 - np.tanh(value) ** 2) * tangent,
    ]
    got = fn(value, tangent)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # The reference, one output at a time (PyTensor's own pullback of a
    # pullback has the bug above), and finite differences.
    reference = [
        gradient.pushforward(out.values, v, tv, use_op_pushforward=use_op_pushforward)
        for out in lower(outs)
    ]
    np.testing.assert_allclose(
        got, pytensor.function([v, tv], reference, mode=MODE)(value, tangent), rtol=1e-12
    )
    forward = pytensor.function([v], [out.values for out in outs], mode=MODE)
    for j in range(len(outs)):
        jvp = _jvp_by_central_differences(
            lambda w: forward(w[0])[j], np.array([value]), np.array([tangent])
        )
        np.testing.assert_allclose(got[j], jvp, rtol=1e-6)


@pytest.mark.parametrize("use_op_pushforward", [False, True])
def test_pushforward_through_an_op_with_an_integer_input_off_the_path(use_op_pushforward):
    """Regression (the fuzzer): ``dot`` of an integer labelled vector with a function
    of ``wrt`` lowers to an ``Einsum``, whose own pushforward (an ``OpFromGraph``'s)
    requires each tangent typed like its input.  The integer input is off the
    tangents' path: its zero tangent must be integer, as PyTensor gives a leaf;
    a float zero made the expansion fail with a TypeError."""
    counts = pt.tensor("counts", shape=(2,), dtype="int64")
    n = px.as_xtensor(counts, dims=("d",))
    v = pt.matrix("v", shape=(3, 2))
    x = px.as_xtensor(v, dims=("a", "d"))
    y = px.dot(n, pxm.tanh(x), dim="d")
    tv = pt.matrix("tv", shape=(3, 2))
    ours = gradient.pushforward(
        y, x, px.as_xtensor(tv, dims=("a", "d")), use_op_pushforward=use_op_pushforward
    )
    fn = pytensor.function([counts, v, tv], ours.values, mode=MODE)
    counts_value = np.array([2, -3])
    values, tangent = random_values([v, tv])
    got = fn(counts_value, values, tangent)
    # The reference: PyTensor's pullback of a pullback of the lowered graph (its
    # use_op_pushforward=True stops at the conversions, which have no pushforward
    # in PyTensor 3.3), and finite differences.
    [lowered] = lower([y])
    reference = gradient.pushforward(lowered.values, v, tv, use_op_pushforward=False)
    want = pytensor.function([counts, v, tv], reference, mode=MODE)(
        counts_value, values, tangent
    )
    np.testing.assert_allclose(got, want, rtol=1e-12)
    forward = pytensor.function([counts, v], y.values, mode=MODE)
    jvp = _jvp_by_central_differences(
        lambda w: forward(counts_value, w.reshape(3, 2)), values.ravel(), tangent.ravel()
    )
    np.testing.assert_allclose(got, jvp, rtol=1e-6)
