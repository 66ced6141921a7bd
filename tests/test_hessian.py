"""Second order, lazily: grad of grad, hessian, hessian-vector products, the
jacobian of a gradient, and the pullback of a `LazyPullback`."""

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
import pytest
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.traversal import graph_inputs
from pytensor.scan.op import Scan

from pytensor_lazy_pullback import LazyPullback, integration_disabled
from helpers import (
    COUNT_MODE,
    MODE,
    TRANSFORM_FAMILIES,
    assert_same_gradients,
    central_differences,
    check_compiled_graph,
    compile_values,
    lazy_nodes,
    lower,
    n_nodes,
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


# ---------------------------------------------------------------------------
# Compiled graphs of the row-loop and second-order transforms against the
# reference: no more apply nodes (inner graphs counted), the same values.
# ``hessian`` and ``jacobian(vectorize=False)`` map a gradient over rows with a
# ``Scan``; PyMC's ``compile_d2logp`` is such a ``hessian``.  Each compiled graph
# (apply nodes counted through Scan/OpFromGraph inner graphs) must have no more
# nodes than the reference's (lower first, then differentiate) and the same values.
#
# The loss here is plain-tensor arithmetic on the labelled model's output, so a
# second derivative differentiates the first-order `LazyPullback` *and*, through
# the loss's own pullback, the forward region it pulls back through.  As two
# regions they would each pull back through the lowered forward pass (one more
# matrix product per row than the reference, which adds the cotangents first);
# ``regions._join_derivatives`` makes them one region.
#
# PyTensor seeds ``grad(expr[i], wrt)`` in the loop of
# ``jacobian(vectorize=False)`` with ``ones_like(expr[i])``, which keeps the
# forward output a (dead) non-sequence of the ``Scan`` until the inner graph is
# simplified; ours seeds a scalar cost computed from un-lowered nodes with a
# constant (``op.lazy_ones_like``), so the forward output is not computed for
# the loop (``test_jacobian_loop_computes_nothing_it_does_not_read``).


def loss(out):
    """A loss in plain tensors, not linear in the labelled model's output."""
    return (out**2).sum() + pt.sin(out).sum()


def _v(w):
    return pt.constant(np.linspace(-1.0, 1.0, w.type.shape[0]))


ROW_TRANSFORMS = {
    "hessian": lambda out, w: gradient.hessian(loss(out), w),
    "jac_loop": lambda out, w: gradient.jacobian(out, w, vectorize=False),
    "hvp": lambda out, w: gradient.hessian_vector_product(loss(out), w, _v(w)),
    "fwd_rev": lambda out, w: gradient.pushforward(
        pt.grad(loss(out), w), w, _v(w), use_op_pushforward=False
    ),
}
SECOND_ORDER = ["hessian", "hvp", "fwd_rev"]


def second_order(family, transform):
    """``(inputs, ours, reference)``: the transform of the labelled graph and of the lowered one."""
    inputs, w, out = TRANSFORM_FAMILIES[family]()
    ours = ROW_TRANSFORMS[transform](out, w)
    with integration_disabled():
        ref = ROW_TRANSFORMS[transform](lower(out), w)
    return inputs, ours, ref


def compiled(inputs, outputs, mode=COUNT_MODE):
    return pytensor.function(inputs, outputs, mode=mode, on_unused_input="ignore")


def values_for(inputs):
    rng = np.random.default_rng(0)
    return [rng.uniform(-0.9, 0.9, size=i.type.shape) for i in inputs]


@pytest.mark.parametrize("transform", list(ROW_TRANSFORMS))
@pytest.mark.parametrize("family", list(TRANSFORM_FAMILIES))
def test_row_transform_values_are_the_reference(family, transform):
    inputs, ours, ref = second_order(family, transform)
    vals = values_for(inputs)
    got = compiled(inputs, ours, MODE)(*vals)
    want = compiled(inputs, ref, MODE)(*vals)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.abs(want).max() > 0.1  # a real Jacobian / Hessian, not zeros


@pytest.mark.parametrize("transform", SECOND_ORDER)
@pytest.mark.parametrize("family", list(TRANSFORM_FAMILIES))
def test_second_order_nodes_not_above_reference(family, transform):
    inputs, ours, ref = second_order(family, transform)
    fn, ref_fn = compiled(inputs, ours), compiled(inputs, ref)
    check_compiled_graph(fn, ref_fn)


def test_loss_without_second_derivative_fails_at_hessian_time():
    """``hessian`` raises, as the reference does, where a node between the regions has no pullback.

    That node would be taken into the joined region; it is not, so ``grad``
    still meets it (and raises) at differentiation time.
    """

    class TwiceGrad(Op):
        __props__ = ()

        def make_node(self, x, g):
            return Apply(self, [x, g], [g.type()])

        def perform(self, node, inputs, out):
            out[0][0] = 2 * inputs[0] * inputs[1]

        def pullback(self, inputs, outputs, grads):
            return [gradient.grad_undefined(self, i, inp) for i, inp in enumerate(inputs)]

    class Square(Op):
        __props__ = ()

        def make_node(self, x):
            return Apply(self, [x], [x.type()])

        def perform(self, node, inputs, out):
            out[0][0] = inputs[0] ** 2

        def pullback(self, inputs, outputs, grads):
            return [TwiceGrad()(inputs[0], grads[0])]

    inputs, w, out = TRANSFORM_FAMILIES["dense"]()
    vals = values_for(inputs)
    first = compiled(inputs, pt.grad(Square()(out).sum(), w), MODE)(*vals)
    assert np.all(np.isfinite(first)) and np.abs(first).max() > 0
    with integration_disabled(), pytest.raises(gradient.NullTypeGradError):
        gradient.hessian(Square()(lower(out)).sum(), w)
    with pytest.raises(gradient.NullTypeGradError):
        gradient.hessian(Square()(out).sum(), w)


@pytest.mark.parametrize("family", ["glm", "index_concat"])
def test_jacobian_loop_nodes_not_above_reference(family):
    inputs, ours, ref = second_order(family, "jac_loop")
    fn, ref_fn = compiled(inputs, ours), compiled(inputs, ref)
    check_compiled_graph(fn, ref_fn)


def _unread_scan_inputs(fn):
    """Outer inputs of the compiled `fn`'s Scans whose inner input the loop never reads."""
    unread = []
    for node in fn.maker.fgraph.apply_nodes:
        if isinstance(node.op, Scan):
            read = set(graph_inputs(node.op.inner_outputs))
            unread += [
                outer
                for outer, inner in zip(
                    node.op.outer_non_seqs(node.inputs),
                    node.op.inner_non_seqs(node.op.inner_inputs),
                    strict=True,
                )
                if inner not in read
            ]
    return unread


@pytest.mark.parametrize("family", list(TRANSFORM_FAMILIES))
def test_jacobian_loop_computes_nothing_it_does_not_read(family):
    """No loop input of ours is dead; the forward output is not computed for the loop."""
    inputs, ours, _ = second_order(family, "jac_loop")
    assert _unread_scan_inputs(compiled(inputs, ours)) == []


@pytest.mark.parametrize("family", list(TRANSFORM_FAMILIES))
def test_jacobian_loop_is_the_reference_seeded_with_a_constant(family):
    """With PyTensor's seed replaced by ours (a constant 1), the reference has no fewer nodes.

    PyTensor's own seed ``ones_like(expr[i])`` keeps the forward output alive
    as a dead Scan input (on the dense layer it fuses two elementwise nodes
    into one); ours also differentiates the inlined ``Einsum`` of a ``dot``.
    """
    inputs, w, out = TRANSFORM_FAMILIES[family]()
    ours = gradient.jacobian(out, w, vectorize=False)
    with integration_disabled():
        low = lower(out)

        def row(i, expr, w):
            return gradient.grad(None, w, known_grads={expr[i]: pt.constant(np.float64(1.0))})

        seeded = pytensor.scan(
            row, sequences=pt.arange(low.size), non_sequences=[low, w], return_updates=False
        )
        ref = gradient.jacobian(low, w, vectorize=False)
    fn, seeded_fn, ref_fn = (compiled(inputs, g) for g in (ours, seeded, ref))
    assert n_nodes(fn.maker.fgraph) <= n_nodes(seeded_fn.maker.fgraph)
    vals = values_for(inputs)
    np.testing.assert_allclose(fn(*vals), ref_fn(*vals), rtol=1e-10, atol=1e-12)
    # The reference's extra node, where there is one, is that dead input.
    extra = n_nodes(fn.maker.fgraph) - n_nodes(ref_fn.maker.fgraph)
    assert extra <= (1 if _unread_scan_inputs(ref_fn) else 0)
