"""Gradients of the Ops of ``pytensor.xtensor.shape``: ``Transpose``, ``Stack``,
``UnStack``, ``Concat``, ``ExpandDims``, ``Squeeze`` and ``Broadcast``.

Each gradient equals the reference (lower first, then ``pt.grad``) and finite
differences (`helpers.check_family`).
"""

import pytensor.xtensor as px

from helpers import check_family

AB = [("a", "b")]
AB_34 = [(3, 4)]


def test_transpose():
    check_family(lambda x: x.transpose("b", "a") * x.sum("a"), AB, AB_34)


def test_stack_and_unstack():
    def fn(x):
        stacked = x.stack({"s": ("a", "b")})
        return (stacked * stacked).unstack({"s": {"a": 2, "b": 3}}) + x

    check_family(fn, [("a", "b")], [(2, 3)])


def test_concat():
    check_family(
        lambda x, y: px.concat([x, y * 2, x], dim="a"), [("a", "b"), ("a", "b")], [(2, 3), (4, 3)]
    )


def test_expand_dims_and_squeeze():
    def fn(x):
        expanded = x.expand_dims("c")
        return (expanded * 2).squeeze("c") * x.expand_dims(d=2).sum("d")

    check_family(fn, AB, AB_34)


def test_broadcast_and_broadcast_like():
    def fn(x, y):
        bx, by = px.broadcast(x, y)
        return bx * by + y.broadcast_like(x)

    check_family(fn, [("a", "b"), ("b", "c")], [(3, 4), (4, 2)])
