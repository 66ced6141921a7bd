"""Dtypes: float32 graphs, integer and boolean inputs get what the reference gives.

A float32 graph has float32 gradients.  Whether a gradient flows into an
integer input is what the lowered graph's pullback says (d/dcounts of
``counts * log(rate)`` is ``log(rate)``), not its dtype; indices and sizes are
disconnected, as once lowered.
"""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
import pytest
from pytensor.gradient import DisconnectedInputError

from helpers import (
    assert_lazy,
    assert_same_gradients,
    compile_values,
    random_values,
    reference_grad,
    weighted_cost,
)

RATE = np.array([0.5, 1.5, 3.0])
COUNTS = np.array([0, 2, 5])


def test_float32():
    with pytensor.config.change_flags(floatX="float32"):
        x = px.xtensor("x", dims=("a", "b"), shape=(3, 4), dtype="float32")
        t = pt.tensor("t", shape=(4,), dtype="float32")
        tx = px.as_xtensor(t, dims=("b",))
        # (No mean: XReduce's mean of float32 is float64 in pytensor 3.3 itself.)
        out = pxm.exp(x * 0.5) * tx + (x * x).sum("a") / (tx + 2)
        cost = weighted_cost(out)
        assert cost.type.dtype == "float32"
        ours = pt.grad(cost, [x, t])
        for g in ours:
            assert g.type.dtype == "float32"
        assert_lazy(ours)
        refs = reference_grad(cost, [x, t])
        values = random_values([x, t])
        assert_same_gradients(ours, refs, [x, t], values, rtol=1e-5, atol=1e-6)
        got = compile_values([x, t], ours, values)
        assert all(v.dtype == np.float32 for v in got)


@pytest.mark.parametrize(
    "make_cost",
    [
        lambda x, w: (x * w).sum().values,  # float64 arithmetic
        lambda x, w: ((x > 0) * w).sum().values + (x * 2).sum().values.astype("float64"),
        lambda x, w: ((x > 0) * w).sum().values,  # only floatX zeros reach x
    ],
    ids=["product", "comparison-and-sum", "comparison-only"],
)
def test_float32_input_in_float64_arithmetic_has_the_references_dtype(make_cost):
    """Regression (the fuzzer): PyTensor does not cast a cotangent to its
    variable's dtype; a plain float32 input labelled and used in float64
    arithmetic gets a float64 gradient from the reference, and got a float32
    one from us.  (A labelled float32 input gets float32: the pullback of its
    conversion casts.  So does ``t`` if ``as_xtensor(t)`` is a ``wrt`` too: its
    conversion is then not in a region, and keeps its own pullback, where the
    reference, lowered, has no conversion; see doc/differences.md.)"""
    assert pytensor.config.floatX == "float64"
    t = pt.vector("t", shape=(3,), dtype="float32")
    x = px.as_xtensor(t, dims=("a",))
    w = px.xtensor("w", dims=("a",), shape=(3,))
    cost = make_cost(x, w)
    [ours] = pt.grad(cost, [t], disconnected_inputs="ignore")
    [ref] = reference_grad(cost, [t], disconnected_inputs="ignore")
    assert ours.type.dtype == ref.type.dtype == "float64"
    assert_lazy([ours])
    values = random_values([t, w])
    assert_same_gradients([ours], [ref], [t, w], values, rtol=1e-6)


def _leaves():
    rate = px.xtensor("rate", dims=("s",), shape=(3,))
    counts = px.xtensor("counts", dims=("s",), shape=(3,), dtype="int64")
    return rate, counts


