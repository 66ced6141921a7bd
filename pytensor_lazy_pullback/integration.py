"""Integration with :mod:`pytensor.gradient`: the one module touching PyTensor internals.

Upstream home: these few lines would go straight into ``pytensor/gradient.py``
(``_populate_grad_dict``, ``_populate_var_to_app_to_idx``, ``_float_zeros_like``
and ``_float_ones_like``).

:func:`pytensor.grad` (and everything built on it: ``pullback``,
``pushforward``, ``jacobian``, ``hessian``, ``verify_grad``, the gradients of
``OpFromGraph`` and ``Scan``) maps every variable between ``wrt`` and the cost
to the nodes that consume it, then asks each node for its pullback in
``_populate_grad_dict``.  :func:`enable` wraps that step: it finds the regions
of un-lowered nodes in the map (:mod:`pytensor_lazy_pullback.regions`) and
replaces each by a single stand-in node whose pullback is one
:class:`~pytensor_lazy_pullback.LazyPullback`.  Because ``grad`` looks these
helpers up in its module at every call, this works however ``grad`` was
imported, and whenever the graph was built.  The map itself is built by
``_populate_var_to_app_to_idx``, which PyTensor writes recursively (one frame
per node of the longest path): :func:`enable` replaces it by a loop that
builds the same map in the same order, so graphs deeper than the recursion
limit reach the regions at all.

It also wraps ``_float_zeros_like`` and ``_float_ones_like``, which ``grad``
uses for disconnected inputs and for the cost's seed, so that types with
registered cotangent rules (labelled arrays) get zeros and ones of their kind;
and ``_pushforward_direct`` (``pushforward(..., use_op_pushforward=True)``),
which asks every node for its own pushforward: through un-lowered nodes, which
have none, it computes the pushforward from two lazy pullbacks instead.
``pushforward`` itself converts its arguments with ``as_tensor_variable``,
which labelled variables refuse; for those (only) it is rebound to
:func:`pushforward`, which takes labelled outputs, inputs and tangents (callers
that imported the original by name keep PyTensor's behaviour for them).

It applies the function overrides a family registered
(:func:`~pytensor_lazy_pullback.registry.register_function_override`), and
restores them in :func:`disable`.

Finally it registers how ``vectorize_graph`` batches a `LazyPullback` (with
PyTensor's ``_vectorize_node`` dispatcher): by expanding it first, then
batching the expansion (with the family's expansion vectorizer, if one is
registered).
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytensor
import pytensor.gradient as gradient

SUPPORTED_PYTENSOR = ((3, 3), (3, 4))
"""PyTensor releases (``[low, high)``, major and minor) whose internals this
module was written against."""

_EXPECTED_SIGNATURES = {
    "_populate_var_to_app_to_idx": ["outputs", "wrt", "consider_constant"],
    "_populate_grad_dict": ["var_to_app_to_idx", "grad_dict", "wrt", "cost_name"],
    "_float_zeros_like": ["x"],
    "_float_ones_like": ["x"],
    "_pushforward_direct": ["f", "wrt", "tangents", "disconnected_outputs", "return_disconnected"],
    "pushforward": [
        "f", "wrt", "tangents", "disconnected_outputs", "return_disconnected", "use_op_pushforward",
    ],
}

_RELEASE = re.compile(r"(\d+)\.(\d+)(\.\d+)?(\.post\d+)?")


def check_pytensor() -> None:
    """Raise `ImportError` unless PyTensor is a release whose internals this module expects."""
    low, high = SUPPORTED_PYTENSOR
    supported = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    match = _RELEASE.fullmatch(pytensor.__version__)
    problems = []
    if match is None:
        problems.append(
            f"pytensor's version {pytensor.__version__!r} is not a release "
            f"(a source checkout?); this add-on supports releases {supported}"
        )
    elif not low <= (int(match[1]), int(match[2])) < high:
        problems.append(
            f"pytensor {pytensor.__version__} is outside the supported range {supported}"
        )
    for name, params in _EXPECTED_SIGNATURES.items():
        func = getattr(gradient, name, None)
        func = getattr(func, "__wrapped__", func)
        if func is None:
            problems.append(f"pytensor.gradient.{name} does not exist")
        elif list(inspect.signature(func).parameters) != params:
            problems.append(
                f"pytensor.gradient.{name} has parameters "
                f"{list(inspect.signature(func).parameters)}, expected {params}"
            )
    if problems:
        raise ImportError(
            "pytensor_lazy_pullback cannot integrate with this PyTensor: "
            + "; ".join(problems)
            + ". PyTensor itself is unaffected; install a supported release "
            "(see the package's requirements) to differentiate un-lowered graphs."
        )


# Before anything below registers a rewrite, an Op or a dispatch in PyTensor:
# a refused import must leave PyTensor as it was.
check_pytensor()

import numpy as np  # noqa: E402
from pytensor.compile.ops import view_op  # noqa: E402
from pytensor.gradient import DisconnectedType, disconnected_type, grad_undefined  # noqa: E402
from pytensor.graph.basic import Variable  # noqa: E402
from pytensor.graph.null_type import NullType  # noqa: E402
from pytensor.graph.replace import _vectorize_node, vectorize_graph  # noqa: E402
from pytensor.graph.traversal import ancestors, applys_between, toposort  # noqa: E402
from pytensor.tensor.basic import constant  # noqa: E402
from pytensor.tensor.type import float_dtypes  # noqa: E402

from pytensor_lazy_pullback.op import LazyPullback, LazyPushforward, align_cotangent  # noqa: E402
from pytensor_lazy_pullback.regions import Region, find_regions  # noqa: E402
from pytensor_lazy_pullback.registry import (  # noqa: E402
    cotangent_rules,
    expansion_vectorizer,
    function_overrides,
    is_conversion,
    is_unlowered,
)
from pytensor_lazy_pullback.rewriting import expand_node  # noqa: E402

__all__ = ["check_pytensor", "disable", "enable", "is_enabled", "integration_disabled"]

_originals: dict[str, Callable] = {
    name: getattr(gradient, name) for name in _EXPECTED_SIGNATURES
}
"""PyTensor's own functions, as they were when this module was imported."""

