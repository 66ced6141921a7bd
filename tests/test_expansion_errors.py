"""Errors found while expanding reach the user, under either ``on_opt_error``.

PyTensor's rewriters log an exception raised inside a rewrite and carry on
under the default ``on_opt_error="warn"``.  An expansion error must still be
raised -- a `LazyPullbackExpansionError` naming the region, caused by the
original exception -- by every way of compiling or rewriting a gradient graph.
An XOp nobody registered a lowering for fails so too, naming the Op and how to
register one.
"""

import importlib.util
import pickle

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytest
from pytensor.gradient import NullTypeGradError
from pytensor.graph.basic import Apply
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.rewriting.basic import SequentialGraphRewriter, graph_rewriter
from pytensor.graph.rewriting.utils import rewrite_graph
from pytensor.xtensor.basic import XOp

from pytensor_lazy_pullback import (
    LazyPullbackExpansionError,
    expand_lazy_pullbacks,
)
from pytensor_lazy_pullback.unlowered import LoweringError
from helpers import assert_graph_unchanged, assert_lazy, graph_snapshot, lower


class Unlowerable(XOp):
    """An XOp for which no lowering is registered."""

    __props__ = ()

    def make_node(self, x):
        return Apply(self, [x], [x.type()])


def _undefined_once_lowered():
    # d/d(order) of the Bessel function is not implemented in the tensor Op.
    o = px.xtensor("o", dims=("k",), shape=(3,))
    z = px.as_xtensor(np.array([0.5, 1.0, 2.0]), dims=("k",))
    return o, px.math.log(px.math.iv(o, z)).sum()


def _unlowerable():
    x = px.xtensor("x", dims=("k",), shape=(3,))
    return x, (Unlowerable()(x) * 2).sum()


def _complex_intermediate():
    x = px.xtensor("x", dims=("k",), shape=(3,))
    c = px.math.complex(x, x)
    return x, px.math.real(c * c).sum()


CASES = {
    "undefined_once_lowered": (_undefined_once_lowered, NullTypeGradError, "ive"),
    "missing_lowering": (_unlowerable, NotImplementedError, "Cannot lower Unlowerable"),
    "complex_intermediate": (_complex_intermediate, TypeError, "Real"),
}


def _function(mode):
    def run(x, g):
        pytensor.function([x], g, mode=mode)(np.ones(3))

    return run


ENTRY_POINTS = {
    "default": _function(None),
    "FAST_RUN": _function("FAST_RUN"),
    "FAST_COMPILE": _function("FAST_COMPILE"),
    "CVM": _function("CVM"),
    "C": _function("C"),
    "eval": lambda x, g: g.eval({x: np.ones(3)}),
    "rewrite_graph": lambda x, g: rewrite_graph(g, include=("lower_xtensor",)),
    "expand_lazy_pullbacks": lambda x, g: expand_lazy_pullbacks(g),
    "expand_lazy_pullbacks_lower": lambda x, g: expand_lazy_pullbacks(g, lower=True),
}
if importlib.util.find_spec("jax") is not None:
    ENTRY_POINTS["JAX"] = _function("JAX")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", CASES)
def test_expansion_error_reaches_the_user(case, entry, on_opt_error):
    build, error, op_name = CASES[case]
    x, cost = build()
    g = pt.grad(cost, x)  # lazy: nothing is lowered yet, so nothing fails yet
    assert_lazy([g])
    with pytest.raises(LazyPullbackExpansionError, match=op_name) as info:
        ENTRY_POINTS[entry](x, g)
    assert isinstance(info.value.__cause__, error)
    message = str(info.value)
    assert "while expanding the lazy pullback of the region" in message
    assert "with inputs (x" in message or "with inputs (o" in message


def test_xop_without_lowering_fails_at_compile_naming_the_op(on_opt_error):
    x = px.xtensor("x", dims=("a",), shape=(3,))
    y = Unlowerable()(px.math.exp(x))
    y.name = "mystery"
    g = pt.grad(y.sum().values, x)  # lazy: nothing is known to be wrong yet
    with pytest.raises(LazyPullbackExpansionError, match=r"Cannot lower Unlowerable.*region.*inputs \(x\)"):
        pytensor.function([x], g, mode="FAST_COMPILE")
    with pytest.raises(LazyPullbackExpansionError, match="register_lower_xtensor"):
        g.eval({x: np.ones(3)})


@pytest.mark.parametrize("case", ["undefined_once_lowered", "complex_intermediate"])
def test_the_reference_fails_with_the_same_type(case):
    build, error, _ = CASES[case]
    x, cost = build()
    with pytest.raises(error):
        pt.grad(lower(cost), x)


def test_a_failed_expansion_leaves_the_gradient_graph_unchanged():
    x, cost = _undefined_once_lowered()
    g = pt.grad(cost, x)
    before = graph_snapshot([cost, g])
    with pytest.raises(LazyPullbackExpansionError) as info:
        pytensor.function([x], [cost, g])
    assert isinstance(info.value.__cause__, NullTypeGradError)
    assert_graph_unchanged(before, graph_snapshot([cost, g]))
    assert_lazy([g])


@pytest.mark.parametrize("mode", ["FAST_COMPILE", None])
def test_error_inside_a_scan_reaches_the_user(mode, on_opt_error):
    """An XOp without lowering inside a user's scan: the error names the inner graph."""
    x = px.xtensor("x", dims=("k",), shape=(3,))
    xt = x.values

    def step(prev):
        labelled = px.as_xtensor(prev, dims=("k",))
        return (Unlowerable()(labelled) * 2).values

    out = pytensor.scan(step, outputs_info=[xt], n_steps=2, return_updates=False)
    with pytest.raises(LazyPullbackExpansionError, match="Cannot lower Unlowerable") as info:
        pytensor.function([x], out[-1], mode=mode)
    assert "while expanding the inner graph of" in str(info.value)


def test_rewriters_reraise_a_lowering_error(on_opt_error):
    """A `LoweringError` is not handed to a rewriter's failure callback, which would log it."""

    @graph_rewriter
    def failing_lowering(fgraph):
        raise LoweringError("cannot lower")

    x = pt.vector("x")
    fgraph = FunctionGraph([x], [pt.exp(x)])
    rewriter = SequentialGraphRewriter(
        failing_lowering, failure_callback=SequentialGraphRewriter.warn
    )
    with pytest.raises(LoweringError, match="cannot lower"):
        rewriter.rewrite(fgraph)


def test_the_expansion_error_is_an_ordinary_class():
    x, cost = _undefined_once_lowered()
    with pytest.raises(LazyPullbackExpansionError) as info:
        pytensor.function([x], pt.grad(cost, x))
    assert type(info.value) is LazyPullbackExpansionError
    assert isinstance(info.value, LoweringError)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is LazyPullbackExpansionError
    assert str(copy) == str(info.value)
