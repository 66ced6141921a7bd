"""The `LazyPullback` Op: laziness, economy, printing, pickling and merging.

``pt.grad`` builds one `LazyPullback` per region and lowers nothing;
compilation expands it into a graph no larger than the lower-then-grad
reference, lowering the shared forward pass once; ``rewrite_graph(...,
include=("lower_xtensor",))`` expands it too; ``dprint`` shows its region;
it pickles; identical lazy gradients merge.
"""

import functools
import pickle
import sys

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
import pytest
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.rewriting.basic import MergeOptimizer
from pytensor.graph.rewriting.utils import rewrite_graph
from pytensor.tensor.elemwise import CAReduce
from pytensor.xtensor.basic import XOp

import pytensor_lazy_pullback.rewriting as lazy_rewriting
import pytensor_lazy_pullback.unlowered as unlowered
from pytensor_lazy_pullback import LazyPullback, expand_lazy_pullbacks
from helpers import (
    assert_same_gradients,
    check_compiled_graph,
    compile_values,
    graph_nodes,
    lazy_nodes,
    lower,
    n_apply_nodes,
    random_values,
    reference_grad,
    weighted_cost,
    xop_nodes,
)


# ---------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------


def elemwise_reduction_chain():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    y = px.xtensor("y", dims=("b",), shape=(4,))
    out = ((pxm.exp(x * 0.5) * y + x) ** 2).sum("b") * (x * y).sum("b")
    return [x, y], [x, y], weighted_cost(out)


def dot_over_one_dim():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    w = px.xtensor("w", dims=("b", "c"), shape=(4, 5))
    out = px.dot(x, w, dim="b")
    return [x, w], [x, w], weighted_cost(out)


def mean_std():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    out = (x - x.mean("a")) / x.std("a") + x.std("b") * x.mean(("a", "b"))
    return [x], [x], weighted_cost(out)


def stack_concat():
    x = px.xtensor("x", dims=("a", "b"), shape=(2, 3))
    y = px.xtensor("y", dims=("a", "b"), shape=(4, 3))
    joined = px.concat([x, y * 2.0, pxm.exp(x)], dim="a")  # (8, 3)
    out = joined.stack({"s": ("a", "b")}) ** 2
    return [x, y], [x, y], weighted_cost(out)


def small_mlp():
    data = px.xtensor("data", dims=("n", "i"), shape=(5, 3))
    w1 = px.xtensor("w1", dims=("i", "h"), shape=(3, 4))
    b1 = px.xtensor("b1", dims=("h",), shape=(4,))
    w2 = px.xtensor("w2", dims=("h", "o"), shape=(4, 2))
    hidden = pxm.tanh(px.dot(data, w1, dim="i") + b1)
    out = px.dot(hidden, w2, dim="h")
    return [data, w1, b1, w2], [w1, b1, w2], weighted_cost(out)


GRAPHS = {
    "elemwise_reduction_chain": elemwise_reduction_chain,
    "dot_over_one_dim": dot_over_one_dim,
    "mean_std": mean_std,
    "stack_concat": stack_concat,
    "small_mlp": small_mlp,
}


# ---------------------------------------------------------------------------
# 1. One LazyPullback per region, nothing lowered
# ---------------------------------------------------------------------------


def test_one_lazy_pullback_for_one_region():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    out = (pxm.exp(x * 0.5) + pxm.sin(x)).transpose("b", "a").sum("a") * 2.0  # 6 XOps
    cost = weighted_cost(out)
    forward_xops = [n for n in graph_nodes([cost]) if isinstance(n.op, XOp)]
    assert len(forward_xops) >= 5

    grads = pt.grad(cost, [x])
    nodes = graph_nodes(grads)
    assert len(lazy_nodes(grads)) == 1
    [lazy] = lazy_nodes(grads)
    inner_xops = [n for n in lazy.op.fgraph.apply_nodes if isinstance(n.op, XOp)]
    assert len(inner_xops) >= 5
    # Not lowered: no tensor reduction anywhere in the gradient graph.
    assert not [n for n in nodes if isinstance(n.op, CAReduce)]
    # And no gradient node of an XOp: every XOp of the gradient graph is a forward one.
    assert {n for n in nodes if isinstance(n.op, XOp)} <= set(forward_xops)
    assert_same_gradients(grads, reference_grad(cost, [x]), [x], random_values([x]))


