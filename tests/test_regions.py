"""Regions: how ``pt.grad`` groups un-lowered nodes into `LazyPullback` nodes.

An input read by several nodes of a region accumulates its cotangents; a region
output also read inside its region, or nested in another once lowered, gets
every cotangent; regions joined through ordinary Ops stay separate (convex, no
cycle); a diamond is one region; a region's connection pattern is
PyTensor's ``io_connection_pattern``.  Each gradient equals the reference (lower
first, then ``pt.grad``) and, where the graph has plain-tensor inputs, finite
differences.
"""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op, io_connection_pattern
from pytensor.graph.traversal import ancestors, io_toposort
from pytensor.xtensor.type import XTensorVariable

from helpers import (
    MODE,
    assert_graph_unchanged,
    assert_lazy,
    assert_same_gradients,
    compile_values,
    graph_snapshot,
    interior_graph,
    lazy_nodes,
    random_values,
    reference_grad,
    weighted_cost,
)

from pytensor_lazy_pullback.op import collapse_regions
from pytensor_lazy_pullback.regions import Region


def check_one_region(fn, t):
    """``fn(t)``'s gradient is one LazyPullback, equals the reference and finite differences."""
    cost = fn(t)
    ours = pt.grad(cost, [t])
    assert len(lazy_nodes(ours)) == 1
    values = random_values([t])
    assert_same_gradients(ours, reference_grad(cost, [t]), [t], values)
    pytensor.gradient.verify_grad(fn, values, rng=np.random.default_rng(2), mode=MODE)


# ---------------------------------------------------------------------------
# 1. Repeated inputs accumulate
# ---------------------------------------------------------------------------


def test_repeated_input_cube():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    cost = weighted_cost(x * x * x)
    [g] = ours = pt.grad(cost, [x])
    assert_lazy(ours)
    assert isinstance(g, XTensorVariable) and g.type.dims == ("a", "b")
    values = random_values([x])
    assert_same_gradients(ours, reference_grad(cost, [x]), [x], values)
    # Analytically: d/dx sum(x**3 * W) = 3 x**2 W, so a missed accumulation is visible.
    [got] = compile_values([x], ours, values)
    rng = np.random.default_rng(1)
    weights = rng.uniform(-1, 1, size=(3, 4))
    np.testing.assert_allclose(got, 3 * values[0] ** 2 * weights, rtol=1e-12)


def test_input_used_by_several_region_nodes():
    t = pt.tensor("t", shape=(3, 4))

    def fn(t):
        x = px.as_xtensor(t, dims=("a", "b"))
        # x feeds four different XOps of one region (and one of them twice).
        out = pxm.exp(x) * x.sum("a") + x.transpose("b", "a").mean("b") * pxm.sin(x * x)
        return weighted_cost(out)

    check_one_region(fn, t)


# ---------------------------------------------------------------------------
# 2. Region outputs read again
# ---------------------------------------------------------------------------


def test_region_output_also_consumed_inside_its_region():
    """``h`` is read inside its region (by ``sum``) and, as a region output, by a
    later region: the plain ``pt.grad(cost, x)`` of `interior_graph`."""
    x, _, _, cost = interior_graph()
    ours = pt.grad(cost, [x])
    assert_lazy(ours)
    assert_same_gradients(ours, reference_grad(cost, [x]), [x], random_values([x]))


def test_region_outputs_nested_once_lowered():
    """Both ``h.values`` and ``h.sum().values`` leave the region; lowered, the first
    (``exp(t)``) is an ancestor of the second (``Sum(exp(t))``)."""
    x = px.xtensor("x", dims=("a",), shape=(3,))
    h = pxm.exp(x)
    weights = np.array([1.0, -2.0, 0.5])
    cost = h.sum().values + (h.values * weights).sum()
    ours = pt.grad(cost, [x])
    values = random_values([x])
    [got] = compile_values([x], ours, values)
    # d/dx [sum(e^x) + sum(w e^x)] = e^x (1 + w); dropping the sum's cotangent gives e^x w.
    np.testing.assert_allclose(got, np.exp(values[0]) * (1 + weights), rtol=1e-12)
    assert_same_gradients(ours, reference_grad(cost, [x]), [x], values)


