"""Jacobians of labelled expressions, lazily.

``pytensor.gradient.jacobian`` / ``pt.jacobian`` accept a labelled expression:
the reference is PyTensor's own jacobian of the lowered expression's values
(with the integration off) with respect to plain tensor leaves, plus central
finite differences.  The jacobian of a gradient is in test_hessian.py.
"""

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
import pytest
from pytensor.compile.mode import Mode, get_mode
from pytensor.graph.basic import equal_computations
from pytensor.graph.traversal import applys_between, graph_inputs
from pytensor.scan.op import Scan
from pytensor.tensor.basic import Split
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.einsum import Einsum
from pytensor.tensor.elemwise import CAReduce
from pytensor.tensor.type import TensorType
from pytensor.xtensor.type import XTensorType

from pytensor_lazy_pullback import LazyPullback, integration_disabled
from helpers import (
    COUNT_MODE,
    MODE,
    TRANSFORM_FAMILIES,
    W_IA,
    all_nodes,
    assert_lazy,
    assert_same_gradients,
    central_differences,
    check_batched_graph,
    check_compiled_graph,
    compile_values,
    lower,
    random_values,
    reference_grad,
    reference_transform,
    vector_fn,
    weighted_cost,
)

JACOBIANS = {"gradient.jacobian": lambda: gradient.jacobian, "pt.jacobian": lambda: pt.jacobian}
VECTORIZE = [False, True]

# Fixed, non-uniform constants (distinct sizes per dim: a transposition cannot go unnoticed).
W_KB = np.linspace(0.2, 1.1, 10).reshape(2, 5)  # dims ("k", "b")


def tensor_reductions(outputs):
    return [n for n in all_nodes(outputs) if isinstance(n.op, CAReduce)]


def reference_jacobian(expression, wrt, vectorize):
    """PyTensor's own jacobian of the lowered expression's values (integration off)."""
    return reference_transform(
        lambda lowered: gradient.jacobian(lowered, wrt, vectorize=vectorize), expression.values
    )


# ---------------------------------------------------------------------------
# Labelled functions used by the jacobian tests (and `helpers.vector_fn`)
# ---------------------------------------------------------------------------


def matrix_fn(x):
    """dims ("a", "b") (3, 5) -> dims ("i", "k") (4, 2)."""
    left = pxm.tanh(x * px.as_xtensor(W_IA, dims=("i", "a"))).sum("a")  # ("i", "b")
    right = px.as_xtensor(W_KB, dims=("k", "b"))
    return px.dot(left * x.sum("a"), right, dim="b") + pxm.exp(x.sum(("a", "b")) * 0.1)


def transposed_fn(x):
    """dims ("a", "b") (3, 5) -> dims ("k", "i") (5, 3): the output's dims are its input's, reversed."""
    y = (pxm.exp(x * 0.4) * x.sum("b") + x**2).transpose("b", "a")
    return y.rename(a="i", b="k")


# ---------------------------------------------------------------------------
# jacobian
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("vectorize", VECTORIZE)
@pytest.mark.parametrize("which", list(JACOBIANS))
def test_jacobian_vector_output_wrt_tensor(which, vectorize):
    jacobian = JACOBIANS[which]()
    t = pt.tensor("t", shape=(3,))
    y = vector_fn(px.as_xtensor(t, dims=("a",)))
    assert y.type.dims == ("i",)
    ours = jacobian(y, t, vectorize=vectorize)
    assert isinstance(ours.type, TensorType)
    # Fully static, where PyTensor's Scan-based jacobian of the lowered values
    # loses the number of rows (shape (None, 3)): compare values only.
    assert ours.type.shape == (4, 3)
    reference = reference_jacobian(y, t, vectorize)
    assert ours.type.dtype == reference.type.dtype
    [value] = random_values([t])
    got, want = compile_values([t], [ours, reference], [value])
    np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("vectorize", VECTORIZE)
