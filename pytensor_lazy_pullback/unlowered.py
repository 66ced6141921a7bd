"""Un-lowered Ops: the families that must be lowered before they are differentiated or run.

Upstream home: ``pytensor/graph/lowering.py``.

An un-lowered Op has no pullback of its own: a lowering rewrite replaces it
by ordinary Ops first.  There are two kinds:

* the Ops of a registered `UnloweredFamily` (:mod:`pytensor.xtensor` is one,
  registered by ``pytensor/xtensor/rewriting/lazy_pullback.py``);
* the lazy derivatives themselves (subclasses of `LazyRegionOp`), which the
  ``expand_lazy_pullback`` rewrite expands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pytensor.graph.basic import Apply, Variable
from pytensor.graph.fg import FrozenFunctionGraph, FunctionGraph
from pytensor.graph.op import HasInnerGraph, Op
from pytensor.graph.type import Type

__all__ = [
    "LazyPullbackNotExpandedError",
    "LazyRegionOp",
    "LoweringError",
    "UnloweredFamily",
    "align_cotangent",
    "family_of",
    "is_conversion",
    "is_unlowered",
    "op_names",
    "register_unlowered_family",
]


@dataclass(frozen=True)
class UnloweredFamily:
    """A family of Ops that a lowering rewrite replaces by ordinary Ops.

    Attributes
    ----------
    ops
        The family's Op classes (subclasses included).  :func:`pytensor.grad`
        gathers their nodes into regions, each differentiated by one
        `LazyPullback`.
    conversions
        Those of `ops` that only convert between the family's variables and
        tensors: they have a pullback of their own and may stay at the
        boundary of a lowered graph.  They join the regions they touch; a
        group of conversions alone is not a region.
    lower
        ``lower(fgraph)`` replaces, in place, every Op of the family in a
        private `FunctionGraph` by ordinary Ops.
    variable_type
        The `Type` class of the family's own variables.
    align_cotangent
        ``align_cotangent(var, cotangent)`` returns `cotangent` arranged like
        `var` (a variable of `variable_type`), or raises a `TypeError` that
        names `var` and says what is expected.
    undefined_gradient
        ``(op_class, reason)`` pairs: Ops through which the gradient is
        undefined (e.g. random draws), refused at :func:`pytensor.grad` time.
    structural_ops
        Ops whose outputs a lowering must see as they are (e.g. ``MakeSlice``
        for indexing): a node of one that feeds a region is put inside it.
    vectorize
        ``vectorize(outputs, replace, name_labelled_results=True)``: how
        ``vectorize_graph`` batches an expansion that holds the family's
        conversions, if :func:`pytensor.graph.replace.vectorize_graph` cannot;
        ``None`` if a dim no batched input names would reach a result of the
        family and `name_labelled_results` is false.
    relabel_round_trips
        ``relabel_round_trips(var)``: `var`, a result of an expansion of the
        family's type, with a round trip out of the family and back that
        changes its type (as a lowered pullback makes of a cotangent that
        only a relabelling carries to its input) spelled as the family's own
        relabelling, which its rewrites know.
    """

    ops: tuple[type[Op], ...]
    conversions: tuple[type[Op], ...]
    lower: Callable[[FunctionGraph], None]
    variable_type: type[Type]
    align_cotangent: Callable[[Variable, Variable], Variable]
    undefined_gradient: tuple[tuple[type[Op], str], ...] = ()
    structural_ops: tuple[type[Op], ...] = ()
    vectorize: Callable[..., list[Variable] | None] | None = None
    relabel_round_trips: Callable[[Variable], Variable] | None = None


_families: list[UnloweredFamily] = []


def register_unlowered_family(family: UnloweredFamily) -> None:
    """Make :func:`pytensor.grad` differentiate the Ops of `family` lazily."""
    if family not in _families:
        _families.append(family)


def families() -> tuple[UnloweredFamily, ...]:
    """The registered families."""
    return tuple(_families)


def family_of(op_or_type: Op | Type) -> UnloweredFamily | None:
    """The family an Op belongs to, or whose variables have a `Type`; else ``None``."""
    for family in _families:
        if isinstance(op_or_type, family.ops) or isinstance(op_or_type, family.variable_type):
            return family
    return None


def is_unlowered(node: Apply) -> bool:
    """Whether `node` must be lowered (or expanded) before it is differentiated or run."""
    return isinstance(node.op, LazyRegionOp) or family_of(node.op) is not None


def is_conversion(node: Apply) -> bool:
    """Whether `node` is a conversion of its family (see `UnloweredFamily`)."""
    family = family_of(node.op)
    return family is not None and isinstance(node.op, family.conversions)


def undefined_gradient_reason(node: Apply) -> str | None:
    """Why the gradient through `node` is undefined, or ``None`` if it is not."""
    family = family_of(node.op)
    if family is not None:
        for op_class, reason in family.undefined_gradient:
            if isinstance(node.op, op_class):
                return reason
    return None


def is_structural(node: Apply) -> bool:
    """Whether `node` goes inside the region it feeds (see `UnloweredFamily.structural_ops`)."""
    return any(isinstance(node.op, family.structural_ops) for family in _families)


def align_cotangent(var: Variable, cotangent: Variable) -> Variable:
    """Arrange `cotangent` like `var`, by the rules of `var`'s family.

    Raises
    ------
    TypeError
        If `cotangent` cannot be the cotangent of `var` (the message names
        both and says what is expected).
    """
    family = family_of(var.type)
    if family is not None:
        return family.align_cotangent(var, cotangent)
    if getattr(cotangent.type, "ndim", None) != getattr(var.type, "ndim", None):
        raise TypeError(
            f"The cotangent {cotangent} of type {cotangent.type} does not match "
            f"the variable {var} of type {var.type}"
        )
    return cotangent


def op_names(nodes: Iterable[Apply], classes: bool = False) -> str:
    """The distinct Ops of `nodes` (or their classes), in order, joined by commas."""
    return ", ".join(
        dict.fromkeys(type(node.op).__name__ if classes else str(node.op) for node in nodes)
    )


class LoweringError(Exception):
    """A rewrite could not lower Ops that no linker can run.

    The graph cannot be compiled without that rewrite, so PyTensor's rewriters
    re-raise this error whatever ``config.on_opt_error`` says, as they do an
    `AssertionError`, instead of logging it and going on.
    """


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
    def from_graph(cls, inputs: Sequence[Variable], outputs: Sequence[Variable], wrt, **props):
        """Freeze the graph between `inputs` and `outputs` into an Op of this class.

        The graph is copied; `inputs` and `outputs` are left untouched.
        """
        return cls(FrozenFunctionGraph.from_io(inputs, outputs), wrt, **props)

    def __str__(self):
        return f"{type(self).__name__}{{{op_names(self.fgraph.toposort(), classes=True)}}}"

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
            "'expand_lazy_pullback' rewrite of 'lower_xtensor', which every standard "
            "mode runs (tags 'fast_run', 'fast_compile', 'minimum_compile'). If you "
            "built a mode that excludes it, include it again, or rewrite the graph "
            "first with pytensor.graph.rewrite_graph(outputs, include=('lower_xtensor',))."
        )