def test_region_output_also_consumed_inside_its_region_two_regions():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    h = pxm.exp(x) * x
    back = px.as_xtensor(pt.sin(h.sum("b").values), dims=("a",))
    cost = (back * h).sum().values
    ours = pt.grad(cost, [x])
    assert_same_gradients(ours, reference_grad(cost, [x]), [x], random_values([x]))


# ---------------------------------------------------------------------------
# 3. Convexity: regions joined through ordinary Ops
# ---------------------------------------------------------------------------


def test_convexity_two_regions_joined_by_tensor_ops():
    t = pt.tensor("t", shape=(3, 4))

    def fn(t):
        x = px.as_xtensor(t, dims=("a", "b"))
        first = (pxm.sin(x) * x).sum("b")  # region 1
        through = px.as_xtensor(pt.exp(first.values * 0.3), dims=("a",))  # tensor Ops
        # region 2 reads both region 1's output and the tensor result derived from it
        second = (first * through + x).std("b") * through
        return weighted_cost(second)

    cost = fn(t)
    ours = pt.grad(cost, [t])
    # Merging the two regions would make a cycle through the tensor Ops.
    assert len(lazy_nodes(ours)) >= 2
    for node in lazy_nodes(ours):
        # No LazyPullback's inputs depend on its own outputs (no cycle).
        assert not set(node.outputs) & set(ancestors(node.inputs))
    values = random_values([t])
    assert_same_gradients(ours, reference_grad(cost, [t]), [t], values)
    pytensor.gradient.verify_grad(fn, values, rng=np.random.default_rng(2), mode=MODE)


def test_convexity_chain_of_alternating_regions():
    x = px.xtensor("x", dims=("a",), shape=(4,))
    h = x
    for i in range(4):
        region = pxm.tanh(h * (1.0 + 0.1 * i)) + h
        # A factor near 1: the values neither vanish nor blow up along the chain.
        h = px.as_xtensor(1.0 + 0.1 * pt.tanh(region.values), dims=("a",)) * region
    cost = weighted_cost(h)
    ours = pt.grad(cost, [x])
    assert_lazy(ours)
    values = random_values([x])
    [want] = compile_values([x], reference_grad(cost, [x]), values)
    assert np.all(np.abs(want) > 1e-3)  # a meaningful comparison
    assert_same_gradients(ours, reference_grad(cost, [x]), [x], values)


# ---------------------------------------------------------------------------
# 4. Diamond
# ---------------------------------------------------------------------------


def test_diamond():
    t = pt.tensor("t", shape=(3, 4))

    def fn(t):
        x = px.as_xtensor(t, dims=("a", "b"))
        left = pxm.exp(x * 0.5).sum("a")  # dims (b,)
        right = (x * x).mean("b")  # dims (a,)
        return weighted_cost(left * right + x)  # recombined, broadcast by name

    check_one_region(fn, t)


def test_diamond_labelled_leaf():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    left = pxm.exp(x * 0.5).sum("a")
    right = (x * x).mean("b")
    cost = weighted_cost(left * right + x)
    ours = pt.grad(cost, [x])
    assert_same_gradients(ours, reference_grad(cost, [x]), [x], random_values([x]))


# ---------------------------------------------------------------------------
# 5. Connection pattern
# ---------------------------------------------------------------------------


