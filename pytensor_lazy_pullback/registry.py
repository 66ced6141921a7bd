"""What "un-lowered" means, and how un-lowered graphs are lowered and differentiated.

Upstream home: ``pytensor/graph/lowering.py`` (a new module next to
``pytensor/graph/op.py``).

This module is generic: it knows nothing about any particular family of
un-lowered Ops.  A family (such as :mod:`pytensor.xtensor`, see
:mod:`pytensor_lazy_pullback.xtensor`) registers here

* which Op types are *un-lowered*: they have no usable pullback of their own
  and a lowering rewrite turns them into ordinary Ops
  (:func:`register_unlowered_op`), and which are mere *conversions* between
  the family's types and ordinary ones: they join the regions they touch, so
  that region boundaries are ordinary variables where possible, but a region
  made of conversions only is left alone;
* which Op types make the gradient of their inputs undefined, so that
  :func:`pytensor.grad` can refuse at differentiation time without lowering
  anything (:func:`register_undefined_gradient_op`);
* which Op types must be pulled *into* a region rather than left as one of its
  inputs, because the lowering has to see them (:func:`register_absorbed_op`);
* how the cotangents of its own variable types are aligned to, and zeros are
  made for, a variable (:func:`register_cotangent_type`);
* how a graph that still holds its conversions is batched by
  ``vectorize_graph`` (:func:`register_expansion_vectorizer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pytensor.graph.basic import Apply, Variable
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.op import Op
from pytensor.graph.type import Type

__all__ = [
    "CotangentRules",
    "absorbed_into_region",
    "cotangent_rules",
    "expansion_vectorizer",
    "is_conversion",
    "is_unlowered",
    "lowerings_for",
    "register_absorbed_op",
    "register_cotangent_type",
    "register_expansion_vectorizer",
    "register_undefined_gradient_op",
    "register_unlowered_op",
    "undefined_gradient_reason",
]

Lowering = Callable[[FunctionGraph], None]
"""Lowers every registered Op of a `FunctionGraph` in place."""

_unlowered: dict[type[Op], Lowering] = {}
_conversions: set[type[Op]] = set()
_undefined: dict[type[Op], str] = {}
_absorbed: set[type[Op]] = set()
_cotangent_rules: dict[type[Type], CotangentRules] = {}

Vectorizer = Callable[[list[Variable], dict[Variable, Variable]], list[Variable]]
"""``vectorizer(outputs, replace)`` returns `outputs` batched like
:func:`pytensor.graph.replace.vectorize_graph` does."""

_expansion_vectorizer: list[Vectorizer] = []


@dataclass(frozen=True)
class CotangentRules:
    """How cotangents of variables of one `Type` class are handled.

    Attributes
    ----------
    align
        ``align(var, cotangent)`` returns `cotangent` arranged like `var` (for
        labelled arrays: transposed so that its dims are in `var`'s order), or
        raises a `TypeError` that names `var` and says what is expected.
    zeros_like
        ``zeros_like(var)`` returns a floating-point zero cotangent for `var`,
        of `var`'s kind.
    ones_like
        ``ones_like(var)`` returns a floating-point cotangent of ones for `var`
        (the seed of :func:`pytensor.grad` when `var` is the cost).
    """

    align: Callable[[Variable, Variable], Variable]
    zeros_like: Callable[[Variable], Variable]
    ones_like: Callable[[Variable], Variable]


def register_unlowered_op(
    op_type: type[Op], lowering: Lowering, *, conversion: bool = False
) -> None:
    """Declare that Ops of `op_type` (and subclasses) are un-lowered.

    Parameters
    ----------
    op_type
        The Op class.  Its instances are gathered into regions by
        :func:`pytensor.grad` instead of having their own ``pullback`` called.
    lowering
        A function that, given a private `FunctionGraph`, replaces in place
        every Op of this family by ordinary Ops.  Several Op types may share
        one lowering; it then runs once per expansion.
    conversion
        Whether the Op only converts between the family's types and ordinary
        ones (it has a working pullback, and may legitimately remain at the
        boundary of a lowered region).
    """
    _unlowered[op_type] = lowering
    if conversion:
        _conversions.add(op_type)
    _unlowered_cache.clear()


def register_undefined_gradient_op(op_type: type[Op], reason: str) -> None:
    """Declare that the gradient through an Op of `op_type` is undefined.

    :func:`pytensor.grad` then returns (or raises, per ``null_gradients``) a
    `NullType` gradient for every region input that reaches such an Op, at
    differentiation time, as it would after lowering.
    """
    _undefined[op_type] = reason
    _undefined_cache.clear()


def register_absorbed_op(op_type: type[Op]) -> None:
    """Declare that Ops of `op_type` feeding a region belong inside it.

    Use it for cheap, non-differentiable producers whose outputs the lowering
    must see structurally (e.g. ``MakeSlice``: a lowering cannot index with an
    opaque slice variable).
    """
    _absorbed.add(op_type)


def register_cotangent_type(type_cls: type[Type], rules: CotangentRules) -> None:
    """Declare how cotangents of variables whose type is a `type_cls` are handled."""
    _cotangent_rules[type_cls] = rules


_unlowered_cache: dict[type[Op], Lowering | None] = {}
_undefined_cache: dict[type[Op], str | None] = {}


def _lookup(table: dict, cache: dict, key: type):
    try:
        return cache[key]
    except KeyError:
        found = next((table[base] for base in key.__mro__ if base in table), None)
        cache[key] = found
        return found


def is_unlowered(node: Apply) -> bool:
    """Whether `node`'s Op is of a registered un-lowered family."""
    return _lookup(_unlowered, _unlowered_cache, type(node.op)) is not None


def is_conversion(node: Apply) -> bool:
    """Whether `node`'s Op is registered as a conversion (see `register_unlowered_op`)."""
    return isinstance(node.op, tuple(_conversions))


def lowerings_for(nodes: Iterable[Apply]) -> list[Lowering]:
    """The distinct lowerings needed by `nodes`, in registration order."""
    needed = {
        _lookup(_unlowered, _unlowered_cache, type(node.op)) for node in nodes
    }
    return [lowering for lowering in dict.fromkeys(_unlowered.values()) if lowering in needed]


def undefined_gradient_reason(node: Apply) -> str | None:
    """Why the gradient through `node` is undefined, or ``None`` if it is not."""
    return _lookup(_undefined, _undefined_cache, type(node.op))


def absorbed_into_region(node: Apply) -> bool:
    """Whether `node` is pulled into the region that consumes its outputs."""
    return isinstance(node.op, tuple(_absorbed))


def cotangent_rules(var: Variable) -> CotangentRules | None:
    """The rules registered for `var`'s type, or ``None`` for ordinary types."""
    for base in type(var.type).__mro__:
        rules = _cotangent_rules.get(base)
        if rules is not None:
            return rules
    return None


def register_expansion_vectorizer(vectorizer: Vectorizer) -> None:
    """Batch expanded `LazyPullback`\\ s with `vectorizer` instead of ``vectorize_graph``.

    An expansion may hold a family's conversions at its boundary (e.g. a
    gradient that must be labelled), which PyTensor's ``vectorize_graph``
    cannot always batch on its own.
    """
    _expansion_vectorizer[:] = [vectorizer]


def expansion_vectorizer() -> Vectorizer | None:
    """The registered expansion vectorizer, or ``None``."""
    return _expansion_vectorizer[0] if _expansion_vectorizer else None
