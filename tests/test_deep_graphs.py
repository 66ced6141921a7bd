"""Deep graphs: long chains of labelled Ops differentiate, expand and compile.

All under the recursion limit PyTensor sets at import (3000), and with
PyTensor's default ``on_opt_error="warn"``, under which a rewrite that fails is
only logged: a logged failure fails the test.  PyTensor itself stops earlier on
the lowered graph (its ``pt.grad`` recurses twice per node of the longest
path; see ``doc/differences.md``).
"""

import sys

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
import pytest
import pytensor.gradient as gradient
from pytensor.compile.mode import Mode
from pytensor.compile.ops import view_op
from pytensor.graph.basic import equal_computations
from pytensor.graph.rewriting.utils import rewrite_graph
from pytensor.graph.traversal import applys_between
from pytensor.xtensor.basic import XOp

from pytensor_lazy_pullback import (
    LazyPullback,
    expand_lazy_pullbacks,
    integration_disabled,
    rewriting,
)
from pytensor_lazy_pullback.integration import _originals
from pytensor_lazy_pullback.rewriting import deep_pullback, lower_graph, max_pullback_depth
from helpers import graph_nodes, lazy_nodes, lower

LIMIT = sys.getrecursionlimit()
"""The limit as PyTensor left it at import; no test may raise it."""

PY = Mode(linker="py", optimizer=None)
"""Node by node, no rewrites: quick to build for any depth."""


@pytest.fixture(autouse=True)
def _recursion_limit_unchanged():
    """Each test runs at the limit ``import pytensor`` sets, which nothing may raise.

    (Another test's tool, e.g. hypothesis, may have left a higher one.)  The
    conftest checks the rewrite log.
    """
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(LIMIT)
    try:
        yield
        assert sys.getrecursionlimit() == LIMIT
    finally:
        sys.setrecursionlimit(before)


def drift_chain(steps):
    """``y <- y + 0.001 * sin(y)``, `steps` times: three xtensor Ops per step.

    Its derivative stays of order one however long the chain (each step
    multiplies it by ``1 + 0.001 cos(y)``), so values are a real check, and
    ``y`` is read twice per step, so cotangents add up at every step.
    """
    x = px.xtensor("x", dims=("a", "b"), shape=(2, 3))
    y = x
    for _ in range(steps):
        y = y + pxm.sin(y) * 0.001
    return x, y.sum().values


def drift_chain_numpy(value, steps):
    """The cost's gradient, by forward-mode accumulation in NumPy."""
    y, dy = value.copy(), np.ones_like(value)
    for _ in range(steps):
        y, dy = y + 0.001 * np.sin(y), dy * (1 + 0.001 * np.cos(y))
    return dy


VALUE = np.linspace(0.1, 0.6, 6).reshape(2, 3)


def test_chain_of_a_thousand_labelled_ops():
    x = px.xtensor("x", dims=("a", "b"), shape=(2, 3))
    y = x
    for i in range(340):
        y = pxm.tanh(y * 0.9 + 0.1) if i % 2 else y - y.mean("a") * 0.5
    cost = y.sum().values
    n_xops = sum(isinstance(n.op, XOp) for n in applys_between([x], [cost]))
    assert n_xops >= 1000

    g = pt.grad(cost, x)
    assert len(lazy_nodes([g])) == 1

    lowered = rewrite_graph(g, include=("lower_xtensor",), clone=True)
    nodes = graph_nodes([lowered])
    assert not any(isinstance(n.op, XOp | LazyPullback) for n in nodes)
    # The whole chain's gradient, against the reference (lower first, then pt.grad).
    reference = pt.grad(lower(cost), x)
    np.testing.assert_allclose(
        lowered.eval({x: VALUE}, mode=PY),
        reference.eval({x: VALUE}, mode=PY),
        rtol=1e-10,
        atol=1e-14,
    )


def test_ten_thousand_op_chain_differentiates():
    """``pt.grad`` walks the 10,000-op chain without recursion (PyTensor's own walk recurses)."""
    x, cost = drift_chain(3334)
    g = pt.grad(cost, x)
    assert g.type.dims == x.type.dims
    assert len(lazy_nodes([g])) == 1
    with integration_disabled(), pytest.raises(RecursionError):
        pt.grad(cost, x)  # PyTensor's own walk (before it meets an XOp)


