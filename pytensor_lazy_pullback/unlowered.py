"""Un-lowered Ops: those that must be lowered before they are differentiated or run.

Upstream home: ``pytensor/graph/lowering.py``.

They are the :mod:`pytensor.xtensor` Ops, replaced by tensor Ops in
``lower_xtensor``, and the lazy derivatives (`LazyRegionOp`), expanded there.
The checks below ask for xtensor's classes only once :mod:`pytensor.xtensor`
is imported: no graph holds its Ops before, and :func:`pytensor.grad` of a
tensor graph should not import it (that registers its rewrites).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from functools import cache

from pytensor.graph.basic import Apply, Variable
from pytensor.graph.fg import FrozenFunctionGraph
from pytensor.graph.op import HasInnerGraph, Op

__all__ = [
    "LazyPullbackNotExpandedError",
    "LazyRegionOp",
    "LoweringError",
    "align_cotangent",
    "is_conversion",
    "is_unlowered",
    "is_xtensor_variable",
    "op_names",
]


def _xtensor_imported() -> bool:
    """Whether :mod:`pytensor.xtensor` is imported (see the module's docstring)."""
    return "pytensor.xtensor" in sys.modules


@cache
def _xtensor_ops() -> tuple[type[Op], ...]:
    """The xtensor Op classes: `XOp` and, after it, the conversions.

    The conversions (``Rename``, ``XTensorFromTensor``, ``TensorFromXTensor``)
    only convert between xtensor variables and tensors: they have a pullback
    of their own and may stay at the boundary of a lowered graph.  They join
    the regions they touch; a group of conversions alone is not a region.
    """
    from pytensor.xtensor.basic import Rename, TensorFromXTensor, XOp, XTensorFromTensor

    return XOp, Rename, XTensorFromTensor, TensorFromXTensor


def is_xtensor_variable(var: Variable) -> bool:
    """Whether `var` is an ``XTensorVariable``."""
    if not _xtensor_imported():
        return False
    from pytensor.xtensor.type import XTensorType

    return isinstance(var.type, XTensorType)


def is_unlowered(node: Apply) -> bool:
    """Whether `node` must be lowered (or expanded) before it is differentiated or run."""
    return isinstance(node.op, LazyRegionOp) or (
        _xtensor_imported() and isinstance(node.op, _xtensor_ops())
    )


def is_conversion(node: Apply) -> bool:
    """Whether `node` converts between xtensor variables and tensors (see `_xtensor_ops`)."""
    return _xtensor_imported() and isinstance(node.op, _xtensor_ops()[1:])


def undefined_gradient_reason(node: Apply) -> str | None:
    """Why the gradient through `node` is undefined (a random draw), or ``None``."""
    if _xtensor_imported():
        from pytensor.xtensor.vectorization import XRV

        if isinstance(node.op, XRV):
            return "No gradient defined for random variables"
    return None


def is_structural(node: Apply) -> bool:
    """Whether `node` goes inside the region it feeds.

    A ``MakeSlice``: the index lowering must see the slice itself.
    """
    from pytensor.tensor.type_other import MakeSlice

    return isinstance(node.op, MakeSlice)


def align_cotangent(var: Variable, cotangent: Variable) -> Variable:
    """Arrange `cotangent` like `var`: an xtensor cotangent is matched **by dim name**.

    Raises
    ------
    TypeError
        If `cotangent` cannot be the cotangent of `var` (the message names
        both and says what is expected).
    """
    if is_xtensor_variable(var):
        from pytensor_lazy_pullback.xtensor import align_xtensor_cotangent

        return align_xtensor_cotangent(var, cotangent)
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
