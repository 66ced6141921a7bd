"""Jacobians of labelled expressions and ``vectorize_graph`` of lazy gradients.

* ``pytensor.gradient.jacobian`` / ``pt.jacobian`` accept a labelled expression:
  the reference is PyTensor's own jacobian of the lowered expression's values
  (with the integration off) with respect to plain tensor leaves, plus central
  finite differences.
* ``vectorize_graph`` (``pytensor.graph.replace`` and ``pytensor.xtensor``
  flavours) batches gradient graphs that hold `LazyPullback` nodes: the ground
  truth for per-example gradients is a Python loop over the batch calling the
  un-vectorized compiled gradient; the reference gradient vectorized the same
  way is checked where PyTensor can vectorize it.
"""

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
import pytest
from pytensor.graph.basic import equal_computations
from pytensor.graph.replace import vectorize_graph as replace_vectorize_graph
from pytensor.graph.traversal import applys_between, graph_inputs
from pytensor.scan.op import Scan
from pytensor.tensor.elemwise import CAReduce
from pytensor.tensor.type import TensorType
from pytensor.xtensor.type import XTensorType

import pytensor_lazy_pullback as plp
from pytensor_lazy_pullback import LazyPullback, integration_disabled

# The add-on rebinds ``pytensor.xtensor.vectorization.vectorize_graph``: always
# look it up as a module attribute, after importing the add-on.
import pytensor.xtensor.vectorization as xvec
from helpers import (
    assert_graph_unchanged,
    graph_snapshot,
    MODE,
    assert_lazy,
    assert_same_gradients,
    compile_values,
    lazy_nodes,
    lower,
    reference_grad,
    weighted_cost,
)

JACOBIANS = {"gradient.jacobian": lambda: gradient.jacobian, "pt.jacobian": lambda: pt.jacobian}
VECTORIZE = [False, True]

# Fixed, non-uniform constants (distinct sizes per dim: a transposition cannot go unnoticed).
W_IA = np.linspace(-0.8, 0.9, 12).reshape(4, 3)  # dims ("i", "a")
W_A = np.array([0.3, -0.5, 0.9])  # dims ("a",)
W_KB = np.linspace(0.2, 1.1, 10).reshape(2, 5)  # dims ("k", "b")


def values_of(inputs, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.5, 1.5, size=inp.type.shape).astype(inp.type.dtype) for inp in inputs]


def all_nodes(outputs):
    """Every apply node of a graph, also inside inner graphs (Scan, OpFromGraph, ...)."""
    found = []
    stack = list(applys_between(list(graph_inputs(outputs)), list(outputs)))
    while stack:
        node = stack.pop()
        found.append(node)
        inner_outputs = getattr(node.op, "inner_outputs", None)
        if inner_outputs is not None and not isinstance(node.op, LazyPullback):
            inner_inputs = node.op.inner_inputs
            stack.extend(applys_between(inner_inputs, inner_outputs))
    return found


def tensor_reductions(outputs):
    return [n for n in all_nodes(outputs) if isinstance(n.op, CAReduce)]


def reference_jacobian(expression, wrt, vectorize):
    """PyTensor's own jacobian of the lowered expression's values (integration off)."""
    lowered = lower(expression.values)
    with integration_disabled():
        return gradient.jacobian(lowered, wrt, vectorize=vectorize)


def central_differences(fn, x0, eps=1e-6):
    """Numerical jacobian of ``fn`` at ``x0``: shape ``(*fn(x0).shape, *x0.shape)``."""
    y0 = np.asarray(fn(x0))
    jac = np.empty(y0.shape + x0.shape)
    for idx in np.ndindex(*x0.shape):
        step = np.zeros_like(x0)
        step[idx] = eps
        jac[(Ellipsis, *idx)] = (np.asarray(fn(x0 + step)) - np.asarray(fn(x0 - step))) / (2 * eps)
    return jac


# ---------------------------------------------------------------------------
# Labelled functions used by the jacobian tests
# ---------------------------------------------------------------------------


