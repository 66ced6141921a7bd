"""The xtensor part: what "un-lowered" means for :mod:`pytensor.xtensor`.

Upstream home: ``pytensor/xtensor/rewriting/lazy_pullback.py``.

It registers, with the generic machinery of
:mod:`pytensor_lazy_pullback.registry`,

* every `XOp` as un-lowered, lowered by the ``lower_xtensor`` rewrites, and
  the conversions `XTensorFromTensor`, `TensorFromXTensor` and `Rename` as
  joining the regions they touch (so a gradient with respect to a plain tensor
  holds no labelled variable outside its `LazyPullback`); `Rename` gets a
  working pullback (:func:`rename_pullback`: in PyTensor 3.3 it renames a dim
  literally called ``"dims"``);
* `XRV` (random draws) as having an undefined gradient, so that
  :func:`pytensor.grad` refuses a gradient through a draw at once, with the
  `NullTypeGradError` the lowered graph would give;
* ``MakeSlice`` as belonging inside a region, so the index lowering sees the
  slice bounds;
* how labelled cotangents are aligned to their variable's dims, **by name**,
  and how labelled zeros and ones are made.

It also puts ``expand_lazy_pullback`` and ``expand_inner_graphs`` into
``lower_xtensor``, so ``rewrite_graph(grads, include=("lower_xtensor",))``
expands lazy gradients, also inside the loops of ``hessian`` and ``jacobian``,
as well as lowering the forward graph; and gives `XTensorType` the
``in_same_class`` that `TensorType` has (see :func:`xtensor_in_same_class`).
"""

from __future__ import annotations

import numpy as np
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Variable
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.rewriting.db import RewriteDatabaseQuery
from pytensor.tensor.basic import constant
from pytensor.tensor.type_other import MakeSlice
from pytensor.xtensor.rewriting.utils import lower_xtensor_db
from pytensor.xtensor.basic import (
    Rename,
    TensorFromXTensor,
    XOp,
    XTensorFromTensor,
)
from pytensor.xtensor.indexing import Index, IndexUpdate
from pytensor.xtensor.shape import Broadcast, ExpandDims, UnStack, ones_like, zeros_like
from pytensor.xtensor.type import XTensorType, as_xtensor
from pytensor.xtensor.vectorization import XRV

from pytensor_lazy_pullback.registry import (
    CotangentRules,
    register_absorbed_op,
    register_cotangent_type,
    register_undefined_gradient_op,
    register_unlowered_op,
)
from pytensor_lazy_pullback.rewriting import expand_all_inner_graphs, expand_all_lazy_pullbacks

__all__ = [
    "align_labelled_cotangent",
    "labelled_ones_like",
    "lower_xtensor_graph",
    "rename_pullback",
    "xop_connection_pattern",
    "xtensor_in_same_class",
]


_lower_xtensor = None


def lower_xtensor_graph(fgraph: FunctionGraph) -> None:
    """Lower every xtensor Op of a private `fgraph` in place."""
    global _lower_xtensor
    if _lower_xtensor is None:
        from pytensor.compile import optdb

        _lower_xtensor = optdb.query(RewriteDatabaseQuery(include=["lower_xtensor"]))
    _lower_xtensor.rewrite(fgraph)


def align_labelled_cotangent(var: Variable, cotangent: Variable) -> Variable:
    """Return `cotangent` transposed to `var`'s dims, matching dims by name.

    Raises
    ------
    TypeError
        If `cotangent` is not labelled, or its dims are not those of `var`.
    """
    if not isinstance(cotangent.type, XTensorType):
        raise TypeError(
            f"The cotangent of the labelled variable {var} (dims {var.type.dims}) "
            f"must be an XTensorVariable with the same dims, got {cotangent} of type "
            f"{cotangent.type}. Label it first, e.g. "
            f"pytensor.xtensor.as_xtensor(cotangent, dims={var.type.dims!r})."
        )
    if cotangent.type.dims == var.type.dims:
        return cotangent
    if sorted(cotangent.type.dims) != sorted(var.type.dims):
        raise TypeError(
            f"The cotangent {cotangent} has dims {cotangent.type.dims}, but the "
            f"labelled variable {var} it belongs to has dims {var.type.dims}. "
            "A cotangent must have exactly the dims of its variable (in any order)."
        )
    return cotangent.transpose(*var.type.dims)


def rename_pullback(self, inputs, outputs, output_grads):
    """The pullback of `Rename`: rename the cotangent back, position by position.

    The cotangent is first aligned to the renamed output's dims by name.
    Upstream home: ``Rename.pullback`` in ``pytensor/xtensor/basic.py``.
    """
    [x] = inputs
    [out] = outputs
    [cotangent] = output_grads
    return [Rename(x.type.dims)(align_labelled_cotangent(out, cotangent))]