def test_two_regions_separated_by_a_tensor_op():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    first = (pxm.exp(x * 0.5) * x).sum("b")
    between = px.as_xtensor(pt.log1p(first.values**2), dims=("a",))
    second = (pxm.tanh(between) * 3.0).cumsum("a")
    cost = weighted_cost(second)

    grads = pt.grad(cost, [x])
    assert len(lazy_nodes(grads)) == 2
    assert not [n for n in graph_nodes(grads) if isinstance(n.op, CAReduce)]
    assert_same_gradients(grads, reference_grad(cost, [x]), [x], random_values([x]))


@pytest.mark.parametrize("name", list(GRAPHS))
def test_no_tensor_reduction_before_compilation(name):
    _, wrt, cost = GRAPHS[name]()
    grads = pt.grad(cost, wrt)
    nodes = graph_nodes(grads)
    assert len(lazy_nodes(grads)) == 1
    assert not [n for n in nodes if isinstance(n.op, CAReduce)]


# ---------------------------------------------------------------------------
# 2. No lowering inside pt.grad
# ---------------------------------------------------------------------------


class Counter:
    def __init__(self):
        self.calls = 0

    def wrap(self, fn):
        def counted(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)

        return counted


def test_no_lowering_rewrite_runs_inside_grad(monkeypatch):
    import pytensor.graph.rewriting.utils as rewriting_utils
    import pytensor.tensor.math as ptm
    from pytensor.xtensor.rewriting.reduction import lower_reduce

    rewrites = Counter()
    monkeypatch.setattr(
        rewriting_utils, "rewrite_graph", rewrites.wrap(rewriting_utils.rewrite_graph)
    )
    reduce_lowerings = Counter()
    monkeypatch.setattr(lower_reduce, "transform", reduce_lowerings.wrap(lower_reduce.transform))
    sum_pullbacks = Counter()
    monkeypatch.setattr(ptm.Sum, "pullback", sum_pullbacks.wrap(ptm.Sum.pullback))
    # The lowerings of private graphs (a region, in the expansion).
    lowerings = Counter()
    monkeypatch.setattr(
        lazy_rewriting, "_lower_unchecked", lowerings.wrap(lazy_rewriting._lower_unchecked)
    )

    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    out = (pxm.exp(x * 0.5) * x).sum("b") + x.std("b")
    cost = weighted_cost(out)
    grads = pt.grad(cost, [x])
    assert lazy_nodes(grads)
    assert rewrites.calls == 0
    assert reduce_lowerings.calls == 0
    assert sum_pullbacks.calls == 0
    assert lowerings.calls == 0

    fn = pytensor.function([x], grads, mode="FAST_COMPILE")
    assert reduce_lowerings.calls > 0
    assert sum_pullbacks.calls > 0  # the expansion takes the tensor pullback
    assert lowerings.calls > 0  # the expansion lowers its private region
    assert not xop_nodes(fn.maker.fgraph.apply_nodes)

    [lowered] = lower([cost])
    [ref] = pt.grad(lowered, [x])
    values = random_values([x])
    np.testing.assert_allclose(fn(*values)[0], compile_values([x], [ref], values)[0], rtol=1e-7)


# ---------------------------------------------------------------------------
# 3. The compiled gradient is fully lowered and equals the reference's
# ---------------------------------------------------------------------------

