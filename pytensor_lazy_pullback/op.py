"""`LazyPullback` and `LazyPushforward`, and how ``pytensor.gradient`` uses them for un-lowered regions.

Upstream home: ``pytensor/gradient_lazy.py``.

Besides the Op, this module holds what ``pytensor/gradient.py`` calls at the
start of the functions it hooks: :func:`collapse_regions`
(``_populate_grad_dict``), :func:`lazy_zeros_like` / :func:`lazy_ones_like`
(``_float_zeros_like`` / ``_float_ones_like``),
:func:`pushforward_through_regions` (``_pushforward_direct``) and
:func:`has_cotangent_rules` with :func:`pushforward_labelled`
(``pushforward``).  Each returns ``None`` (or ``False``) where PyTensor's own
code applies unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pytensor
import pytensor.gradient as gradient
from pytensor.compile.ops import view_op
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.fg import FrozenFunctionGraph
from pytensor.graph.null_type import NullType
from pytensor.graph.op import HasInnerGraph, Op
from pytensor.gradient import DisconnectedType, disconnected_type, grad_undefined
from pytensor.graph.traversal import ancestors, applys_between, toposort
from pytensor import config
from pytensor.scalar import upcast
from pytensor.tensor.basic import constant
from pytensor.tensor.type import continuous_dtypes, float_dtypes

from pytensor_lazy_pullback.regions import Region, find_regions
from pytensor_lazy_pullback.registry import cotangent_rules, is_conversion, is_unlowered

__all__ = [
    "LazyPullback",
    "LazyPullbackNotExpandedError",
    "LazyPushforward",
    "LazyRegionOp",
    "align_cotangent",
    "collapse_regions",
    "has_cotangent_rules",
    "lazy_ones_like",
    "lazy_zeros_like",
    "pushforward_labelled",
    "populate_var_to_app_to_idx",
    "pushforward_through_regions",
]


class LazyPullbackNotExpandedError(NotImplementedError):
    """Raised when a `LazyPullback` or `LazyPushforward` reaches a linker unexpanded."""


class LazyRegionOp(HasInnerGraph, Op):
    """Base of `LazyPullback` and `LazyPushforward`: a derivative of a region, built later.

    Parameters
    ----------
    fgraph
        The region, frozen (shown by :func:`pytensor.dprint`).
    wrt
        Positions of the region inputs that the derivative is taken for.
    """

    __props__ = ("fgraph", "wrt")

    def __init__(self, fgraph: FrozenFunctionGraph, wrt: Sequence[int]):
        if not isinstance(fgraph, FrozenFunctionGraph):
            raise TypeError(
                f"{type(self).__name__} needs a FrozenFunctionGraph, got {type(fgraph).__name__}"
            )
        self.fgraph = fgraph
        self.wrt = tuple(int(i) for i in wrt)
        n_inputs = len(fgraph.inputs)
        if any(not 0 <= i < n_inputs for i in self.wrt):
            raise ValueError(f"wrt positions {self.wrt} out of range for {n_inputs} inputs")

    @classmethod
    def from_graph(
        cls,
        inputs: Sequence[Variable],
        outputs: Sequence[Variable],
        wrt: Sequence[int],
    ):
        """Freeze the graph between `inputs` and `outputs` into an Op of this class.

        The graph is copied; `inputs` and `outputs` are left untouched.
        """
        return cls(FrozenFunctionGraph.from_io(inputs, outputs), wrt)

    def __str__(self):
        ops = dict.fromkeys(type(node.op).__name__ for node in self.fgraph.toposort())
        return f"{type(self).__name__}{{{', '.join(ops)}}}"

    def clone(self):
        # The inner graph is frozen: there is nothing to copy.
        return self

    def _split_inputs(self, inputs, aligned_to, kind: str):
        """The node's region inputs (filtered) and its (co)tangents, aligned to `aligned_to`."""
        n_in = len(self.fgraph.inputs)
        if len(inputs) != n_in + len(aligned_to):
            raise TypeError(
                f"{self} expects {n_in} region input(s) followed by {len(aligned_to)} "
                f"{kind}(s), got {len(inputs)} variable(s)"
            )
        region_inputs = [
            inner.type.filter_variable(outer)
            for inner, outer in zip(self.fgraph.inputs, inputs[:n_in], strict=True)
        ]
        given = [
            align_cotangent(var, value)
            for var, value in zip(aligned_to, inputs[n_in:], strict=True)
        ]
        return region_inputs, given

    def perform(self, node, inputs, output_storage):
        raise LazyPullbackNotExpandedError(
            f"{self} reached a linker without being expanded. It is expanded by the "
            "'expand_lazy_pullback' rewrite, which every standard mode runs (tags "
            "'fast_run', 'fast_compile', 'minimum_compile'). If you built a mode "
            "that excludes it, include it again, or expand the graph first with "
            "pytensor_lazy_pullback.expand_lazy_pullbacks(outputs)."
        )


