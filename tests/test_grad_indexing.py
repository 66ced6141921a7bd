"""Gradients of the Ops of ``pytensor.xtensor.indexing``: ``Index`` (``isel`` and
``[]`` with integers, slices, arrays and labelled indexers, static or symbolic)
and ``IndexUpdate`` (``.set`` / ``.inc``).

Each gradient equals the reference (lower first, then ``pt.grad``) and finite
differences (`helpers.check_family`); no cotangent flows into an index.
"""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytest

from helpers import (
    MODE,
    any_weighted_cost,
    assert_lazy,
    assert_no_integer_cotangent,
    assert_same_gradients,
    check_family,
    random_values,
    reference_grad,
)

AB = [("a", "b")]
AB_54 = [(5, 4)]


STATIC_INDEXING = {
    "isel_int": lambda x: x.isel(a=1),
    "isel_negative_int": lambda x: x.isel(a=-2, b=-1),
    "getitem_int": lambda x: x[3],
    "getitem_negative_int": lambda x: x[-1, -3],
    "isel_step_slices": lambda x: x.isel(a=slice(None, None, 2), b=slice(3, 0, -2)),
    "getitem_step_slices": lambda x: x[1::2, ::-1],
    "getitem_int_and_slice": lambda x: x[-2, 1:],
    "isel_numpy_array": lambda x: x.isel(a=np.array([0, 2, 4, 1])),
    "isel_numpy_array_repeated": lambda x: x.isel(a=np.array([0, 2, 2, 4, 2])),
    "getitem_numpy_array_negative": lambda x: x[:, np.array([-1, 0, -1])],
    "isel_xtensor_new_dim": lambda x: x.isel(
        a=px.as_xtensor(np.array([0, 2, 1]), dims=("new",))
    ),
    "isel_xtensor_repeated": lambda x: x.isel(
        a=px.as_xtensor(np.array([0, 2, 2, 2]), dims=("new",))
    ),
    "isel_two_xtensors_same_new_dim": lambda x: x.isel(
        a=px.as_xtensor(np.array([0, 2, 1, 2]), dims=("new",)),
        b=px.as_xtensor(np.array([1, 1, 3, 1]), dims=("new",)),
    ),
    "isel_two_xtensors_outer": lambda x: x.isel(
        a=px.as_xtensor(np.array([0, 4, 4]), dims=("p",)),
        b=px.as_xtensor(np.array([[1, 3], [3, 3]]), dims=("q", "r")),
    ),
    "index_of_index_and_reuse": lambda x: x[1:][::2] * x.isel(a=0) + x[2:4].sum("a"),
}


@pytest.mark.parametrize("name", list(STATIC_INDEXING))
def test_indexing_static(name):
    check_family(STATIC_INDEXING[name], AB, AB_54)


def test_indexing_symbolic_slice_bounds():
    lo, hi = pt.iscalar("lo"), pt.iscalar("hi")
    check_family(
        lambda x, lo, hi: x.isel(a=slice(lo, hi)), AB, AB_54, ints=(lo, hi), int_values=(1, 4),
        refined_shapes=True,
    )


def test_indexing_symbolic_slice_bounds_with_step_and_getitem():
    lo, hi = pt.iscalar("lo"), pt.iscalar("hi")
    check_family(
        lambda x, lo, hi: x[lo::2, :hi] * x[lo:hi, 0].sum("a"),
        AB,
        AB_54,
        ints=(lo, hi),
        int_values=(1, 3),
        refined_shapes=True,
    )


def test_indexing_symbolic_negative_step_slice():
    lo, step = pt.iscalar("lo"), pt.iscalar("step")
    check_family(
        lambda x, lo, step: x.isel(b=slice(lo, None, step)),
        AB,
        AB_54,
        ints=(lo, step),
        int_values=(-1, -2),
        refined_shapes=True,
    )


def test_indexing_symbolic_integer_scalar():
    i = pt.iscalar("i")
    check_family(
        lambda x, i: x.isel(a=i) * x[i - 1],
        AB,
        AB_54,
        ints=(i,),
        int_values=(-2,),
        refined_shapes=True,
    )


def test_indexing_symbolic_integer_vector_with_repeats():
    iv = pt.ivector("iv")
    check_family(
        lambda x, iv: x.isel(a=iv), AB, AB_54, ints=(iv,),
        int_values=(np.array([0, 3, 3, 1, 3], dtype="int32"),),
        refined_shapes=True,
    )


def test_indexing_symbolic_xtensor_indexer_new_dim():
    iv = pt.ivector("iv")
    check_family(
        lambda x, iv: x.isel(a=px.as_xtensor(iv, dims=("new",)), b=px.as_xtensor(iv, dims=("new",))),
        AB,
        AB_54,
        ints=(iv,),
        int_values=(np.array([0, 3, 3, 1, 3], dtype="int32"),),
        refined_shapes=True,
    )


def test_repeated_indices_accumulate_exact_values():
    """The gradient of a gather with repeats is a scatter-add, checked against numpy."""
    t = pt.tensor("t", shape=(5, 4))
    x = px.as_xtensor(t, dims=("a", "b"))
    index = np.array([0, 2, 2, 4, 2])
    weights = np.random.default_rng(3).uniform(-1, 1, size=(5, 4))
    cost = (x.isel(a=px.as_xtensor(index, dims=("new",))) * px.as_xtensor(weights, dims=("new", "b"))).sum().values
    [g] = pt.grad(cost, [t])
    assert_lazy([g])
    got = pytensor.function([t], g, mode=MODE)(np.ones((5, 4)))
    expected = np.zeros((5, 4))
    np.add.at(expected, index, weights)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.all(got[[1, 3]] == 0)


@pytest.mark.parametrize("disconnected_inputs", ["raise", "ignore"])
def test_gradient_wrt_integer_index_inputs_matches_reference(disconnected_inputs):
    """Asking for the gradient wrt an index: same error, or same (float) zeros."""
    t = pt.tensor("t", shape=(5, 4))
    x = px.as_xtensor(t, dims=("a", "b"))
    iv, lo = pt.ivector("iv"), pt.iscalar("lo")
    labelled_iv = px.as_xtensor(iv, dims=("new",))
    out = x.isel(a=labelled_iv) * x[lo:lo + 1].sum("a")
    cost = any_weighted_cost(out)
    wrt = [t, iv, lo, labelled_iv]
    inputs = [t, iv, lo]
    values = [random_values([t])[0], np.array([0, 4, 4], dtype="int32"), 2]
    if disconnected_inputs == "raise":
        with pytest.raises(pytensor.gradient.DisconnectedInputError):
            reference_grad(cost, wrt[1:2], disconnected_inputs="raise")
        with pytest.raises(pytensor.gradient.DisconnectedInputError):
            pt.grad(cost, wrt, disconnected_inputs="raise")
        return
    ours = pt.grad(cost, wrt, disconnected_inputs="ignore")
    refs = reference_grad(cost, wrt, disconnected_inputs="ignore")
    assert_no_integer_cotangent(ours)
    assert_same_gradients(ours, refs, inputs, values)


@pytest.mark.parametrize("method", ["set", "inc"])
def test_index_update(method):
    """IndexUpdate (``x[idx].set(y)`` / ``.inc(y)``): gradient wrt both x and y."""
    idx = np.array([0, 2, 3]) if method == "set" else np.array([0, 2, 2])

    def fn(x, y):
        out = getattr(x.isel(a=px.as_xtensor(idx, dims=("new",))), method)(y * 2)
        return out * out

    check_family(fn, [("a", "b"), ("new", "b")], [(5, 4), (3, 4)])
