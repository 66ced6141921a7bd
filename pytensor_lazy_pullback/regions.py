"""Partition the un-lowered part of a gradient graph into convex regions.

Upstream home: ``pytensor/graph/regions.py``, next to ``pytensor/graph/lowering.py``
(:mod:`pytensor_lazy_pullback.unlowered`).

A *region* is a maximal connected group of un-lowered nodes on the gradient's
path that is *convex*: no gradient-carrying path leaves it through an ordinary
node (or a cut variable) and comes back into it, so :func:`pytensor.grad` can
treat it as one node whose pullback is a single `LazyPullback`.

Each node gets a *depth*: the largest number of ordinary nodes and cut
variables on any path to it from the graph's inputs.  A path that leaves a
region and comes back passes at least one more, so regions are the connected
groups of un-lowered nodes of equal depth.  One iterative pass computes it (no
recursion, so deep graphs are fine).  A lazy derivative being differentiated
again also takes in the regions it reads through ordinary nodes, and those
nodes (see `_join_derivatives`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from pytensor.graph.basic import Apply, Constant, Variable
from pytensor.graph.null_type import NullType

from pytensor_lazy_pullback.unlowered import (
    LazyRegionOp,
    is_conversion,
    is_structural,
    is_unlowered,
    op_names,
    undefined_gradient_reason,
)

__all__ = ["Region", "find_regions"]


@dataclass(eq=False)
class Region:
    """One convex group of un-lowered nodes, seen from the outer graph.

    Attributes
    ----------
    nodes
        The region's nodes in topological order, including the nodes put
        inside because the lowering must see them (see
        `~pytensor_lazy_pullback.unlowered.is_structural`) and
        the ordinary nodes between a lazy derivative and the regions it reads.
    inputs
        The non-constant variables the region reads from the outer graph.
    outputs
        The region's variables that receive a cotangent from outside it.
    differentiable
        For each input, whether it is on the gradient's path into the region
        (it depends on a ``wrt`` variable), whatever its dtype.
    undefined
        For each input, why its gradient is undefined (it reaches an Op
        registered with an undefined gradient), or ``None``.
    """

    nodes: list[Apply]
    inputs: list[Variable] = field(default_factory=list)
    outputs: list[Variable] = field(default_factory=list)
    differentiable: list[bool] = field(default_factory=list)
    undefined: list[str | None] = field(default_factory=list)

    def __str__(self) -> str:
        return f"region of {len(self.nodes)} node(s) [{op_names(self.nodes)}]"

    def connection_pattern(self) -> list[list[bool]]:
        """For each input, whether each output depends on it.

        :func:`pytensor.graph.op.io_connection_pattern`'s answer, with a bit set
        per variable where it keeps a list of bools (a region reading hundreds
        of inputs would pay O(variables x inputs) at every ``grad``).
        """
        reach = {var: 1 << i for i, var in enumerate(self.inputs)}
        for node in self.nodes:
            try:
                pattern = node.op.connection_pattern(node)
            except AttributeError:
                pattern = None
            in_bits = [reach.get(var, 0) for var in node.inputs]
            for j, out in enumerate(node.outputs):
                bits = 0
                for i, inp_bits in enumerate(in_bits):
                    if pattern is None or pattern[i][j]:
                        bits |= inp_bits
                reach[out] = bits
        return [
            [bool(reach.get(out, 0) >> i & 1) for out in self.outputs]
            for i in range(len(self.inputs))
        ]


def find_regions(
    consumers: Mapping[Variable, Mapping[Apply, Sequence[int]]],
    cuts: Collection[Variable],
    known: Collection[Variable],
) -> list[Region]:
    """Find the regions of un-lowered nodes on the gradient's path.

    Conversion nodes (see
    `~pytensor_lazy_pullback.unlowered.is_conversion`) join the
    region they touch, on the gradient's path or feeding it from off the path,
    so a region's boundary is made of ordinary variables wherever the graph
    has them; groups of conversions only are not regions.

    Parameters
    ----------
    consumers
        For each variable that carries gradient, the nodes on the gradient's
        path that consume it (and at which input positions), as built by
        :func:`pytensor.grad`.
    cuts
        Variables that must not be interior to a region (``wrt``,
        ``consider_constant`` and ``known_grads`` keys, the cost).
    known
        Variables whose cotangent is given from outside the graph (the cost,
        ``known_grads`` keys): a region producing one outputs it.

    Returns
    -------
    list of Region
        In topological order; empty if no un-lowered node carries gradient.
    """
    path = dict.fromkeys(node for apps in consumers.values() for node in apps)
    if not any(is_unlowered(node) for node in path):
        return []

    order, depth = _depths(path, cuts)
    parent = {node: node for node in order if is_unlowered(node)}

    def find(node):
        while parent[node] is not node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for node in parent:
        for inp in node.inputs:
            owner = inp.owner
            if owner in parent and inp not in cuts and depth[owner] == depth[node]:
                parent[find(owner)] = find(node)
    _join_derivatives(order, parent, find, path, consumers, cuts)

    groups: dict[Apply, list[Apply]] = {}
    for node in order:
        if node in parent:
            groups.setdefault(find(node), []).append(node)
    # A group of conversions only (e.g. labelling a leaf) has nothing to lower:
    # its nodes keep their own pullbacks.  Convexity of the other regions is
    # unaffected: a path through such a group passes a cut or a depth change.
    return [
        _describe(nodes, consumers, known)
        for nodes in groups.values()
        if not all(is_conversion(node) for node in nodes)
    ]


def _join_derivatives(order, parent, find, path, consumers, cuts) -> None:
    """Join each lazy derivative to the regions it reads through ordinary nodes.

    A second derivative differentiates a lazy derivative (a `LazyPullback`) whose cotangent is computed, by
    ordinary nodes, from the outputs of the forward region it pulls back
    through, as for any loss not linear in them.  As separate regions, each
    would pull back through its own copy of the lowered forward pass, where the
    reference adds the cotangents of the forward variables first and pulls back
    once (a second matrix product per row of a Hessian).  So the lazy node, the
    regions it reads and the ordinary nodes in between become one region,
    provided it is convex, no cut variable is interior to it, and ``grad`` could
    take the pullback of each of those ordinary nodes (else they stay apart, and
    an error ``grad`` raises for one of them is still raised by ``grad``).
    """
    for lazy in [node for node in order if isinstance(node.op, LazyRegionOp)]:
        ancestors: set[Apply] = set()
        stack = [lazy]
        while stack:
            for inp in stack.pop().inputs:
                owner = inp.owner
                if owner in path and owner not in ancestors and inp not in cuts:
                    ancestors.add(owner)
                    stack.append(owner)
        between = {node for node in ancestors if node in parent and find(node) is not find(lazy)}
        if not between:
            continue
        for node in order:  # what lies on a path from those regions to `lazy`
            if node in ancestors and any(
                inp.owner in between and inp not in cuts for inp in node.inputs
            ):
                between.add(node)
        roots = {find(node) for node in between if node in parent} | {find(lazy)}
        joined = between | {node for node in parent if find(node) in roots}
        if _convex(joined, order, cuts) and all(
            _pullback_defined(node, consumers) for node in between if node not in parent
        ):
            for node in joined:
                parent.setdefault(node, node)
                parent[find(node)] = find(lazy)


def _convex(members: set[Apply], order: list[Apply], cuts) -> bool:
    """Whether no path leaves `members` and comes back, and no cut variable is interior."""
    reached: set[Apply] = set()  # outside `members`, downstream of them
    for node in order:
        if node in members:
            if any(
                inp.owner in reached or (inp.owner in members and inp in cuts)
                for inp in node.inputs
            ):
                return False
        elif any(inp.owner in members or inp.owner in reached for inp in node.inputs):
            reached.add(node)
    return True


def _pullback_defined(node: Apply, consumers) -> bool:
    """Whether ``grad`` would get a pullback from ordinary `node` (asked on fresh cotangents)."""
    try:
        grads = node.op.pullback(
            list(node.inputs), list(node.outputs), [out.type() for out in node.outputs]
        )
        return not any(
            isinstance(g.type, NullType) and inp in consumers
            for inp, g in zip(node.inputs, grads, strict=True)
        )
    except Exception:
        return False


def _depths(path, cuts):
    """Order `path`'s nodes topologically and give each its depth (see the module)."""
    depth: dict[Apply, int] = {}
    order: list[Apply] = []
    for root in path:
        stack = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if node in depth:
                continue
            if not ready:
                stack.append((node, True))
                stack.extend(
                    (inp.owner, False)
                    for inp in node.inputs
                    if inp.owner in path and inp.owner not in depth
                )
                continue
            node_depth = 0
            for inp in node.inputs:
                owner = inp.owner
                if owner in path:
                    crossed = (not is_unlowered(owner)) + (inp in cuts)
                    node_depth = max(node_depth, depth[owner] + crossed)
            depth[node] = node_depth
            order.append(node)
    return order, depth


