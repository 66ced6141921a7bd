"""Bad input gets a clear error that names the variable and says what to do.

(An XOp nobody can lower is an expansion error: see test_expansion_errors.py.)
"""

import numpy as np
import pytensor
import pytensor.gradient as gradient
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytest


def test_non_scalar_labelled_cost():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4))
    with pytest.raises(TypeError, match="Cost must be a scalar"):
        pt.grad((x**2).sum("a"), x)


def square_output():
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 3))
    y = px.math.exp(x) * px.as_xtensor(np.arange(9.0).reshape(3, 3), dims=("a", "b"))
    y.name = "y"
    return x, y


def test_cotangent_with_wrong_dims_names_variable():
    x, y = square_output()
    wrong = px.xtensor("g", dims=("a", "c"), shape=(3, 3))
    with pytest.raises(TypeError, match=r"cotangent g has dims \('a', 'c'\).*XTensorVariable y"):
        gradient.pullback(y, x, wrong)


def test_plain_tensor_cotangent_for_labelled_output():
    x, y = square_output()
    with pytest.raises(TypeError, match=r"XTensorVariable y.*as_xtensor"):
        gradient.pullback(y, x, pt.matrix("g", shape=(3, 3)))


def test_cotangent_dims_matched_by_name_in_square_case():
    """A ("b", "a") cotangent for a ("a", "b") output means its transpose."""
    x, y = square_output()
    g_ab = px.xtensor("g", dims=("a", "b"), shape=(3, 3))
    g_ba = g_ab.transpose("b", "a")
    by_name = gradient.pullback(y, x, g_ba)
    direct = gradient.pullback(y, x, g_ab)
    fn = pytensor.function([x, g_ab], [by_name, direct], mode="FAST_COMPILE")
    xv = np.linspace(0, 1, 9).reshape(3, 3)
    gv = np.arange(9.0).reshape(3, 3) - 4
    a, b = fn(xv, gv)
    np.testing.assert_allclose(a, b)
    assert not np.allclose(a, b.T)
