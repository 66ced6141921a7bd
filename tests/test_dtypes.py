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

import pytensor_lazy_pullback.rewriting as rewriting

from helpers import (
    any_weighted_cost,
    assert_lazy,
    assert_same_gradients,
    compile_values,
    random_values,
    reference_grad,
    reference_transform,
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


# ---------------------------------------------------------------------------
# The cotangent dtype of a float input, decided without lowering where it can
# be (see LazyPullback._cotangent_dtypes): a labelled input always gets its own
# dtype; a plain float32 input under floatX=float64 gets a float32 cotangent
# unless a node reading it gives a wider (or narrower) term (floatX zeros,
# float64 constants, a cast), which the lowered region tells.


@pytest.fixture
def dtype_lowerings(monkeypatch):
    """The `LazyPullback`\\ s whose cotangent dtypes were found by lowering their region."""
    lowered = []
    find = rewriting.lowered_cotangent_dtypes

    def record(op, cotangent_types):
        lowered.append(op)
        return find(op, cotangent_types)

    monkeypatch.setattr(rewriting, "lowered_cotangent_dtypes", record)
    return lowered


def _f32(value, dims=()):
    return px.as_xtensor(np.asarray(value, dtype="float32"), dims=dims)


def _exp_half(x):
    return pxm.exp(x * _f32(0.5))


def _positive_definite(x):
    """``x x^T + I`` over dims ("a", "a2"), from `x` of dims ("a", "b")."""
    return px.dot(x, x.rename(a="a2"), dim="b") + _f32(np.eye(3), ("a", "a2"))


# Regions of a float32 ``x`` with dims ("a", "b"), and whether a plain input
# under ``as_xtensor`` gets a float32 cotangent from the reference (a labelled
# one always does: the lowered region reads it through conversions).
FLOAT32_REGIONS = [
    # Elementwise, each term of the input's dtype.
    pytest.param(lambda x: pxm.sqrt(x) * pxm.sin(x), True, id="sqrt-sin"),
    pytest.param(lambda x: x**2 + x ** _exp_half(x), True, id="power"),
    pytest.param(lambda x: pxm.floor(x) + pxm.sign(x) * x, True, id="floor-sign"),
    pytest.param(lambda x: pxm.maximum(x, _exp_half(x)), True, id="maximum"),
    pytest.param(
        lambda x: pxm.sigmoid(x) * pxm.erf(x) + pxm.gammaln(x), True, id="special"
    ),
    pytest.param(
        lambda x: pxm.where(_exp_half(x) > _f32(1.5), x, _f32(0.0)), True, id="where"
    ),
    # floatX zeros reach the input: comparisons, casts to a discrete dtype,
    # trunc, floor_divide, the condition of where.
    pytest.param(lambda x: (x > _f32(0.9)) * x, False, id="comparison"),
    pytest.param(lambda x: pxm.where(pxm.isnan(x), _f32(0.0), x), False, id="isnan"),
    pytest.param(
        lambda x: x.astype("int32").astype("float32") + x, False, id="cast-to-int"
    ),
    pytest.param(lambda x: pxm.trunc(x) + x, False, id="trunc"),
    pytest.param(lambda x: x // _f32(0.75) + x, False, id="floor_divide"),
    pytest.param(
        lambda x: pxm.where(x, _exp_half(x), x), False, id="where-float-condition"
    ),
    pytest.param(
        lambda x: pxm.where(x.all("a"), x.sum("a"), _f32(0.0)), False, id="all"
    ),
    # float64 terms: pullbacks with float64 constants.
    pytest.param(lambda x: pxm.owens_t(x, _f32(0.5)), False, id="owens_t"),
    pytest.param(
        lambda x: pxm.betainc(x, _exp_half(x), _f32(0.5)), False, id="betainc"
    ),
    pytest.param(
        lambda x: pxm.hyp2f1(x, _f32(0.5), _f32(1.5), _f32(0.25)), False, id="hyp2f1"
    ),
    # The term of a cast is its output's cotangent.
    pytest.param(
        lambda x: x.astype("float64").astype("float32"), False, id="cast-to-float64"
    ),
    # Ops that rearrange cotangents (and mean, whose region has float64 and int64).
    pytest.param(
        lambda x: x.sum("a") * x.max("b") + x.mean("a").astype("float32"),
        True,
        id="reductions",
    ),
    pytest.param(lambda x: x.cumprod("a") + x.cumsum("b"), True, id="cumulative"),
    pytest.param(
        lambda x: x.transpose("b", "a").expand_dims("c").squeeze("c"), True, id="dims"
    ),
    pytest.param(
        lambda x: x.stack({"s": ("a", "b")}).unstack({"s": {"a": 3, "b": 4}}),
        True,
        id="stack",
    ),
    pytest.param(lambda x: px.concat([x, _exp_half(x)], dim="a"), True, id="concat"),
    pytest.param(
        lambda x: px.broadcast(x, _f32(np.ones(2), ("c",)))[0], True, id="broadcast"
    ),
    pytest.param(
        lambda x: (
            x.isel(a=px.as_xtensor(np.array([0, 2, 2]), dims=("j",))) + x.isel(a=1)
        ),
        True,
        id="isel",
    ),
    pytest.param(lambda x: x[{"a": 1}].inc(x.isel(a=0)), True, id="inc"),
    pytest.param(lambda x: px.dot(x, _exp_half(x), dim="b"), True, id="dot"),
    pytest.param(
        lambda x: pxm.softmax(x, dim="b") + pxm.logsumexp(x, dim="b"),
        True,
        id="softmax",
    ),
    # XBlockwise: its core Op's pullback decides.
    pytest.param(
        lambda x: px.linalg.cholesky(_positive_definite(x), dims=("a", "a2")),
        True,
        id="cholesky",
    ),
    pytest.param(
        lambda x: px.linalg.solve(_positive_definite(x), x.isel(b=0), dims=("a", "a2")),
        True,
        id="solve",
    ),
    pytest.param(
        lambda x: px.signal.convolve1d(
            x, _f32([1.0, -0.5], ("k",)), mode="same", dims=("b", "k")
        ),
        True,
        id="convolve1d",
    ),
]


@pytest.mark.parametrize("labelled", [True, False], ids=["labelled", "as_xtensor"])
@pytest.mark.parametrize(("region", "plain_gets_its_dtype"), FLOAT32_REGIONS)
def test_float32_region_under_float64_floatx_has_the_references_dtype(
    region, plain_gets_its_dtype, labelled, dtype_lowerings
):
    """Each kind of node reading a float32 input, against the reference.

    A labelled input's float32 cotangent is decided without lowering the
    region; a plain input's dtype, float32 or not, is read off the lowered
    region.
    """
    assert pytensor.config.floatX == "float64"
    t = pt.tensor("t", shape=(3, 4), dtype="float32")
    x = px.xtensor("x", dims=("a", "b"), shape=(3, 4), dtype="float32")
    wrt = x if labelled else t
    out = region(x if labelled else px.as_xtensor(t, dims=("a", "b")))
    assert out.type.dtype == "float32"
    cost = any_weighted_cost(out)
    ours = pt.grad(cost, wrt)
    [ref] = reference_grad(cost, [wrt])
    assert ours.type.dtype == ref.type.dtype
    assert_lazy([ours])
    assert (ref.type.dtype == "float32") == (labelled or plain_gets_its_dtype)
    assert (dtype_lowerings == []) == labelled
    values = [np.linspace(0.3, 1.4, 12).reshape(3, 4).astype("float32")]
    assert_same_gradients([ours], [ref], [wrt], values, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("floatX", "dtype", "region", "reference_dtype"),
    [
        # floatX zeros, narrower than the float64 input, are its only terms.
        ("float32", "float64", lambda x: pxm.trunc(x), "float32"),
        ("float32", "float64", lambda x: (x > 0.5) * _f32(1.0), "float32"),
        ("float32", "float64", lambda x: pxm.where(x, _f32(1.0), _f32(2.0)), "float32"),
        # A cast's term is its output's cotangent, narrower than the input.
        ("float64", "float64", lambda x: pxm.exp(x.astype("float32")), "float32"),
        # ... also where the region's output is float64 again.
        (
            "float64",
            "float64",
            lambda x: pxm.exp(x.astype("float32")).astype("float64"),
            "float32",
        ),
        # float64 constants in the pullback, wider than floatX.
        ("float32", "float32", lambda x: pxm.owens_t(x, _f32(0.5)), "float64"),
        # A float64 operand of a dot, whose pullback casts to each operand's dtype.
        (
            "float64",
            "float32",
            lambda x: px.dot(x, px.as_xtensor(np.ones(3), dims=("a",))),
            "float32",
        ),
    ],
    ids=[
        "trunc",
        "comparison",
        "where-float-condition",
        "cast-to-float32",
        "cast-through-float32",
        "owens_t",
        "dot-float64",
    ],
)
def test_cotangent_narrower_or_wider_than_floatx_is_the_references(
    floatX, dtype, region, reference_dtype
):
    """A term need not be at least as wide as floatX, nor as narrow as the widest variable."""
    with pytensor.config.change_flags(floatX=floatX):
        t = pt.vector("t", shape=(3,), dtype=dtype)
        cost = region(px.as_xtensor(t, dims=("a",))).sum().values
        ours = pt.grad(cost, t)
        [ref] = reference_grad(cost, [t])
        assert ours.type.dtype == ref.type.dtype == reference_dtype
        values = [np.array([0.25, 0.75, 1.5], dtype=dtype)]
        assert_same_gradients([ours], [ref], [t], values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("floatX", "dtype", "region", "reference_dtype", "lowered"),
    [
        # The second derivative of maximum reads the input by comparisons:
        # floatX zeros, even where the first derivative is float32.
        (
            "float64",
            "float32",
            lambda x: pxm.maximum(x, _f32(0.0)) ** 2,
            "float64",
            True,
        ),
        ("float64", "float32", lambda x: pxm.exp(x * _f32(0.5)), "float32", True),
        # The first derivative is float32, and so is the second.
        ("float64", "float64", lambda x: pxm.exp(x.astype("float32")), "float32", True),
        # All of one float dtype, floatX: decided without lowering.
        (
            "float64",
            "float64",
            lambda x: pxm.maximum(x, 0.0) ** 2 + pxm.exp(x),
            "float64",
            False,
        ),
    ],
    ids=["maximum-float32", "exp-float32", "cast-to-float32", "maximum-float64"],
)
def test_hessian_has_the_references_dtype(
    floatX, dtype, region, reference_dtype, lowered, dtype_lowerings
):
    """A region holding a `LazyPullback` reads the input through a node the rule
    does not know; the input gets its own dtype without lowering only if that
    is floatX and the region's variables are all of it."""
    with pytensor.config.change_flags(floatX=floatX):
        t = pt.vector("t", shape=(3,), dtype=dtype)
        cost = region(px.as_xtensor(t, dims=("a",))).sum().values
        ours = pt.hessian(cost, t)
        ref = reference_transform(lambda c: pt.hessian(c, t), cost)
        assert ours.type.dtype == ref.type.dtype == reference_dtype
        assert bool(dtype_lowerings) == lowered
        values = [np.array([-0.5, 0.75, 1.5], dtype=dtype)]
        assert_same_gradients([ours], [ref], [t], values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("labelled", "dtype", "lowered"),
    [(True, "float32", False), (False, "float64", False), (False, "float32", True)],
    ids=["labelled-float32", "as_xtensor-float64", "as_xtensor-float32"],
)
def test_chain_cotangent_dtype_is_decided_without_lowering(
    labelled, dtype, lowered, dtype_lowerings
):
    """The case of ``benchmarks/bench_dtypes.py``: a chain under floatX=float64.

    A labelled input, or a plain one where everything is float64, is typed
    without lowering; a plain float32 one is typed by the lowered region.
    (30 Ops deep: the values are compiled in Python mode, where a fused Op
    takes at most 32 operands.)
    """
    t = pt.tensor("t", shape=(2, 3), dtype=dtype)
    x = px.xtensor("x", dims=("a", "b"), shape=(2, 3), dtype=dtype)
    y = x if labelled else px.as_xtensor(t, dims=("a", "b"))
    typed = _f32 if dtype == "float32" else float
    for i in range(30):
        y = (pxm.sin(y), y * typed(1.0001), y + typed(0.1))[i % 3]
    cost = y.sum().values
    assert cost.type.dtype == dtype
    wrt = x if labelled else t
    ours = pt.grad(cost, wrt)
    assert ours.type.dtype == dtype
    assert bool(dtype_lowerings) == lowered
    [ref] = reference_grad(cost, [wrt])
    values = [np.linspace(-1, 1, 6).reshape(2, 3).astype(dtype)]
    assert_same_gradients([ours], [ref], [wrt], values, rtol=1e-5, atol=1e-6)
