"""Deep graphs: ~1,000 labelled Ops in a chain build, expand and lower without recursion errors."""

import numpy as np
import pytensor.tensor as pt
import pytensor.xtensor as px
import pytensor.xtensor.math as pxm
from pytensor.compile.mode import Mode
from pytensor.graph.rewriting.utils import rewrite_graph
from pytensor.graph.traversal import applys_between, graph_inputs
from pytensor.xtensor.basic import XOp

from pytensor_lazy_pullback import LazyPullback
from reference import lower


def test_chain_of_a_thousand_labelled_ops():
    x = px.xtensor("x", dims=("a", "b"), shape=(2, 3))
    y = x
    for i in range(340):
        y = pxm.tanh(y * 0.9 + 0.1) if i % 2 else y - y.mean("a") * 0.5
    cost = y.sum().values
    n_xops = sum(isinstance(n.op, XOp) for n in applys_between([x], [cost]))
    assert n_xops >= 1000

    g = pt.grad(cost, x)
    lazy = [n for n in applys_between(list(graph_inputs([g])), [g]) if isinstance(n.op, LazyPullback)]
    assert len(lazy) == 1

    lowered = rewrite_graph(g, include=("lower_xtensor",), clone=True)
    nodes = list(applys_between(list(graph_inputs([lowered])), [lowered]))
    assert not any(isinstance(n.op, XOp | LazyPullback) for n in nodes)
    # The whole chain's gradient, against the reference (lower first, then pt.grad).
    reference = pt.grad(lower(cost), x)
    value = np.linspace(0.1, 0.6, 6).reshape(2, 3)
    # No fusion: the Python linker runs the graphs node by node, quick to build.
    mode = Mode(linker="py", optimizer=None)
    np.testing.assert_allclose(
        lowered.eval({x: value}, mode=mode),
        reference.eval({x: value}, mode=mode),
        rtol=1e-10,
        atol=1e-14,
    )