def xop_connection_pattern(self, node) -> list[list[bool]]:
    """Which inputs of an xtensor node its outputs depend on differentiably.

    As the lowered graph's own ``connection_pattern`` says, known without
    lowering: indices and sizes (``Index``, ``IndexUpdate``, ``ExpandDims``,
    ``UnStack``) are disconnected, ``Broadcast`` connects each input to its
    own output only, and ``XElemwise``/``XBlockwise`` follow their scalar or
    core Op (``zeros_like`` does not depend on its input).  So a gradient with
    respect to an index raises `DisconnectedInputError` at :func:`pytensor.grad`
    time, as the reference does.  Upstream home: ``connection_pattern`` methods
    on the Ops in ``pytensor/xtensor/``.
    """
    n_in, n_out = len(node.inputs), len(node.outputs)
    data_inputs = {Index: 1, IndexUpdate: 2, ExpandDims: 1, UnStack: 1}.get(type(self))
    if data_inputs is not None:
        return [[i < data_inputs] * n_out for i in range(n_in)]
    if isinstance(self, Broadcast):
        return [[i == j for j in range(n_out)] for i in range(n_in)]
    inner = getattr(self, "scalar_op", None) or getattr(self, "core_op", None)
    if hasattr(inner, "connection_pattern"):
        try:
            return inner.connection_pattern(node)
        except Exception:  # a core Op that needs a tensor node
            pass
    return [[True] * n_out for _ in range(n_in)]


def conversion_pushforward(self, inputs, outputs, tangents):
    """The pushforward of a conversion (``XTensorFromTensor``, ``TensorFromXTensor``, ``Rename``).

    A conversion is linear: it converts the tangent, aligned by dim name to
    its input.  Upstream home: ``XTypeCastOp.pushforward`` in
    ``pytensor/xtensor/basic.py``.
    """
    [x] = inputs
    [tangent] = tangents
    if isinstance(tangent.type, DisconnectedType):
        return [tangent]
    if isinstance(x.type, XTensorType):
        tangent = align_labelled_cotangent(x, tangent)
    return [self(tangent)]


def xtensor_in_same_class(self: XTensorType, otype) -> bool:
    """Whether `otype` differs from `self` at most in non-broadcastable static lengths.

    PyTensor 3.3's `XTensorType` inherits ``Type.in_same_class`` (equality),
    unlike `TensorType`.  Expanding a `LazyPullback` may refine a gradient's
    static shape (e.g. ``(None,)`` to ``(3,)``); where that gradient enters a
    ``Scan`` (as in ``hessian``, which maps ``grad`` over rows), the rebuilt
    Scan checks its inputs with ``in_same_class`` and would reject the refined
    type.  Upstream home: ``XTensorType.in_same_class`` in
    ``pytensor/xtensor/type.py``.
    """
    return (
        isinstance(otype, XTensorType)
        and otype.dtype == self.dtype
        and otype.dims == self.dims
        and otype.broadcastable == self.broadcastable
    )


def labelled_ones_like(var: Variable) -> Variable:
    """Labelled floating-point ones like `var`; a constant if `var` is 0-d.

    The 0-d case is :func:`pytensor.grad`'s seed for a labelled cost: as a
    constant it does not tie the gradient graph to the forward pass, so that
    ``vectorize_graph`` of a gradient need not batch the forward graph.
    """
    dtype = _float_dtype(var)
    if var.type.ndim == 0:
        return as_xtensor(constant(np.ones((), dtype=dtype)), dims=())
    return ones_like(var, dtype=dtype)


def _float_dtype(var: Variable) -> str:
    from pytensor import config
    from pytensor.tensor.type import float_dtypes

    return var.type.dtype if var.type.dtype in float_dtypes else config.floatX


register_unlowered_op(XOp, lower_xtensor_graph)
register_unlowered_op(Rename, lower_xtensor_graph, conversion=True)
register_unlowered_op(XTensorFromTensor, lower_xtensor_graph, conversion=True)
register_unlowered_op(TensorFromXTensor, lower_xtensor_graph, conversion=True)
register_undefined_gradient_op(XRV, "No gradient defined for random variables")
register_absorbed_op(MakeSlice)
register_cotangent_type(
    XTensorType,
    CotangentRules(
        align=align_labelled_cotangent,
        zeros_like=lambda var: zeros_like(var, dtype=_float_dtype(var)),
        ones_like=labelled_ones_like,
    ),
)
# So that ``rewrite_graph(grads, include=("lower_xtensor",))`` expands lazy
# gradients too.  A graph rewriter in an equilibrium runs before its node
# rewriters and is not wrapped in a failure callback (an expansion error must
# reach the user).
lower_xtensor_db.register(
    "expand_lazy_pullback",
    expand_all_lazy_pullbacks,
    "fast_run",
    "fast_compile",
    "minimum_compile",
)
lower_xtensor_db.register(
    "expand_inner_graphs",
    expand_all_inner_graphs,
    "fast_run",
    "fast_compile",
    "minimum_compile",
)
