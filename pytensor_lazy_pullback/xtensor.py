"""The xtensor side of lazy pullbacks, and their expansion's place in ``lower_xtensor``.

Upstream home: ``pytensor/xtensor/rewriting/lazy_pullback.py``; the methods
below go on their classes (``Rename.pullback``, the ``connection_pattern`` of
``Index``, ``IndexUpdate``, ``ExpandDims``, ``UnStack``, ``Broadcast``,
``XElemwise`` and ``XBlockwise``, ``XTypeCastOp.pushforward``,
``XTensorType.in_same_class``).

Cotangents are aligned to their variable **by dim name**
(``align_xtensor_cotangent``).  ``expand_lazy_pullback`` and
``expand_inner_graphs`` go first in ``lower_xtensor``.
"""

from __future__ import annotations

from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Variable
from pytensor.xtensor.rewriting.utils import lower_xtensor_db
from pytensor.xtensor.basic import Rename, TensorFromXTensor, XTensorFromTensor
from pytensor.xtensor.shape import ones_like, zeros_like
from pytensor.xtensor.type import XTensorType

from pytensor_lazy_pullback.rewriting import expand_inner_graphs, expand_lazy_pullback, graph_wide

__all__ = [
    "align_xtensor_cotangent",
    "relabel_xtensor_round_trip",
    "broadcast_connection_pattern",
    "expand_dims_connection_pattern",
    "index_connection_pattern",
    "index_update_connection_pattern",
    "rename_pullback",
    "unstack_connection_pattern",
    "xblockwise_connection_pattern",
    "xelemwise_connection_pattern",
    "xtensor_in_same_class",
]


