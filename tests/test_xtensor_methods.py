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
import pytensor.tensor as pt
import pytest
from pytensor.gradient import DisconnectedInputError, _node_to_pattern, pullback
from pytensor.xtensor.linalg import cholesky
from pytensor.xtensor.math import second
from pytensor.xtensor.shape import unstack
from pytensor.xtensor.signal import convolve1d
from pytensor.xtensor.type import XTensorType

import pytensor_lazy_pullback  # noqa: F401  (the methods)
from helpers import reference_grad


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


def _pattern_inputs():
    x = px.xtensor("x", dims=("a", "b"), shape=(4, None))
    y = px.xtensor("y", dims=("b",), shape=(None,))
    idx = px.xtensor("idx", dims=("i",), dtype="int64")
    n = pt.iscalar("n")
    return x, y, idx, n


@pytest.mark.parametrize(
    "op_name, build, expected",
    [
        pytest.param("Index", lambda x, y, idx, n: x.isel(a=idx), [[True], [False]], id="isel"),
        pytest.param("Index", lambda x, y, idx, n: x[n:], [[True], [False]], id="slice"),
        pytest.param(
            "Index",
            lambda x, y, idx, n: x.isel(a=idx, b=n),
            [[True], [False], [False]],
            id="isel-two-dims",
        ),
        pytest.param(
            "IndexUpdate",
            lambda x, y, idx, n: x.isel(a=idx).set(y),
            [[True], [True], [False]],
            id="set",
        ),
        pytest.param(
            "IndexUpdate",
            lambda x, y, idx, n: x.isel(a=idx, b=n).inc(2.0),
            [[True], [True], [False], [False]],
            id="inc-two-dims",
        ),
        pytest.param(
            "ExpandDims", lambda x, y, idx, n: x.expand_dims(c=n), [[True], [False]], id="expand"
        ),
        pytest.param(
            "UnStack",
            lambda x, y, idx, n: unstack(x.stack({"ab": ("a", "b")}), ab={"a": n, "b": 3}),
            [[True], [False], [False]],
            id="unstack",
        ),
        pytest.param(
            "Broadcast",
            lambda x, y, idx, n: px.broadcast(x, y)[1],
            [[True, False], [False, True]],
            id="broadcast-two",
        ),
        pytest.param(
            "Broadcast",
            lambda x, y, idx, n: px.broadcast(x, y, x.isel(a=0))[0],
            [[True, False, False], [False, True, False], [False, False, True]],
            id="broadcast-three",
        ),
        # second(x, y) fills x's shape with y: what zeros_like and ones_like use.
        pytest.param(
            "XElemwise", lambda x, y, idx, n: second(x, y), [[False], [True]], id="second"
        ),
        pytest.param("XElemwise", lambda x, y, idx, n: x + y, [[True], [True]], id="add"),
        # Convolve1d does not connect its mode input.
        pytest.param(
            "XBlockwise",
            lambda x, y, idx, n: convolve1d(x, y.rename(b="k"), dims=("b", "k")),
            [[True], [True], [False]],
            id="convolve1d",
        ),
        # Cholesky has no connection_pattern: all connected.
        pytest.param(
            "XBlockwise",
            lambda x, y, idx, n: cholesky(x.isel(a=slice(3)), dims=("a", "b")),
            [[True]],
            id="cholesky",
        ),
        # An XOp without a connection_pattern: pytensor.gradient's default.
        pytest.param("Transpose", lambda x, y, idx, n: x.transpose(), [[True]], id="transpose"),
    ],
)
def test_xop_connection_pattern(op_name, build, expected):
    """Each XOp's ``connection_pattern`` is that of the Ops it lowers to.

    Indices and sizes are disconnected, ``Broadcast`` connects each input to
    its own output, ``XElemwise`` and ``XBlockwise`` follow their scalar or
    core Op; the other XOps have none (all connected).
    """
    node = build(*_pattern_inputs()).owner
    assert type(node.op).__name__ == op_name
    assert _node_to_pattern(node) == expected


@pytest.mark.parametrize(
    "build, wrt",
    [
        pytest.param(lambda x, y, idx, n: x.isel(a=idx), "idx", id="Index-index"),
        pytest.param(lambda x, y, idx, n: x[n:], "n", id="Index-slice-start"),
        pytest.param(
            lambda x, y, idx, n: x.isel(a=idx).set(y * 2), "idx", id="IndexUpdate-index"
        ),
        pytest.param(lambda x, y, idx, n: x.expand_dims(c=n), "n", id="ExpandDims-size"),
        pytest.param(
            lambda x, y, idx, n: unstack(x.stack({"ab": ("a", "b")}), ab={"a": 4, "b": n}),
            "n",
            id="UnStack-length",
        ),
        pytest.param(lambda x, y, idx, n: px.broadcast(x, y)[0], "y", id="Broadcast-other-input"),
        pytest.param(lambda x, y, idx, n: second(y, x), "y", id="XElemwise-second"),
    ],
)
def test_gradient_wrt_a_disconnected_input_raises(build, wrt):
    """Known from the connection patterns at ``pytensor.grad`` time, as in the reference."""
    inputs = dict(zip(["x", "y", "idx", "n"], _pattern_inputs(), strict=True))
    cost = (build(*inputs.values()) * 3.0).sum().values
    with pytest.raises(DisconnectedInputError):
        reference_grad(cost, [inputs[wrt]])
    with pytest.raises(DisconnectedInputError):
        pytensor.grad(cost, inputs[wrt])
    # And the data input stays connected.
    [gx] = pytensor.grad(cost, [inputs["x"]])
    assert gx.type.dims == inputs["x"].type.dims
