"""The walk that collects a gradient's nodes (``_populate_var_to_app_to_idx``).

In the in-tree form these tests are appended to PyTensor's own
``tests/test_gradient.py`` (``scripts/upstream.py``, ``APPENDED_TESTS``), so
they use only names that file imports.
"""

import pytensor
from pytensor.tensor.math import exp
from pytensor.tensor.type import vector

import pytensor_lazy_pullback  # noqa: F401  (the iterative walk)


def test_populate_var_to_app_to_idx_deeper_than_the_recursion_limit():
    # The recursive walk raised RecursionError long before 10,000 nodes.
    x = vector("x")
    chain = [x]
    for _ in range(10_000):
        chain.append(exp(chain[-1]))
    var_to_app_to_idx = pytensor.gradient._populate_var_to_app_to_idx([chain[-1]], [x], None)
    assert len(var_to_app_to_idx) == 10_000
    for i, var in enumerate(chain[:-1]):
        assert var_to_app_to_idx[var] == {chain[i + 1].owner: [0]}


def test_populate_var_to_app_to_idx_keeps_every_use():
    # A variable used twice by one node and once by another: every index kept,
    # nodes off the path to `wrt` left out.
    x = vector("x")
    y = vector("y")
    a = x * x
    b = a + exp(y)
    out = b + a
    var_to_app_to_idx = pytensor.gradient._populate_var_to_app_to_idx([out], [x], None)
    assert var_to_app_to_idx[x] == {a.owner: [0, 1]}
    assert var_to_app_to_idx[a] == {b.owner: [0], out.owner: [1]}
    assert var_to_app_to_idx[b] == {out.owner: [0]}
    assert y not in var_to_app_to_idx