def test_grad_of_a_tensor_graph_does_not_import_xtensor(monkeypatch):
    """Whether a node is un-lowered is asked of xtensor's classes only once
    ``pytensor.xtensor`` is imported: ``grad`` of a tensor graph must not
    import it (that registers its rewrites for every compilation)."""
    for name in [name for name in sys.modules if name.startswith("pytensor.xtensor")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(
        unlowered, "_xtensor_ops", functools.cache(unlowered._xtensor_ops.__wrapped__)
    )
    x = pt.vector("x")
    cost = (pt.exp(x) * x).sum()
    [g] = pt.grad(cost, [x])
    jvp = pytensor.gradient.pushforward(pt.exp(x), x, pt.ones_like(x))
    assert not [name for name in sys.modules if name.startswith("pytensor.xtensor")]
    value = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(g.eval({x: value}), np.exp(value) * (value + 1))
    np.testing.assert_allclose(jvp.eval({x: value}), np.exp(value))


@pytest.mark.parametrize("name", list(GRAPHS))
def test_compiled_gradient_against_the_reference(name):
    inputs, wrt, cost = GRAPHS[name]()
    grads = pt.grad(cost, wrt)
    ours_fn, _ = n_apply_nodes(inputs, [cost, *grads])
    [lowered] = lower([cost])
    refs = pt.grad(lowered, wrt)
    ref_fn, _ = n_apply_nodes(inputs, [lowered, *refs])
    check_compiled_graph(ours_fn, ref_fn)

    values = random_values(inputs)
    got = ours_fn(*values)
    want = ref_fn(*values)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("lower_all", [False, True], ids=["expand", "lower"])
@pytest.mark.parametrize("name", list(GRAPHS))
def test_expand_lazy_pullbacks_returns_an_expanded_copy(name, lower_all):
    """No lazy node is left in the copy (nor any XOp with ``lower=True``); the
    gradient it was made from still has its lazy nodes, and both compute the
    reference's values."""
    inputs, wrt, cost = GRAPHS[name]()
    grads = pt.grad(cost, wrt)
    expanded = expand_lazy_pullbacks(grads, lower=lower_all)
    assert not lazy_nodes(expanded)
    if lower_all:
        assert not xop_nodes(graph_nodes(expanded))
    assert lazy_nodes(grads)

    [lowered] = lower([cost])
    refs = pt.grad(lowered, wrt)
    values = random_values(inputs)
    assert_same_gradients(expanded, refs, inputs, values)
    assert_same_gradients(grads, refs, inputs, values)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_expansion_lowers_the_shared_forward_pass_once(name):
    """Expanding ``[cost, *grads]`` replaces the region's forward pass by the
    lowered copy the pullback is built on: nothing is left for ``lower_xtensor``
    to lower a second time, and the expanded graph computes the same values."""
    inputs, wrt, cost = GRAPHS[name]()
    grads = pt.grad(cost, wrt)
    assert xop_nodes(graph_nodes([cost]))
    expanded = expand_lazy_pullbacks([cost, *grads])
    assert not lazy_nodes(expanded)
    assert not xop_nodes(graph_nodes(expanded))
    # The user's forward graph is still un-lowered: only the copy was rewritten.
    assert xop_nodes(graph_nodes([cost]))

    [lowered] = lower([cost])
    refs = pt.grad(lowered, wrt)
    assert_same_gradients(expanded, [lowered, *refs], inputs, random_values(inputs))


def test_expansion_without_the_forward_pass_leaves_it_alone():
    """Compiling the gradient alone (no forward output) lowers only the copy."""
    inputs, wrt, cost = GRAPHS["mean_std"]()
    grads = pt.grad(cost, wrt)
    expanded = expand_lazy_pullbacks(grads)
    assert not lazy_nodes(expanded) and not xop_nodes(graph_nodes(expanded))
    [lowered] = lower([cost])
    assert_same_gradients(expanded, pt.grad(lowered, wrt), inputs, random_values(inputs))


# ---------------------------------------------------------------------------
# 4. dprint shows the region
# ---------------------------------------------------------------------------


def test_dprint_shows_lazy_pullback_and_inner_graph():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    cost = weighted_cost(pxm.exp(x).transpose("b", "a").sum("a"))
    g = pt.grad(cost, x)
    text = pytensor.dprint(g, file="str")
    assert "LazyPullback" in text
    assert "Inner graphs:" in text
    inner = text.split("Inner graphs:", 1)[1]
    assert "LazyPullback" in inner
    for op_name in ("XElemwise", "Transpose", "XReduce"):
        assert op_name in inner, (op_name, text)


# ---------------------------------------------------------------------------
# 5. The lower_xtensor workaround expands gradient graphs too
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(GRAPHS))
def test_rewrite_graph_lower_xtensor_expands(name):
    inputs, wrt, cost = GRAPHS[name]()
    grads = pt.grad(cost, wrt)
    assert lazy_nodes(grads)
    rewritten = rewrite_graph(grads, include=("lower_xtensor",), clone=True)
    leftover = [
        n for n in graph_nodes(rewritten) if isinstance(n.op, XOp | LazyPullback)
    ]
    assert not leftover, leftover
    # The user's gradients are untouched by the clone=True rewrite.
    assert lazy_nodes(grads)
    [lowered] = lower([cost])
    refs = pt.grad(lowered, wrt)
    assert_same_gradients(rewritten, refs, inputs, random_values(inputs))