class LazyPullback(LazyRegionOp):
    r"""The pullback (vector-Jacobian product) of a region, built at compile time.

    :func:`pytensor.grad` creates one `LazyPullback` for each region of
    un-lowered nodes (for instance :mod:`pytensor.xtensor` Ops) that the
    gradient passes through, instead of calling the pullback of every node.
    The ``expand_lazy_pullback`` rewrite, which runs during compilation just
    before the un-lowered Ops are lowered, lowers a private copy of the region
    and replaces this node by the ordinary pullback of the lowered graph.

    The inner graph (shown by :func:`pytensor.dprint`) is the region itself:
    its inputs are the region's inputs and its outputs are the region's
    outputs.

    Parameters
    ----------
    fgraph
        The region, frozen.
    wrt
        Positions of the region inputs whose cotangent this Op returns.

    Notes
    -----
    The node's inputs are the region's inputs followed by one cotangent per
    region output; its outputs are the cotangents of the inputs at positions
    `wrt`, each of the same type as its input.
    """

    def make_node(self, *inputs: Variable) -> Apply:
        inner_inputs = self.fgraph.inputs
        region_inputs, cotangents = self._split_inputs(inputs, self.fgraph.outputs, "cotangent")
        outputs = [self._cotangent_type(inner_inputs[i])() for i in self.wrt]
        return Apply(self, [*region_inputs, *cotangents], outputs)

    def _cotangent_type(self, var: Variable):
        """The type of `var`'s cotangent: `var`'s, with a float dtype if `var` is discrete.

        A cotangent is never an integer (PyTensor's gradient contract).  For a
        discrete input the dtype is what the lowered chain rule gives, read off
        the region's own types: each node reading the input (through
        conversions) contributes its floating-point output's dtype, or
        ``floatX`` (the zeros a node with a discrete output returns); the
        terms add up (upcast).
        """
        if var.type.dtype in continuous_dtypes:
            return var.type
        fgraph = self.fgraph
        dtypes, stack, seen = [], [var], {var}
        while stack:
            current = stack.pop()
            if current in fgraph.outputs:
                dtypes.append(config.floatX)
            for client, _ in fgraph.clients.get(current, ()):
                if not isinstance(client, Apply):
                    continue
                for out in client.outputs:
                    if out.type.dtype in float_dtypes:
                        dtypes.append(out.type.dtype)
                    elif is_conversion(client):
                        if out not in seen:
                            seen.add(out)
                            stack.append(out)
                    else:
                        dtypes.append(config.floatX)
        return var.type.clone(dtype=upcast(*dtypes) if dtypes else config.floatX)

    def infer_shape(self, node, input_shapes):
        return [input_shapes[i] for i in self.wrt]

    def pullback(self, inputs, outputs, output_grads):
        """Return the pullback of this pullback: another, equally lazy, `LazyPullback`.

        Its region is this very node, applied to fresh inputs, so the
        second-order graph is only built when it is expanded.
        """
        connected = [
            j
            for j, g in enumerate(output_grads)
            if not isinstance(g.type, DisconnectedType | NullType)
        ]
        grads: list[Variable] = [disconnected_type() for _ in inputs]
        wrt = [
            i
            for i, inp in enumerate(inputs)
            if getattr(inp.type, "dtype", None) in continuous_dtypes
        ]
        if not connected or not wrt:
            return grads
        fresh = [inp.type() for inp in inputs]
        fresh_outputs = self(*fresh, return_list=True)
        second = LazyPullback.from_graph(fresh, [fresh_outputs[j] for j in connected], wrt)
        results = second(*inputs, *(output_grads[j] for j in connected), return_list=True)
        for i, g in zip(wrt, results, strict=True):
            grads[i] = g
        return grads