def align_xtensor_cotangent(var: Variable, cotangent: Variable) -> Variable:
    """Return `cotangent` transposed to `var`'s dims, matching dims by name.

    Raises
    ------
    TypeError
        If `cotangent` is not an XTensorVariable, or its dims are not those of `var`.
    """
    if not isinstance(cotangent.type, XTensorType):
        raise TypeError(
            f"The cotangent of the XTensorVariable {var} (dims {var.type.dims}) "
            f"must be an XTensorVariable with the same dims, got {cotangent} of type "
            f"{cotangent.type}. Convert it first, e.g. "
            f"pytensor.xtensor.as_xtensor(cotangent, dims={var.type.dims!r})."
        )
    if cotangent.type.dims == var.type.dims:
        return cotangent
    if sorted(cotangent.type.dims) != sorted(var.type.dims):
        raise TypeError(
            f"The cotangent {cotangent} has dims {cotangent.type.dims}, but the "
            f"XTensorVariable {var} it belongs to has dims {var.type.dims}. "
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
    return [Rename(x.type.dims)(align_xtensor_cotangent(out, cotangent))]


def index_connection_pattern(self, node) -> list[list[bool]]:
    """Only the indexed variable is connected to the output, not the indices.

    As for ``Subtensor`` and ``AdvancedSubtensor``, to which it lowers: a
    gradient with respect to an index raises `DisconnectedInputError` at
    :func:`pytensor.grad` time.  Upstream home: ``Index.connection_pattern``
    in ``pytensor/xtensor/indexing.py``.
    """
    return [[True], *([False] for _ in node.inputs[1:])]


def index_update_connection_pattern(self, node) -> list[list[bool]]:
    """The variable and the new values are connected to the output, not the indices.

    As for ``IncSubtensor`` and ``AdvancedIncSubtensor``, to which it lowers.
    Upstream home: ``IndexUpdate.connection_pattern`` in
    ``pytensor/xtensor/indexing.py``.
    """
    return [[True], [True], *([False] for _ in node.inputs[2:])]


def expand_dims_connection_pattern(self, node) -> list[list[bool]]:
    """Only the expanded variable is connected to the output, not the new dim's size.

    As for the shape inputs of ``Alloc``.  Upstream home: ``ExpandDims.connection_pattern``
    in ``pytensor/xtensor/shape.py``.
    """
    return [[True], [False]]


def unstack_connection_pattern(self, node) -> list[list[bool]]:
    """Only the unstacked variable is connected to the output, not the new dims' lengths.

    As for the shape input of ``Reshape``.  Upstream home: ``UnStack.connection_pattern``
    in ``pytensor/xtensor/shape.py``.
    """
    return [[True], *([False] for _ in node.inputs[1:])]


def broadcast_connection_pattern(self, node) -> list[list[bool]]:
    """Each output is connected to its own input only.

    The other inputs contribute their dims and lengths, not their values.
    Upstream home: ``Broadcast.connection_pattern`` in
    ``pytensor/xtensor/shape.py``.
    """
    return [[i == j for j in range(len(node.outputs))] for i in range(len(node.inputs))]


def xelemwise_connection_pattern(self, node) -> list[list[bool]]:
    """The scalar Op's connection pattern, if it has one; otherwise all connected.

    As in ``Elemwise.connection_pattern``, the scalar Op is asked with this
    node (``second`` connects only its second input, so ``zeros_like`` does
    not depend on its input).  Upstream home: ``XElemwise.connection_pattern`` in
    ``pytensor/xtensor/vectorization.py``.
    """
    if hasattr(self.scalar_op, "connection_pattern"):
        return self.scalar_op.connection_pattern(node)
    return [[True for _ in node.outputs] for _ in node.inputs]


def xblockwise_connection_pattern(self, node) -> list[list[bool]]:
    """The core Op's connection pattern, if it has one; otherwise all connected.

    As in ``Blockwise.connection_pattern``, the core Op is asked with this
    node: the patterns of PyTensor's Ops depend only on how many inputs and
    outputs a node has, as many here as in a core node (``Convolve1d`` does
    not connect its mode input).
    Upstream home: ``XBlockwise.connection_pattern`` in
    ``pytensor/xtensor/vectorization.py``.
    """
    if hasattr(self.core_op, "connection_pattern"):
        return self.core_op.connection_pattern(node)
    return [[True for _ in node.outputs] for _ in node.inputs]


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
        tangent = align_xtensor_cotangent(x, tangent)
    return [self(tangent)]


def relabel_xtensor_round_trip(var: Variable) -> Variable:
    """`var`, with ``XTensorFromTensor(TensorFromXTensor(x))`` that changes dims spelled ``Rename``.

    The pullback of a lowered ``x.rename(...)`` is such a round trip from the
    cotangent (dims of the renamed output) to the cotangent of ``x`` (dims of
    ``x``), and so is the pushforward the other way.
    ``useless_xtensor_from_tensor`` would replace it by ``x`` itself, of the
    wrong dims (a `TypeError` in the rewrite); a ``Rename`` is what it
    means, and ``lower_xtensor`` lowers it.
    """
    node = var.owner
    if node is None or not isinstance(node.op, XTensorFromTensor):
        return var
    [tensor] = node.inputs
    if tensor.owner is None or not isinstance(tensor.owner.op, TensorFromXTensor):
        return var
    [x] = tensor.owner.inputs
    if x.type.dims == var.type.dims:
        return var
    return Rename(var.type.dims)(x)


def xtensor_zeros_like(self, dtype: str | None = None):
    """Return zeros with the dims and shape of this variable (of `dtype`, default its own).

    As ``TensorVariable.zeros_like``; :func:`pytensor.grad` asks it of a
    variable that gets a zero cotangent.  Upstream home: ``XTensorVariable``
    in ``pytensor/xtensor/type.py``.
    """
    return zeros_like(self, dtype=dtype)


def xtensor_ones_like(self, dtype: str | None = None):
    """Return ones with the dims and shape of this variable (of `dtype`, default its own).

    As ``TensorVariable.ones_like``; :func:`pytensor.grad` asks it of a
    non-scalar labelled cost for its seed.  Upstream home: ``XTensorVariable``
    in ``pytensor/xtensor/type.py``.
    """
    return ones_like(self, dtype=dtype)


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


# First in ``lower_xtensor``: a graph rewriter of an equilibrium runs before
# its node rewriters (the forward pass is still un-lowered, so an expansion
# lowers it once, shared with the pullback), and is not wrapped in a failure
# callback.
for _rewriter in (expand_lazy_pullback, expand_inner_graphs):
    lower_xtensor_db.register(
        _rewriter.__name__,
        graph_wide(_rewriter),
        "fast_run",
        "fast_compile",
        "minimum_compile",
    )