def vector_fn(x):
    """dims ("a",) -> dims ("i",), size 3 -> 4."""
    return pxm.sin(x * px.as_xtensor(W_IA, dims=("i", "a"))).sum("a") * pxm.exp(x * 0.3).sum("a")


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
    [value] = values_of([t])
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
    [value] = values_of([t])
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
    assert_same_gradients([ours_t.values], [reference], [t], values_of([t]))

    # Plain tensor wrt: a tensor of shape (*expression.shape, *wrt.shape).
    ours_plain = gradient.jacobian(y_t, t, vectorize=vectorize)
    assert_same_gradients([ours_plain], [reference], [t], values_of([t]))

    # A genuine labelled leaf whose dims are in the other order: the Jacobian
    # follows the leaf's dims, so it is the reference transposed on its last two axes.
    x = px.xtensor("x", dims=("b", "a"), shape=(5, 3))
    ours = gradient.jacobian(matrix_fn(x.transpose("a", "b")), x, vectorize=vectorize)
    assert ours.type.dims == ("i", "k", "b", "a")
    assert ours.type.shape == (4, 2, 5, 3)
    [value] = values_of([t])
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
    assert_same_gradients([ours_t.values, ours_plain], [reference, reference], [t], values_of([t]))

    [value] = values_of([t])
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
    assert_same_gradients([ours_x, ours_t], reference, [x, t], values_of([x, t]))


@pytest.mark.parametrize("vectorize", VECTORIZE)
def test_jacobian_consider_constant(vectorize):
    x = px.xtensor("x", dims=("a",), shape=(3,))
    z = pxm.exp(x)
    y = (z * x).rename(a="i")
    free = gradient.jacobian(y, x, vectorize=vectorize)
    held = gradient.jacobian(y, x, consider_constant=[z], vectorize=vectorize)
    assert free.type.dims == held.type.dims == ("i", "a")
    [value] = values_of([x])
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
    got_x, got_z, got_u = compile_values([x, z, u], [j_x, j_z, j_u], values_of([x, z, u]))
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
    assert_same_gradients([ours], [theirs], [t], values_of([t]))
    # A plain expression computed through labelled Ops (``.values``) also goes to
    # PyTensor's jacobian, whose grad is lazy.
    y = vector_fn(px.as_xtensor(t, dims=("a",))).values
    ours = JACOBIANS[which]()(y, t, vectorize=vectorize)
    assert isinstance(ours.type, TensorType)
    reference = reference_jacobian(vector_fn(px.as_xtensor(t, dims=("a",))), t, vectorize)
    assert_same_gradients([ours], [reference], [t], values_of([t]))


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
    assert_same_gradients([g], reference_grad(cost, [x]), [x], values_of([x]))
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
# vectorize_graph of lazy gradients
# ---------------------------------------------------------------------------


def per_example(fn, *batched_and_fixed):
    """Loop over the leading axis of the arrays marked batched: ``[(array, batched?), ...]``."""
    n = next(len(a) for a, b in batched_and_fixed if b)
    rows = [fn(*[a[k] if b else a for a, b in batched_and_fixed]) for k in range(n)]
    return [np.stack(col) for col in zip(*rows, strict=True)]


def assert_matches_loop(single, loop_args, batched_inputs, batched_outputs, batched_values):
    """The batched outputs equal a Python loop of the unbatched graph over the batch.

    `single` is ``(inputs, outputs)`` of the unbatched graph and `loop_args` its
    arguments for `per_example`.  Returns the batched values.
    """
    loop = per_example(pytensor.function(*single, mode=MODE), *loop_args)
    got = compile_values(batched_inputs, batched_outputs, batched_values)
    for value, want in zip(got, loop, strict=True):
        np.testing.assert_allclose(value, want, rtol=1e-12)
    return got


def cost_of(x):
    """A scalar (tensor) cost of a labelled ("a",) variable of size 3."""
    w = px.as_xtensor(W_A, dims=("a",))
    return (pxm.sin(x * w) * pxm.exp(x.sum("a") * 0.2) + x**3).sum().values


FLAVOURS = ["xtensor", "replace"]


