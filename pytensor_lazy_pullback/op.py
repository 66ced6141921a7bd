"""The `LazyPullback` Op, and how :func:`pytensor.grad` uses it for un-lowered regions.

Upstream home: ``pytensor/gradient_lazy.py``.

Besides the Op, this module holds what ``pytensor/gradient.py`` calls at the
start of the functions it hooks: :func:`collapse_regions`
(``_populate_grad_dict``), :func:`lazy_zeros_like` / :func:`lazy_ones_like`
(``_float_zeros_like`` / ``_float_ones_like``),
:func:`pushforward_through_regions` (``_pushforward_direct``) and
:func:`has_cotangent_rules` with :func:`pushforward_by_pullbacks`
(``pushforward``).  Each returns ``None`` (or ``False``) where PyTensor's own
code applies unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytensor
from pytensor.compile.ops import view_op
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.fg import FrozenFunctionGraph
from pytensor.graph.null_type import NullType
from pytensor.graph.op import HasInnerGraph, Op
from pytensor.gradient import DisconnectedType, disconnected_type, grad_undefined
from pytensor.graph.traversal import applys_between
from pytensor import config
from pytensor.scalar import upcast
from pytensor.tensor.basic import constant
from pytensor.tensor.type import continuous_dtypes, float_dtypes

from pytensor_lazy_pullback.regions import Region, find_regions
from pytensor_lazy_pullback.registry import cotangent_rules, is_unlowered

__all__ = [
    "LazyPullback",
    "LazyPullbackNotExpandedError",
    "align_cotangent",
    "collapse_regions",
    "has_cotangent_rules",
    "lazy_ones_like",
    "lazy_zeros_like",
    "pushforward_by_pullbacks",
    "pushforward_through_regions",
]


class LazyPullbackNotExpandedError(NotImplementedError):
    """Raised when a `LazyPullback` reaches a linker without being expanded."""


class LazyPullback(HasInnerGraph, Op):
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

    __props__ = ("fgraph", "wrt")

    def __init__(self, fgraph: FrozenFunctionGraph, wrt: Sequence[int]):
        if not isinstance(fgraph, FrozenFunctionGraph):
            raise TypeError(
                f"LazyPullback needs a FrozenFunctionGraph, got {type(fgraph).__name__}"
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
    ) -> LazyPullback:
        """Freeze the graph between `inputs` and `outputs` into a `LazyPullback`.

        The graph is copied; `inputs` and `outputs` are left untouched.
        """
        return cls(FrozenFunctionGraph.from_io(inputs, outputs), wrt)

    def __str__(self):
        ops = dict.fromkeys(type(node.op).__name__ for node in self.fgraph.toposort())
        return f"LazyPullback{{{', '.join(ops)}}}"

    def make_node(self, *inputs: Variable) -> Apply:
        inner_inputs = self.fgraph.inputs
        inner_outputs = self.fgraph.outputs
        n_in, n_out = len(inner_inputs), len(inner_outputs)
        if len(inputs) != n_in + n_out:
            raise TypeError(
                f"{self} expects {n_in} region input(s) followed by {n_out} "
                f"cotangent(s), got {len(inputs)} variable(s)"
            )
        region_inputs = [
            inner.type.filter_variable(outer)
            for inner, outer in zip(inner_inputs, inputs[:n_in], strict=True)
        ]
        cotangents = [
            align_cotangent(inner, cotangent)
            for inner, cotangent in zip(inner_outputs, inputs[n_in:], strict=True)
        ]
        outputs = [self._cotangent_type(inner_inputs[i])() for i in self.wrt]
        return Apply(self, [*region_inputs, *cotangents], outputs)

    def _cotangent_type(self, var: Variable):
        """The type of `var`'s cotangent: `var`'s, with a float dtype if `var` is discrete.

        A cotangent is never an integer (PyTensor's gradient contract).  For an
        integer or boolean input it has the dtype the lowered chain rule gives:
        that of the region's floating-point outputs (upcast), else ``floatX``.
        """
        dtype = var.type.dtype
        if dtype in continuous_dtypes:
            return var.type
        output_dtypes = [
            out.type.dtype for out in self.fgraph.outputs if out.type.dtype in float_dtypes
        ]
        return var.type.clone(dtype=upcast(*output_dtypes) if output_dtypes else config.floatX)

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

    def clone(self):
        # The inner graph is frozen: there is nothing to copy.
        return self

    def perform(self, node, inputs, output_storage):
        raise LazyPullbackNotExpandedError(
            f"{self} reached a linker without being expanded. It is expanded by the "
            "'expand_lazy_pullback' rewrite, which every standard mode runs (tags "
            "'fast_run', 'fast_compile', 'minimum_compile'). If you built a mode "
            "that excludes it, include it again, or expand the graph first with "
            "pytensor_lazy_pullback.expand_lazy_pullbacks(outputs)."
        )


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


# --------------------------------------------------------------------------
# What pytensor.gradient calls: each returns None (or False) where PyTensor's
# own code applies unchanged.


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
    computed by an un-lowered node, a constant, so that the gradient graph
    does not hold the un-lowered forward pass (which ``vectorize_graph`` could
    not batch) just to shape a scalar.
    """
    rules = cotangent_rules(x)
    if rules is not None:
        return rules.ones_like(x)
    if x.type.ndim == 0 and x.owner is not None and is_unlowered(x.owner):
        dtype = x.type.dtype if x.type.dtype in float_dtypes else pytensor.config.floatX
        return constant(np.ones((), dtype=dtype))
    return None


def pushforward_through_regions(f, wrt, tangents, disconnected_outputs, return_disconnected):
    """The push-forward from two lazy pullbacks if un-lowered nodes lie between, else ``None``.

    Called at the start of ``pytensor.gradient._pushforward_direct``:
    un-lowered Ops have no pushforward of their own.
    """
    if any(is_unlowered(node) for node in applys_between(wrt, f)):
        return _pushforward_by_pullbacks(
            f, wrt, tangents, disconnected_outputs, return_disconnected
        )
    return None


def has_cotangent_rules(*arguments) -> bool:
    """Whether any variable among `arguments` (variables or lists of them) has cotangent rules."""
    return any(
        isinstance(var, Variable) and cotangent_rules(var) is not None
        for argument in arguments
        for var in _as_list(argument)
    )


def pushforward_by_pullbacks(
    f, wrt, tangents, disconnected_outputs="raise", return_disconnected="zero"
):
    """:func:`pytensor.gradient.pushforward` for variables with cotangent rules (labelled ones).

    The push-forward is built from two lazy pullbacks (whatever
    ``use_op_pushforward`` says: un-lowered Ops have no pushforward of their
    own).  Each tangent is matched to its input by its rules (by dim name; a
    `TypeError` names the input if it cannot be), and each result is arranged
    like its output.
    """
    from pytensor.gradient import as_list_or_tuple

    inputs, given = _as_list(wrt), _as_list(tangents)
    if len(inputs) != len(given):
        raise ValueError("`wrt` must be the same length as `tangents`.")
    aligned = [align_cotangent(x, t) for x, t in zip(inputs, given, strict=True)]
    result = _pushforward_by_pullbacks(
        _as_list(f), inputs, aligned, disconnected_outputs, return_disconnected
    )
    return as_list_or_tuple(isinstance(f, list), isinstance(f, tuple), result)


def _pushforward_by_pullbacks(outputs, inputs, tangents, disconnected_outputs, return_disconnected):
    """The push-forward as the pullback of a pullback (J. Towns' trick), lazily.

    Like PyTensor's ``pushforward_through_pullback``, with seeds made by the
    registered rules (zeros of each output's kind) and each output through a
    view: pullback's cotangents are final (known_grads), so an output that is
    an ancestor of another would lose the other's contribution.
    """
    from pytensor import gradient

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