def test_connection_pattern_is_pytensors():
    """`Region.connection_pattern` answers as PyTensor's ``io_connection_pattern``.

    Covers a disconnected index, `Broadcast` (each input to its own output),
    ``zeros_like`` (its input disconnected), a conversion (an Op without
    ``connection_pattern``), an ordinary Op, an output that is an input, and an
    input no output reads.
    """
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    y = px.xtensor("y", dims=("b",), shape=(4,))
    idx = px.xtensor("idx", dims=("c",), shape=(2,), dtype="int64")
    t = pt.tensor("t", shape=(3, 4))
    unused = px.xtensor("unused", dims=("a",), shape=(3,))
    bx, by = px.broadcast(x, y)
    gathered = pxm.sin(x).isel(a=idx)
    zeros = px.shape.zeros_like(y) + 1.0
    labelled = px.as_xtensor(pt.exp(t), dims=("a", "b")) * x
    inputs = [x, y, idx, t, unused]
    outputs = [bx, by, gathered, zeros, labelled, y]
    region = Region(nodes=io_toposort(inputs, outputs), inputs=inputs, outputs=outputs)
    want = io_connection_pattern(inputs, outputs)
    assert region.connection_pattern() == want
    assert want[2] == [False] * len(outputs)  # the index
    assert want[0] == [True, False, True, False, True, False]  # Broadcast
    assert want[1] == [False, True, False, False, False, True]  # zeros_like
    assert want[3] == [False, False, False, False, True, False]  # the conversion


# ---------------------------------------------------------------------------
# 6. What grad's bookkeeping sees of a region
# ---------------------------------------------------------------------------


def test_region_is_a_real_apply_with_fresh_outputs_and_the_graph_is_untouched():
    """Each region is one real `Apply` for ``_populate_grad_dict``, with fresh
    outputs that get the consumers and the given cotangents of the region
    outputs they stand for; the user's graph is never changed.

    Three regions in a chain: ``x`` to ``h``, (``h``, ``x``) to ``sin(h) * x``,
    and that plus the tensor Op's result to the cost.  ``h`` is a ``wrt``
    variable, output by the first and read by the second and by a tensor Op
    (through a conversion); the cost is an output of the third.
    """
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    h = pxm.exp(x * 0.5) * x
    h.name = "h"
    cost = weighted_cost(pxm.sin(h) * x + px.as_xtensor(pt.tanh(h.values), dims=("a", "b")))
    wrt = [x, h]
    before = graph_snapshot([cost])

    var_to_app_to_idx = pytensor.gradient._populate_var_to_app_to_idx([cost], wrt, None)
    seed = pt.constant(1.0)
    grad_dict = {cost: seed}
    collapsed = collapse_regions(var_to_app_to_idx, grad_dict, wrt)
    users_nodes = {var.owner for var in ancestors([cost])}
    stand_ins = list(
        dict.fromkeys(app for apps in collapsed.values() for app in apps if app not in users_nodes)
    )
    assert len(stand_ins) == 3
    for node in stand_ins:
        assert type(node) is Apply and isinstance(node.op, Op)
        assert str(node.op).startswith("region of ")
        region = node.op.region
        assert node.inputs == region.inputs
        assert [out.type for out in node.outputs] == [out.type for out in region.outputs]
        for out, fresh in zip(region.outputs, node.outputs, strict=True):
            assert fresh.owner is node and fresh is not out and out.owner in users_nodes
            assert collapsed.get(fresh) is collapsed.get(out)
            assert grad_dict.get(fresh) is grad_dict.get(out)
    assert any(grad_dict.get(fresh) is seed for node in stand_ins for fresh in node.outputs)
    assert_graph_unchanged(before, graph_snapshot([cost]))

    ours = pt.grad(cost, wrt)
    assert_graph_unchanged(before, graph_snapshot([cost]))
    # The stand-ins were bookkeeping only: none reaches the gradient graph.
    assert not any(
        var.owner is not None and type(var.owner.op) is type(stand_ins[0].op)
        for var in ancestors(ours)
    )
    assert len(lazy_nodes(ours)) == 3
    values = random_values([x])
    # Both gradients (h's through its consumers, x's through all three
    # regions) are the reference's; x's also finite differences.
    assert_same_gradients(ours, reference_grad(cost, wrt), [x], values)

    def cost_of(xt):
        x_new = px.as_xtensor(xt, dims=("a", "b"))
        h_new = pxm.exp(x_new * 0.5) * x_new
        return weighted_cost(
            pxm.sin(h_new) * x_new + px.as_xtensor(pt.tanh(h_new.values), dims=("a", "b"))
        )

    pytensor.gradient.verify_grad(cost_of, values, rng=np.random.default_rng(3), mode=MODE)