def test_chunked_pullback_is_the_pullback(monkeypatch):
    """Forced into chunks, the pullback of a lowered region equals the single call."""
    calls = []
    monkeypatch.setattr(
        rewriting, "grad", lambda *args, **kwargs: calls.append(1) or gradient.grad(*args, **kwargs)
    )
    x, cost = drift_chain(150)
    region = lazy_nodes([pt.grad(cost, x)])[0].op.fgraph.unfreeze()
    lower_graph(region)
    outputs = [view_op(out) for out in region.outputs]
    cotangents = [out.type() for out in region.outputs]
    wrt = list(region.inputs)

    single = deep_pullback(outputs, wrt, cotangents)  # 450 nodes: one call
    reference = gradient.pullback(
        outputs, wrt, cotangents, disconnected_inputs="ignore", return_disconnected="disconnected"
    )
    assert 450 < max_pullback_depth()
    assert equal_computations(single, reference)

    assert not calls
    chunked = deep_pullback(outputs, wrt, cotangents, max_depth=40)
    assert len(calls) >= 450 // 40
    inputs = [*wrt, *cotangents]
    values = [VALUE, np.float64(1.5)]
    fn_single = pytensor.function(inputs, single, mode=PY, on_unused_input="ignore")
    fn_chunked = pytensor.function(inputs, chunked, mode=PY, on_unused_input="ignore")
    np.testing.assert_allclose(fn_chunked(*values)[0], fn_single(*values)[0], rtol=1e-13)
    np.testing.assert_allclose(
        fn_chunked(*values)[0], 1.5 * drift_chain_numpy(VALUE, 150), rtol=1e-12
    )


def test_walk_of_grad_keeps_pytensor_order():
    """The loop replacing ``_populate_var_to_app_to_idx`` builds PyTensor's map, in its order."""
    x = px.xtensor("x", dims=("a", "b"), shape=(2, 3))
    w = pt.vector("w", shape=(3,))
    y = pxm.exp(x * px.as_xtensor(w, dims=("b",)))
    z = (y + y.mean("a")).rename(a="c")
    cost = (z.sum() + px.dot(y, y, dim="a").sum()).values + (w**2).sum()
    for wrt, constant in [([x, w], None), ([w], [y]), ([x], [z])]:
        ours = gradient._populate_var_to_app_to_idx([cost], wrt, constant)
        theirs = _originals["_populate_var_to_app_to_idx"]([cost], wrt, constant)
        assert list(ours) == list(theirs)
        assert all(list(ours[var].items()) == list(theirs[var].items()) for var in ours)


def test_user_report_chain_of_2500_ops_expands():
    """The reported failure: pt.grad worked, the expansion recursed (2,502 xtensor Ops)."""
    x, cost = drift_chain(834)
    g = pt.grad(cost, x)
    expanded = expand_lazy_pullbacks(g)
    assert not lazy_nodes([expanded])
    np.testing.assert_allclose(
        expanded.eval({x: VALUE}, mode=PY), drift_chain_numpy(VALUE, 834), rtol=1e-10
    )


@pytest.mark.slow
@pytest.mark.parametrize("steps", [834, 3334], ids=["2.5k", "10k"])
def test_deep_chain_compiles_fast_compile(steps):
    """Expanded and compiled in FAST_COMPILE (minutes at 10k, mostly PyTensor's rewrites).

    Not run: FAST_COMPILE's canonicalizer merges the gradient's product chain
    into one ``Mul`` of more than 32 operands, which its Python ``Elemwise``
    refuses, for the reference's gradient too.
    """
    x, cost = drift_chain(steps)
    g = pt.grad(cost, x)
    fn = pytensor.function([x], [cost, g], mode="FAST_COMPILE")
    nodes = fn.maker.fgraph.apply_nodes
    assert not any(isinstance(node.op, LazyPullback | XOp) for node in nodes)


@pytest.mark.slow
def test_2500_op_chain_compiles_numba():
    """The default mode (Numba), with values; about a minute."""
    x, cost = drift_chain(834)
    g = pt.grad(cost, x)
    fn = pytensor.function([x], [cost, g])
    np.testing.assert_allclose(fn(VALUE)[1], drift_chain_numpy(VALUE, 834), rtol=1e-10)