def vectorize(flavour, outputs, replace, new_tensor_dims=()):
    if flavour == "xtensor":
        return xvec.vectorize_graph(outputs, replace, new_tensor_dims=list(new_tensor_dims))
    return replace_vectorize_graph(outputs, replace)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_batched_labelled_wrt_gives_per_example_gradients(flavour, batch_first):
    x = px.xtensor("x", dims=("a",), shape=(3,))
    [g] = pt.grad(cost_of(x), [x])
    assert_lazy([g])
    if batch_first:
        xb = px.xtensor("xb", dims=("b", "a"), shape=(2, 3))
    else:
        xb = px.xtensor("xb", dims=("a", "b"), shape=(3, 2))
    [gb] = vectorize(flavour, [g], {x: xb})
    # The new dim comes first, wherever it is in the batched input.
    assert gb.type.dims == ("b", "a") and gb.type.shape == (2, 3)

    [xb_value] = values_of([xb])
    loop_value = xb_value if batch_first else xb_value.T.copy()
    assert_matches_loop(([x], [g]), [(loop_value, True)], [xb], [gb], [xb_value])
    # The reference vectorized by the xtensor vectorizer (PyTensor's
    # graph.replace one cannot name the new dim of the reference).
    [ref] = reference_grad(cost_of(x), [x])
    assert_same_gradients([gb], xvec.vectorize_graph([ref], {x: xb}), [xb], [xb_value])


def test_batched_plain_leaf_gives_per_example_gradients_xtensor_flavour():
    t = pt.tensor("t", shape=(3,))
    x = px.as_xtensor(t, dims=("a",))
    g_t, g_x = pt.grad(cost_of(x), [t, x])
    tb = pt.tensor("tb", shape=(2, 3))
    gb_t, gb_x = xvec.vectorize_graph([g_t, g_x], {t: tb}, new_tensor_dims=["b"])
    assert isinstance(gb_t.type, TensorType) and gb_t.type.shape == (2, 3)
    assert gb_x.type.dims == ("b", "a") and gb_x.type.shape == (2, 3)

    [tb_value] = values_of([tb])
    assert_matches_loop(([t], [g_t, g_x]), [(tb_value, True)], [tb], [gb_t, gb_x], [tb_value])

    refs = reference_grad(cost_of(x), [t, x])
    assert_same_gradients(
        [gb_t, gb_x],
        xvec.vectorize_graph(refs, {t: tb}, new_tensor_dims=["b"]),
        [tb],
        [tb_value],
    )


def zero_dim_labelled_cost(t, w):
    """A 0-d labelled cost (its seed is a constant: no forward graph in the gradient)."""
    x = px.as_xtensor(t, dims=("a",))
    return (pxm.tanh(x * w) * pxm.exp(x.sum("a") * 0.3)).sum()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_batched_plain_leaf_only(flavour):
    t = pt.tensor("t", shape=(3,))
    w = px.xtensor("w", dims=("c", "a"), shape=(2, 3))
    cost = zero_dim_labelled_cost(t, w)
    assert isinstance(cost.type, XTensorType) and cost.type.ndim == 0
    g_t, g_w = pt.grad(cost, [t, w])
    assert_lazy([g_t, g_w])
    tb = pt.tensor("tb", shape=(2, 3))
    gb_t, gb_w = vectorize(flavour, [g_t, g_w], {t: tb}, new_tensor_dims=["b"])
    assert isinstance(gb_t.type, TensorType) and gb_t.type.shape == (2, 3)
    if flavour == "xtensor":
        assert gb_w.type.dims == ("b", "c", "a")
    else:
        # Documented: only plain tensors are batched, so the new dim has no
        # name (PyTensor's own vectorization raises NotImplementedError here).
        assert gb_w.type.dims == ("__unnamed_batch_dim_0__", "c", "a")
    assert gb_w.type.shape == (2, 2, 3)

    tb_value, w_value = values_of([tb, w])
    loop_t, loop_w = per_example(
        pytensor.function([t, w], [g_t, g_w], mode=MODE), (tb_value, True), (w_value, False)
    )
    got_t, got_w, got_values = compile_values(
        [tb, w], [gb_t, gb_w, gb_w.values], [tb_value, w_value]
    )
    np.testing.assert_allclose(got_t, loop_t, rtol=1e-12)
    np.testing.assert_allclose(got_w, loop_w, rtol=1e-12)
    # As a tensor, the labelled result has an ordinary leading batch axis.
    assert got_values.shape == (2, 2, 3)
    np.testing.assert_allclose(got_values, loop_w, rtol=1e-12)
    assert not np.allclose(got_w[0], got_w[1])

    # References: the plain gradient vectorized the same way, the labelled one
    # by the xtensor vectorizer (PyTensor's graph.replace one cannot name its dim).
    ref_t, ref_w = reference_grad(cost, [t, w])
    [ref_tb] = vectorize(flavour, [ref_t], {t: tb}, new_tensor_dims=["b"])
    assert_same_gradients([gb_t], [ref_tb], [tb, w], [tb_value, w_value])
    if flavour == "replace":
        # The conversion names the new dim (PyTensor 3.3's own raises, see
        # test_pytensor_33_conversion_names_no_new_dim): the same unnamed dim as ours.
        [ref_wb] = replace_vectorize_graph([ref_w], {t: tb})
        assert ref_wb.type.dims == gb_w.type.dims
    [ref_wb] = xvec.vectorize_graph([ref_w], {t: tb}, new_tensor_dims=["b"])
    np.testing.assert_allclose(
        got_w, compile_values([tb, w], [ref_wb], [tb_value, w_value])[0], rtol=1e-12
    )


