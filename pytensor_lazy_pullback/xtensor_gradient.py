"""Derivatives of xtensor graphs with labelled arguments and results.

Upstream home: ``pytensor/xtensor/gradient.py``; :func:`jacobian` is also
called at the start of ``jacobian`` (``pytensor/gradient.py``) for an xtensor
expression.

:func:`grad`, :func:`pullback`, :func:`pushforward` and :func:`jacobian` take
and return XTensorVariables: the derivative with respect to an XTensorVariable
has that variable's dims, and a cotangent (or tangent) is matched to the
variable it seeds **by dim name**, in any order.  ``wrt`` and
``consider_constant`` may be any variable of the graph, also one computed in
the middle of it.  Nothing is lowered when they are called: each region of
xtensor Ops on the derivative's path becomes one lazy ``LazyPullback`` (or
``LazyPushforward``) node, expanded into the lowered graph's derivative when
the result is compiled, so the numbers are those of lowering first.  Like
their :mod:`pytensor.gradient` namesakes, they return a list (tuple) for a
list (tuple) and a single variable for a single variable.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytensor
import pytensor.gradient
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.tensor.extra_ops import broadcast_to
from pytensor.xtensor.type import XTensorType, as_xtensor
from pytensor.xtensor.vectorization import vectorize_graph as vectorize_xtensor_graph

from pytensor_lazy_pullback.rewriting import expand_lazy_pullbacks_below
from pytensor_lazy_pullback.xtensor_transforms import _fresh_dim

__all__ = ["grad", "jacobian", "pullback", "pushforward"]


def grad(cost, wrt, consider_constant=None, **kwargs):
    """The gradient of a 0-d `cost` with respect to each of `wrt`.

    Parameters
    ----------
    cost : XTensorVariable or TensorVariable or None
        The 0-d variable to differentiate (an XTensorVariable with no dims, or
        a scalar tensor); ``None`` if ``known_grads`` seeds the gradient.
    wrt : Variable or list or tuple of Variable
        The variables to differentiate with respect to: XTensorVariables or
        tensors, inputs of the graph or variables computed in it.
    consider_constant : list of Variable, optional
        Variables not to differentiate through (their gradient is not
        propagated to what they are computed from); may be computed in the
        middle of the graph.
    **kwargs
        Passed on to :func:`pytensor.gradient.grad` (``disconnected_inputs``,
        ``add_names``, ``known_grads``, ``return_disconnected``,
        ``null_gradients``).  The values of ``known_grads`` are matched to
        their keys as the cotangents of :func:`pullback` are.

    Returns
    -------
    Variable or list or tuple of Variable
        Shaped like `wrt`.  The gradient with respect to an XTensorVariable is
        an XTensorVariable with its dims, that with respect to a tensor a
        tensor of its shape.

    Raises
    ------
    TypeError
        If `cost` is not 0-d.
    """
    if cost is not None and (
        not isinstance(cost, Variable) or getattr(cost.type, "ndim", None) != 0
    ):
        dims = getattr(getattr(cost, "type", None), "dims", None)
        raise TypeError(
            f"The cost {cost} must be a 0-d variable, got "
            f"{f'dims {dims}' if dims is not None else getattr(cost, 'type', type(cost))}. "
            "Reduce it to a scalar first, e.g. cost.sum()."
        )
    known_grads = kwargs.get("known_grads")
    if known_grads:
        kwargs["known_grads"] = {
            var: _arranged_like(var, given, "cotangent") for var, given in known_grads.items()
        }
    return pytensor.gradient.grad(cost, wrt, consider_constant=consider_constant, **kwargs)


def pullback(outputs, wrt, cotangents, consider_constant=None, **kwargs):
    """The pullback (vector-Jacobian product) of `outputs` at `cotangents`.

    Parameters
    ----------
    outputs : Variable or list or tuple of Variable
        The variables whose derivative is taken.
    wrt : Variable or list or tuple of Variable
        The variables to differentiate with respect to; may be computed in
        the middle of the graph.
    cotangents : Variable or list or tuple of Variable
        One per output.  The cotangent of an XTensorVariable must be an
        XTensorVariable with the same dims, in any order: it is transposed to
        its output's dims by name.  That of a tensor is a tensor.
    consider_constant : list of Variable, optional
        As for :func:`grad`.
    **kwargs
        Passed on to :func:`pytensor.gradient.pullback`
        (``disconnected_inputs``, ``return_disconnected``).

    Returns
    -------
    Variable or list or tuple of Variable
        Shaped like `wrt`: ``sum_i cotangents[i] * d outputs[i] / d wrt[j]``,
        labelled like ``wrt[j]``.

    Raises
    ------
    TypeError
        If a cotangent is not of its output's kind (both must be
        XTensorVariables, or both tensors), or has other dims than it.
    ValueError
        If there are not as many cotangents as outputs.
    """
    outputs_list, cotangents_list = _as_list(outputs), _as_list(cotangents)
    if len(outputs_list) != len(cotangents_list):
        raise ValueError(
            f"pullback got {len(outputs_list)} outputs and {len(cotangents_list)} "
            "cotangents; give one cotangent per output."
        )
    cotangents_list = [
        _arranged_like(out, cotangent, "cotangent")
        for out, cotangent in zip(outputs_list, cotangents_list, strict=True)
    ]
    return pytensor.gradient.pullback(
        outputs_list, wrt, cotangents_list, consider_constant=consider_constant, **kwargs
    )


def pushforward(outputs, wrt, tangents, **kwargs):
    """The pushforward (Jacobian-vector product) of `outputs` at `tangents`.

    Parameters
    ----------
    outputs : Variable or list or tuple of Variable
        The variables whose derivative is taken.
    wrt : Variable or list or tuple of Variable
        The variables the tangents are given for; may be computed in the
        middle of the graph.
    tangents : Variable or list or tuple of Variable
        One per variable of `wrt`.  The tangent of an XTensorVariable must be
        an XTensorVariable with the same dims, in any order: it is transposed
        to its variable's dims by name.  That of a tensor is a tensor.
    **kwargs
        Passed on to :func:`pytensor.gradient.pushforward`
        (``disconnected_outputs``, ``return_disconnected``,
        ``use_op_pushforward``).

    Returns
    -------
    Variable or list or tuple of Variable
        Shaped like `outputs`: ``sum_j d outputs[i] / d wrt[j] * tangents[j]``,
        labelled like ``outputs[i]``.

    Raises
    ------
    TypeError
        If a tangent is not of its variable's kind (both must be
        XTensorVariables, or both tensors), or has other dims than it.
    ValueError
        If there are not as many tangents as variables in `wrt`.
    """
    wrt_list, tangents_list = _as_list(wrt), _as_list(tangents)
    if len(wrt_list) != len(tangents_list):
        raise ValueError(
            f"pushforward got {len(wrt_list)} variables in wrt and "
            f"{len(tangents_list)} tangents; give one tangent per variable."
        )
    tangents_list = [
        _arranged_like(var, tangent, "tangent")
        for var, tangent in zip(wrt_list, tangents_list, strict=True)
    ]
    return pytensor.gradient.pushforward(outputs, wrt_list, tangents_list, **kwargs)


def jacobian(
    expression,
    wrt,
    consider_constant=None,
    disconnected_inputs="raise",
    vectorize=False,
):
    """The Jacobian of an xtensor `expression` (:func:`pytensor.gradient.jacobian`).

    Parameters
    ----------
    expression : XTensorVariable
        The XTensorVariable to differentiate, of any number of dims.  A
        tensor is passed on to :func:`pytensor.gradient.jacobian`.
    wrt : Variable or list or tuple of Variable
        The variables to differentiate with respect to, XTensorVariables or tensors.
    consider_constant, disconnected_inputs
        As for :func:`pytensor.grad`.
    vectorize : bool
        Build all rows at once by batching one pullback over the rows of an
        identity (``vectorize_graph``), instead of a ``Scan`` over rows.

    Returns
    -------
    Variable or list or tuple of Variable
        Shaped like `wrt`.  For an XTensorVariable ``w`` an `XTensorVariable` with dims
        ``(*expression.dims, *w.dims)``; for a plain ``w`` a tensor of shape
        ``(*expression.shape, *w.shape)``, the expression's axes in its dims'
        order.  A 0-d `expression` gives its gradients.

    Raises
    ------
    ValueError
        If an XTensorVariable ``w`` shares a dim name with `expression`: the Jacobian
        would have that dim twice.
    """
    if not _is_xtensor(expression):
        return pytensor.gradient.jacobian(
            expression, wrt, consider_constant, disconnected_inputs, vectorize
        )
    wrt_list = _as_list(wrt)
    for w in wrt_list:
        if _is_xtensor(w) and (shared := set(w.type.dims) & set(expression.type.dims)):
            dim = sorted(shared)[0]
            raise ValueError(
                f"The Jacobian of {expression} (dims {expression.type.dims}) with respect "
                f"to {w} (dims {w.type.dims}) would have the dims {sorted(shared)} twice. "
                f"Rename them on one side first, e.g. "
                f"expression.rename({{{dim!r}: {dim + '_out'!r}}})."
            )
    grad_kwargs = {
        "consider_constant": consider_constant,
        "disconnected_inputs": disconnected_inputs,
    }
    if expression.type.ndim == 0:
        matrices = pytensor.gradient.grad(expression, wrt_list, **grad_kwargs)
    else:
        rows = (_rows_vectorized if vectorize else _rows_by_scan)(
            expression, wrt_list, grad_kwargs
        )
        shape = tuple(expression.values.shape)
        matrices = [
            _xtensor_like(row.reshape((*shape, *tuple(row.shape)[1:])), expression, w)
            for row, w in zip(rows, wrt_list, strict=True)
        ]
    return pytensor.gradient.as_list_or_tuple(
        isinstance(wrt, list), isinstance(wrt, tuple), matrices
    )


def _rows_vectorized(expression, wrt, grad_kwargs) -> list[Variable]:
    """The Jacobian's rows, flattened, from one pullback batched over an identity."""
    cotangent = expression.type()
    single = pytensor.gradient.pullback(expression, wrt, cotangent, **grad_kwargs)
    single = [_values(g) for g in single]
    row_dim = _fresh_dim(
        {*expression.type.dims, *(d for w in wrt if _is_xtensor(w) for d in w.type.dims)}
    )
    n_rows = expression.values.size
    identity = pt.eye(n_rows, dtype=cotangent.type.dtype).reshape(
        (n_rows, *tuple(expression.values.shape))
    )
    batched = as_xtensor(identity, dims=(row_dim, *expression.type.dims))
    rows = vectorize_xtensor_graph(expand_lazy_pullbacks_below(single), {cotangent: batched})
    # A row that does not depend on the cotangent (a disconnected input) is
    # not batched: repeat it.
    return [
        row if row.type.ndim > g.type.ndim else broadcast_to(row, (n_rows, *tuple(row.shape)))
        for row, g in zip(rows, single, strict=True)
    ]


