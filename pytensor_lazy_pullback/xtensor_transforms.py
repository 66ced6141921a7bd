"""Vectorization of lazy gradients of xtensor graphs.

Upstream home: ``pytensor/xtensor/vectorization_lazy.py`` (the lazy extension
of ``vectorization.py``, as ``gradient_lazy.py`` is of ``gradient.py``).
:func:`vectorize_expansion` batches the expansion of a lazy derivative: PyTensor's
``vectorize_graph`` calls it for an expanded lazy derivative, or a graph of
them, that holds conversions from batched tensors.
"""

from __future__ import annotations

from itertools import count

from pytensor.graph.basic import Variable
from pytensor.graph.traversal import ancestors
from pytensor.graph.replace import vectorize_graph as vectorize_tensor_graph
from pytensor.tensor.type import TensorType
from pytensor.xtensor.type import XTensorType
from pytensor.xtensor.vectorization import vectorize_graph as vectorize_xtensor_graph

__all__ = ["vectorize_expansion"]

_UNNAMED_DIM = "__unnamed_batch_dim_{}__"


def vectorize_expansion(
    outputs: list[Variable],
    replace: dict[Variable, Variable],
    name_labelled_results: bool = True,
) -> list[Variable] | None:
    """Batch an expanded `LazyPullback` for ``pytensor.graph.replace.vectorize_graph``.

    The expansion may hold conversions to XTensorVariables (a gradient with
    respect to an xtensor input), which need the new dim's name.  It is the
    new dim of the batched xtensor inputs, which positional batch axes of
    plain tensors share.  If only plain tensors are batched, an xtensor result
    gets a dim named ``__unnamed_batch_dim_0__`` (where PyTensor's own
    conversion from tensors raises `NotImplementedError`); converted back to a
    tensor it is an ordinary leading batch axis.  Without
    `name_labelled_results`, ``None`` is returned instead of naming a dim that
    would reach a labelled result (inside the graph, the name stays unseen).
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
    if unnamed and not name_labelled_results and any(_is_xtensor(outputs[i]) for i in dependent):
        return None
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


def _fresh_dim(taken: set[str]) -> str:
    return next(
        name for i in count() if (name := _UNNAMED_DIM.format(i)) not in taken
    )
