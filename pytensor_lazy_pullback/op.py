"""`LazyPullback` and `LazyPushforward`, and how ``pytensor.gradient`` uses them for un-lowered regions.

Upstream home: ``pytensor/gradient_lazy.py``.

Besides the Ops, this module holds what ``pytensor/gradient.py`` calls at the
start of the functions it hooks: :func:`collapse_regions`
(``_populate_grad_dict``), :func:`lazy_ones_like` (``_float_ones_like``),
:func:`pushforward_through_regions` (``_pushforward_direct``) and
:func:`has_xtensor_variables` with :func:`xtensor_pushforward`
(``pushforward``).  Each returns ``None`` (or ``False``) where PyTensor's own
code applies unchanged.  :func:`populate_var_to_app_to_idx` is the body of
``_populate_var_to_app_to_idx``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import pytensor.gradient as gradient
from pytensor.compile.ops import view_op
from pytensor.graph.basic import Apply, Constant, Variable
from pytensor.graph.fg import FrozenFunctionGraph
from pytensor.graph.null_type import NullType
from pytensor.graph.op import Op
from pytensor.gradient import DisconnectedType, disconnected_type, grad_undefined
from pytensor.graph.replace import _vectorize_node, vectorize_graph
from pytensor.graph.traversal import ancestors, applys_between, toposort, walk_toposort
from pytensor import config
from pytensor.tensor.basic import constant
from pytensor.tensor.extra_ops import broadcast_to
from pytensor.tensor.type import TensorType, continuous_dtypes, discrete_dtypes, float_dtypes

from pytensor_lazy_pullback.regions import Region, find_regions
from pytensor_lazy_pullback.unlowered import (
    LazyRegionOp,
    align_cotangent,
    is_conversion,
    is_unlowered,
    is_xtensor_variable,
)

__all__ = [
    "LazyPullback",
    "LazyPushforward",
    "collapse_regions",
    "has_xtensor_variables",
    "lazy_ones_like",
    "populate_var_to_app_to_idx",
    "pushforward_by_pullbacks",
    "pushforward_through_regions",
    "vectorize_lazy_derivatives",
    "xtensor_pushforward",
]


class LazyPullback(LazyRegionOp):
    r"""The pullback (vector-Jacobian product) of a region, built at compile time.

    :func:`pytensor.grad` creates one `LazyPullback` for each region of
    un-lowered nodes (:mod:`pytensor.xtensor` Ops) that the gradient passes
    through.  The ``expand_lazy_pullback`` rewrite, first in
    ``lower_xtensor``, replaces it by the ordinary pullback of a lowered
    private copy of the region, its inner graph (shown by
    :func:`pytensor.dprint`).

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
        dtypes = self._cotangent_dtypes(tuple(cotangent.type for cotangent in cotangents))
        outputs = [
            inner_inputs[i].type.clone(dtype=dtype)()
            for i, dtype in zip(self.wrt, dtypes, strict=True)
        ]
        return Apply(self, [*region_inputs, *cotangents], outputs)

    def _cotangent_dtypes(self, cotangent_types: tuple) -> list[str]:
        """The dtype of the cotangent of each input at a position of `wrt`.

        PyTensor's chain rule casts a variable's cotangent to its dtype before
        pulling it back through the node that computed it, but not the sum of
        the terms an input gets from the nodes reading it: a term has the
        dtype its pullback gives (``floatX`` zeros from a comparison, ``trunc``
        or the condition of ``where``; ``float64`` from the constants in
        ``owens_t``'s pullback; a cast's output dtype; a wider operand's...).  A
        floating-point input gets its own dtype, decided without lowering,

        * if it is an xtensor variable: once lowered, it is read only through
          conversions, whose pullbacks pass on a cotangent cast to its dtype;
        * or if it is ``float64``, as are ``floatX``, the cotangents and every
          floating-point variable of the region: no term can be narrower
          (nor wider).

        For any other input (discrete, or a plain float input in other
        precision), a private copy of the region is lowered and pulled back
        here, when the gradient is built, and the result kept for the node's
        other instances.  Should that fail, the expansion raises the error with
        the region named at compile time, and the cotangent is typed
        ``floatX`` meanwhile.
        """
        inner_inputs = self.fgraph.inputs
        dtypes = [inner_inputs[i].type.dtype for i in self.wrt]
        all_float64 = (
            config.floatX == "float64"
            and self._region_float_dtypes <= {"float64"}
            and all(
                getattr(t, "dtype", "float64") in ("float64", *discrete_dtypes)
                for t in cotangent_types
            )
        )
        if all(
            dtype in float_dtypes
            and (is_xtensor_variable(inner_inputs[i]) or (dtype == "float64" and all_float64))
            for i, dtype in zip(self.wrt, dtypes, strict=True)
        ):
            return dtypes
        cache = self.__dict__.setdefault("_lowered_cotangent_dtypes", {})
        key = (cotangent_types, config.floatX)
        if key not in cache:
            from pytensor_lazy_pullback.rewriting import lowered_cotangent_dtypes

            try:
                cache[key] = lowered_cotangent_dtypes(self, cotangent_types)
            except Exception:
                cache[key] = [config.floatX] * len(dtypes)
        return cache[key]

    @cached_property
    def _region_float_dtypes(self) -> frozenset[str]:
        """The floating-point dtypes of the region's variables but constants.

        (A constant's dtype reaches a term only through a variable it makes.)
        """
        return frozenset(
            var.type.dtype
            for var in self.fgraph.variables
            if not isinstance(var, Constant) and getattr(var.type, "dtype", None) in float_dtypes
        )

    def infer_shape(self, node, input_shapes):
        return [input_shapes[i] for i in self.wrt]


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