@pytest.mark.parametrize("which", list(JACOBIANS))
def test_jacobian_vector_output_wrt_labelled(which, vectorize):
    jacobian = JACOBIANS[which]()
    # Through a conversion of a plain tensor, so the reference can differentiate w.r.t. ``t``.
    t = pt.tensor("t", shape=(3,))
    x_t = px.as_xtensor(t, dims=("a",))
    ours_t = jacobian(vector_fn(x_t), x_t, vectorize=vectorize)
    assert isinstance(ours_t.type, XTensorType)
    assert ours_t.type.dims == ("i", "a") and ours_t.type.shape == (4, 3)
    reference = reference_jacobian(vector_fn(x_t), t, vectorize)
    [value] = random_values([t])
    want = compile_values([t], [reference], [value])[0]
    np.testing.assert_allclose(compile_values([t], [ours_t.values], [value])[0], want, rtol=1e-10)

    # And w.r.t. a genuine labelled leaf: the same function built again on it.
    x = px.xtensor("x", dims=("a",), shape=(3,))
    ours = jacobian(vector_fn(x), x, vectorize=vectorize)
    assert ours.type.dims == ("i", "a") and ours.type.shape == (4, 3)
    np.testing.assert_allclose(compile_values([x], [ours], [value])[0], want, rtol=1e-10)

    # Central finite differences of the forward function.
    forward = pytensor.function([t], vector_fn(x_t).values, mode=MODE)
    np.testing.assert_allclose(want, central_differences(forward, value), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("vectorize", VECTORIZE)
def test_jacobian_matrix_output_wrt_labelled_leaf(vectorize):
    t = pt.tensor("t", shape=(3, 5))
    x_t = px.as_xtensor(t, dims=("a", "b"))
    y_t = matrix_fn(x_t)
    assert y_t.type.dims == ("i", "k") and y_t.type.shape == (4, 2)

    ours_t = gradient.jacobian(y_t, x_t, vectorize=vectorize)
    assert ours_t.type.dims == ("i", "k", "a", "b")
    assert ours_t.type.shape == (4, 2, 3, 5)
    reference = reference_jacobian(y_t, t, vectorize)
    assert_same_gradients([ours_t.values], [reference], [t], random_values([t]))

    # Plain tensor wrt: a tensor of shape (*expression.shape, *wrt.shape).
    ours_plain = gradient.jacobian(y_t, t, vectorize=vectorize)
    assert_same_gradients([ours_plain], [reference], [t], random_values([t]))

    # A genuine labelled leaf whose dims are in the other order: the Jacobian
    # follows the leaf's dims, so it is the reference transposed on its last two axes.
    x = px.xtensor("x", dims=("b", "a"), shape=(5, 3))
    ours = gradient.jacobian(matrix_fn(x.transpose("a", "b")), x, vectorize=vectorize)
    assert ours.type.dims == ("i", "k", "b", "a")
    assert ours.type.shape == (4, 2, 5, 3)
    [value] = random_values([t])
    want = compile_values([t], [reference], [value])[0]
    got = compile_values([x], [ours], [value.T.copy()])[0]
    np.testing.assert_allclose(got, want.transpose(0, 1, 3, 2), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("vectorize", VECTORIZE)
def test_jacobian_output_dims_order_differs_from_input(vectorize):
    t = pt.tensor("t", shape=(3, 5))
    x_t = px.as_xtensor(t, dims=("a", "b"))
    y_t = transposed_fn(x_t)
    assert y_t.type.dims == ("k", "i") and y_t.type.shape == (5, 3)
    reference = reference_jacobian(y_t, t, vectorize)

    ours_t = pt.jacobian(y_t, x_t, vectorize=vectorize)
    assert ours_t.type.dims == ("k", "i", "a", "b") and ours_t.type.shape == (5, 3, 3, 5)
    ours_plain = pt.jacobian(y_t, t, vectorize=vectorize)
    assert ours_plain.type.shape == (5, 3, 3, 5)
    assert_same_gradients([ours_t.values, ours_plain], [reference, reference], [t], random_values([t]))

    [value] = random_values([t])
    want = compile_values([t], [reference], [value])[0]
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 5))
    ours = pt.jacobian(transposed_fn(x), x, vectorize=vectorize)
    assert ours.type.dims == ("k", "i", "a", "b")
    np.testing.assert_allclose(compile_values([x], [ours], [value])[0], want, rtol=1e-10)

    # Finite differences: J[k, i, a, b] = d y[k, i] / d x[a, b].
    forward = pytensor.function([t], y_t.values, mode=MODE)
    np.testing.assert_allclose(want, central_differences(forward, value), rtol=1e-6, atol=1e-8)
    # The structure of this function is known: y[k, i] = exp(.4 x[i,k]) * sum_b x[i,b] + x[i,k]^2,
    # so d y[k, i] / d x[a, b] vanishes unless a == i.
    for i in range(3):
        for a in range(3):
            if a != i:
                assert not want[:, i, a, :].any()