_enabled = False
_rebound: list[tuple[object, str, object, bool]] = []
"""``(owner, name, original, was_own_attribute)`` for each rebinding in effect."""


def _while_enabled(replacement: Callable, original: Callable) -> Callable:
    """`replacement` while the integration is enabled, PyTensor's `original` otherwise.

    Code that imported a rebound name while it was enabled keeps this function:
    it must behave like PyTensor's own once :func:`disable` was called.
    """

    @functools.wraps(original)
    def rebound(*args, **kwargs):
        if _enabled:
            return replacement(*args, **kwargs)
        return original(*args, **kwargs)

    return rebound


def _rebind(owner, name: str, replacement: Callable) -> None:
    own = name in vars(owner)
    original = getattr(owner, name, None)
    _rebound.append((owner, name, original, own))
    # A new attribute (no original) is deleted again by `disable`.
    setattr(owner, name, replacement if original is None else _while_enabled(replacement, original))


def enable() -> None:
    """Make :func:`pytensor.grad` differentiate un-lowered graphs lazily.

    Idempotent.  Raises `ImportError`, changing nothing, if PyTensor's
    internals are not those this module was written against (also checked
    when the package is imported, before it registers anything in PyTensor).
    """
    global _enabled
    if _enabled:
        return
    check_pytensor()
    _enabled = True
    replacements = {
        "_populate_var_to_app_to_idx": _populate_var_to_app_to_idx,
        "_populate_grad_dict": _populate_grad_dict,
        "_float_zeros_like": _float_zeros_like,
        "_float_ones_like": _float_ones_like,
        "_pushforward_direct": _pushforward_direct,
        "pushforward": pushforward,
    }
    for name, replacement in replacements.items():
        _rebind(gradient, name, replacement)
    for override in function_overrides():
        original = getattr(override.module, override.name, None)
        _rebind(override.module, override.name, override.wrap(original))