def align_cotangent(output: Variable, cotangent: Variable) -> Variable:
    """Arrange `cotangent` like `output`, by the rules registered for its type.

    Raises
    ------
    TypeError
        If `cotangent` cannot be the cotangent of `output` (the message names
        both and says what is expected).
    """
    rules = cotangent_rules(output)
    if rules is not None:
        return rules.align(output, cotangent)
    if getattr(cotangent.type, "ndim", None) != getattr(output.type, "ndim", None):
        raise TypeError(
            f"The cotangent {cotangent} of type {cotangent.type} does not match "
            f"the region output {output} of type {output.type}"
        )
    return cotangent


class LazyPushforward(LazyRegionOp):
    r"""The pushforward (Jacobian-vector product) of a region, built at compile time.

    :func:`pytensor.gradient.pushforward` creates one `LazyPushforward` for
    each region of un-lowered nodes between its ``wrt`` and ``f``, instead of
    asking every node for its own pushforward (un-lowered Ops have none).  The
    ``expand_lazy_pullback`` rewrite replaces it by the pushforward of the
    lowered region, built from each lowered Op's own ``pushforward``.

    Parameters
    ----------
    fgraph
        The region, frozen (shown by :func:`pytensor.dprint`).
    wrt
        Positions of the region inputs that carry a tangent.

    use_op_pushforward
        Build the expansion from each lowered Op's own ``pushforward`` (as
        :func:`pytensor.gradient.pushforward` with ``use_op_pushforward=True``
        does), else as the pullback of the lowered region's pullback.

    Notes
    -----
    The node's inputs are the region's inputs followed by one tangent per
    position in `wrt`; its outputs are the tangents of the region's outputs,
    each of the type of its output (floating point).
    """

    __props__ = ("fgraph", "wrt", "use_op_pushforward")
    # Defining __props__ would otherwise give it the props-listing __str__.
    __str__ = LazyRegionOp.__str__

    def __init__(
        self, fgraph: FrozenFunctionGraph, wrt: Sequence[int], use_op_pushforward: bool = True
    ):
        super().__init__(fgraph, wrt)
        self.use_op_pushforward = bool(use_op_pushforward)

    @classmethod
    def from_graph(cls, inputs, outputs, wrt, use_op_pushforward: bool = True):
        """Freeze the graph between `inputs` and `outputs` into a `LazyPushforward`."""
        return cls(FrozenFunctionGraph.from_io(inputs, outputs), wrt, use_op_pushforward)

    def make_node(self, *inputs: Variable) -> Apply:
        wrt_inputs = [self.fgraph.inputs[i] for i in self.wrt]
        region_inputs, tangents = self._split_inputs(inputs, wrt_inputs, "tangent")
        outputs = [_tangent_type(out)() for out in self.fgraph.outputs]
        return Apply(self, [*region_inputs, *tangents], outputs)

    def infer_shape(self, node, input_shapes):
        from pytensor.compile.builders import infer_shape

        inner = self.fgraph.unfreeze()
        return infer_shape(inner.outputs, inner.inputs, input_shapes[: len(inner.inputs)])


def _tangent_type(var: Variable):
    """`var`'s type, with ``floatX`` if `var` is discrete (a tangent is never an integer)."""
    if var.type.dtype in continuous_dtypes:
        return var.type
    return var.type.clone(dtype=config.floatX)


# --------------------------------------------------------------------------
# What pytensor.gradient calls: each returns None (or False) where PyTensor's
# own code applies unchanged.


