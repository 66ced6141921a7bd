"""``vectorize_graph`` of lazy gradients.

``vectorize_graph`` (``pytensor.graph.replace`` and ``pytensor.xtensor``
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
from pytensor.tensor.type import TensorType
from pytensor.xtensor.type import XTensorType

import pytensor_lazy_pullback as plp
from pytensor_lazy_pullback import integration_disabled

# The add-on rebinds both ``vectorize_graph`` functions: always look them up as
# module attributes, after importing the add-on.
import pytensor.graph.replace as graph_replace
import pytensor.xtensor.vectorization as xvec
from helpers import (
    MODE,
    assert_graph_unchanged,
    assert_lazy,
    assert_same_gradients,
    compile_values,
    graph_snapshot,
    lazy_nodes,
    lower,
    per_example_model,
    random_values,
    reference_grad,
    vector_fn,
    weighted_cost,
)

W_A = np.array([0.3, -0.5, 0.9])  # dims ("a",)


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
    return graph_replace.vectorize_graph(outputs, replace)


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

    [xb_value] = random_values([xb])
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

    [tb_value] = random_values([tb])
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

    tb_value, w_value = random_values([tb, w])
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
        # PyTensor's conversion from tensors refuses to name the new dim; the
        # lazy gradient names it where its own expansion is batched.
        with pytest.raises(NotImplementedError, match="cannot infer the new dimension"):
            graph_replace.vectorize_graph([ref_w], {t: tb})
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
    gb_x, gb_t = graph_replace.vectorize_graph([g_x, g_t], {x: xb, t: tb})
    assert gb_x.type.dims == ("b", "a") and gb_x.type.shape == (4, 3)
    assert gb_t.type.shape == (4, 2)

    xb_value, tb_value = random_values([xb, tb])
    assert_matches_loop(
        ([x, t], [g_x, g_t]), [(xb_value, True), (tb_value, True)],
        [xb, tb], [gb_x, gb_t], [xb_value, tb_value],
    )


def test_conversion_from_tensors_still_refuses_to_name_a_new_dim():
    """PyTensor's ``XTensorFromTensor`` cannot name the new dim that
    ``pytensor.graph.replace.vectorize_graph`` adds, and raises: the add-on
    leaves that as it is, enabled or not."""
    t = pt.tensor("t", shape=(3,))
    x = px.as_xtensor(t, dims=("a",))
    tb = pt.tensor("tb", shape=(2, 3))
    [ref] = reference_grad(cost_of(x), [x])
    assert plp.is_enabled()
    with pytest.raises(NotImplementedError, match="cannot infer the new dimension"):
        graph_replace.vectorize_graph([ref], {t: tb})
    with integration_disabled(), pytest.raises(NotImplementedError):
        graph_replace.vectorize_graph([ref], {t: tb})


def test_replace_flavour_with_a_converted_batched_tensor_in_the_forward_graph():
    """A wrt that is ``as_xtensor(t)``: its conversion is the user's, in the forward
    graph, so ``pytensor.graph.replace.vectorize_graph`` refuses to name its new dim
    for ours as for the reference; the xtensor vectorizer batches both alike."""
    t = pt.tensor("t", shape=(3,))
    x = px.as_xtensor(t, dims=("a",))
    tb = pt.tensor("tb", shape=(2, 3))
    [g] = pt.grad(cost_of(x), [x])
    [ref] = reference_grad(cost_of(x), [x])
    for grad in (g, ref):
        with pytest.raises(NotImplementedError, match="cannot infer the new dimension"):
            graph_replace.vectorize_graph([grad], {t: tb})
    [gb] = xvec.vectorize_graph([g], {t: tb}, new_tensor_dims=["b"])
    [refb] = xvec.vectorize_graph([ref], {t: tb}, new_tensor_dims=["b"])
    assert gb.type.dims == refb.type.dims == ("b", "a")
    [tb_value] = random_values([tb])
    got, want = compile_values([tb], [gb, refb], [tb_value])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    single = pytensor.function([t], g, mode=MODE)
    np.testing.assert_allclose(got, np.stack([single(row) for row in tb_value]), rtol=1e-12)


def labelled_round_trip_cost(t):
    """A cost of plain ``t`` (size 3) that labels it, leaves the labels and comes back.

    Outside the gradient's lazy Op stay the forward conversions it reads (the
    mean's divisor ``x.values.shape``, ``tanh(x.values)``) and the
    ``.values`` conversion's own pullback.
    """
    x = px.as_xtensor(t, dims=("a",))
    back = px.as_xtensor(pt.tanh(x.values), dims=("a",))
    return (pxm.exp(0.1 * x.mean("a")) + pxm.exp(back) * x).sum().values


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_batched_plain_wrt_labelled_inside_the_cost(flavour):
    """Regression: the replace flavour refused the conversions outside the lazy Op
    (``XTensorFromTensor`` cannot name a new dim) where the reference, which has
    none, batches; the gradient is a plain tensor, so the name stays inside."""
    t = pt.tensor("t", shape=(3,))
    tb = pt.tensor("tb", shape=(2, 3))
    cost = labelled_round_trip_cost(t)
    [g] = pt.grad(cost, [t])
    [ref] = reference_grad(cost, [t])
    assert_lazy([g])
    [gb] = vectorize(flavour, [g], {t: tb}, new_tensor_dims=["b"])
    [refb] = vectorize(flavour, [ref], {t: tb}, new_tensor_dims=["b"])
    assert gb.type.shape == refb.type.shape == (2, 3)
    [tb_value] = random_values([tb])
    got = assert_matches_loop(([t], [g]), [(tb_value, True)], [tb], [gb], [tb_value])
    np.testing.assert_allclose(got[0], compile_values([tb], [refb], [tb_value])[0], rtol=1e-12)


def test_labelled_gradient_of_a_batched_plain_input_is_still_refused():
    """Where a result is labelled, PyTensor's refusal to invent its new dim's name stands."""
    t = pt.tensor("t", shape=(3,))
    x = px.as_xtensor(t, dims=("a",))
    tb = pt.tensor("tb", shape=(2, 3))
    cost = labelled_round_trip_cost(t) + cost_of(x)
    g_t, g_x = pt.grad(cost, [t, x])
    with pytest.raises(NotImplementedError, match="cannot infer the new dimension"):
        graph_replace.vectorize_graph([g_t, g_x], {t: tb})


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

    xb_value, c_value = random_values([xb, c])
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
    x, _, c, g = pullback_graph()
    # The batch dim is not first in the batched cotangent's own dims.
    cb = px.xtensor("cb", dims=("i", "b"), shape=(4, 2))
    [gb] = vectorize(flavour, [g], {c: cb})
    assert gb.type.dims == ("b", "a") and gb.type.shape == (2, 3)

    x_value, cb_value = random_values([x, cb])
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

    db_value, w_value = random_values([db, w])
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

    [xb_value] = random_values([xb])
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
        graph_replace.vectorize_graph(outputs, {d: db}),
        gradient.jacobian(grads[1].rename(a="i"), d, vectorize=True),
        gradient.jacobian(grads[1].rename(a="i"), d, vectorize=False),
    ]
    assert_graph_unchanged(before, graph_snapshot(outputs))
    assert len(lazy_nodes(outputs)) == n_lazy
    assert x.owner.op.__class__.__name__ == "XTensorFromTensor"

    # The original graph still computes what it did, and agrees with the batched ones.
    values = random_values([t, d, db, tb])
    single = pytensor.function([t, d], outputs, mode=MODE)
    got = compile_values([t, d, db], batched[0], values[:3])
    for k in range(2):
        want = single(values[0], values[2][k])
        for w, b in zip(want, got, strict=True):
            np.testing.assert_allclose(b[k], w, rtol=1e-12)


def test_conversions_of_plain_data_inputs_are_inside_the_lazy_pullback():
    w, xi, yi, cost = per_example_model()
    g = pt.grad(cost, w)
    [node] = lazy_nodes([g])
    assert set(node.inputs[: len(node.op.fgraph.inputs)]) == {w, xi, yi}


def test_batching_plain_data_of_a_gradient_wrt_a_plain_tensor():
    """Per-example gradients over plain data, as the reference batches them."""
    w, xi, yi, cost = per_example_model()
    g = pt.grad(cost, w)
    [ref] = reference_grad(cost, [w])
    Xb, yb = pt.matrix("Xb", shape=(5, 3)), pt.vector("yb", shape=(5,))
    gb = graph_replace.vectorize_graph(g, {xi: Xb, yi: yb})
    refb = graph_replace.vectorize_graph(ref, {xi: Xb, yi: yb})
    assert gb.type == refb.type
    rng = np.random.default_rng(0)
    W, X, Y = rng.normal(size=3), rng.normal(size=(5, 3)), rng.normal(size=5)
    got, want = compile_values([w, Xb, yb], [gb, refb], [W, X, Y])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    single = pytensor.function([w, xi, yi], g)
    np.testing.assert_allclose(got, np.stack([single(W, X[i], Y[i]) for i in range(5)]))


def test_pytensors_own_errors_of_vectorize_graph_are_kept():
    """The lazy-derivative check comes first in ``vectorize_graph``: it leaves bad
    arguments to PyTensor's own error (PyTensor's ``test_non_variable_raises``)."""
    x, y = pt.scalar("x", dtype=int), pt.scalar("y", dtype=int)
    out = pt.zeros((x, y))
    with pytest.raises(ValueError, match="Some of the replaced items are not Variables"):
        graph_replace.vectorize_graph(out, {(x, y): ((x, y), (x, y))})
