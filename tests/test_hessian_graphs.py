"""Compiled graphs of the row-loop and second-order transforms against the reference (issue 10).

``hessian`` and ``jacobian(vectorize=False)`` map a gradient over rows with a
``Scan``; PyMC's ``compile_d2logp`` is such a ``hessian``.  Each compiled graph
(apply nodes counted through Scan/OpFromGraph inner graphs) must have no more
nodes than the reference's (lower first, then differentiate) and the same values.

The loss here is plain-tensor arithmetic on the labelled model's output, so a
second derivative differentiates the first-order `LazyPullback` *and*, through
the loss's own pullback, the forward region it pulls back through.  As two
regions they would each pull back through the lowered forward pass (one more
matrix product per row than the reference, which adds the cotangents first);
``regions._join_derivatives`` makes them one region.

One known cell is a node above the reference without computing more: the
``jacobian(vectorize=False)`` of the labelled dense layer.  PyTensor seeds
``grad(expr[i], wrt)`` in the loop with ``ones_like(expr[i])``, which keeps
the jacobian's ``expression`` a non-sequence of the ``Scan`` until the inner
graph is simplified, after the last pass that drops unused Scan inputs.  So
the reference computes ``expression`` (the forward output) for a loop that
never reads it; on the dense layer that dead output is what fuses the two
loop-invariant elementwise factors into one ``Composite``.  Ours seeds a scalar
cost computed from un-lowered nodes with a constant (``op.lazy_ones_like``),
so the forward output is not computed at all; the reference seeded the same
way compiles to exactly our count (``test_jacobian_loop_is_the_reference_seeded_with_a_constant``).
"""

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytest
from pytensor.compile.builders import OpFromGraph
from pytensor.compile.mode import Mode
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.traversal import graph_inputs
from pytensor.scan.op import Scan

from pytensor_lazy_pullback import integration_disabled
from reference import COUNT_MODE, MODE, lower


def dense():
    """A labelled dense layer ``tanh(dot(x, w)) * mean(exp(x))``; w a plain vector."""
    xt = pt.matrix("x", shape=(6, 5))
    wt = pt.vector("w", shape=(5,))
    x, w = px.as_xtensor(xt, dims=("a", "b")), px.as_xtensor(wt, dims=("b",))
    out = px.math.tanh(px.dot(x, w, dim="b")) * px.math.exp(x).mean("b")
    return [xt, wt], wt, out.values


def glm():
    """Poisson GLM terms ``counts * log(rate) - rate``, ``rate = exp(dot(X, beta))``."""
    rng = np.random.default_rng(4)
    X = px.as_xtensor(pt.constant(rng.normal(size=(12, 3)) * 0.3), dims=("obs", "feature"))
    counts = px.as_xtensor(pt.constant(rng.poisson(2.0, size=12).astype("float64")), dims=("obs",))
    bt = pt.vector("beta", shape=(3,))
    rate = px.math.exp(px.dot(X, px.as_xtensor(bt, dims=("feature",)), dim="feature"))
    return [bt], bt, (counts * px.math.log(rate) - rate).values


def index_concat():
    """Slices and a gather of a labelled vector, concatenated, then a cumsum."""
    rng = np.random.default_rng(3)
    pt_ = pt.vector("p", shape=(10,))
    p = px.as_xtensor(pt_, dims=("i",))
    idx = px.as_xtensor(pt.constant(rng.integers(0, 10, size=4)), dims=("j",))
    head = p.isel(i=slice(0, 5)).rename(i="k")
    tail = px.math.exp(p.isel(i=slice(5, None))).rename(i="k")
    c = px.concat([head, tail * 0.5, px.math.sin(p.isel(i=idx)).rename(j="k")], dim="k")
    return [pt_], pt_, (px.math.tanh(c) * c.cumsum("k")).values


FAMILIES = {"dense": dense, "glm": glm, "index_concat": index_concat}

def loss(out):
    """A loss in plain tensors, not linear in the labelled model's output."""
    return (out**2).sum() + pt.sin(out).sum()


def _v(w):
    return pt.constant(np.linspace(-1.0, 1.0, w.type.shape[0]))


TRANSFORMS = {
    "hessian": lambda out, w: gradient.hessian(loss(out), w),
    "jac_loop": lambda out, w: gradient.jacobian(out, w, vectorize=False),
    "hvp": lambda out, w: gradient.hessian_vector_product(loss(out), w, _v(w)),
    "fwd_rev": lambda out, w: gradient.pushforward(
        pt.grad(loss(out), w), w, _v(w), use_op_pushforward=False
    ),
}
SECOND_ORDER = ["hessian", "hvp", "fwd_rev"]


def build(family, transform):
    """``(inputs, ours, reference)``: the transform of the labelled graph and of the lowered one."""
    inputs, w, out = FAMILIES[family]()
    ours = TRANSFORMS[transform](out, w)
    with integration_disabled():
        ref = TRANSFORMS[transform](lower(out), w)
    return inputs, ours, ref


def n_nodes(fgraph):
    """Apply nodes of `fgraph`, counting those of Scan/OpFromGraph inner graphs too."""
    total = 0
    for node in fgraph.apply_nodes:
        total += 1
        if isinstance(node.op, Scan | OpFromGraph):
            total += n_nodes(node.op.fgraph)
    return total


def compiled(inputs, outputs, mode=COUNT_MODE):
    return pytensor.function(inputs, outputs, mode=mode, on_unused_input="ignore")