@pytest.mark.parametrize("vectorize", VECTORIZE)
def test_jacobian_of_zero_dim_labelled_expression_is_the_gradient(vectorize):
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 5))
    t = pt.tensor("t", shape=(4,))
    expression = (matrix_fn(x) * px.as_xtensor(t, dims=("i",))).sum()
    assert expression.type.ndim == 0
    ours_x, ours_t = gradient.jacobian(expression, [x, t], vectorize=vectorize)
    assert ours_x.type.dims == ("a", "b") and ours_t.type.shape == (4,)
    reference = reference_grad(expression.values, [x, t])
    assert_same_gradients([ours_x, ours_t], reference, [x, t], random_values([x, t]))


@pytest.mark.parametrize("vectorize", VECTORIZE)
def test_jacobian_consider_constant(vectorize):
    x = px.xtensor("x", dims=("a",), shape=(3,))
    z = pxm.exp(x)
    y = (z * x).rename(a="i")
    free = gradient.jacobian(y, x, vectorize=vectorize)
    held = gradient.jacobian(y, x, consider_constant=[z], vectorize=vectorize)
    assert free.type.dims == held.type.dims == ("i", "a")
    [value] = random_values([x])
    got_free, got_held = compile_values([x], [free, held], [value])
    np.testing.assert_allclose(got_free, np.diag(np.exp(value) * (1 + value)), rtol=1e-12)
    np.testing.assert_allclose(got_held, np.diag(np.exp(value)), rtol=1e-12)


@pytest.mark.parametrize("vectorize", VECTORIZE)
def test_jacobian_disconnected_ignore_gives_zeros_of_the_right_shape(vectorize):
    x = px.xtensor("x", dims=("a",), shape=(3,))
    z = px.xtensor("z", dims=("c",), shape=(2,))
    u = pt.tensor("u", shape=(5,))
    y = vector_fn(x)
    j_x, j_z, j_u = gradient.jacobian(
        y, [x, z, u], disconnected_inputs="ignore", vectorize=vectorize
    )
    assert j_x.type.dims == ("i", "a")
    assert isinstance(j_z.type, XTensorType) and j_z.type.dims == ("i", "c")
    assert isinstance(j_u.type, TensorType)
    got_x, got_z, got_u = compile_values([x, z, u], [j_x, j_z, j_u], random_values([x, z, u]))
    assert got_z.shape == (4, 2) and not got_z.any()
    assert got_u.shape == (4, 5) and not got_u.any()
    assert got_x.shape == (4, 3) and got_x.any()


@pytest.mark.parametrize("vectorize", VECTORIZE)
def test_jacobian_disconnected_raise_is_pytensors_error(vectorize):
    # PyTensor's own error on the lowered graph, for the exception type.
    t = pt.tensor("t", shape=(3,))
    u = pt.tensor("u", shape=(5,))
    lowered = lower(vector_fn(px.as_xtensor(t, dims=("a",))).values)
    with integration_disabled():
        with pytest.raises(gradient.DisconnectedInputError) as theirs:
            gradient.jacobian(lowered, [t, u], vectorize=vectorize)

    x = px.xtensor("x", dims=("a",), shape=(3,))
    z = px.xtensor("z", dims=("c",), shape=(2,))
    for wrt in ([x, z], [x, u]):
        with pytest.raises(gradient.DisconnectedInputError) as ours:
            gradient.jacobian(vector_fn(x), wrt, vectorize=vectorize)
        assert type(ours.value) is type(theirs.value)


