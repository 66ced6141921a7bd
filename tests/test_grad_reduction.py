"""Gradients of the Ops of ``pytensor.xtensor.reduction``: reductions (``XReduce``) and
cumulative reductions (``XCumReduce``) over one dim, several or all.

Each gradient equals the reference (lower first, then ``pt.grad``) and finite
differences (`helpers.check_family`).
"""

import pytest

from helpers import check_family

AB = [("a", "b")]
AB_34 = [(3, 4)]


@pytest.mark.parametrize(
    "reduction, kwargs",
    [
        ("sum", {}), ("prod", {}), ("mean", {}), ("std", {}), ("var", {}),
        ("max", {}), ("min", {}), ("std", {"ddof": 1}), ("var", {"ddof": 1}),
    ],
)
@pytest.mark.parametrize("dim", ["a", ("a", "b"), None])
def test_reductions(reduction, kwargs, dim):
    def fn(x):
        return getattr(x, reduction)(dim=dim, **kwargs)

    check_family(fn, AB, AB_34)


@pytest.mark.parametrize("reduction", ["cumsum", "cumprod"])
@pytest.mark.parametrize("dim", ["a", "b", ("a", "b")])
def test_cumulative_reductions(reduction, dim):
    check_family(lambda x: getattr(x, reduction)(dim=dim), AB, AB_34)
