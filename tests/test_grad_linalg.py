"""Gradients of the Ops of ``pytensor.xtensor.linalg``: ``cholesky`` and ``solve``
(``XBlockwise``), batched and with core dims in either order.

Each gradient equals the reference (lower first, then ``pt.grad``) and finite
differences (`helpers.check_family`).
"""

import numpy as np
import pytensor.xtensor as px
import pytensor.xtensor.linalg as pxl
import pytest

from helpers import check_family


def spd(x, row, col, n):
    """``x @ x.T + n I`` on labelled dims: symmetric positive definite, well-conditioned."""
    other = next(d for d in x.type.dims if d != row)
    xt = x.rename({row: col})
    eye = px.as_xtensor(np.eye(n) * n, dims=(row, col))
    return px.dot(x, xt, dim=other) + eye


@pytest.mark.parametrize("lower", [True, False])
def test_cholesky(lower):
    check_family(
        lambda x: pxl.cholesky(spd(x, "a", "c", 3), lower=lower, dims=("a", "c")),
        [("a", "b")],
        [(3, 3)],
    )


def test_cholesky_batched_with_reversed_core_dims():
    def fn(x):
        # x: (batch, a, b) -> SPD over (a, c); decompose with core dims given as (c, a).
        xt = x.rename(a="c")
        eye = px.as_xtensor(np.eye(3) * 3, dims=("a", "c"))
        A = px.dot(x, xt, dim="b") + eye
        return pxl.cholesky(A, dims=("c", "a"))

    check_family(fn, [("batch", "a", "b")], [(2, 3, 4)])


@pytest.mark.parametrize("assume_a", ["gen", "pos", "sym"])
def test_solve_matrix_vector(assume_a):
    check_family(
        lambda x, b: pxl.solve(spd(x, "a", "c", 3), b, dims=("a", "c"), assume_a=assume_a),
        [("a", "b"), ("c",)],
        [(3, 4), (3,)],
    )


def test_solve_matrix_matrix_batched():
    def fn(x, b):
        return pxl.solve(spd(x, "a", "c", 3), b, dims=("a", "c", "n"))

    check_family(fn, [("a", "b"), ("batch", "n", "c")], [(3, 4), (2, 2, 3)])


def test_solve_with_cholesky_factor():
    """Composite: solve with the Cholesky factor of an SPD matrix."""

    def fn(x, b):
        L = pxl.cholesky(spd(x, "a", "c", 3), dims=("a", "c"))
        return pxl.solve(L, b, dims=("a", "c"))

    check_family(fn, [("a", "b"), ("c",)], [(3, 3), (3,)])