def _zero_tangent(var: Variable) -> Variable:
    """A zero tangent for `var`, disconnected if it has no zeros (a non-tensor).

    Of `var`'s own dtype, as PyTensor's ``_pushforward_direct`` gives a leaf
    off the tangents' path: an Op may require its tangents typed like its
    inputs (``OpFromGraph``'s pushforward does, so an integer input of an
    ``Einsum`` needs integer zeros).
    """
    try:
        return var.zeros_like()
    except Exception:
        return disconnected_type()


def _is_zero_or_null(cotangent: Variable) -> bool:
    """Whether a cotangent is disconnected or undefined: nothing to pull back."""
    return isinstance(cotangent.type, DisconnectedType | NullType)


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
    the given cotangents of xtensor variables by dim name (in place in
    `grad_dict`), finds the regions of un-lowered nodes on the gradient's path,
    and returns `var_to_app_to_idx` rewritten so that each region is a single
    node whose pullback is one `LazyPullback` (unchanged if there is no
    region).  That node is a real `Apply` of a private Op, with fresh outputs
    (see `_collapse`); the user's graph is not modified.
    """
    for var, cotangent in list(grad_dict.items()):
        if is_xtensor_variable(var) and not _is_zero_or_null(cotangent):
            grad_dict[var] = align_cotangent(var, cotangent)
    regions = find_regions(var_to_app_to_idx, cuts={*wrt, *grad_dict}, known=grad_dict.keys())
    if regions:
        return _collapse(var_to_app_to_idx, grad_dict, regions)
    return var_to_app_to_idx


def lazy_ones_like(x):
    """The seed of a scalar cost computed by un-lowered nodes (or labelled), else ``None``.

    A constant 1 where PyTensor's ``_float_ones_like`` would build
    ``ones_like(cost)``: the gradient graph then does not hold the un-lowered
    forward pass (which ``vectorize_graph`` cannot batch) just to shape a
    scalar.
    """
    if x.type.ndim == 0 and (
        is_xtensor_variable(x)
        or any(var.owner is not None and is_unlowered(var.owner) for var in ancestors([x]))
    ):
        dtype = x.type.dtype if x.type.dtype in float_dtypes else config.floatX
        return x.type.clone(dtype=dtype).filter_variable(constant(np.ones((), dtype=dtype)))
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


def has_xtensor_variables(*arguments) -> bool:
    """Whether any of `arguments` (variables or lists of them) is an ``XTensorVariable``."""
    return any(
        isinstance(var, Variable) and is_xtensor_variable(var)
        for argument in arguments
        for var in _as_list(argument)
    )


def _lazy_pushforward(
    outputs, inputs, tangents, disconnected_outputs, return_disconnected, use_op_pushforward
):
    """``_pushforward_direct`` with one `LazyPushforward` per un-lowered region.

    Like PyTensor's, it asks every ordinary node on the tangents' path
    between `inputs` and `outputs` for its ``pushforward``, in topological
    order (iteratively, so deep graphs are fine).  Each region of un-lowered
    nodes on the way is one `LazyPushforward` instead, expanded per
    `use_op_pushforward`.  An output off the path is disconnected; an
    input of a node on the path that is off the path has a zero tangent; a
    variable of `inputs` has its given tangent, even if computed from another.
    """
    outputs, inputs = list(outputs), list(inputs)
    consumers = populate_var_to_app_to_idx(outputs, inputs, None)
    regions = find_regions(consumers, cuts=set(inputs), known=set(outputs))
    region_of = {node: region for region in regions for node in region.nodes}
    given = dict(zip(inputs, tangents, strict=True))
    tangent_of: dict = dict(given)

    def tangent(var):
        """The tangent of `var`: disconnected if it is off the tangents' path."""
        if var in tangent_of:
            return tangent_of[var]
        if var.owner is None:  # a leaf that is not differentiated: zero
            return _zero_tangent(var)
        return disconnected_type()

    def input_tangent(var):
        """The tangent a node on the path reads for its input `var`.

        Zero for an input off the path, as PyTensor's walk finds it (it
        pushes zeros up from the leaves): an Op may treat a disconnected
        tangent of one input as "no tangent at all" (``Join`` does).
        """
        if var in tangent_of or var.owner is None:
            return tangent(var)
        return _zero_tangent(var)

    for node in _collapsed_toposort(outputs, inputs, consumers, region_of):
        if isinstance(node, Region):
            results = _region_pushforward(node, tangent, use_op_pushforward, given)
        elif all(out in given for out in node.outputs):
            continue  # its tangents are given: its own pushforward is not needed
        else:
            node_tangents = [
                t if isinstance(t.type, DisconnectedType) else gradient._match_tangent_dtype(x, t)
                for x, t in ((inp, input_tangent(inp)) for inp in node.inputs)
            ]
            results = node.op.pushforward(node.inputs, node.outputs, node_tangents)
        tangent_of.update(  # a wrt variable keeps its own tangent
            (out, result)
            for out, result in zip(node.outputs, results, strict=True)
            if out not in given
        )

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


