"""``jacobian(vectorize=True)`` of un-lowered graphs compiles to the reference's graph.

The reference is PyTensor's own ``jacobian(..., vectorize=True)`` of the
lowered graph, with the integration off.  Ours batches the expansion of each
`LazyPullback` over the rows of an identity (``vectorize_expansion``); only the
cotangents are batched there, so the forward pass that the expansion
recomputes must stay unbatched, as in the reference: no ``Blockwise`` of the
forward ``Einsum`` (which, batched, is no longer inlined into a ``Dot``) or of
the forward ``Split`` of a ``concat``.  Counted in compiled apply nodes,
inner graphs of ``Scan``/``OpFromGraph`` included.
"""

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytest
from pytensor.compile.mode import Mode, get_mode
from pytensor.graph.op import HasInnerGraph
from pytensor.graph.traversal import applys_between, graph_inputs
from pytensor.tensor.basic import Split
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.einsum import Einsum

from pytensor_lazy_pullback import integration_disabled
from helpers import COUNT_MODE, lower

MODES = {
    "fast_run": COUNT_MODE,
    # The C backend's rewrites (CVM), still with the Python linker: only counted.
    "cvm": Mode(linker="py", optimizer=get_mode("CVM").optimizer),
}


def _labelled(data, dims):
    return px.as_xtensor(pt.constant(data), dims=dims)


def dense():
    """tanh(dot(x, w)) weighted by a labelled mean: a forward ``Einsum``."""
    xt = pt.matrix("x", shape=(5, 7))
    x = px.as_xtensor(xt, dims=("a", "b"))
    wt = pt.vector("w", shape=(7,))
    w = px.as_xtensor(wt, dims=("b",))
    out = px.math.tanh(px.dot(x, w, dim="b")) * px.math.exp(x).mean("b")
    return [xt, wt], wt, out.values


def index_concat():
    """Slices and a gather of a labelled vector, concatenated, then a cumsum: a forward ``Split``."""
    rng = np.random.default_rng(3)
    pt_ = pt.vector("p", shape=(10,))
    p = px.as_xtensor(pt_, dims=("i",))
    idx = _labelled(rng.integers(0, 10, size=6), ("j",))
    head = p.isel(i=slice(0, 4)).rename(i="k")
    tail = px.math.exp(p.isel(i=slice(4, None))).rename(i="k")
    gathered = px.math.sin(p.isel(i=idx)).rename(j="k")
    c = px.concat([head, tail * 0.5, gathered], dim="k")
    out = px.math.tanh(c) * c.cumsum("k")
    return [pt_], pt_, out.values


def glm():
    """A Poisson log-likelihood per observation, rate = exp(dot(X, beta))."""
    rng = np.random.default_rng(4)
    X = _labelled(rng.normal(size=(9, 4)) * 0.3, ("obs", "feature"))
    counts = _labelled(rng.poisson(2.0, size=9).astype("float64"), ("obs",))
    bt = pt.vector("beta", shape=(4,))
    rate = px.math.exp(px.dot(X, px.as_xtensor(bt, dims=("feature",)), dim="feature"))
    return [bt], bt, (counts * px.math.log(rate) - rate).values


FAMILIES = {"dense": dense, "index_concat": index_concat, "glm": glm}


def build(family):
    """``(inputs, ours, reference, out)``: the Jacobian of the family's output w.r.t. its weights.

    The weights are the last input.
    """
    inputs, w, out = FAMILIES[family]()
    assert inputs[-1] is w
    ours = gradient.jacobian(out, w, vectorize=True)
    with integration_disabled():
        reference = gradient.jacobian(lower(out), w, vectorize=True)
    return inputs, ours, reference, out


def all_nodes(nodes):
    """Apply nodes, and those of inner graphs (``Scan``, ``OpFromGraph``, ...) recursively."""
    for node in nodes:
        yield node
        op = node.op
        if isinstance(op, HasInnerGraph):
            fgraph = getattr(op, "fgraph", None)
            if fgraph is not None:
                yield from all_nodes(fgraph.apply_nodes)
            else:
                yield from all_nodes(applys_between(op.inner_inputs, op.inner_outputs))


def batched_cores(nodes):
    """Names of the core Op types of the ``Blockwise`` nodes among `nodes`."""
    return sorted(
        type(node.op.core_op).__name__ for node in nodes if isinstance(node.op, Blockwise)
    )


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_more_compiled_nodes_than_reference(family, mode):
    inputs, ours, reference, out = build(family)
    ours_fn = pytensor.function(inputs, ours, mode=MODES[mode])
    ref_fn = pytensor.function(inputs, reference, mode=MODES[mode])
    ours_nodes = list(all_nodes(ours_fn.maker.fgraph.apply_nodes))
    ref_nodes = list(all_nodes(ref_fn.maker.fgraph.apply_nodes))
    assert len(ours_nodes) <= len(ref_nodes), (len(ours_nodes), len(ref_nodes))
    # The forward pass is not batched: an Einsum is inlined (a Dot), a Split is not in a Blockwise.
    assert not any(isinstance(n.op, Einsum) for n in ours_nodes)
    assert not any(
        isinstance(n.op, Blockwise) and isinstance(n.op.core_op, Split) for n in ours_nodes
    )
    assert batched_cores(ours_nodes) == batched_cores(ref_nodes)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_vectorized_graph_batches_only_what_the_reference_batches(family):
    """Before any rewrite: the ``Blockwise`` nodes are the reference's, no batched forward Op."""
    inputs, ours, reference, out = build(family)
    ours_nodes = applys_between(list(graph_inputs([ours])), [ours])
    ref_nodes = applys_between(list(graph_inputs([reference])), [reference])
    assert batched_cores(ours_nodes) == batched_cores(ref_nodes)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_values_equal_reference(family):
    inputs, ours, reference, out = build(family)
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
