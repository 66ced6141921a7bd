"""Vectorization of lazy gradients of xtensor graphs.

Upstream home: ``pytensor/xtensor/vectorization_lazy.py`` (the lazy extension
of ``vectorization.py``, as ``gradient_lazy.py`` is of ``gradient.py``),
called at the start of ``vectorize_graph`` (``pytensor/xtensor/vectorization.py``);
:func:`vectorize_expansion` is the xtensor family's vectorizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import count

from pytensor.graph.basic import Variable
from pytensor.graph.traversal import ancestors, toposort
from pytensor.graph.replace import vectorize_graph as vectorize_tensor_graph
from pytensor.tensor.type import TensorType
from pytensor.xtensor.type import XTensorType
from pytensor.xtensor.vectorization import vectorize_graph as vectorize_xtensor_graph

from pytensor_lazy_pullback.op import LazyPullback
from pytensor_lazy_pullback.rewriting import expand_lazy_pullback

__all__ = [
    "expand_lazy_pullbacks_first",
    "vectorize_expansion",
]

_UNNAMED_DIM = "__unnamed_batch_dim_{}__"


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


def _fresh_dim(taken: set[str]) -> str:
    return next(
        name for i in count() if (name := _UNNAMED_DIM.format(i)) not in taken
    )