def _collapsed_toposort(outputs, inputs, consumers, region_of) -> list:
    """The nodes on the tangents' path, each region as one unit, in topological order.

    A region comes after everything on the path that it reads: in a plain
    topological order of the nodes, an ordinary node may read an output of
    the region before another of its nodes runs, or feed the region after
    its first node.  Regions are convex along the path (not off it: a
    ``Shape`` of a region variable may feed the region), so only path
    variables order the units; nodes off the path carry no tangent.
    """
    blockers = set(inputs)

    def unit(node):
        return region_of.get(node, node)

    def deps(current):
        return list(
            dict.fromkeys(
                unit(var.owner)
                for var in current.inputs
                if var in consumers and var not in blockers and var.owner is not None
            )
        )

    path = {node for apps in consumers.values() for node in apps}
    roots = dict.fromkeys(unit(out.owner) for out in outputs if out.owner in path)
    return list(walk_toposort(roots, deps))


def _region_pushforward(region: Region, tangent, use_op_pushforward: bool, given) -> list:
    """The tangents of `region`'s outputs: one `LazyPushforward`, or disconnected.

    An output whose tangent is `given` (a ``wrt`` variable) is left out of
    the `LazyPushforward`, so the Ops that only compute it need no pushforward.
    """
    pattern = region.connection_pattern()
    live = [
        i
        for i, inp in enumerate(region.inputs)
        if region.differentiable[i] and not isinstance(tangent(inp).type, DisconnectedType)
    ]
    wanted = [
        j
        for j, out in enumerate(region.outputs)
        if out not in given and any(pattern[i][j] for i in live)
    ]
    results = [disconnected_type() for _ in region.outputs]
    if not wanted:
        return results
    op = LazyPushforward.from_graph(
        region.inputs,
        [region.outputs[j] for j in wanted],
        live,
        use_op_pushforward=use_op_pushforward,
    )
    tangents = [_broadcast_tangent(region.inputs[i], tangent(region.inputs[i])) for i in live]
    for j, result in zip(wanted, op(*region.inputs, *tangents, return_list=True), strict=True):
        results[j] = result
    return results


def _broadcast_tangent(var: Variable, tangent: Variable) -> Variable:
    """`tangent`, broadcast to `var`'s shape if it has fewer dims.

    An ordinary Op's pushforward may return a tangent that only broadcasts to
    its output (PyTensor's ``ZeroGrad.pushforward`` returns a 0-d zero); the
    lowered Ops that would read it broadcast it, a region's tangent must be
    typed like its input.
    """
    if isinstance(var.type, TensorType) and isinstance(tangent.type, TensorType):
        if tangent.type.ndim < var.type.ndim:
            return broadcast_to(tangent, tuple(var.shape))
    return tangent


