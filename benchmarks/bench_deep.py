"""Deep graphs: chains of 1,000 / 5,000 / 10,000 labelled Ops, lazy against the reference.

Run with ``.venv/bin/python benchmarks/bench_deep.py`` (``--sizes 1000 2500``
for other depths, ``--compile`` to also compile, ``--no-memory`` to skip the
``tracemalloc`` runs, which double the time).  The recursion limit is left as
PyTensor sets it at import (3000), which is the point: the chain is a
labelled array with dims ``("a", "b")`` going through ``sin``, ``* 1.0001``
and ``+ 0.1`` in turn, one xtensor Op each, and the cost is its sum.

For each depth it prints

* ``grad``: wall time and peak traced memory of ``pt.grad(cost, x)``;
* ``expand``: the same for ``expand_lazy_pullbacks`` of that gradient (the
  work compilation does first: lowering the region and its pullback);
* the reference, ``pt.grad`` of the graph lowered first (lowering and
  ``pt.grad`` timed separately), or where PyTensor stops with a
  ``RecursionError`` (innermost repeating function);
* with ``--compile``: compile times of ``pytensor.function([x], [cost, g])`` in
  ``FAST_COMPILE`` and the default mode (Numba), and of the reference's
  lowered forward graph in both.
"""

from __future__ import annotations

import argparse
import collections
import gc
import sys
import time
import tracemalloc
import traceback

import pytensor
import pytensor.tensor as pt
import pytensor.xtensor as px
from pytensor.graph.rewriting.utils import rewrite_graph

import pytensor_lazy_pullback
from pytensor_lazy_pullback import expand_lazy_pullbacks, integration_disabled


def deep_chain(n: int):
    """``x`` with dims ("a", "b") through `n` labelled elementwise Ops; the cost is the sum."""
    x = px.xtensor("x", dims=("a", "b"), shape=(2, 3))
    y = x
    for i in range(n):
        y = (px.math.sin(y), y * 1.0001, y + 0.1)[i % 3]
    return x, y.sum().values


def measure(fn, memory: bool):
    """(seconds, peak traced bytes or None, result or the exception raised)."""
    gc.collect()
    start = time.perf_counter()
    try:
        result = fn()
    except RecursionError as err:
        result = err
    seconds = time.perf_counter() - start
    peak = None
    if memory and not isinstance(result, Exception):
        gc.collect()
        tracemalloc.start()
        try:
            fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return seconds, peak, result


def where(err: BaseException) -> str:
    """The innermost function that repeats in `err`'s traceback: where the recursion is."""
    frames = traceback.extract_tb(err.__traceback__)
    counts = collections.Counter((f.filename, f.name) for f in frames)
    (filename, name), count = counts.most_common(1)[0]
    short = filename.split("site-packages/")[-1]
    return f"RecursionError: {short}:{name} x{count}"


def cell(seconds, peak, result) -> str:
    if isinstance(result, Exception):
        return where(result)
    mem = f", {peak / 2**20:7.1f} MiB" if peak is not None else ""
    return f"{seconds:7.2f} s{mem}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args(argv)
    memory = not args.no_memory
    limit = sys.getrecursionlimit()
    print(
        f"pytensor {pytensor.__version__}, pytensor_lazy_pullback "
        f"{getattr(pytensor_lazy_pullback, '__version__', '?')}, recursion limit {limit}"
    )
    for n in args.sizes:
        x, cost = deep_chain(n)
        print(f"\nchain of {n} xtensor Ops")
        seconds, peak, g = measure(lambda: pt.grad(cost, x), memory)
        print(f"  ours      pt.grad          {cell(seconds, peak, g)}")
        if not isinstance(g, Exception):
            result = measure(lambda: expand_lazy_pullbacks(g), memory)
            print(f"  ours      expansion        {cell(*result)}")
        with integration_disabled():
            result = measure(
                lambda: rewrite_graph(cost, include=("lower_xtensor",), clone=True), memory
            )
            print(f"  reference lowering         {cell(*result)}")
            lowered = result[2]
            result = measure(lambda: pt.grad(lowered, x), memory)
            print(f"  reference pt.grad          {cell(*result)}")
            reference = result[2]
        if args.compile:
            for mode in ("FAST_COMPILE", None):
                name = mode or "default"
                if not isinstance(g, Exception):
                    result = measure(lambda: pytensor.function([x], [cost, g], mode=mode), False)
                    print(f"  ours      compile {name:12s} {cell(*result)}")
                result = measure(lambda: pytensor.function([x], lowered, mode=mode), False)
                print(f"  reference compile forward {name:12s} {cell(*result)}")
                if not isinstance(reference, Exception):
                    result = measure(
                        lambda: pytensor.function([x], [lowered, reference], mode=mode), False
                    )
                    print(f"  reference compile {name:12s} {cell(*result)}")
        assert sys.getrecursionlimit() == limit
    print(
        "\nWhere PyTensor itself stops (recursion limit 3000): pt.grad of the lowered"
        " graph recurses twice per node of its longest path in"
        " pytensor/gradient.py:_populate_grad_dict (access_grad_cache/access_term_cache)"
        " and fails from about 1,490 nodes deep; from about 2,990 nodes deep it already"
        " fails in _populate_var_to_app_to_idx (account_for). The lowered forward graph"
        " of a 10,000-op chain compiles (FAST_COMPILE and Numba). With this package,"
        " pt.grad and the expansion have no such limit; compiling the gradient stops"
        " only where PyTensor's backends do (Numba: an n-ary Mul of more than ~2,990"
        " operands; see doc/differences.md, 'Deep graphs')."
    )


if __name__ == "__main__":
    main()