@pytest.mark.parametrize("vectorize", VECTORIZE)
def test_jacobian_dim_collision_is_a_value_error(vectorize):
    x = px.xtensor("x_in", dims=("a", "b"), shape=(3, 5))
    y = transposed_fn(x).rename(i="a")  # dims ("k", "a"): shares "a" with x
    y.name = "y_out"
    with pytest.raises(ValueError, match=r"rename") as err:
        pt.jacobian(y, x, vectorize=vectorize)
    message = str(err.value)
    assert "x_in" in message and "y_out" in message and "'a'" in message
    # A collision with one of several wrt is caught too; renaming resolves it.
    with pytest.raises(ValueError, match=r"rename"):
        gradient.jacobian(y, [pt.tensor("t", shape=(2,)), x], vectorize=vectorize)
    ok = gradient.jacobian(y.rename(a="i"), x, vectorize=vectorize)
    assert ok.type.dims == ("k", "i", "a", "b")


@pytest.mark.parametrize("vectorize", VECTORIZE)
@pytest.mark.parametrize("which", list(JACOBIANS))
def test_plain_expression_goes_to_pytensors_jacobian(which, vectorize):
    t = pt.tensor("t", shape=(3,))
    expression = pt.sin(t[:, None] * W_IA.T).sum(0) * pt.exp(t).sum()
    ours = JACOBIANS[which]()(expression, t, vectorize=vectorize)
    with integration_disabled():
        theirs = JACOBIANS[which]()(expression, t, vectorize=vectorize)
    assert equal_computations([ours], [theirs])
    assert_same_gradients([ours], [theirs], [t], random_values([t]))
    # A plain expression computed through labelled Ops (``.values``) also goes to
    # PyTensor's jacobian, whose grad is lazy.
    y = vector_fn(px.as_xtensor(t, dims=("a",))).values
    ours = JACOBIANS[which]()(y, t, vectorize=vectorize)
    assert isinstance(ours.type, TensorType)
    reference = reference_jacobian(vector_fn(px.as_xtensor(t, dims=("a",))), t, vectorize)
    assert_same_gradients([ours], [reference], [t], random_values([t]))


@pytest.mark.parametrize("vectorize", [True, False])
def test_jacobian_of_labelled_function_values(vectorize):
    vec = pt.vector("v", shape=(4,))
    x = px.as_xtensor(vec, dims=("a",))
    out = (pxm.tanh(x) * x.cumsum("a")).values
    jac = gradient.jacobian(out, vec, vectorize=vectorize)
    jac_ref = gradient.jacobian(lower(out), vec, vectorize=vectorize)
    assert_same_gradients([jac], [jac_ref], [vec], random_values([vec]))


# ---------------------------------------------------------------------------
# Laziness
# ---------------------------------------------------------------------------


def test_grad_graph_is_lazy_before_compilation():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 5))
    cost = weighted_cost(matrix_fn(x))
    [g] = pt.grad(cost, [x])
    assert_lazy([g])
    assert not tensor_reductions([g])
    # The compiled function has none left (and computes the reference).
    assert_same_gradients([g], reference_grad(cost, [x]), [x], random_values([x]))
    fn = pytensor.function([x], g, mode=MODE)
    assert not [n for n in fn.maker.fgraph.apply_nodes if isinstance(n.op, LazyPullback)]


def test_jacobian_by_scan_is_lazy_before_compilation():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 5))
    jac = gradient.jacobian(matrix_fn(x), x, vectorize=False)
    scans = [n for n in all_nodes([jac]) if isinstance(n.op, Scan)]
    assert scans, "vectorize=False builds a Scan over rows"
    inner = [n for n in all_nodes([jac]) if isinstance(n.op, LazyPullback)]
    assert inner, "the Scan's inner graph holds the LazyPullback"
    assert not tensor_reductions([jac])