def xtensor_pushforward(
    f,
    wrt,
    tangents,
    disconnected_outputs="raise",
    return_disconnected="zero",
    use_op_pushforward=False,
):
    """:func:`pytensor.gradient.pushforward` where an argument is an ``XTensorVariable``.

    With such outputs, inputs or tangents, each region of un-lowered Ops
    is one lazy `LazyPushforward`, expanded as `use_op_pushforward` says
    (from the lowered Ops' own pushforwards, or as a pullback of a pullback).
    Each tangent is matched to its input by dim name (a `TypeError` names the
    input if it cannot be), and each result is of its output's kind.
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
    else:  # a lowered (e.g. expanded) graph of XTensorVariables, differentiated as asked
        result = pushforward_by_pullbacks(
            outputs, inputs, aligned, disconnected_outputs, return_disconnected
        )
    return gradient.as_list_or_tuple(isinstance(f, list), isinstance(f, tuple), result)


def pushforward_by_pullbacks(outputs, inputs, tangents, disconnected_outputs, return_disconnected):
    """The pushforward as the pullback of a pullback.

    Like PyTensor's ``pushforward_through_pullback``, with seeds of each
    output's own kind (xtensor zeros for an xtensor output) and each output
    through a view, and so is each input's cotangent in the second pullback:
    pullback's cotangents are final (known_grads), so an output that is an
    ancestor of another (or the same variable twice, as the cotangents of
    ``x`` and ``y`` in ``x + y``) would lose the other's contribution.
    A variable of `inputs` computed from others is held constant in the
    first pullback, so its given tangent is its tangent, as in the direct
    walk (`_lazy_pushforward`): ``sum_j (d f / d wrt[j]) tangents[j]`` with
    the ``wrt`` as independent variables.
    """
    seeds = [gradient._float_zeros_like(out) for out in outputs]
    computed = [var for var in inputs if var.owner is not None]
    input_cotangents = gradient.pullback(
        [view_op(out) for out in outputs],
        inputs,
        seeds,
        consider_constant=computed,
        # held constant, an input reached only through another is no longer
        # connected to the outputs, though its tangent reaches them
        disconnected_inputs="ignore" if computed else disconnected_outputs,
        return_disconnected="zero",
    )
    return gradient.pullback(
        [view_op(cotangent) for cotangent in input_cotangents],
        seeds,
        tangents,
        disconnected_inputs="ignore",
        return_disconnected=return_disconnected,
    )


def _as_list(value):
    return list(value) if isinstance(value, list | tuple) else [value]


def _collapse(var_to_app_to_idx, grad_dict, regions: list[Region]):
    """Rewrite the variable-to-consumers map so each region is one stand-in node.

    Each region becomes an `Apply` of a `_RegionOp` on the region's inputs,
    with fresh outputs (the user's graph is left untouched).  Each fresh
    output gets the consumers of the region output it stands for and its
    given cotangent in `grad_dict` (in place); the region output keeps its
    entry, as a ``wrt`` variable is looked up by itself.
    """
    stand_in_of = {}  # each region node -> the stand-in of its region
    fresh_of = {}  # each stand-in -> {region output: the stand-in's output for it}
    position_of = {}  # each stand-in -> {region input: its position}
    for region in regions:
        stand_in = _RegionOp(region).make_node(*region.inputs)
        for node in region.nodes:
            stand_in_of[node] = stand_in
        fresh_of[stand_in] = dict(zip(region.outputs, stand_in.outputs, strict=True))
        position_of[stand_in] = {var: i for i, var in enumerate(region.inputs)}
    collapsed = {}
    for var, apps in var_to_app_to_idx.items():
        producer = stand_in_of.get(var.owner)
        if producer is not None and var not in fresh_of[producer]:
            continue  # interior to a region: never asked for its gradient
        new_apps: dict = {}
        for app, positions in apps.items():
            stand_in = stand_in_of.get(app)
            if stand_in is None:
                new_apps[app] = positions
            elif stand_in is not producer:
                new_apps.setdefault(stand_in, [position_of[stand_in][var]])
            # else: a region output also read inside its own region; the
            # region's pullback accounts for that use.
        collapsed[var] = new_apps
        if producer is not None:
            collapsed[fresh_of[producer][var]] = new_apps
    for outputs in fresh_of.values():
        for var, fresh in outputs.items():
            if var in grad_dict:
                grad_dict[fresh] = grad_dict[var]
    return collapsed


class _RegionOp(Op):
    """A region as one node of ``grad``'s bookkeeping (see `_collapse`).

    ``_populate_grad_dict`` asks it, like any node, for its
    `connection_pattern` and its `pullback`: one `LazyPullback` of the
    region.  It is never part of a graph that is compiled.
    """

    def __init__(self, region: Region):
        self.region = region

    def __str__(self):
        return str(self.region)

    def make_node(self, *inputs: Variable) -> Apply:
        # Only `_collapse` makes nodes, on the region's own inputs.
        outputs = [out.type(name=out.name) for out in self.region.outputs]
        return Apply(self, list(inputs), outputs)

    def perform(self, node, inputs, output_storage):
        raise NotImplementedError(
            f"{self} stands for its region in pytensor.grad's bookkeeping only; "
            "it is never part of a graph to compile (the region's own nodes are)"
        )

    @cached_property
    def _pattern(self) -> list[list[bool]]:
        structural = self.region.connection_pattern()
        return [
            [connected and (differentiable or undefined is not None) for connected in row]
            for row, differentiable, undefined in zip(
                structural,
                self.region.differentiable,
                self.region.undefined,
                strict=True,
            )
        ]

    def connection_pattern(self, node):
        """The region's pattern, for its inputs on the gradient's path (or of undefined gradient)."""
        return self._pattern

    def pullback(self, inputs, outputs, output_grads):
        """One `LazyPullback` of the region (its real outputs), for the cotangents given."""
        region = self.region
        pattern = self._pattern
        live = [j for j, g in enumerate(output_grads) if not _is_zero_or_null(g)]
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
            op = LazyPullback.from_graph(region.inputs, [region.outputs[j] for j in live], wrt)
            cotangents = [output_grads[j] for j in live]  # aligned by make_node
            for i, g in zip(wrt, op(*inputs, *cotangents, return_list=True), strict=True):
                grads[i] = g
        return grads


@_vectorize_node.register(LazyPullback)
@_vectorize_node.register(LazyPushforward)
def _vectorize_lazy_region_op(op, node, *batched_inputs):
    """Vectorize a `LazyPullback` (`LazyPushforward`) by expanding it first.

    ``vectorize_graph`` (and so ``jacobian(vectorize=True)``) cannot batch an
    opaque region; its expansion is an ordinary graph that it can, with the
    xtensor conversions it holds batched by `vectorize_expansion`.
    """
    from pytensor_lazy_pullback.rewriting import expand_lazy_pullback
    from pytensor_lazy_pullback.xtensor_transforms import vectorize_expansion

    replacements = expand_lazy_pullback.transform(None, node)
    expansion = [replacements[out] for out in node.outputs]
    return vectorize_expansion(expansion, dict(zip(node.inputs, batched_inputs, strict=True)))


def vectorize_lazy_derivatives(outputs, replace):
    """``vectorize_graph`` of a graph holding lazy derivatives.

    Called at the start of :func:`pytensor.graph.replace.vectorize_graph`;
    returns ``None`` where that applies unchanged: no lazy derivative lies
    between the replaced variables and `outputs`, or a labelled result would
    get a new dim that nothing names (each lazy node is then batched by its
    expansion, see `_vectorize_lazy_region_op`, and PyTensor refuses the
    rest as it does).  Otherwise the lazy derivatives are expanded first, as
    the xtensor ``vectorize_graph`` does, so what the reference (lower first,
    then ``grad``) does not depend on, ours does not either.  Outside them a
    derivative still holds the xtensor conversions of the forward values
    they read (``x.values.shape``, say) and the conversions' own pullbacks,
    which PyTensor refuses to batch along a plain tensor's new axis: it has
    no name for the new dim.  `vectorize_expansion` batches those, with the
    names of the batched labelled inputs' new dims, or names that stay inside
    the graph.
    """
    from pytensor_lazy_pullback.rewriting import expand_lazy_pullbacks_below

    keys = list(replace)
    as_list = isinstance(outputs, Sequence)
    outputs = list(outputs) if as_list else [outputs]
    if not all(isinstance(var, Variable) for var in [*outputs, *keys, *replace.values()]):
        return None  # PyTensor's own error
    if not any(isinstance(node.op, LazyRegionOp) for node in toposort(outputs, blockers=keys)):
        return None
    expanded = expand_lazy_pullbacks_below(outputs, keys)
    depends = {old for old, new in replace.items() if new is not old}
    needs_a_name = False
    for node in toposort(expanded, blockers=keys):
        if any(inp in depends for inp in node.inputs):
            depends.update(node.outputs)
            needs_a_name |= is_unlowered(node)
    if needs_a_name:
        from pytensor_lazy_pullback.xtensor_transforms import vectorize_expansion

        vectorized = vectorize_expansion(expanded, dict(replace), name_labelled_results=False)
        if vectorized is None:
            return None
    else:
        vectorized = vectorize_graph(expanded, replace)
    return vectorized if as_list else vectorized[0]