def test_poisson_loglik_wrt_rate_and_counts():
    rate, counts = _leaves()
    cost = (counts * px.math.log(rate) - rate).sum().values
    ours = pt.grad(cost, [rate, counts])
    assert_lazy(ours)
    assert [g.type.dtype for g in ours] == ["float64", "float64"]
    assert_same_gradients(ours, reference_grad(cost, [rate, counts]), [rate, counts], [RATE, COUNTS])
    # d/dcounts = log(rate): not zeros.
    assert_same_gradients(ours[1:], [px.math.log(rate)], [rate, counts], [RATE, COUNTS])


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint16", "bool"])
def test_discrete_labelled_input_times_float(dtype):
    rate = px.xtensor("rate", dims=("s",), shape=(3,))
    k = px.xtensor("k", dims=("s",), shape=(3,), dtype=dtype)
    cost = (k * px.math.exp(rate)).sum().values
    ours = pt.grad(cost, [k, rate])
    values = [COUNTS.astype(dtype), RATE]
    assert_same_gradients(ours, reference_grad(cost, [k, rate]), [k, rate], values)


def test_plain_integer_tensor_under_as_xtensor():
    rate, _ = _leaves()
    counts = pt.vector("counts", dtype="int64", shape=(3,))
    cost = (px.as_xtensor(counts, dims=("s",)) * px.math.log(rate)).sum().values
    ours = pt.grad(cost, counts)
    assert ours.type.dtype == "float64"
    assert_same_gradients([ours], reference_grad(cost, [counts]), [rate, counts], [RATE, COUNTS])


def test_integer_cost_wrt_its_integer_input_is_float_zeros():
    _, counts = _leaves()
    cost = (counts * 2).sum().values
    ours = pt.grad(cost, counts)
    assert ours.type.dtype == "float64"
    assert_same_gradients([ours], reference_grad(cost, [counts]), [counts], [COUNTS])


def test_float32_float_with_int64_upcasts_like_the_reference():
    _, counts = _leaves()
    f = px.xtensor("f", dims=("s",), shape=(3,), dtype="float32")
    cost = (counts * f).sum().values
    ours = pt.grad(cost, [counts, f])
    assert_same_gradients(
        ours, reference_grad(cost, [counts, f]), [counts, f], [COUNTS, RATE.astype("float32")]
    )


@pytest.mark.parametrize("dtype", ["bool", "int8"])
def test_discrete_wrt_through_float32_arithmetic_has_the_references_dtype(dtype):
    """A boolean/int8 ``wrt`` read by float32 arithmetic (tanh of a boolean is
    float32) gets a float32 cotangent, as the lowered chain rule gives (read off
    the region's frozen nodes, which are not `Apply` instances)."""
    x = px.xtensor("x", dims=("a", "b"), shape=(2, 3))
    flag = (pxm.tanh(x > 0) > 0).astype(dtype)
    h = pxm.tanh(x > 0) - flag
    assert h.type.dtype == "float32"
    cost = pxm.exp(0.1 * h).sum().values
    [ours] = pt.grad(cost, [flag])
    [ref] = reference_grad(cost, [flag])
    assert ours.type.dtype == ref.type.dtype == "float32"
    assert_same_gradients([ours], [ref], [x], [np.linspace(-1, 1, 6).reshape(2, 3)])


def test_where_with_boolean_condition():
    rate, _ = _leaves()
    b = px.xtensor("b", dims=("s",), shape=(3,), dtype="bool")
    cost = px.math.where(b, rate**2, 0.0).sum().values
    ours = pt.grad(cost, [b, rate])
    values = [np.array([True, False, True]), RATE]
    assert_same_gradients(ours, reference_grad(cost, [b, rate]), [b, rate], values)


@pytest.mark.parametrize("labelled", [True, False])
def test_gradient_wrt_an_index_is_disconnected(labelled):
    rate, _ = _leaves()
    if labelled:
        idx = px.xtensor("idx", dims=("j",), shape=(2,), dtype="int64")
    else:
        idx = pt.vector("idx", dtype="int64", shape=(2,))
        idx_x = px.as_xtensor(idx, dims=("j",))
    cost = rate.isel(s=idx if labelled else idx_x).sum().values
    with pytest.raises(DisconnectedInputError):
        reference_grad(cost, [idx])
    with pytest.raises(DisconnectedInputError):
        pt.grad(cost, idx)
    g = pt.grad(cost, [idx, rate], disconnected_inputs="ignore")
    ref = reference_grad(cost, [idx, rate], disconnected_inputs="ignore")
    assert_same_gradients(g, ref, [idx, rate], [np.array([2, 0]), RATE])
    none = pt.grad(cost, idx, disconnected_inputs="ignore", return_disconnected="none")
    assert none is None


