"""Gradients of the Ops of ``pytensor.xtensor.signal``: ``convolve1d`` in its three modes.

Each gradient equals the reference (lower first, then ``pt.grad``) and finite
differences (`helpers.check_family`); the reference's static output shape is
sometimes less known than ours (the xfail below).
"""

import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.signal as pxs
import pytest

from helpers import any_weighted_cost, check_family, reference_grad


@pytest.mark.parametrize("mode", ["full", "valid", "same"])
def test_convolve1d(mode):
    check_family(
        lambda x, k: pxs.convolve1d(x, k, mode=mode, dims=("a", "k")),
        [("b", "a"), ("k",)],
        [(2, 6), (3,)],
        refined_shapes=True,
    )


@pytest.mark.parametrize("mode", ["full", "valid", "same"])
def test_convolve1d_batched_both_sides_even_kernel(mode):
    check_family(
        lambda x, k: pxs.convolve1d(x * k.sum("k"), k, mode=mode, dims=("a", "k")),
        [("a", "b"), ("b", "k")],
        [(5, 2), (2, 4)],
        refined_shapes=True,
    )


@pytest.mark.xfail(
    reason="Contract says 'same static shapes': the reference's convolution pullback "
    "has an unknown length (None) where ours, typed like the region input, keeps it",
    strict=True,
)
def test_convolve1d_static_shape_equals_reference():
    t, k = pt.tensor("t", shape=(6,)), pt.tensor("k", shape=(3,))
    out = pxs.convolve1d(px.as_xtensor(t, dims=("a",)), px.as_xtensor(k, dims=("k",)), dims=("a", "k"))
    cost = any_weighted_cost(out)
    ours = pt.grad(cost, [t, k])
    refs = reference_grad(cost, [t, k])
    assert [o.type.shape for o in ours] == [r.type.shape for r in refs]