def populate_var_to_app_to_idx(outputs, wrt, consider_constant):
    """PyTensor's ``_populate_var_to_app_to_idx``, with loops instead of recursion.

    Called instead of ``pytensor.gradient._populate_var_to_app_to_idx``.

    The original walks the graph recursively, one frame per variable along
    the longest path from the outputs (and again from `wrt`), so ``grad``
    stops at a graph about as deep as the recursion limit before any region is
    found.  This builds the same map, with the same insertion order (the
    gradient graph's order depends on it), with an explicit stack.
    """
    # consider_constant was validated by ``grad``; variables hash by identity.
    constant = set(consider_constant or ())
    node_to_pattern = gradient._node_to_pattern
    var_to_app_to_idx = {}
    accounted_for = set()

    def true_parents(var):
        # What the original's account_for(var) loops over, entries made on the way.
        app = var.owner
        pattern = node_to_pattern(app)
        var_idx = app.outputs.index(var)
        for i, ipt in enumerate(app.inputs):
            if not pattern[i][var_idx]:
                continue
            idx = var_to_app_to_idx.setdefault(ipt, {}).setdefault(app, [])
            if i not in idx:
                idx.append(i)
            yield ipt

    def account_for(var, stack):
        if var in accounted_for:
            return
        accounted_for.add(var)
        if var not in constant and var.owner is not None:
            stack.append(true_parents(var))

    for output in outputs:
        stack = []
        account_for(output, stack)
        while stack:
            parent = next(stack[-1], None)
            if parent is None:
                stack.pop()
            else:
                account_for(parent, stack)

    # Keep the variables that have an element of wrt as a true ancestor.
    visited = set()
    todo = [var for var in wrt if var in var_to_app_to_idx]
    while todo:
        var = todo.pop()
        if var in visited or var not in var_to_app_to_idx:
            continue
        visited.add(var)
        for node, positions in var_to_app_to_idx[var].items():
            pattern = node_to_pattern(node)
            for idx in positions:
                todo.extend(
                    out for ii, out in enumerate(node.outputs) if pattern[idx][ii]
                )
    for var in list(var_to_app_to_idx):
        if var not in visited:
            del var_to_app_to_idx[var]
    return var_to_app_to_idx


def collapse_regions(var_to_app_to_idx, grad_dict, wrt):
    """The map of ``_populate_grad_dict`` with each un-lowered region as one node.

    Called at the start of ``pytensor.gradient._populate_grad_dict``.  Aligns
    the given cotangents of variables with cotangent rules (in place in
    `grad_dict`), finds the regions of un-lowered nodes on the gradient's path,
    and returns `var_to_app_to_idx` rewritten so that each region is a single
    stand-in node whose pullback is one `LazyPullback` (unchanged if there is
    no region).
    """
    for var, cotangent in list(grad_dict.items()):
        rules = cotangent_rules(var)
        if rules is not None and not isinstance(
            cotangent.type, DisconnectedType | NullType
        ):
            grad_dict[var] = rules.align(var, cotangent)
    regions = find_regions(
        var_to_app_to_idx, cuts={*wrt, *grad_dict}, seeded=grad_dict.keys()
    )
    if regions:
        return _collapse(var_to_app_to_idx, regions)
    return var_to_app_to_idx


def lazy_zeros_like(x):
    """Zeros of `x`'s kind for a type with cotangent rules, else ``None``."""
    rules = cotangent_rules(x)
    if rules is not None:
        return rules.zeros_like(x)
    return None


def lazy_ones_like(x):
    """The cost's seed where PyTensor's ``_float_ones_like`` would not do, else ``None``.

    Ones of `x`'s kind for a type with cotangent rules; and for a scalar cost
    computed from un-lowered nodes, a constant, so that the gradient graph
    does not hold the un-lowered forward pass (which ``vectorize_graph`` cannot
    batch) just to shape a scalar.
    """
    rules = cotangent_rules(x)
    if rules is not None:
        return rules.ones_like(x)
    if x.type.ndim == 0 and any(
        var.owner is not None and is_unlowered(var.owner) for var in ancestors([x])
    ):
        dtype = x.type.dtype if x.type.dtype in float_dtypes else pytensor.config.floatX
        return constant(np.ones((), dtype=dtype))
    return None


def pushforward_through_regions(f, wrt, tangents, disconnected_outputs, return_disconnected):
    """The pushforward with one `LazyPushforward` per un-lowered region, else ``None``.

    Called at the start of ``pytensor.gradient._pushforward_direct``:
    un-lowered Ops have no pushforward of their own.
    """
    if any(is_unlowered(node) for node in applys_between(wrt, f)):
        return _lazy_pushforward(
            f, wrt, tangents, disconnected_outputs, return_disconnected, use_op_pushforward=True
        )
    return None


def has_cotangent_rules(*arguments) -> bool:
    """Whether any variable among `arguments` (variables or lists of them) has cotangent rules."""
    return any(
        isinstance(var, Variable) and cotangent_rules(var) is not None
        for argument in arguments
        for var in _as_list(argument)
    )