def test_replace_flavour_names_plain_batch_axes_like_the_labelled_ones():
    # A labelled leaf batched along "b" and a plain leaf batched positionally:
    # the plain leaf's batch axis is the same new dim "b".
    x = px.xtensor("x", dims=("a",), shape=(3,))
    t = pt.tensor("t", shape=(2,))
    cost = zero_dim_labelled_cost(x.values, px.as_xtensor(t, dims=("c",)))
    g_x, g_t = pt.grad(cost, [x, t])
    assert_lazy([g_x, g_t])
    xb = px.xtensor("xb", dims=("b", "a"), shape=(4, 3))
    tb = pt.tensor("tb", shape=(4, 2))
    gb_x, gb_t = replace_vectorize_graph([g_x, g_t], {x: xb, t: tb})
    assert gb_x.type.dims == ("b", "a") and gb_x.type.shape == (4, 3)
    assert gb_t.type.shape == (4, 2)

    xb_value, tb_value = values_of([xb, tb])
    assert_matches_loop(
        ([x, t], [g_x, g_t]), [(xb_value, True), (tb_value, True)],
        [xb, tb], [gb_x, gb_t], [xb_value, tb_value],
    )


def test_pytensor_33_conversion_names_no_new_dim():
    """What the add-on changes: PyTensor 3.3's own ``XTensorFromTensor`` cannot name
    the new dim ``pytensor.graph.replace.vectorize_graph`` adds, and raises."""
    t = pt.tensor("t", shape=(3,))
    x = px.as_xtensor(t, dims=("a",))
    tb = pt.tensor("tb", shape=(2, 3))
    [ref] = reference_grad(cost_of(x), [x])
    assert plp.is_enabled()
    with integration_disabled(), pytest.raises(NotImplementedError):
        replace_vectorize_graph([ref], {t: tb})


def test_replace_flavour_with_a_converted_batched_tensor_in_the_forward_graph():
    """A wrt that is ``as_xtensor(t)``: PyTensor's own vectorization cannot name the
    new dim of the conversion (the reference raises); with the add-on it is unnamed,
    for ours and the reference alike, and the values are the per-example ones."""
    t = pt.tensor("t", shape=(3,))
    x = px.as_xtensor(t, dims=("a",))
    tb = pt.tensor("tb", shape=(2, 3))
    [g] = pt.grad(cost_of(x), [x])
    [ref] = reference_grad(cost_of(x), [x])
    [gb] = replace_vectorize_graph([g], {t: tb})
    [refb] = replace_vectorize_graph([ref], {t: tb})
    assert gb.type.dims == refb.type.dims == ("__unnamed_batch_dim_0__", "a")
    [tb_value] = values_of([tb])
    got, want = compile_values([tb], [gb, refb], [tb_value])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    single = pytensor.function([t], g, mode=MODE)
    np.testing.assert_allclose(got, np.stack([single(row) for row in tb_value]), rtol=1e-12)