# ---------------------------------------------------------------------------
# 6. Pickling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small_mlp", "mean_std"])
def test_pickle_gradient_graph(name):
    inputs, wrt, cost = GRAPHS[name]()
    grads = pt.grad(cost, wrt)
    loaded_inputs, loaded_grads = pickle.loads(pickle.dumps((inputs, grads)))
    assert lazy_nodes(loaded_grads)
    for a, b in zip(lazy_nodes(grads), lazy_nodes(loaded_grads), strict=True):
        # (Not ``a.op == b.op``: pytensor 3.3's XReduce compares by identity, so an
        # unpickled copy of a region holding one is a different region.)
        assert str(a.op) == str(b.op)
        assert a.op.wrt == b.op.wrt
        assert [type(n.op) for n in a.op.fgraph.toposort()] == [
            type(n.op) for n in b.op.fgraph.toposort()
        ]
    values = random_values(inputs)
    got = compile_values(loaded_inputs, loaded_grads, values)
    [lowered] = lower([cost])
    want = compile_values(inputs, pt.grad(lowered, wrt), values)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------------------
# 7. Merging identical lazy gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["elemwise_reduction_chain", "small_mlp"])
def test_identical_gradients_merge(name):
    inputs, wrt, cost = GRAPHS[name]()
    first = pt.grad(cost, wrt)
    second = pt.grad(cost, wrt)
    [lazy1], [lazy2] = lazy_nodes(first), lazy_nodes(second)
    assert lazy1 is not lazy2
    assert lazy1.op is not lazy2.op
    assert lazy1.op == lazy2.op
    assert hash(lazy1.op) == hash(lazy2.op)
    n_wrt = len(wrt)

    # MergeOptimizer alone folds the two lazy nodes into one (before any expansion).
    fgraph = FunctionGraph(outputs=[*first, *second], clone=True)
    assert len([n for n in fgraph.apply_nodes if isinstance(n.op, LazyPullback)]) == 2
    MergeOptimizer().rewrite(fgraph)
    assert len([n for n in fgraph.apply_nodes if isinstance(n.op, LazyPullback)]) == 1
    assert fgraph.outputs[:n_wrt] == fgraph.outputs[n_wrt:]

    # Requesting the same variable twice adds one DeepCopyOp per repeated output,
    # so the yardstick is one gradient requested twice.
    one_fn, one = n_apply_nodes(inputs, [cost, *first, *first])
    both_fn, both = n_apply_nodes(inputs, [cost, *first, *second])
    assert both == one
    assert sorted(str(n.op) for n in both_fn.maker.fgraph.apply_nodes) == sorted(
        str(n.op) for n in one_fn.maker.fgraph.apply_nodes
    )
    values = random_values(inputs)
    out = both_fn(*values)
    n = len(wrt)
    for a, b in zip(out[1 : 1 + n], out[1 + n :], strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_regions_do_not_compare_equal():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    [g1] = pt.grad(weighted_cost(pxm.exp(x).sum("a")), [x])
    [g2] = pt.grad(weighted_cost(pxm.sin(x).sum("a")), [x])
    [lazy1], [lazy2] = lazy_nodes([g1]), lazy_nodes([g2])
    assert lazy1.op != lazy2.op