def test_zeros_like_does_not_depend_on_its_input():
    rate, _ = _leaves()
    cost = (px.zeros_like(rate) + 1.0).sum().values
    with pytest.raises(DisconnectedInputError):
        pt.grad(cost, rate)
    with pytest.raises(DisconnectedInputError):
        reference_grad(cost, [rate])


def _discrete_read_by(op, data, n):
    """`op` of float data (dims ("a", "b")) and a discrete `n` (dims ("b",)), broadcast."""
    if op == "add":
        return data + n
    if op == "mul":
        return data * n
    if op == "where":
        return pxm.where(n if n.type.dtype == "bool" else n > 0, data, n)
    broadcast_data, broadcast_n = px.broadcast(data, n)
    return broadcast_data * broadcast_n


@pytest.mark.parametrize("floatX", ["float32", "float64"])
@pytest.mark.parametrize("labelled", [True, False], ids=["labelled", "as_xtensor"])
@pytest.mark.parametrize("dtype", ["bool", "int8", "int32", "int64"])
@pytest.mark.parametrize("data_dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["add", "mul", "where", "broadcast"])
def test_discrete_input_gradient_has_the_references_dtype(op, data_dtype, dtype, labelled, floatX):
    """The gradient of a discrete input read by broadcasting float arithmetic has
    the reference's dtype, which the lowered Ops' pullbacks decide (a broadcast
    integer gets ``floatX`` zeros from its ``DimShuffle``, an addition its output's
    dtype), under both ``floatX`` values."""
    with pytensor.config.change_flags(floatX=floatX):
        data = px.xtensor("data", dims=("a", "b"), shape=(2, 3), dtype=data_dtype)
        if labelled:
            n = px.xtensor("n", dims=("b",), shape=(3,), dtype=dtype)
            n_x = n
        else:
            n = pt.tensor("n", shape=(3,), dtype=dtype)
            n_x = px.as_xtensor(n, dims=("b",))
        cost = pxm.exp(_discrete_read_by(op, data, n_x) * 0.1).sum().values
        ours = pt.grad(cost, [n, data])
        refs = reference_grad(cost, [n, data])
        assert [g.type.dtype for g in ours] == [r.type.dtype for r in refs]
        values = [np.array([1, 0, 2]).astype(dtype), np.linspace(-1, 1, 6).reshape(2, 3)]
        values[1] = values[1].astype(data_dtype)
        assert_same_gradients(ours, refs, [n, data], values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["FAST_COMPILE", "NUMBA"])
@pytest.mark.parametrize("dtype", ["int64", "bool"])
def test_renamed_count_cast_to_float_compiles_silently(dtype, mode, on_opt_error):
    """The cotangent of ``n`` in ``cast(n.rename(a="a2"))`` is the cast's, relabelled:
    once lowered, a round trip through a tensor from dims ("a2", "b") to ("a", "b"),
    which PyTensor's ``useless_xtensor_from_tensor`` turned into the cotangent itself,
    of the wrong dims (a logged rewrite failure, or a TypeError under "raise")."""
    n = px.xtensor("n", dims=("a", "b"), shape=(2, 3), dtype=dtype)
    c = n.rename(a="a2").astype("float64")
    cost = (pxm.exp(c * 0.3) * c).sum().values
    ours = pt.grad(cost, [c, n])
    refs = reference_grad(cost, [c, n])
    assert [g.type for g in ours] == [r.type for r in refs]
    values = [np.array([[1, 0, 2], [1, 1, 0]]).astype(dtype)]
    assert_same_gradients(ours, refs, [n], values, mode=mode)