def pullback_graph():
    x = px.xtensor("x", dims=("a",), shape=(3,))
    y = vector_fn(x)  # dims ("i",), size 4
    c = px.xtensor("c", dims=("i",), shape=(4,))
    g = gradient.pullback(y, x, c)
    assert g.type.dims == ("a",)
    return x, y, c, g


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_unbatched_cotangent_is_broadcast(flavour):
    x, y, c, g = pullback_graph()
    assert_lazy([g])
    xb = px.xtensor("xb", dims=("b", "a"), shape=(2, 3))
    [gb] = vectorize(flavour, [g], {x: xb})
    assert gb.type.dims == ("b", "a") and gb.type.shape == (2, 3)

    xb_value, c_value = values_of([xb, c])
    c_value = c_value - 1.0  # signs vary
    assert_matches_loop(
        ([x, c], [g]), [(xb_value, True), (c_value, False)], [xb, c], [gb], [xb_value, c_value]
    )

    ref = gradient.pullback(lower(y), x, c)
    assert_same_gradients(
        [gb], xvec.vectorize_graph([ref], {x: xb}), [xb, c], [xb_value, c_value]
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_batched_cotangent_unbatched_input(flavour):
    x, y, c, g = pullback_graph()
    # The batch dim is not first in the batched cotangent's own dims.
    cb = px.xtensor("cb", dims=("i", "b"), shape=(4, 2))
    [gb] = vectorize(flavour, [g], {c: cb})
    assert gb.type.dims == ("b", "a") and gb.type.shape == (2, 3)

    x_value, cb_value = values_of([x, cb])
    cb_value = cb_value - 1.0
    [got] = assert_matches_loop(
        ([x, c], [g]), [(x_value, False), (cb_value.T.copy(), True)],
        [x, cb], [gb], [x_value, cb_value],
    )
    # Linear in the cotangent: the sum over the batch is the pullback of the summed cotangent.
    [summed] = compile_values([x, c], [g], [x_value, cb_value.sum(1)])
    np.testing.assert_allclose(got.sum(0), summed, rtol=1e-10)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_shared_parameter_gives_per_example_gradients(flavour):
    d = px.xtensor("d", dims=("a",), shape=(3,))
    w = px.xtensor("w", dims=("c", "a"), shape=(2, 3))
    out = pxm.tanh(d * w).sum("a") * pxm.exp(w.sum("c") * d).sum("a")  # dims ("c",)
    cost = weighted_cost(out)
    g_w, g_d = pt.grad(cost, [w, d])
    db = px.xtensor("db", dims=("b", "a"), shape=(2, 3))
    gb_w, gb_d = vectorize(flavour, [g_w, g_d], {d: db})
    assert gb_w.type.dims == ("b", "c", "a") and gb_w.type.shape == (2, 2, 3)
    assert gb_d.type.dims == ("b", "a")

    db_value, w_value = values_of([db, w])
    got_w, _ = assert_matches_loop(
        ([d, w], [g_w, g_d]), [(db_value, True), (w_value, False)],
        [db, w], [gb_w, gb_d], [db_value, w_value],
    )
    # The per-example gradients differ (the test would notice a broadcast of one example).
    assert not np.allclose(got_w[0], got_w[1])

    refs = reference_grad(cost, [w, d])
    assert_same_gradients(
        [gb_w, gb_d], xvec.vectorize_graph(refs, {d: db}), [db, w], [db_value, w_value]
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_second_order_graph_vectorized(flavour):
    x = px.xtensor("x", dims=("a",), shape=(3,))
    v = px.as_xtensor(np.array([1.0, -2.0, 0.5]), dims=("a",))
    [g] = pt.grad(cost_of(x), [x])
    [hv] = pt.grad((g * v).sum().values, [x])  # Hessian-vector product
    assert hv.type.dims == ("a",)
    assert_lazy([hv])
    xb = px.xtensor("xb", dims=("b", "a"), shape=(2, 3))
    gb, hvb = vectorize(flavour, [g, hv], {x: xb})
    assert hvb.type.dims == ("b", "a") and gb.type.dims == ("b", "a")

    [xb_value] = values_of([xb])
    assert_matches_loop(([x], [g, hv]), [(xb_value, True)], [xb], [gb, hvb], [xb_value])

    [ref_g] = reference_grad(cost_of(x), [x])
    [ref_hv] = pt.grad((lower(ref_g) * v).sum().values, [x])
    assert_same_gradients(
        [gb, hvb], xvec.vectorize_graph([ref_g, ref_hv], {x: xb}), [xb], [xb_value]
    )


def test_vectorizing_does_not_mutate_the_users_graph():
    t = pt.tensor("t", shape=(3,))
    x = px.as_xtensor(t, dims=("a",))
    x.name = "x"
    d = px.xtensor("d", dims=("a",), shape=(3,))
    cost = cost_of(x * d)
    cost.name = "cost"
    grads = pt.grad(cost, [t, x, d])
    [hv] = pt.grad(grads[1].sum().values, [d])
    outputs = [cost, *grads, hv]
    n_lazy = len(lazy_nodes(outputs))
    assert n_lazy
    before = graph_snapshot(outputs)

    db = px.xtensor("db", dims=("b", "a"), shape=(2, 3))
    tb = pt.tensor("tb", shape=(2, 3))
    batched = [
        xvec.vectorize_graph(outputs, {d: db}),
        xvec.vectorize_graph(outputs, {t: tb}, new_tensor_dims=["b"]),
        replace_vectorize_graph(outputs, {d: db}),
        gradient.jacobian(grads[1].rename(a="i"), d, vectorize=True),
        gradient.jacobian(grads[1].rename(a="i"), d, vectorize=False),
    ]
    assert_graph_unchanged(before, graph_snapshot(outputs))
    assert len(lazy_nodes(outputs)) == n_lazy
    assert x.owner.op.__class__.__name__ == "XTensorFromTensor"

    # The original graph still computes what it did, and agrees with the batched ones.
    values = values_of([t, d, db, tb])
    single = pytensor.function([t, d], outputs, mode=MODE)
    got = compile_values([t, d, db], batched[0], values[:3])
    for k in range(2):
        want = single(values[0], values[2][k])
        for w, b in zip(want, got, strict=True):
            np.testing.assert_allclose(b[k], w, rtol=1e-12)


def _per_example_model():
    w, xi, yi = pt.vector("w", shape=(3,)), pt.vector("xi", shape=(3,)), pt.scalar("yi")
    pred = pxm.tanh(px.dot(px.as_xtensor(xi, dims=("f",)), px.as_xtensor(w, dims=("f",)), dim="f"))
    cost = ((pred - px.as_xtensor(yi, dims=())) ** 2).values
    return w, xi, yi, cost


def test_conversions_of_plain_data_inputs_are_inside_the_lazy_pullback():
    w, xi, yi, cost = _per_example_model()
    g = pt.grad(cost, w)
    [node] = lazy_nodes([g])
    assert set(node.inputs[: len(node.op.fgraph.inputs)]) == {w, xi, yi}


def test_batching_plain_data_of_a_gradient_wrt_a_plain_tensor():
    """Per-example gradients over plain data, as the reference batches them."""
    w, xi, yi, cost = _per_example_model()
    g = pt.grad(cost, w)
    [ref] = reference_grad(cost, [w])
    Xb, yb = pt.matrix("Xb", shape=(5, 3)), pt.vector("yb", shape=(5,))
    gb = replace_vectorize_graph(g, {xi: Xb, yi: yb})
    refb = replace_vectorize_graph(ref, {xi: Xb, yi: yb})
    assert gb.type == refb.type
    rng = np.random.default_rng(0)
    W, X, Y = rng.normal(size=3), rng.normal(size=(5, 3)), rng.normal(size=5)
    got, want = compile_values([w, Xb, yb], [gb, refb], [W, X, Y])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    single = pytensor.function([w, xi, yi], g)
    np.testing.assert_allclose(got, np.stack([single(W, X[i], Y[i]) for i in range(5)]))


@pytest.mark.parametrize("vectorize", [True, False])
def test_jacobian_of_a_gradient_wrt_a_plain_tensor(vectorize):
    w, xi, yi, cost = _per_example_model()
    g = pt.grad(cost, w)
    [ref] = reference_grad(cost, [w])
    jac = gradient.jacobian(g, w, vectorize=vectorize)
    with integration_disabled():
        jac_ref = gradient.jacobian(ref, w, vectorize=vectorize)
    rng = np.random.default_rng(1)
    values = [rng.normal(size=3), rng.normal(size=3), rng.normal()]
    got, want = compile_values([w, xi, yi], [jac, jac_ref], values)
    np.testing.assert_allclose(got, want, rtol=1e-10)
