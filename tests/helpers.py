"""The one helper module of the tests.

The reference gradient (lower first, then ``pt.grad``) and comparisons with it;
the check of an Op family's gradient (`check_family`); finite differences;
graph inspection (lazy nodes, snapshots); and graphs shared by several files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
from pytensor.compile.builders import OpFromGraph
from pytensor.compile.mode import Mode, get_mode
from pytensor.graph.basic import Variable
from pytensor.graph.replace import clone_replace
from pytensor.graph.rewriting.utils import rewrite_graph
from pytensor.graph.traversal import ancestors, applys_between, graph_inputs
from pytensor.scan.op import Scan
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.type import continuous_dtypes
from pytensor.xtensor.basic import XOp
from pytensor.xtensor.type import XTensorType

from pytensor_lazy_pullback import LazyPullback, integration_disabled
from pytensor_lazy_pullback.unlowered import LazyRegionOp

MODE = "FAST_COMPILE"
"""Mode of most value checks: cheapest to compile; other backends are covered
by the mode matrix."""

COUNT_MODE = Mode(linker="py", optimizer=get_mode("NUMBA").optimizer)
"""FAST_RUN's rewrites without a JIT linker: for counting compiled apply nodes."""


def lower(outputs):
    """``rewrite_graph(outputs, include=("lower_xtensor",), clone=True)``."""
    return rewrite_graph(outputs, include=("lower_xtensor",), clone=True)


def reference_grad(
    cost: Variable,
    wrt: Sequence[Variable],
    consider_constant: Sequence[Variable] = (),
    **grad_kwargs,
) -> list[Variable]:
    """The contract's reference: lower the cost, then ``pt.grad``.

    A ``wrt`` or ``consider_constant`` variable inside the graph is first
    replaced by a fresh input (so lowering cannot remove it), and substituted
    back afterwards.  Each ``wrt`` is differentiated on its own, so a path
    through another (interior) ``wrt`` is kept, as ``pt.grad`` keeps it.
    """
    results = []
    for w in wrt:
        cut = [v for v in [w, *consider_constant] if v.owner is not None]
        fresh = {v: v.type(name=v.name) for v in cut}
        cut_cost = clone_replace(cost, replace=fresh) if fresh else cost
        g = pt.grad(lower(cut_cost), fresh.get(w, w), **grad_kwargs)
        back = {f: v for v, f in fresh.items()}
        results.append(clone_replace(g, replace=back) if back else g)
    return results


def reference_transform(transform, cost):
    """`transform` (``hessian``, ``jacobian``, ...) of the lowered cost, with
    PyTensor's own gradient machinery (the integration off)."""
    with integration_disabled():
        return transform(lower(cost))


def compile_values(inputs, outputs, values, mode=MODE):
    fn = pytensor.function(inputs, outputs, mode=mode, on_unused_input="ignore")
    return fn(*values)


def refines(ours: tuple, ref: tuple) -> bool:
    """Each static length of ``ours`` is the reference's, or the reference does not know it."""
    return len(ours) == len(ref) and all(r is None or o == r for o, r in zip(ours, ref))