def _describe(members, consumers, known) -> Region:
    """Find a region's inputs, outputs and per-input gradient facts."""
    member_set = set(members)
    taken_in: list[Apply] = []
    inputs: dict[Variable, None] = {}

    def read(var):
        if isinstance(var, Constant) or var.owner in member_set:
            return
        owner = var.owner
        if owner is not None and (
            is_structural(owner) or (is_conversion(owner) and var not in consumers)
        ):
            # A conversion off the gradient's path (e.g. labelling a plain
            # data tensor) goes inside, so the region's inputs are ordinary
            # variables wherever the graph has them: ``vectorize_graph`` can
            # batch those without knowing a dim name.
            member_set.add(owner)
            for inp in owner.inputs:
                read(inp)
            taken_in.append(owner)  # after what it reads: in topological order
        else:
            inputs.setdefault(var)

    for node in members:
        for inp in node.inputs:
            read(inp)

    outputs = [
        out
        for node in members
        for out in node.outputs
        if out in known
        or any(app not in member_set for app in consumers.get(out, ()))
    ]
    region = Region(nodes=taken_in + members, outputs=outputs)
    region.inputs = list(inputs)
    # Whether a gradient really flows (an integer input may well have one, as
    # in d/dcounts of counts * log(rate)) is the lowered graph's pullback's
    # business; here only: is the input on the gradient's path into the region.
    region.differentiable = [
        any(app in member_set for app in consumers.get(var, ())) for var in region.inputs
    ]
    region.undefined = _undefined_inputs(members, member_set, region.inputs)
    return region


def _undefined_inputs(members, member_set, inputs) -> list[str | None]:
    """For each input, the reason its gradient is undefined, or ``None``."""
    reason_of: dict[Variable, str] = {}
    stack = []
    for node in members:
        reason = undefined_gradient_reason(node)
        if reason is not None:
            stack.extend((inp, f"{reason} ({node.op})") for inp in node.inputs)
    while stack:
        var, reason = stack.pop()
        if var in reason_of:
            continue
        reason_of[var] = reason
        if var.owner in member_set:
            stack.extend((inp, reason) for inp in var.owner.inputs)
    return [reason_of.get(var) for var in inputs]
