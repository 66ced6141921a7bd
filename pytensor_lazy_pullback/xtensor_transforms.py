"""Jacobians and vectorization of lazy gradients of xtensor graphs.

Upstream home: ``pytensor/xtensor/gradient.py``, called at the start of
``jacobian`` (``pytensor/gradient.py``), of ``vectorize_graph``
(``pytensor/xtensor/vectorization.py``) and of
``XTensorFromTensor.vectorize_node``; :func:`vectorize_expansion` is the
xtensor family's vectorizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import count

import pytensor
import pytensor.gradient
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import ancestors, toposort
from pytensor.graph.replace import vectorize_graph as vectorize_tensor_graph
from pytensor.tensor.extra_ops import broadcast_to
from pytensor.tensor.type import TensorType
from pytensor.xtensor.type import XTensorType, as_xtensor
from pytensor.xtensor.vectorization import vectorize_graph as vectorize_xtensor_graph

from pytensor_lazy_pullback.op import LazyPullback
from pytensor_lazy_pullback.rewriting import expand_lazy_pullback

__all__ = [
    "expand_lazy_pullbacks_first",
    "jacobian",
    "naming_new_dims",
    "new_dim_names",
    "vectorize_expansion",
    "xtensor_jacobian",
]

_UNNAMED_DIM = "__unnamed_batch_dim_{}__"


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
        The XTensorVariable to differentiate, of any number of dims.
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
    wrt_list = list(wrt) if isinstance(wrt, list | tuple) else [wrt]
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
    row_dim = _fresh_dim({*expression.type.dims, *(d for w in wrt for d in _dims(w))})
    n_rows = expression.values.size
    identity = pt.eye(n_rows, dtype=cotangent.type.dtype).reshape(
        (n_rows, *tuple(expression.values.shape))
    )
    batched = as_xtensor(identity, dims=(row_dim, *expression.type.dims))
    rows = vectorize_xtensor_graph(
        _expanded_below(single), {cotangent: batched}
    )
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


def xtensor_jacobian(
    expression, wrt, consider_constant=None, disconnected_inputs="raise", vectorize=False
):
    """:func:`jacobian` if `expression` is an XTensorVariable, else ``None``.

    Called at the start of :func:`pytensor.gradient.jacobian`.
    """
    if _is_xtensor(expression):
        return jacobian(expression, wrt, consider_constant, disconnected_inputs, vectorize)
    return None


def expand_lazy_pullbacks_first(
    outputs: Variable | Sequence[Variable], replace: Mapping[Variable, Variable]
):
    """`outputs` with every `LazyPullback` below the keys of `replace` expanded.

    Called at the start of ``pytensor.xtensor.vectorization.vectorize_graph``:
    a `LazyPullback` that only sees plain tensors batched could not name the
    new dim, its expansion can be batched like any xtensor graph.  Returns a
    list if `outputs` is a sequence.  The keys of `replace` are kept (nothing
    above them is expanded), so the replacement still applies.
    """
    keys = list(replace)
    if isinstance(outputs, Sequence):
        return _expanded_below(list(outputs), keys)
    [expanded] = _expanded_below([outputs], keys)
    return expanded


def _expanded_below(
    outputs: Sequence[Variable], blockers: Sequence[Variable] = ()
) -> list[Variable]:
    """`outputs` with every `LazyPullback` between `blockers` and them expanded.

    Unlike :func:`~pytensor_lazy_pullback.expand_lazy_pullbacks`, nothing is
    cloned that does not depend on a `LazyPullback`: the forward graph keeps
    its own variables, so a replacement keyed on them (as in
    ``vectorize_graph``) still applies.  Nothing above a blocker is looked at.
    The given graph is not modified.
    """
    new: dict[Variable, Variable] = {}
    for node in toposort(outputs, blockers=blockers):
        inputs = [new.get(inp, inp) for inp in node.inputs]
        changed = any(a is not b for a, b in zip(inputs, node.inputs, strict=True))
        rebuilt = node.clone_with_new_inputs(inputs, strict=False) if changed else node
        if isinstance(node.op, LazyPullback):
            expansion = expand_lazy_pullback.transform(None, rebuilt)
            new.update((out, expansion[new_out]) for out, new_out in zip(node.outputs, rebuilt.outputs))
        elif changed:
            new.update(zip(node.outputs, rebuilt.outputs, strict=True))
    return [new.get(out, out) for out in outputs]


def vectorize_expansion(
    outputs: list[Variable], replace: dict[Variable, Variable]
) -> list[Variable]:
    """Batch an expanded `LazyPullback` for ``pytensor.graph.replace.vectorize_graph``.

    The expansion may hold conversions to XTensorVariables (a gradient with
    respect to an xtensor input), which need the new dim's name.  It is the
    new dim of the batched xtensor inputs, which positional batch axes of
    plain tensors share.  If only plain tensors are batched, an xtensor result
    gets a dim named ``__unnamed_batch_dim_0__`` (where PyTensor's own
    conversion from tensors raises `NotImplementedError`); converted back to a
    tensor it is an ordinary leading batch axis.
    """
    named: list[str] = []
    n_axes = 0
    for old, new in replace.items():
        if _is_xtensor(old) and _is_xtensor(new):
            named.extend(d for d in new.type.dims if d not in old.type.dims and d not in named)
        elif isinstance(old.type, TensorType) and isinstance(new.type, TensorType):
            n_axes = max(n_axes, new.type.ndim - old.type.ndim)
    if not named and not n_axes:
        return vectorize_tensor_graph(outputs, replace)
    unnamed: list[str] = []
    if n_axes > len(named):
        taken = {d for var in ancestors(outputs) for d in _dims(var)} | set(named)
        while len(unnamed) < n_axes - len(named):
            unnamed.append(_fresh_dim(taken | set(unnamed)))
    new_dims = [*unnamed, *named]
    # Only outputs that depend on a batched input: PyTensor's xtensor
    # vectorizer gives every output the new dims and cannot for the others
    # (an input of the `LazyPullback` need not reach every cotangent).
    # Only the inputs that changed, too: the xtensor vectorizer broadcasts
    # every tensor it is given to the new dims, so an unchanged one (the
    # forward inputs of the region, which ``vectorize_graph`` passes as they
    # are) would batch the forward pass recomputed on its broadcast copies
    # (a ``Blockwise`` ``Einsum`` the reference does not have).
    batched = {old: new for old, new in replace.items() if new is not old}
    dependent = [
        i for i, out in enumerate(outputs) if any(var in batched for var in ancestors([out]))
    ]
    results = list(outputs)
    if dependent:
        vectorized = vectorize_xtensor_graph(
            [outputs[i] for i in dependent],
            batched,
            new_tensor_dims=new_dims[len(new_dims) - n_axes :],
        )
        for i, out in zip(dependent, vectorized, strict=True):
            results[i] = out
    return results


def _is_xtensor(var) -> bool:
    return isinstance(getattr(var, "type", None), XTensorType)


def _dims(var) -> tuple[str, ...]:
    return var.type.dims if _is_xtensor(var) else ()


def _values(var: Variable) -> Variable:
    return var.values if _is_xtensor(var) else var


def _xtensor_like(matrix: Variable, expression: Variable, w: Variable) -> Variable:
    if _is_xtensor(w):
        return as_xtensor(matrix, dims=(*expression.type.dims, *w.type.dims))
    return matrix


def _fresh_dim(taken: set[str]) -> str:
    return next(
        name for i in count() if (name := _UNNAMED_DIM.format(i)) not in taken
    )


def new_dim_names(op, node, new_x) -> list[str]:
    """Names for the new leading axes of `new_x`, batched input of ``XTensorFromTensor`` `node`.

    ``pytensor.graph.replace.vectorize_graph`` passes no dim name, and the
    conversion then refuses to guess.  A lazy gradient keeps the user's
    forward conversions (an ordinary pullback between two regions reads them),
    which the reference, lowered first, does not have.  So the new leading
    axes take the names of the new dims of the XTensorVariables the tensor
    was computed from, or else ``__unnamed_batch_dim_<i>__``, as for an
    expanded `LazyPullback` (:func:`vectorize_expansion`).
    """
    [old_x] = node.inputs
    n_new = new_x.type.ndim - old_x.type.ndim
    old_dims = {d for var in ancestors([old_x]) for d in _dims(var)}
    named = list(
        dict.fromkeys(d for var in ancestors([new_x]) for d in _dims(var) if d not in old_dims)
    )
    new_dims = named if len(named) == n_new else []
    while len(new_dims) < n_new:
        new_dims.append(_fresh_dim(set(op.dims) | set(new_dims) | old_dims))
    return new_dims


def naming_new_dims(original: Callable) -> Callable:
    """``XTensorFromTensor.vectorize_node``, naming new dims it is not told (:func:`new_dim_names`).

    Upstream home: the start of ``XTensorFromTensor.vectorize_node`` in
    ``pytensor/xtensor/basic.py``.
    """

    def vectorize_node(self, node, new_x, new_dim):
        if new_dim is None and new_x.type.ndim > node.inputs[0].type.ndim:
            new_dims = new_dim_names(self, node, new_x)
            return [type(self)(dims=(*new_dims, *self.dims))(new_x)]
        return original(self, node, new_x, new_dim)

    return vectorize_node