def _lazy_pushforward(
    outputs, inputs, tangents, disconnected_outputs, return_disconnected, use_op_pushforward
):
    """``_pushforward_direct`` with one `LazyPushforward` per un-lowered region.

    Like PyTensor's, it asks every ordinary node between `inputs` and
    `outputs` for its ``pushforward``, in topological order (iteratively, so
    deep graphs are fine).  Each region of un-lowered nodes on the way is one
    `LazyPushforward` instead, expanded per `use_op_pushforward`; an
    un-lowered node off the tangents' path gets zero tangents.
    """
    outputs, inputs = list(outputs), list(inputs)
    consumers = gradient._populate_var_to_app_to_idx(outputs, inputs, None)
    regions = find_regions(consumers, cuts=set(inputs), seeded=set(outputs))
    region_of = {node: region for region in regions for node in region.nodes}
    tangent_of: dict = dict(zip(inputs, tangents, strict=True))

    def tangent(var):
        if var in tangent_of:
            return tangent_of[var]
        if var.owner is None:  # a leaf that is not differentiated: zero
            try:
                return gradient._float_zeros_like(var)
            except Exception:
                return disconnected_type()
        return disconnected_type()

    done_regions = set()
    for node in toposort(outputs, blockers=inputs):
        region = region_of.get(node)
        if region is not None:
            if region not in done_regions:
                done_regions.add(region)
                tangent_of.update(
                    zip(region.outputs, _region_pushforward(region, tangent, use_op_pushforward))
                )
            continue
        node_tangents = [tangent(inp) for inp in node.inputs]
        if is_unlowered(node) and not is_conversion(node):
            # Off the tangents' path (else it would be in a region): zero.
            results = [gradient._float_zeros_like(out) for out in node.outputs]
        else:
            node_tangents = [
                t if isinstance(t.type, DisconnectedType) else gradient._match_tangent_dtype(x, t)
                for x, t in zip(node.inputs, node_tangents, strict=True)
            ]
            results = node.op.pushforward(node.inputs, node.outputs, node_tangents)
        tangent_of.update(zip(node.outputs, results, strict=True))

    results = []
    for out in outputs:
        t = tangent(out)
        if out not in inputs and isinstance(t.type, DisconnectedType):
            if disconnected_outputs == "raise":
                raise gradient.DisconnectedInputError(
                    gradient.utils.get_variable_trace_string(out)
                )
            if disconnected_outputs == "warn":
                warnings.warn(
                    "pushforward was asked to compute the Jacobian-vector product with "
                    "respect to a variable that is not part of the computational graph "
                    f"of variables in wrt, or is used only by a non-differentiable operator: {out}",
                    stacklevel=3,
                )
            if return_disconnected.lower() == "zero":
                t = gradient._float_zeros_like(out)
            elif return_disconnected.lower() == "none":
                t = None
        results.append(t)
    return results


def _region_pushforward(region: Region, tangent, use_op_pushforward: bool) -> list:
    """The tangents of `region`'s outputs: one `LazyPushforward`, or disconnected."""
    pattern = region.connection_pattern()
    live = [
        i
        for i, inp in enumerate(region.inputs)
        if region.differentiable[i] and not isinstance(tangent(inp).type, DisconnectedType)
    ]
    connected = [any(pattern[i][j] for i in live) for j in range(len(region.outputs))]
    if not any(connected):
        return [disconnected_type() for _ in region.outputs]
    op = LazyPushforward.from_graph(region.inputs, region.outputs, live, use_op_pushforward)
    results = op(*region.inputs, *(tangent(region.inputs[i]) for i in live), return_list=True)
    return [
        t if is_connected else disconnected_type()
        for t, is_connected in zip(results, connected, strict=True)
    ]


def pushforward_labelled(
    f,
    wrt,
    tangents,
    disconnected_outputs="raise",
    return_disconnected="zero",
    use_op_pushforward=False,
):
    """:func:`pytensor.gradient.pushforward` for variables with cotangent rules (labelled ones).

    With labelled outputs, inputs or tangents, each region of un-lowered Ops
    is one lazy `LazyPushforward`, expanded as `use_op_pushforward` says
    (from the lowered Ops' own pushforwards, or as a pullback of a pullback).
    Each tangent is matched to its input by dim name (a `TypeError` names the
    input if it cannot be), and each result is labelled like its output.
    """
    inputs, given = _as_list(wrt), _as_list(tangents)
    if len(inputs) != len(given):
        raise ValueError("`wrt` must be the same length as `tangents`.")
    aligned = [align_cotangent(x, t) for x, t in zip(inputs, given, strict=True)]
    outputs = _as_list(f)
    if use_op_pushforward or any(
        is_unlowered(node) and not is_conversion(node) for node in applys_between(inputs, outputs)
    ):
        result = _lazy_pushforward(
            outputs, inputs, aligned, disconnected_outputs, return_disconnected, use_op_pushforward
        )
    else:  # a lowered (e.g. expanded) labelled graph, differentiated as the user asked
        result = _pushforward_by_pullbacks(
            outputs, inputs, aligned, disconnected_outputs, return_disconnected
        )
    return gradient.as_list_or_tuple(isinstance(f, list), isinstance(f, tuple), result)