def values_for(inputs):
    rng = np.random.default_rng(0)
    return [rng.uniform(-0.9, 0.9, size=i.type.shape) for i in inputs]


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_values_are_the_reference(family, transform):
    inputs, ours, ref = build(family, transform)
    vals = values_for(inputs)
    got = compiled(inputs, ours, MODE)(*vals)
    want = compiled(inputs, ref, MODE)(*vals)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.abs(want).max() > 0.1  # a real Jacobian / Hessian, not zeros


@pytest.mark.parametrize("transform", SECOND_ORDER)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_second_order_nodes_not_above_reference(family, transform):
    inputs, ours, ref = build(family, transform)
    fn, ref_fn = compiled(inputs, ours), compiled(inputs, ref)
    assert n_nodes(fn.maker.fgraph) <= n_nodes(ref_fn.maker.fgraph)


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

    inputs, w, out = dense()
    vals = values_for(inputs)
    first = compiled(inputs, pt.grad(Square()(out).sum(), w), MODE)(*vals)
    assert np.all(np.isfinite(first)) and np.abs(first).max() > 0
    with integration_disabled(), pytest.raises(gradient.NullTypeGradError):
        gradient.hessian(Square()(lower(out)).sum(), w)
    with pytest.raises(gradient.NullTypeGradError):
        gradient.hessian(Square()(out).sum(), w)


@pytest.mark.parametrize("family", ["glm", "index_concat"])
def test_jacobian_loop_nodes_not_above_reference(family):
    inputs, ours, ref = build(family, "jac_loop")
    fn, ref_fn = compiled(inputs, ours), compiled(inputs, ref)
    assert n_nodes(fn.maker.fgraph) <= n_nodes(ref_fn.maker.fgraph)


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


@pytest.mark.parametrize("family", list(FAMILIES))
def test_jacobian_loop_computes_nothing_it_does_not_read(family):
    """No loop input of ours is dead; the forward output is not computed for the loop."""
    inputs, ours, _ = build(family, "jac_loop")
    assert _unread_scan_inputs(compiled(inputs, ours)) == []


@pytest.mark.parametrize("family", list(FAMILIES))
def test_jacobian_loop_is_the_reference_seeded_with_a_constant(family):
    """With PyTensor's seed replaced by ours (a constant 1), the reference has our node count.

    PyTensor's own seed ``ones_like(expr[i])`` is the only difference: on the
    dense layer it keeps the forward output alive as a dead Scan input, which
    fuses two elementwise nodes into one.
    """
    inputs, w, out = FAMILIES[family]()
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
    assert n_nodes(fn.maker.fgraph) == n_nodes(seeded_fn.maker.fgraph)
    vals = values_for(inputs)
    np.testing.assert_allclose(fn(*vals), ref_fn(*vals), rtol=1e-10, atol=1e-12)
    # The reference's extra node, where there is one, is that dead input.
    extra = n_nodes(fn.maker.fgraph) - n_nodes(ref_fn.maker.fgraph)
    assert extra <= (1 if _unread_scan_inputs(ref_fn) else 0)


# PyMC: compile_d2logp of a dims model with a labelled Potential.


def _pymc_models():
    pm = pytest.importorskip("pymc")
    import pymc.dims as pmd

    rng = np.random.default_rng(5)
    X = rng.normal(size=(20, 3))
    y = X @ np.array([0.5, -1.0, 0.8]) + 0.7 * rng.normal(size=20)
    coords = {"obs": np.arange(20), "feature": ["a", "b", "c"]}

    def labelled():
        with pm.Model(coords=coords) as model:
            beta = pmd.Normal("beta", 0.0, 1.5, dims="feature")
            fit = pmd.math.dot(pmd.as_xtensor(X, dims=("obs", "feature")), beta, dim="feature")
            resid = (pmd.as_xtensor(y, dims=("obs",)) - fit) / 0.7
            pmd.Potential("lik", (-0.5 * resid**2).sum())
        return model

    def plain():
        with pm.Model(coords=coords) as model:
            beta = pm.Normal("beta", 0.0, 1.5, dims="feature")
            pm.Potential("lik", (-0.5 * ((y - pt.dot(X, beta)) / 0.7) ** 2).sum())
        return model

    return labelled, plain


def test_pymc_d2logp_nodes_not_above_reference():
    """``compile_d2logp``: ours <= the reference (logp lowered first); values of the plain model."""
    from pymc.pytensorf import hessian, rewrite_pregrad

    labelled, plain = _pymc_models()
    # COUNT_MODE as a query PyMC can add its own rewrites to.
    count_mode = Mode(linker="py", optimizer="fast_run")
    point = {"beta": np.array([0.3, -0.2, 1.0])}
    ours = labelled().compile_d2logp(negate_output=False, mode=count_mode)

    model = labelled()
    with integration_disabled():
        logp = lower(model.logp())
        hess = hessian(rewrite_pregrad(logp), model.continuous_value_vars, negate_output=False)
    ref = model.compile_fn(
        inputs=model.value_vars, outs=hess, mode=count_mode, on_unused_input="ignore"
    )
    want = plain().compile_d2logp(negate_output=False, mode=MODE)(point)

    assert n_nodes(ours.f.maker.fgraph) <= n_nodes(ref.f.maker.fgraph)
    np.testing.assert_allclose(ours(point), ref(point), rtol=1e-10)
    np.testing.assert_allclose(ours(point), want, rtol=1e-10)