def disable() -> None:
    """Restore PyTensor's own gradient machinery.  Idempotent."""
    global _enabled
    _enabled = False
    for owner, name, original, own in reversed(_rebound):
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)
    _rebound.clear()


def is_enabled() -> bool:
    """Whether :func:`enable` is in effect."""
    return _enabled


@contextmanager
def integration_disabled() -> Iterator[None]:
    """Context manager running its body with PyTensor's own gradient machinery."""
    was_enabled = is_enabled()
    disable()
    try:
        yield
    finally:
        if was_enabled:
            enable()


def _populate_var_to_app_to_idx(outputs, wrt, consider_constant):
    """PyTensor's ``_populate_var_to_app_to_idx``, with loops instead of recursion.

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


def _populate_grad_dict(var_to_app_to_idx, grad_dict, wrt, cost_name=None):
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
        var_to_app_to_idx = _collapse(var_to_app_to_idx, regions)
    return _originals["_populate_grad_dict"](var_to_app_to_idx, grad_dict, wrt, cost_name)


def _float_zeros_like(x):
    rules = cotangent_rules(x)
    if rules is not None:
        return rules.zeros_like(x)
    return _originals["_float_zeros_like"](x)


def _float_ones_like(x):
    rules = cotangent_rules(x)
    if rules is not None:
        return rules.ones_like(x)
    if x.type.ndim == 0 and any(
        var.owner is not None and is_unlowered(var.owner) for var in ancestors([x])
    ):
        # The seed of a scalar cost computed from un-lowered nodes: a constant,
        # so that the gradient graph does not hold the un-lowered forward pass
        # (which ``vectorize_graph`` cannot batch) just to shape a scalar.
        dtype = x.type.dtype if x.type.dtype in float_dtypes else pytensor.config.floatX
        return constant(np.ones((), dtype=dtype))
    return _originals["_float_ones_like"](x)


def _pushforward_direct(f, wrt, tangents, disconnected_outputs, return_disconnected):
    if any(is_unlowered(node) for node in applys_between(wrt, f)):
        return _lazy_pushforward(
            f, wrt, tangents, disconnected_outputs, return_disconnected, use_op_pushforward=True
        )
    return _originals["_pushforward_direct"](
        f, wrt, tangents, disconnected_outputs, return_disconnected
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
                return _float_zeros_like(var)
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
            results = [_float_zeros_like(out) for out in node.outputs]
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
                t = _float_zeros_like(out)
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


def pushforward(
    f,
    wrt,
    tangents,
    disconnected_outputs="raise",
    return_disconnected="zero",
    use_op_pushforward=False,
):
    """:func:`pytensor.gradient.pushforward`, also for labelled variables.

    With labelled outputs, inputs or tangents, each region of un-lowered Ops
    is one lazy `LazyPushforward`, expanded as `use_op_pushforward` says
    (from the lowered Ops' own pushforwards, or as a pullback of a pullback).  Each tangent is
    matched to its input by dim name (a `TypeError` names the input if it
    cannot be), and each result is labelled like its output.
    """
    arguments = [*_as_list(f), *_as_list(wrt), *_as_list(tangents)]
    if not any(
        isinstance(var, Variable) and cotangent_rules(var) is not None for var in arguments
    ):
        return _originals["pushforward"](
            f, wrt, tangents, disconnected_outputs, return_disconnected, use_op_pushforward
        )
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
    seeds = [_float_zeros_like(out) for out in outputs]
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


@_vectorize_node.register(LazyPullback)
def _vectorize_lazy_pullback(op, node, *batched_inputs):
    """Vectorize a `LazyPullback` by expanding it first.

    ``vectorize_graph`` (and so ``jacobian(vectorize=True)``) cannot batch an
    opaque region; its expansion is an ordinary graph that it can.
    """
    vectorize = expansion_vectorizer() or vectorize_graph
    return vectorize(
        expand_node(node), dict(zip(node.inputs, batched_inputs, strict=True))
    )