# ---------------------------------------------------------------------------
# jacobian(vectorize=True) compiles to the reference's graph.
#
# Ours batches the expansion of each `LazyPullback` over the rows of an
# identity (``vectorize_expansion``); only the cotangents are batched there, so
# the forward pass that the expansion recomputes must stay unbatched, as in the
# reference: no ``Blockwise`` of the forward ``Einsum`` (which, batched, is no
# longer inlined into a ``Dot``) or of the forward ``Split`` of a ``concat``.
# Counted in compiled apply nodes, inner graphs included.

GRAPH_MODES = {
    "fast_run": COUNT_MODE,
    # The C backend's rewrites (CVM), still with the Python linker: only counted.
    "cvm": Mode(linker="py", optimizer=get_mode("CVM").optimizer),
}


def vectorized_jacobian(family):
    """``(inputs, ours, reference, out)``: the Jacobian of the family's output w.r.t. its weights.

    The weights are the last input.
    """
    inputs, w, out = TRANSFORM_FAMILIES[family]()
    assert inputs[-1] is w
    ours = gradient.jacobian(out, w, vectorize=True)
    with integration_disabled():
        reference = gradient.jacobian(lower(out), w, vectorize=True)
    return inputs, ours, reference, out


@pytest.mark.parametrize("mode", list(GRAPH_MODES))
@pytest.mark.parametrize("family", list(TRANSFORM_FAMILIES))
def test_vectorized_jacobian_compiled_graph(family, mode):
    inputs, ours, reference, _ = vectorized_jacobian(family)
    ours_fn = pytensor.function(inputs, ours, mode=GRAPH_MODES[mode])
    ref_fn = pytensor.function(inputs, reference, mode=GRAPH_MODES[mode])
    check_compiled_graph(ours_fn, ref_fn)
    ours_nodes = all_nodes(ours_fn.maker.fgraph.outputs)
    ref_nodes = all_nodes(ref_fn.maker.fgraph.outputs)
    # The forward pass is not batched: an Einsum is inlined (a Dot), a Split is not in a Blockwise.
    assert not any(isinstance(n.op, Einsum) for n in ours_nodes)
    assert not any(
        isinstance(n.op, Blockwise) and isinstance(n.op.core_op, Split) for n in ours_nodes
    )
    check_batched_graph(ours_nodes, ref_nodes)


@pytest.mark.parametrize("family", list(TRANSFORM_FAMILIES))
def test_vectorized_jacobian_batches_no_forward_op(family):
    """Before any rewrite: no batched forward Op (and no more batched nodes than the reference)."""
    _, ours, reference, _ = vectorized_jacobian(family)
    ours_nodes = applys_between(list(graph_inputs([ours])), [ours])
    ref_nodes = applys_between(list(graph_inputs([reference])), [reference])
    check_batched_graph(ours_nodes, ref_nodes)


@pytest.mark.parametrize("family", list(TRANSFORM_FAMILIES))
def test_vectorized_jacobian_values(family):
    inputs, ours, reference, out = vectorized_jacobian(family)
    assert ours.type.shape == reference.type.shape
    assert ours.type.dtype == reference.type.dtype
    rng = np.random.default_rng(0)
    values = [rng.uniform(-0.9, 0.9, size=i.type.shape) for i in inputs]
    got = pytensor.function(inputs, ours, mode=COUNT_MODE)(*values)
    want = pytensor.function(inputs, reference, mode=COUNT_MODE)(*values)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # And central differences of the forward pass, column by column.
    forward = pytensor.function(inputs, out, mode=COUNT_MODE)
    *fixed, w0 = values
    eps = 1e-6
    columns = [
        (forward(*fixed, w0 + eps * e) - forward(*fixed, w0 - eps * e)) / (2 * eps)
        for e in np.eye(w0.size)
    ]
    np.testing.assert_allclose(got, np.stack(columns, axis=-1), rtol=1e-6, atol=1e-8)
