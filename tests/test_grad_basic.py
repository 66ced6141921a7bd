"""Gradients of the Ops of ``pytensor.xtensor.basic``: ``Rename`` (whose own pullback is
broken in PyTensor 3.3).  The conversions ``as_xtensor`` and ``.values`` are in
nearly every test of the suite.

Each gradient equals the reference (lower first, then ``pt.grad``) and finite
differences (`helpers.check_family`).
"""

from helpers import check_family

AB = [("a", "b")]
AB_34 = [(3, 4)]


def test_rename():
    check_family(lambda x: x.rename(a="c") * x.sum("a").rename(b="b"), AB, AB_34)


def test_rename_swapping_two_names():
    # Square: a positional mistake would silently transpose.
    check_family(lambda x: x.rename(a="b", b="a") * x, [("a", "b")], [(3, 3)])