def _pushforward_by_pullbacks(outputs, inputs, tangents, disconnected_outputs, return_disconnected):
    """The pushforward as the pullback of a pullback, for labelled arguments.

    Like PyTensor's ``pushforward_through_pullback``, with seeds of each
    output's own kind (labelled zeros for labelled outputs) and each output
    through a view: pullback's cotangents are final (known_grads), so an
    output that is an ancestor of another would lose the other's contribution.
    """
    seeds = [gradient._float_zeros_like(out) for out in outputs]
    input_cotangents = gradient.pullback(
        [view_op(out) for out in outputs],
        inputs,
        seeds,
        disconnected_inputs=disconnected_outputs,
        return_disconnected="zero",
    )
    return gradient.pullback(
        input_cotangents,
        seeds,
        tangents,
        disconnected_inputs="ignore",
        return_disconnected=return_disconnected,
    )


def _as_list(value):
    return list(value) if isinstance(value, list | tuple) else [value]


def _collapse(var_to_app_to_idx, regions: list[Region]):
    """Rewrite the variable-to-consumers map so each region is one stand-in node."""
    stand_in_of = {}
    for region in regions:
        stand_in = _RegionNode(region)
        for node in region.nodes:
            stand_in_of[node] = stand_in
    collapsed = {}
    for var, apps in var_to_app_to_idx.items():
        producer = stand_in_of.get(var.owner)
        if producer is not None and var not in producer.output_set:
            continue  # interior to a region: never asked for its gradient
        new_apps: dict = {}
        for app, positions in apps.items():
            stand_in = stand_in_of.get(app)
            if stand_in is None:
                new_apps[app] = positions
            elif stand_in is not producer:
                new_apps.setdefault(stand_in, [stand_in.input_position[var]])
            # else: a region output also read inside its own region; the
            # region's pullback accounts for that use.
        collapsed[var] = new_apps
    return collapsed


class _RegionNode:
    """Stands in, for ``grad``'s bookkeeping only, for a whole region.

    It has what ``grad`` reads of an `Apply` (``op``, ``inputs``, ``outputs``)
    but is never part of a graph: the user's graph is not touched.
    """

    def __init__(self, region: Region):
        self.op = _RegionPullback(region)
        self.inputs = region.inputs
        self.outputs = region.outputs
        self.output_set = set(region.outputs)
        self.input_position = {var: i for i, var in enumerate(region.inputs)}


class _RegionPullback:
    """The pullback of a region: one `LazyPullback`, built without lowering."""

    destroy_map: dict = {}

    def __init__(self, region: Region):
        self.region = region
        self._pattern = None

    def __str__(self):
        return f"the {self.region}"

    def connection_pattern(self, node):
        if self._pattern is None:
            structural = self.region.connection_pattern()
            self._pattern = [
                [
                    connected and (differentiable or undefined is not None)
                    for connected in row
                ]
                for row, differentiable, undefined in zip(
                    structural,
                    self.region.differentiable,
                    self.region.undefined,
                    strict=True,
                )
            ]
        return self._pattern

    def pullback(self, inputs, outputs, output_grads):
        region = self.region
        pattern = self.connection_pattern(None)
        live = [
            j
            for j, g in enumerate(output_grads)
            if not isinstance(g.type, DisconnectedType | NullType)
        ]
        grads = [disconnected_type() for _ in inputs]
        wrt = []
        for i, inp in enumerate(inputs):
            if not any(pattern[i][j] for j in live):
                continue
            if region.undefined[i] is not None:
                grads[i] = grad_undefined(self, i, inp, region.undefined[i])
            else:
                wrt.append(i)
        if wrt:
            cotangents = [align_cotangent(outputs[j], output_grads[j]) for j in live]
            op = LazyPullback.from_graph(inputs, [outputs[j] for j in live], wrt)
            for i, g in zip(wrt, op(*inputs, *cotangents, return_list=True), strict=True):
                grads[i] = g
        return grads