def _rows_by_scan(expression, wrt, grad_kwargs) -> list[Variable]:
    """The Jacobian's rows, flattened, one ``grad`` per row in a ``Scan``."""
    flat = expression.values.ravel()

    def row(index):
        grads = pytensor.gradient.grad(flat[index], wrt, **grad_kwargs)
        return [_values(g) for g in grads]

    return pytensor.scan(
        row,
        sequences=pt.arange(flat.shape[0]),
        return_updates=False,
        return_list=True,
    )


def _arranged_like(var, given, what: str) -> Variable:
    """`given`, the cotangent or tangent (`what`) of `var`, arranged like `var`.

    An XTensorVariable's is transposed to its dims by name.
    """
    if not _is_xtensor(var):
        if _is_xtensor(given):
            raise TypeError(
                f"The {what} {given} (dims {given.type.dims}) of the tensor {var} is an "
                f"XTensorVariable: both must be xtensor, or both tensors. Pass "
                f"{what}.transpose(...).values with the axes in {var}'s order, or "
                f"label {var} with pytensor.xtensor.as_xtensor."
            )
        return given if isinstance(given, Variable) else pt.as_tensor_variable(given)
    dims = var.type.dims
    if not _is_xtensor(given):
        kind = given.type if isinstance(given, Variable) else type(given).__name__
        raise TypeError(
            f"The {what} {given} of the XTensorVariable {var} (dims {dims}) is of type "
            f"{kind}: both must be xtensor. Label it, e.g. "
            f"pytensor.xtensor.as_xtensor({what}, dims={dims!r})."
        )
    if sorted(given.type.dims) != sorted(dims):
        raise TypeError(
            f"The {what} {given} has dims {given.type.dims}, but the XTensorVariable "
            f"{var} it belongs to has dims {dims}: a {what} must have exactly the dims "
            "of its variable (in any order)."
        )
    return given if given.type.dims == dims else given.transpose(*dims)


def _as_list(value) -> list:
    return list(value) if isinstance(value, Sequence) else [value]


def _is_xtensor(var) -> bool:
    return isinstance(getattr(var, "type", None), XTensorType)


def _values(var: Variable) -> Variable:
    return var.values if _is_xtensor(var) else var


def _xtensor_like(matrix: Variable, expression: Variable, w: Variable) -> Variable:
    if _is_xtensor(w):
        return as_xtensor(matrix, dims=(*expression.type.dims, *w.type.dims))
    return matrix
