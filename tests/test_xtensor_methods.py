"""Methods of xtensor's classes that gradients need, tested on their own.

``Rename.pullback`` matches its cotangent to the renamed output by dim name
(PyTensor 3.3's renamed a dim called ``dims``), ``XTensorType.in_same_class``
accepts a type that only knows more static lengths, as ``TensorType``'s does,
and ``XTensorVariable.zeros_like``/``ones_like`` are those of ``TensorVariable``
(``pytensor.gradient`` asks them for zero cotangents and a cost's seed).
"""

import numpy as np
import pytensor
import pytensor.xtensor as px
import pytest
from pytensor.gradient import pullback
from pytensor.xtensor.type import XTensorType

import pytensor_lazy_pullback  # noqa: F401  (the methods)


@pytest.mark.parametrize("cotangent_dims", [("c", "b"), ("b", "c")])
def test_rename_pullback_matches_the_cotangent_by_dim_name(cotangent_dims):
    x = px.xtensor("x", dims=("a", "b"), shape=(2, 3))
    y = x.rename(a="c")
    sizes = {"b": 3, "c": 2}
    g = px.xtensor("g", dims=cotangent_dims, shape=tuple(sizes[d] for d in cotangent_dims))
    [gx] = pullback([y], [x], [g])
    assert gx.type.dims == ("a", "b")
    g_value = np.arange(6.0).reshape(g.type.shape)
    got = pytensor.function([g], gx.values)(g_value)
    # The cotangent of y, in y's dims ("c", "b"), renamed back: a permutation.
    want = g_value if cotangent_dims == ("c", "b") else g_value.T
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "other, same",
    [
        (XTensorType("float64", dims=("a", "b"), shape=(3, None)), True),
        (XTensorType("float64", dims=("a", "b"), shape=(None, None)), True),
        (XTensorType("float32", dims=("a", "b"), shape=(None, None)), False),
        (XTensorType("float64", dims=("b", "a"), shape=(None, None)), False),
        # xtensor broadcasts by dim name: a length of 1 is a static length like any other.
        (XTensorType("float64", dims=("a", "b"), shape=(1, None)), True),
        (pytensor.tensor.TensorType("float64", shape=(None, None)), False),
    ],
)
def test_xtensor_type_in_same_class_ignores_static_lengths_only(other, same):
    xtype = XTensorType("float64", dims=("a", "b"), shape=(None, None))
    assert xtype.in_same_class(other) is same


@pytest.mark.parametrize("method, fill", [("zeros_like", 0.0), ("ones_like", 1.0)])
@pytest.mark.parametrize("dtype", [None, "float32"])
def test_xtensor_variable_zeros_and_ones_like(method, fill, dtype):
    x = px.xtensor("x", dims=("a", "b"), shape=(2, None), dtype="int64")
    y = getattr(x, method)(dtype=dtype)
    assert y.type.dims == x.type.dims
    assert y.type.dtype == (dtype or "int64")
    value = pytensor.function([x], y.values)(np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(value, np.full((2, 3), fill))
    assert value.dtype == np.dtype(dtype or "int64")


def test_gradient_zero_cotangent_of_a_labelled_input():
    """``pytensor.gradient``'s ``_float_zeros_like`` of an XTensorVariable: float zeros."""
    from pytensor.gradient import _float_zeros_like

    n = px.xtensor("n", dims=("a",), shape=(3,), dtype="int32")
    zeros = _float_zeros_like(n)
    assert zeros.type.dims == ("a",)
    assert zeros.type.dtype == pytensor.config.floatX
