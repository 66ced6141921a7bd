"""The ``expand_lazy_pullback`` rewrite: build each lazy pullback at compile time.

Upstream home: ``pytensor/tensor/rewriting/lazy_pullback.py``.  The rewrite
runs first in ``lower_xtensor`` (registered by the xtensor part); the
rebuilding of inner graphs, ``expand_inner_graphs``, in ``optdb`` before the
Scan rewrites.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from weakref import WeakKeyDictionary

from pytensor import config
from pytensor.compile import optdb
from pytensor.compile.builders import FinalizedOpFromGraph, OpFromGraph
from pytensor.compile.ops import view_op
import pytensor.gradient as gradient
from pytensor.gradient import (
    DisconnectedType,
    NullTypeGradError,
    disconnected_type,
    grad,
    pullback,
)
from pytensor.graph.basic import Apply, Constant, Variable, clone_get_equiv
from pytensor.graph.fg import FrozenFunctionGraph, FunctionGraph
from pytensor.graph.null_type import NullType
from pytensor.graph.rewriting.basic import (
    GraphRewriter,
    MergeOptimizer,
    NodeRewriter,
    dfs_rewriter,
    graph_rewriter,
    node_rewriter,
)
from pytensor.graph.rewriting.db import RewriteDatabaseQuery
from pytensor.graph.op import Op
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan
from pytensor.tensor.einsum import Einsum
from pytensor.tensor.rewriting.einsum import inline_optimized_einsum
from pytensor.tensor.type import float_dtypes

from pytensor_lazy_pullback.op import (
    LazyPullback,
    LazyPushforward,
    pushforward_by_pullbacks,
)
from pytensor_lazy_pullback.unlowered import (
    LazyRegionOp,
    LoweringError,
    is_conversion,
    is_unlowered,
    is_xtensor_variable,
    op_names,
)

__all__ = [
    "LazyPullbackExpansionError",
    "deep_pullback",
    "expand_inner_graphs",
    "expand_lazy_pullback",
    "expand_lazy_pullbacks",
    "expand_lazy_pullbacks_below",
    "graph_wide",
    "lower_graph",
    "lowered_cotangent_dtypes",
]


class LazyPullbackExpansionError(LoweringError):
    """A lazy derivative, or an inner graph holding one, cannot be expanded.

    Its message names the region (or the inner graph) and its inputs; the
    error met while lowering or differentiating it is its ``__cause__``.  As a
    `LoweringError`, PyTensor's rewriters re-raise it under any
    ``config.on_opt_error``: a lazy node left unexpanded cannot be run.
    """


def _expansion_error(err: Exception, node: Apply) -> LazyPullbackExpansionError:
    """`err`, met while expanding `node`, as a `LazyPullbackExpansionError` naming it."""
    if isinstance(err, LazyPullbackExpansionError):
        return err  # from a nested expansion: already names its region
    if isinstance(node.op, LazyRegionOp):
        # "pullback" or "pushforward"
        kind = type(node.op).__name__.removeprefix("Lazy").lower()
        inputs = ", ".join(str(inp) for inp in node.inputs[: len(node.op.fgraph.inputs)])
        what = (
            f"the lazy {kind} of the region [{op_names(node.op.fgraph.toposort())}] "
            f"with inputs ({inputs})"
        )
    else:
        what = f"the inner graph of {node.op}"
    return LazyPullbackExpansionError(f"{type(err).__name__}: {err} (while expanding {what})")


def _lowered_pushforward(node: Apply) -> list[Variable]:
    """The pushforward of a `LazyPushforward`'s lowered region, on the node's inputs.

    Built as the reference builds it once lowered: from each lowered Op's own
    ``pushforward`` (``use_op_pushforward``), or as a pullback of a pullback.
    """
    op: LazyPushforward = node.op
    inner = op.fgraph.unfreeze()
    lower_graph(inner)
    _inline_einsums(inner)
    n_in = len(inner.inputs)
    fresh_tangents = [tangent.type() for tangent in node.inputs[n_in:]]
    wrt = [inner.inputs[i] for i in op.wrt]
    if op.use_op_pushforward:
        tangents = gradient.pushforward(
            list(inner.outputs),
            wrt,
            fresh_tangents,
            disconnected_outputs="ignore",
            return_disconnected="disconnected",
            use_op_pushforward=True,
        )
    else:
        # Not PyTensor's pushforward_through_pullback: it takes the seeds it is
        # given as final, and a lowered region often outputs one of its inputs
        # (``x.values`` of ``as_xtensor(v)`` is ``v``), an ancestor of its other
        # outputs, whose tangent it would lose.
        tangents = pushforward_by_pullbacks(
            list(inner.outputs), wrt, fresh_tangents, "ignore", "disconnected"
        )
    tangents = [
        _zeros_like(out) if isinstance(t.type, DisconnectedType) else t
        for out, t in zip(inner.outputs, tangents, strict=True)
    ]
    equiv = _on_node_inputs(node, [*inner.inputs, *fresh_tangents], tangents)
    return [_like(out, equiv.get(t, t)) for out, t in zip(node.outputs, tangents, strict=True)]


def _lowered_pullback(
    node: Apply, fgraph: FunctionGraph | None
) -> tuple[list[Variable], dict[Variable, Variable]]:
    """The pullback of a `LazyPullback`'s lowered region, on the node's inputs.

    Where `fgraph` computes the region's forward outputs, they are also mapped
    to the lowered copy the pullback is built on, so the forward pass is
    lowered once, shared with the pullback.
    """
    op: LazyPullback = node.op
    inner = op.fgraph.unfreeze()
    forward = _find_forward(fgraph, node, inner) if fgraph is not None else {}
    n_in = len(inner.inputs)
    fresh_cotangents = [cotangent.type() for cotangent in node.inputs[n_in:]]
    grads, lowered = _pull_back_lowered_region(op, inner, fresh_cotangents, list(forward))

    equiv = _on_node_inputs(node, [*inner.inputs, *fresh_cotangents], [*grads, *lowered])
    new_grads = [
        _like(out, equiv.get(g, g)) for out, g in zip(node.outputs, grads, strict=True)
    ]
    replacements = {
        outer: _like(outer, equiv.get(low, low))
        for outer, low in zip(forward.values(), lowered, strict=True)
    }
    return new_grads, replacements


def _pull_back_lowered_region(
    op: LazyPullback,
    inner: FunctionGraph,
    cotangents: Sequence[Variable],
    tracked: Sequence[Variable] = (),
) -> tuple[list[Variable], list[Variable]]:
    """Lower `inner` (the unfrozen region of `op`) in place and pull `cotangents` back through it.

    The pullback is :func:`pytensor.gradient.pullback` (in chunks if the
    region is too deep for one call, see :func:`deep_pullback`) with respect
    to the inputs at the positions ``op.wrt``, as the reference would take it
    on the lowered graph.  Returns the cotangents of those inputs (zeros where
    disconnected) and the lowered copies of the `tracked` variables of
    `inner`.
    """
    n_out = len(inner.outputs)
    for var in tracked:
        inner.add_output(var)  # tracked through the lowering
    lower_graph(inner)
    _merge_input_conversions(inner)
    _inline_einsums(inner)
    outputs, lowered = inner.outputs[:n_out], inner.outputs[n_out:]
    wrt = [inner.inputs[i] for i in op.wrt]
    # Each output goes through its own view: `pullback` treats cotangents as
    # final (known_grads), so an output that is also an ancestor of another
    # output once lowered (or two outputs lowered to one variable) would
    # otherwise lose what flows back into it from the other output.
    grads = deep_pullback([view_op(out) for out in outputs], wrt, list(cotangents))
    grads = [
        _zeros_like(var) if isinstance(g.type, DisconnectedType) else g
        for var, g in zip(wrt, grads, strict=True)
    ]
    return grads, list(lowered)


def lowered_cotangent_dtypes(op: LazyPullback, cotangent_types: Sequence) -> list[str]:
    """The dtypes of the cotangents the expansion of `op` builds, one per position of ``op.wrt``.

    The cotangent of a discrete (integer or boolean) input, or of a float
    input in wider arithmetic, gets whatever float dtype the lowered Ops'
    pullbacks give it (a ``DimShuffle`` of an integer gives ``floatX`` zeros,
    an ``Elemwise`` addition its output's dtype, ...), which only the lowered
    region knows.  `cotangent_types` are the types of the cotangents of the
    region's outputs.  A disconnected input keeps its dtype if it is a float,
    else gets ``floatX``.
    """
    inner = op.fgraph.unfreeze()
    grads, _ = _pull_back_lowered_region(op, inner, [t() for t in cotangent_types])
    own = [op.fgraph.inputs[i].type.dtype for i in op.wrt]
    return [
        g.type.dtype
        if g.type.dtype in float_dtypes
        else dtype
        if dtype in float_dtypes
        else config.floatX
        for g, dtype in zip(grads, own, strict=True)
    ]


def _inline_einsums(fgraph: FunctionGraph) -> None:
    """Inline the optimized ``Einsum``\\ s of a lowered region before it is differentiated.

    ``lower_xtensor`` turns ``dot`` into an ``Einsum``, an ``OpFromGraph`` that
    compilation inlines anyway (``inline_optimized_einsum``) but whose pullback
    and pushforward are ``OpFromGraph``\\ s that nothing inlines.  Inlined first,
    the region is differentiated through its ``Dot``\\ s, as a model written
    with tensors is: fewer nodes than the reference, the same values.  An
    ``Einsum`` of integer or boolean operands is left alone: its pullback
    refuses them as the reference's does.
    """
    _INLINE_EINSUMS.rewrite(fgraph)


@node_rewriter([Einsum])
def _inline_float_einsum(fgraph, node):
    if all(var.type.dtype in float_dtypes for var in [*node.inputs, *node.outputs]):
        return inline_optimized_einsum.transform(fgraph, node)
    return None


_INLINE_EINSUMS = dfs_rewriter(_inline_float_einsum, ignore_newtrees=True)


def _on_node_inputs(node: Apply, fresh: list[Variable], results: list[Variable]) -> dict:
    """Clone `results` (built on the `fresh` inputs of an expansion) onto `node`'s inputs."""
    memo = dict(zip(fresh, node.inputs, strict=True))
    return clone_get_equiv(fresh, results, copy_inputs=False, memo=memo)


def _merge_input_conversions(fgraph: FunctionGraph) -> None:
    """Keep one conversion of each input of `fgraph` where the lowering made several.

    The lowering converts an xtensor input at each of its uses; merged, the
    cotangents of its uses add up as tensors, not as xtensor (un-lowered)
    sums.  Nothing else is merged before differentiating: merging two equal
    nodes adds their cotangents ahead of their pullback, which can change the
    numbers (``cumprod`` at zeros gives NaN where the reference is finite).
    Compilation merges the rest after differentiation, as for the reference.
    """
    for var in fgraph.inputs:
        seen: dict[tuple, Variable] = {}
        for client, _ in list(fgraph.clients[var]):
            if not isinstance(client, Apply) or not is_conversion(client):
                continue
            if len(client.outputs) != 1 or any(
                not (inp is var or isinstance(inp, Constant)) for inp in client.inputs
            ):
                continue
            key = (client.op, tuple(client.inputs))
            kept = seen.setdefault(key, client.outputs[0])
            if kept is not client.outputs[0]:
                fgraph.replace(client.outputs[0], kept, reason="merge_input_conversions")


def max_pullback_depth() -> int:
    """Deepest graph (nodes on its longest path) given to one `pullback` call.

    :func:`pytensor.gradient.pullback` recurses about twice per node along the
    graph's longest path (``access_grad_cache``/``access_term_cache`` in
    ``_populate_grad_dict``), so it stops near half the recursion limit.  A
    sixth of the limit leaves room for the caller's own stack (the rewriters
    of a compilation, possibly nested in an inner graph's): 500 nodes under
    the limit of 3000 that PyTensor sets at import.
    """
    return max(sys.getrecursionlimit() // 6, 16)


def deep_pullback(
    outputs: Sequence[Variable],
    wrt: Sequence[Variable],
    cotangents: Sequence[Variable],
    max_depth: int | None = None,
) -> list[Variable]:
    """:func:`pytensor.gradient.pullback`, in pieces on graphs too deep for it.

    Returns what ``pullback(outputs, wrt, cotangents,
    disconnected_inputs="ignore", return_disconnected="disconnected")``
    returns.  When the graph's longest path has at most `max_depth` nodes (the
    usual case) that is exactly the call made.  On a deeper graph, whose
    pullback would exceed Python's recursion limit, the graph's nodes are
    split, in topological order, into consecutive chunks of `max_depth` nodes,
    and the chunks are pulled back one at a time from the last: each with
    respect to its inputs, with the cotangents already gathered for the
    variables it produces as known cotangents, and with its inputs treated as
    constants, so that no call walks further than its own chunk.  The
    contributions to each variable are summed (a null one wins, as in
    ``pytensor.grad``).  The result is the same gradient, up to the order in
    which some contributions are added.

    Parameters
    ----------
    outputs
        Outputs whose cotangents are given.  None may be an ancestor of
        another (``pullback`` treats given cotangents as final).
    wrt
        Variables without owner (graph inputs) to return the cotangents of.
    cotangents
        One cotangent per output.
    max_depth
        Deepest graph pulled back in one call; :func:`max_pullback_depth` by
        default.

    Raises
    ------
    NullTypeGradError
        If the gradient of a `wrt` variable is undefined.
    """
    max_depth = max_pullback_depth() if max_depth is None else max_depth
    order = list(toposort(outputs, blockers=wrt))
    depth: dict[Variable, int] = {}
    deepest = 0
    for node in order:
        node_depth = 1 + max((depth.get(inp, 0) for inp in node.inputs), default=0)
        depth.update(dict.fromkeys(node.outputs, node_depth))
        deepest = max(deepest, node_depth)
    if deepest <= max_depth:
        return pullback(
            outputs,
            wrt,
            cotangents,
            disconnected_inputs="ignore",
            return_disconnected="disconnected",
        )

    terms: dict[Variable, list[Variable]] = {}
    for out, cotangent in zip(outputs, cotangents, strict=True):
        terms.setdefault(out, []).append(cotangent)
    for start in reversed(range(0, len(order), max_depth)):
        chunk = order[start : start + max_depth]
        produced = {out for node in chunk for out in node.outputs}
        used_inside = {inp for node in chunk for inp in node.inputs}
        known = {}
        for var in (out for node in chunk for out in node.outputs):
            if var in terms:
                # Through a view when the chunk also uses `var`: a known
                # cotangent is final, and the uses inside must add to it.
                key = view_op(var) if var in used_inside else var
                known[key] = _total(terms.pop(var))
        inputs = list(
            dict.fromkeys(
                inp
                for node in chunk
                for inp in node.inputs
                if inp not in produced and not isinstance(inp, Constant)
            )
        )
        if not known or not inputs:
            continue
        chunk_grads = grad(
            None,
            inputs,
            consider_constant=inputs,
            known_grads=known,
            disconnected_inputs="ignore",
            return_disconnected="disconnected",
            null_gradients="return",
        )
        for inp, g in zip(inputs, chunk_grads, strict=True):
            if not isinstance(g.type, DisconnectedType):
                terms.setdefault(inp, []).append(g)
    grads = []
    for var in wrt:
        g = _total(terms.pop(var, []))
        if isinstance(g.type, NullType):
            raise NullTypeGradError(f"`grad` encountered a NaN. {g.type.why_null}")
        grads.append(g)
    return grads


def _total(terms: list[Variable]) -> Variable:
    """Sum cotangent terms as ``pytensor.grad`` does: a null term wins, none is disconnected."""
    for term in terms:
        if isinstance(term.type, NullType):
            return term
    if not terms:
        return disconnected_type()
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _find_forward(
    fgraph: FunctionGraph, node: Apply, inner: FunctionGraph
) -> dict[Variable, Variable]:
    """Map variables of the region `inner` to the variables of `fgraph` computing them.

    Walks the region from the node's inputs as ``MergeOptimizer`` would: an
    inner node is found in `fgraph` if a client of one of its found inputs
    applies an equal Op to the same inputs (a constant subgraph, such as a
    slice, is compared where it is used).  Only outputs of un-lowered nodes
    that the rest of `fgraph` reads are returned: the region's outputs, and
    interior variables that something outside the region uses (e.g. for its
    shape).
    """
    found: dict[Variable, Variable] = dict(
        zip(inner.inputs, node.inputs[: len(inner.inputs)], strict=True)
    )
    matched: set[Apply] = set()
    order = inner.toposort()
    constant_nodes: set[Apply] = set()  # computed from constants only
    for inner_node in order:
        if all(
            isinstance(var, Constant) or var.owner in constant_nodes
            for var in inner_node.inputs
        ):
            constant_nodes.add(inner_node)

    def same(outer: Variable, var: Variable) -> bool:
        if var in found:
            return found[var] is outer
        if isinstance(var, Constant):
            return isinstance(outer, Constant) and outer.equals(var)
        if var.owner not in constant_nodes or outer.owner is None or outer.index != var.index:
            return False
        if not same_node(outer.owner, var.owner):
            return False
        found.update(zip(var.owner.outputs, outer.owner.outputs, strict=True))
        matched.add(outer.owner)
        return True

    def same_node(client: Apply, inner_node: Apply) -> bool:
        return (
            client.op == inner_node.op
            and len(client.inputs) == len(inner_node.inputs)
            and all(map(same, client.inputs, inner_node.inputs))
        )

    for inner_node in order:
        anchors = [
            found[var]
            for var in inner_node.inputs
            if var in found and found[var] in fgraph.clients
        ]
        if not anchors:
            continue  # constants only: compared where used
        anchor = min(anchors, key=lambda var: len(fgraph.clients[var]))
        for client, _ in fgraph.clients[anchor]:
            if isinstance(client, Apply) and same_node(client, inner_node):
                found.update(zip(inner_node.outputs, client.outputs, strict=True))
                matched.add(client)
                break
    read_outside = {}
    for var, outer in found.items():
        if var.owner is None or not is_unlowered(var.owner):
            continue  # an input, or an ordinary node inside the region
        clients = fgraph.clients.get(outer, ())
        if var in inner.outputs or any(client not in matched for client, _ in clients):
            read_outside[var] = outer
    return read_outside


def lower_graph(fgraph: FunctionGraph) -> None:
    """Lower every un-lowered node of a private `fgraph` in place.

    Expands its `LazyPullback`\\ s and `LazyPushforward`\\ s, then runs
    ``lower_xtensor``, and raises `NotImplementedError` naming the Op and the
    variable if an un-lowered node survives.  Conversions may remain where
    the graph's own inputs or outputs are xtensor variables.
    """
    _lower_unchecked(fgraph)
    for node in fgraph.toposort():
        if is_unlowered(node) and not is_conversion(node):
            raise NotImplementedError(
                f"Cannot lower {node.op} (producing {node.outputs[0]}): no lowering "
                f"rewrites {type(node.op).__name__}. Register one for this Op (for XOps, "
                "a node rewriter with pytensor.xtensor.rewriting.utils."
                "register_lower_xtensor), or take the gradient of a graph that does not use it."
            )


def _lower_unchecked(fgraph: FunctionGraph) -> None:
    """Expand the lazy derivatives of `fgraph`, then lower its xtensor Ops.

    ``optdb`` is queried at each call (a tenth of a millisecond), so lowering
    rewrites registered later take part.
    """
    _EXPAND_ALL.rewrite(fgraph)
    if any(is_unlowered(node) for node in fgraph.apply_nodes):
        optdb.query(RewriteDatabaseQuery(include=["lower_xtensor"])).rewrite(fgraph)


@node_rewriter([LazyPullback, LazyPushforward])
def expand_lazy_pullback(fgraph, node):
    """Replace a `LazyPullback` (`LazyPushforward`) by the pullback (pushforward) of its lowered region.

    Nothing of `fgraph` is lowered but the region's forward outputs, where
    `fgraph` computes them: they are replaced by the lowered copy the pullback
    is built on.  With ``fgraph=None`` it returns the replacements of the
    node's outputs only.  An error is raised as a `LazyPullbackExpansionError`
    naming the region, which PyTensor's rewriters do not swallow.
    """
    try:
        if isinstance(node.op, LazyPushforward):
            outputs, forward = _lowered_pushforward(node), {}
        else:
            outputs, forward = _lowered_pullback(node, fgraph)
    except Exception as err:
        raise _expansion_error(err, node) from err
    return {**dict(zip(node.outputs, outputs, strict=True)), **forward}


def graph_wide(rewriter: NodeRewriter) -> GraphRewriter:
    """`rewriter` applied to every node of a graph, with no failure callback.

    An expansion error is not a rewrite to skip: it must reach the user (see
    `LazyPullbackExpansionError`).
    """
    return dfs_rewriter(rewriter, ignore_newtrees=True, failure_callback=None)


_EXPAND_ALL = graph_wide(expand_lazy_pullback)


# Inner graphs: Scan and OpFromGraph
# ----------------------------------
#
# ``hessian`` and ``jacobian(vectorize=False)`` map a gradient over rows with a
# ``Scan``, so its inner graph holds a `LazyPullback` (and a user's scan or
# ``OpFromGraph`` may hold un-lowered Ops).  Expanded only when the inner graph
# is compiled, the lowered forward pass and first-order pullback would be
# recomputed in every iteration: PyTensor's loop-invariant push-out
# (``scan_eqopt1``) has run on the outer graph by then and saw nothing it could
# move.  So, before any Scan rewrite, every such node is rebuilt with its inner
# graph expanded and lowered, as "lower first, then grad" would have built it,
# and the graph holding it is expanded and lowered at the same point.
EXPAND_INNER_GRAPHS_POSITION = 0.04
"""Position of ``expand_inner_graphs`` in ``optdb``: after ``merge1`` (0) and
``inline_ofg_expansion`` (-0.01), so identical loops are merged and inlined
``OpFromGraph``\\ s are left to the outer expansion, and before ``scan_eqopt1``
(0.05), whose push-out must see the lowered inner graphs."""


def _inner_fgraph(op: Op) -> FrozenFunctionGraph | None:
    """The inner graph of a `Scan` or (non-finalized) `OpFromGraph` `op`, else None."""
    if isinstance(op, Scan) or (
        isinstance(op, OpFromGraph) and not isinstance(op, FinalizedOpFromGraph)
    ):
        return op.fgraph
    return None


def holds_unlowered(fgraph: FunctionGraph | FrozenFunctionGraph) -> bool:
    """Whether `fgraph` (or a graph nested in it) holds a `LazyPullback` or an un-lowered Op.

    Conversions do not count: they may stay at the boundary of a lowered graph.
    The answer for a frozen (immutable) inner graph is cached, as every
    compilation asks it of every loop.
    """
    if isinstance(fgraph, FrozenFunctionGraph):
        try:
            return _holds_unlowered_cache[fgraph]
        except KeyError:
            pass
    found = any(
        (is_unlowered(node) and not is_conversion(node))
        or ((inner := _inner_fgraph(node.op)) is not None and holds_unlowered(inner))
        for node in fgraph.apply_nodes
    )
    if isinstance(fgraph, FrozenFunctionGraph):
        _holds_unlowered_cache[fgraph] = found
    return found


_holds_unlowered_cache: WeakKeyDictionary = WeakKeyDictionary()


def expanded_inner_graph_op(op: Op) -> Op | None:
    """`op` (a `Scan` or `OpFromGraph`) rebuilt with its inner graph expanded and lowered.

    Nested inner graphs are rebuilt first, then the inner graph's own
    `LazyPullback`\\ s are expanded (sharing the lowered forward pass) and its
    un-lowered Ops lowered, by :func:`lower_graph`.  Returns None if there is
    nothing to expand.  `op` is not modified.
    """
    frozen = _inner_fgraph(op)
    if frozen is None or not holds_unlowered(frozen):
        return None
    inner = frozen.unfreeze()
    _EXPAND_INNER_GRAPHS.rewrite(inner)
    lower_graph(inner)
    if isinstance(op, Scan):
        # The constructor, not ``clone_with_inner_graph``: output types follow the
        # inner outputs, whose static shapes the expansion may have refined.
        return Scan(
            list(inner.inputs),
            list(inner.outputs),
            op.info,
            mode=op.mode,
            truncate_gradient=op.truncate_gradient,
            name=op.name,
            profile=op.profile,
            allow_gc=op.allow_gc,
            strict=op.strict,
        )
    return op.clone_with_inner_graph(inner)


@node_rewriter([Scan, OpFromGraph])
def expand_inner_graphs(fgraph, node):
    """Rebuild a `Scan`/`OpFromGraph` holding un-lowered Ops with its inner graph lowered."""
    try:
        new_op = expanded_inner_graph_op(node.op)
    except Exception as err:
        raise _expansion_error(err, node) from err
    if new_op is None:
        return None
    new_node = new_op.make_node(*node.inputs)
    return [_like(old, new) for old, new in zip(node.outputs, new_node.outputs, strict=True)]


_EXPAND_INNER_GRAPHS = graph_wide(expand_inner_graphs)


@graph_rewriter
def expand_inner_graphs_and_lower(fgraph):
    """Rebuild inner graphs holding un-lowered Ops; if any was, lower the outer graph too.

    Lowering the outer graph at the same point (as the reference lowered
    everything before differentiating) lets the Scan push-out that follows
    move the lowered loop-invariant part of a loop onto the lowered forward
    pass of the outer graph, where merging finds them equal; lowered later,
    the two copies are built in an order in which ``MergeOptimizer`` misses
    some duplicates.  Errors reach the user (no failure callback).
    """
    before = set(fgraph.apply_nodes)
    _EXPAND_INNER_GRAPHS.rewrite(fgraph)
    if not before.issuperset(fgraph.apply_nodes):
        _lower_unchecked(fgraph)


optdb.register(
    "expand_inner_graphs_and_lower",
    expand_inner_graphs_and_lower,
    "fast_run",
    "fast_compile",
    "minimum_compile",
    position=EXPAND_INNER_GRAPHS_POSITION,
)


def expand_lazy_pullbacks(
    outputs: Variable | Sequence[Variable], lower: bool = False
) -> Variable | list[Variable]:
    """Return a copy of a graph with every `LazyPullback` and `LazyPushforward` expanded.

    For inspection; compilation expands them by itself.

    Parameters
    ----------
    outputs
        The graph's outputs, e.g. gradients returned by :func:`pytensor.grad`.
    lower
        Also lower every other un-lowered Op, so the result holds only ordinary
        Ops.  Without it, the forward pass of an expanded region is lowered
        only where the graph computes it (as at compile time).  Either way no
        lazy node is left: those an expansion builds (the pullback of a
        pullback that a labelled pushforward is) are expanded too, and each
        `Scan` or `OpFromGraph` whose inner graph holds one or another
        un-lowered Op (``hessian``, ``jacobian(vectorize=False)``) is rebuilt
        with that graph expanded and lowered, as compilation rebuilds it.

    Returns
    -------
    Variable or list of Variable
        The rewritten copy, shaped like `outputs`, on the same input variables
        (so it compiles with them), with identical subgraphs merged (as
        compilation would).  The original graph is not modified.
    """
    single = isinstance(outputs, Variable)
    fgraph = FunctionGraph(
        outputs=[outputs] if single else list(outputs), clone=True, copy_inputs=False
    )
    if lower:
        lower_graph(fgraph)
    else:
        _expand_all(fgraph)
    MergeOptimizer().rewrite(fgraph)
    return fgraph.outputs[0] if single else list(fgraph.outputs)


def expand_lazy_pullbacks_below(
    outputs: Variable | Sequence[Variable], blockers: Sequence[Variable] = ()
) -> Variable | list[Variable]:
    """`outputs` with each lazy derivative between `blockers` and them expanded.

    For the vectorizers: unlike :func:`expand_lazy_pullbacks`, nothing that
    does not depend on a lazy derivative is copied, so the forward graph
    keeps its own variables and a replacement keyed on them still applies;
    nothing above a blocker is looked at.  The given graph is not modified.
    """
    single = isinstance(outputs, Variable)
    new: dict[Variable, Variable] = {}
    for node in toposort([outputs] if single else list(outputs), blockers=blockers):
        inputs = [new.get(inp, inp) for inp in node.inputs]
        changed = any(a is not b for a, b in zip(inputs, node.inputs, strict=True))
        rebuilt = node.clone_with_new_inputs(inputs, strict=False) if changed else node
        if isinstance(node.op, LazyRegionOp):
            expansion = expand_lazy_pullback.transform(None, rebuilt)
            new.update(
                (out, expansion[new_out])
                for out, new_out in zip(node.outputs, rebuilt.outputs, strict=True)
            )
        elif changed:
            new.update(zip(node.outputs, rebuilt.outputs, strict=True))
    if single:
        return new.get(outputs, outputs)
    return [new.get(out, out) for out in outputs]


def _expand_all(fgraph: FunctionGraph) -> None:
    """Expand every lazy derivative of `fgraph`, inner graphs included, lowering nothing else.

    An expansion may build new lazy nodes (a pushforward by the transpose
    trick pulls back through the un-lowered conversions of its seeds), so
    this repeats until none is left.
    """
    while True:
        _EXPAND_ALL.rewrite(fgraph)
        _EXPAND_INNER_GRAPHS.rewrite(fgraph)
        if not any(isinstance(node.op, LazyRegionOp) for node in fgraph.apply_nodes):
            return


def _zeros_like(var: Variable) -> Variable:
    if is_xtensor_variable(var):
        return gradient._float_zeros_like(var)
    return var.zeros_like()


def _like(out: Variable, value: Variable) -> Variable:
    """Give `value` the dtype and type of the node output `out` it replaces.

    A round trip through tensors that relabels an xtensor variable is spelled
    ``Rename`` (see
    `~pytensor_lazy_pullback.xtensor.relabel_xtensor_round_trip`).
    """
    if is_xtensor_variable(out):
        from pytensor_lazy_pullback.xtensor import relabel_xtensor_round_trip

        value = relabel_xtensor_round_trip(value)
    if value.type.dtype != out.type.dtype:
        value = value.astype(out.type.dtype)
    return out.type.filter_variable(value)