def assert_same_gradients(
    ours, reference, inputs, values, mode=MODE, rtol=1e-7, atol=1e-10, refined_shapes=False
):
    """Ours and the reference agree in value, dtype, static shape and dims.

    With `refined_shapes`, our static shape may refine the reference's: the
    reference's pullback sometimes loses a static length (``None``) that ours,
    typed like the region input, keeps; every known length must still agree
    (the strict comparison is ``test_convolve1d_static_shape_equals_reference``).
    """
    for o, r in zip(ours, reference, strict=True):
        assert o.type.dtype == r.type.dtype, (o.type, r.type)
        if refined_shapes:
            assert refines(o.type.shape, r.type.shape), (o.type, r.type)
        else:
            assert o.type.shape == r.type.shape, (o.type, r.type)
        assert type(o.type) is type(r.type), (o.type, r.type)
        if isinstance(o.type, XTensorType):
            assert o.type.dims == r.type.dims, (o.type, r.type)
    got = compile_values(inputs, list(ours), values, mode)
    want = compile_values(inputs, list(reference), values, mode)
    for g, w in zip(got, want, strict=True):
        assert np.shape(g) == np.shape(w)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def random_values(inputs, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for inp in inputs:
        shape = inp.type.shape
        if inp.type.dtype.startswith("int"):
            out.append(rng.integers(0, 3, size=shape).astype(inp.type.dtype))
        else:
            out.append(rng.uniform(0.5, 1.5, size=shape).astype(inp.type.dtype))
    return out


def weighted_cost(out: Variable, seed: int = 1) -> Variable:
    """A scalar cost ``sum(out * W)`` with fixed, non-uniform weights ``W``.

    Weights make every entry of the cotangent different, so a transposed or
    misplaced cotangent cannot go unnoticed.
    """
    rng = np.random.default_rng(seed)
    weights = rng.uniform(-1, 1, size=out.type.shape).astype(out.type.dtype)
    if isinstance(out.type, XTensorType):
        return (out * px.as_xtensor(weights, dims=out.type.dims)).sum().values
    return (out * weights).sum()


def any_weighted_cost(out, seed=1):
    """`weighted_cost`, also for outputs of symbolic shape.

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


def check_family(
    fn: Callable[..., Variable],
    dims: Sequence[Sequence[str]],
    shapes: Sequence[Sequence[int]],
    rtol: float = 1e-7,
    *,
    ints: Sequence[Variable] = (),
    int_values: Sequence = (),
    refined_shapes: bool = False,
):
    """Check ``fn``'s gradient: the reference's values and finite differences.

    ``fn`` takes one labelled input per ``dims``/``shapes`` entry, then the
    integer inputs `ints`, and returns a (labelled or plain) output, of static or
    symbolic shape.  The gradient is taken with respect to the plain tensors
    under the labels, and with respect to the labelled inputs (never the
    integer ones, which are inputs of the compiled functions, with values
    `int_values`, and shared variables holding them for finite differences).
    `refined_shapes`: see `assert_same_gradients`.
    """
    tensors = [pt.tensor(f"t{i}", shape=tuple(s)) for i, s in enumerate(shapes)]
    labelled = [px.as_xtensor(t, dims=tuple(d)) for t, d in zip(tensors, dims, strict=True)]
    cost = any_weighted_cost(fn(*labelled, *ints))
    inputs = [*tensors, *ints]
    values = [*random_values(tensors), *int_values]
    compare = partial(assert_same_gradients, rtol=rtol, refined_shapes=refined_shapes)

    ours = pt.grad(cost, tensors)
    assert_lazy(ours)
    assert_no_integer_cotangent(ours)
    compare(ours, reference_grad(cost, tensors), inputs, values)

    ours_x = pt.grad(cost, labelled)
    for g, x in zip(ours_x, labelled, strict=True):
        assert g.type.dims == x.type.dims
    compare(ours_x, reference_grad(cost, labelled), inputs, values)

    shared_ints = [
        pytensor.shared(np.asarray(v, dtype=i.type.dtype))
        for i, v in zip(ints, int_values, strict=True)
    ]

    def fun(*ts):
        xs = [px.as_xtensor(t, dims=tuple(d)) for t, d in zip(ts, dims, strict=True)]
        return any_weighted_cost(fn(*xs, *shared_ints))

    pytensor.gradient.verify_grad(
        fun, values[: len(tensors)], rng=np.random.default_rng(2), mode=MODE
    )


def central_differences(fn, x0, eps=1e-6):
    """Numerical jacobian of ``fn`` at ``x0``: shape ``(*fn(x0).shape, *x0.shape)``."""
    y0 = np.asarray(fn(x0))
    jac = np.empty(y0.shape + x0.shape)
    for idx in np.ndindex(*x0.shape):
        step = np.zeros_like(x0)
        step[idx] = eps
        jac[(Ellipsis, *idx)] = (np.asarray(fn(x0 + step)) - np.asarray(fn(x0 - step))) / (2 * eps)
    return jac


def graph_nodes(outputs):
    """The apply nodes of the graph of `outputs` (not inside inner graphs)."""
    return list(applys_between(list(graph_inputs(outputs)), outputs))


def lazy_nodes(outputs, op_type=LazyPullback):
    """The `LazyPullback` (or `op_type`) nodes of the graph of `outputs`."""
    return [node for node in graph_nodes(outputs) if isinstance(node.op, op_type)]


def all_nodes(outputs):
    """Every apply node of a graph, also inside inner graphs (Scan, OpFromGraph, ...),
    but not inside a `LazyPullback`'s region."""
    found = []
    stack = graph_nodes(list(outputs))
    while stack:
        node = stack.pop()
        found.append(node)
        inner_outputs = getattr(node.op, "inner_outputs", None)
        if inner_outputs is not None and not isinstance(node.op, LazyPullback):
            inner_inputs = node.op.inner_inputs
            stack.extend(applys_between(inner_inputs, inner_outputs))
    return found


def assert_lazy(grads):
    """The gradient graph holds at least one `LazyPullback` (nothing was lowered)."""
    assert lazy_nodes(list(grads)), "expected the gradient to hold a LazyPullback"


def n_apply_nodes(inputs, outputs, mode=COUNT_MODE):
    fn = pytensor.function(inputs, outputs, mode=mode, on_unused_input="ignore")
    return fn, n_nodes(fn.maker.fgraph)


def n_nodes(fgraph):
    """Apply nodes of `fgraph`, counting those of Scan/OpFromGraph inner graphs too."""
    total = 0
    for node in fgraph.apply_nodes:
        total += 1
        if isinstance(node.op, Scan | OpFromGraph):
            total += n_nodes(node.op.fgraph)
    return total


def assert_fully_lowered(fn):
    """No XOp and no lazy derivative is left in the compiled `fn`, inner graphs included."""
    nodes = all_nodes(fn.maker.fgraph.outputs)
    assert not [n for n in nodes if isinstance(n.op, XOp | LazyRegionOp)], fn.maker.fgraph


def check_compiled_graph(fn, ref_fn):
    """The compiled `fn` is fully lowered and no larger than the reference's `ref_fn`.

    Apply nodes are counted inside Scan and OpFromGraph too.  (In the in-tree
    form, only the structure is checked: node counts of another pipeline change
    with unrelated rewrites.)
    """
    assert_fully_lowered(fn)
    assert n_nodes(fn.maker.fgraph) <= n_nodes(ref_fn.maker.fgraph), (
        n_nodes(fn.maker.fgraph),
        n_nodes(ref_fn.maker.fgraph),
    )


def batched_cores(nodes):
    """Names of the core Op types of the ``Blockwise`` nodes among `nodes`."""
    return sorted(
        type(node.op.core_op).__name__ for node in nodes if isinstance(node.op, Blockwise)
    )


def check_batched_graph(ours_nodes, ref_nodes):
    """No batched forward Op (``Einsum``, ``Split``), and no more batched nodes than the reference.

    Where the reference batches the pullback of an ``Einsum`` (an
    ``OpFromGraph``), ours batches a ``Dot``: the expansion differentiates the
    inlined ``Einsum``.  (In the in-tree form, only the structure is checked.)
    """
    ours, ref = batched_cores(ours_nodes), batched_cores(ref_nodes)
    assert not {"Einsum", "Split", "OpFromGraph"} & set(ours), ours
    assert len(ours) <= len(ref), (ours, ref)


def xop_nodes(fgraph_nodes):
    return [n for n in fgraph_nodes if isinstance(n.op, XOp | LazyPullback)]


def graph_snapshot(outputs):
    """Every variable's owner, name, tag, type and output index; every node's inputs, outputs and Op."""
    variables = list(ancestors(outputs))
    nodes = graph_nodes(outputs)
    return (
        {
            id(v): (v, v.owner, v.name, dict(vars(v.tag)), v.type, getattr(v, "index", None))
            for v in variables
        },
        {id(n): (n, list(n.inputs), list(n.outputs), n.op) for n in nodes},
    )


def assert_graph_unchanged(before, after):
    """Assert two `graph_snapshot`\\ s of one graph are the same (nothing was mutated)."""
    (before_vars, before_nodes), (after_vars, after_nodes) = before, after
    assert before_vars.keys() == after_vars.keys(), "the set of variables of the graph changed"
    assert before_nodes.keys() == after_nodes.keys(), "the set of apply nodes of the graph changed"
    for key, (var, owner, *facts) in before_vars.items():
        _, owner_after, *facts_after = after_vars[key]
        assert owner_after is owner, f"owner of {var} changed"
        assert facts_after == facts, f"name, tag, type or index of {var} changed"
    for key, (node, inputs, outputs, op) in before_nodes.items():
        _, inputs_after, outputs_after, op_after = after_nodes[key]
        assert len(inputs_after) == len(inputs), node
        assert all(a is b for a, b in zip(inputs_after, inputs)), f"inputs of {node} changed"
        assert all(a is b for a, b in zip(outputs_after, outputs, strict=True)), node
        assert op_after is op, f"Op of {node} changed"


# ---------------------------------------------------------------------------
# Graphs shared by several test files
# ---------------------------------------------------------------------------


def interior_graph():
    """x -> h (XOp, interior) -> v (plain tensor, interior) -> relabelled -> cost."""
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    h = pxm.exp(x * 0.5) * x  # output of an XOp in the middle of the region
    h.name = "h"
    v = h.sum("b").values  # a plain tensor in the middle
    v.name = "v"
    back = px.as_xtensor(pt.sin(v) * v, dims=("a",))
    cost = weighted_cost(back * h + x.mean("a"))
    return x, h, v, cost


W_IA = np.linspace(-0.8, 0.9, 12).reshape(4, 3)
"""Fixed non-uniform weights of dims ("i", "a") (distinct sizes: a transposition cannot go unnoticed)."""


def vector_fn(x):
    """dims ("a",) -> dims ("i",), size 3 -> 4."""
    return pxm.sin(x * px.as_xtensor(W_IA, dims=("i", "a"))).sum("a") * pxm.exp(x * 0.3).sum("a")


def per_example_model():
    """A one-example squared error of a labelled model: weights ``w``, plain data ``xi``, ``yi``."""
    w, xi, yi = pt.vector("w", shape=(3,)), pt.vector("xi", shape=(3,)), pt.scalar("yi")
    pred = pxm.tanh(px.dot(px.as_xtensor(xi, dims=("f",)), px.as_xtensor(w, dims=("f",)), dim="f"))
    cost = ((pred - px.as_xtensor(yi, dims=())) ** 2).values
    return w, xi, yi, cost



# Families of the transform tests (jacobian, hessian): each returns
# ``(inputs, w, out)``, ``w`` the last input (plain weights under a dim) and
# ``out`` a plain vector computed through xtensor Ops.


def as_xtensor_constant(data, dims):
    return px.as_xtensor(pt.constant(data), dims=dims)


def dense_family():
    """tanh(dot(x, w)) weighted by a labelled mean: a forward ``Einsum``."""
    xt = pt.matrix("x", shape=(5, 7))
    x = px.as_xtensor(xt, dims=("a", "b"))
    wt = pt.vector("w", shape=(7,))
    w = px.as_xtensor(wt, dims=("b",))
    out = px.math.tanh(px.dot(x, w, dim="b")) * px.math.exp(x).mean("b")
    return [xt, wt], wt, out.values


def index_concat_family():
    """Slices and a gather of a labelled vector, concatenated, then a cumsum: a forward ``Split``."""
    rng = np.random.default_rng(3)
    pt_ = pt.vector("p", shape=(10,))
    p = px.as_xtensor(pt_, dims=("i",))
    idx = as_xtensor_constant(rng.integers(0, 10, size=6), ("j",))
    head = p.isel(i=slice(0, 4)).rename(i="k")
    tail = px.math.exp(p.isel(i=slice(4, None))).rename(i="k")
    gathered = px.math.sin(p.isel(i=idx)).rename(j="k")
    c = px.concat([head, tail * 0.5, gathered], dim="k")
    out = px.math.tanh(c) * c.cumsum("k")
    return [pt_], pt_, out.values


def glm_family():
    """A Poisson log-likelihood per observation, rate = exp(dot(X, beta))."""
    rng = np.random.default_rng(4)
    X = as_xtensor_constant(rng.normal(size=(9, 4)) * 0.3, ("obs", "feature"))
    counts = as_xtensor_constant(rng.poisson(2.0, size=9).astype("float64"), ("obs",))
    bt = pt.vector("beta", shape=(4,))
    rate = px.math.exp(px.dot(X, px.as_xtensor(bt, dims=("feature",)), dim="feature"))
    return [bt], bt, (counts * px.math.log(rate) - rate).values


TRANSFORM_FAMILIES = {"dense": dense_family, "index_concat": index_concat_family, "glm": glm_family}
